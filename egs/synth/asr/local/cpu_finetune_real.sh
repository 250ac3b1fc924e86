#!/usr/bin/env bash
# Issue 19 on a CPU, before its GPU run: fine-tune a shipped model on realistic data for under an
# hour and see what it buys on real speech. --model stream (models/asr-stream-synth,
# conf/finetune_real_cpu.yaml) or paraformer (models/asr-paraformer-synth,
# conf/finetune_paraformer_real_cpu.yaml).
#   1. the shipped int8 ONNX back into a checkpoint (local/onnx_to_checkpoint.py; exact: the
#      runtime computes with the same dequantized weights; a Paraformer's training-only parts, the
#      glancing sampler's token table and the CTC layer, are not in the graph: see the config)
#   2. a corpus with the Piper neural voice (speechkit corpus synth, all installed engines)
#   3. the recipe's stages 1-8 with the config (init_checkpoint = step 1) and conf/augment.yaml
#      (rooms, noise, channel; the clean set kept beside one augmented copy); a Paraformer is then
#      exported as int8 (speechkit export onnx --int8, checked on the test set)
#   4. local/real_dev_wer.sh: real dev set and synth test sets, pocketsphinx, the shipped model
#      and the fine-tuned one, in one table; then local/ship_decision.py on real dev and the synth
#      test set, with the per-utterance comparison on real dev (ship_decision_MODEL.json)
#   bash local/cpu_finetune_real.sh [--model stream] [--hours 6] [--work exp/finetune_real] [--synth_data DIR]
# --synth_data: the test sets to score on (default: a 1 h seed-0 corpus made here; its test
# sentences are from the sentence stream's eval part, so in no model's training text). Both
# models can share one --work: the corpus and features are made once.
set -euo pipefail
cd "$(dirname "$0")/.."
. ./path.sh
hours=6
seed=0
work=exp/finetune_real
synth_data=
model=stream
nj=$(nproc)
_speechkit_opts="model hours seed work synth_data nj"
. ../../../tools/parse_options.sh
log() { echo "[$(date +%T)] $*" >&2; }
case $model in
  stream) config=conf/finetune_real_cpu.yaml exp=$work/exp ;;
  paraformer) config=conf/finetune_paraformer_real_cpu.yaml exp=$work/exp_paraformer ;;
  *) echo "$0: --model is stream or paraformer, not '$model'" >&2; exit 2 ;;
esac
shipped=asr-$model-synth
init=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['train_conf']['init_checkpoint'])" "$config")

[ -f "$init" ] || { log "the shipped model -> $init"; python3 local/onnx_to_checkpoint.py "../../../models/$shipped" "$(dirname "$init")" --config "$config"; }
[ -f "$work/data/.done" ] || { log "corpus: $hours h, seed $seed"; speechkit corpus synth --out "$work/data" --hours "$hours" --seed "$seed" --nj "$nj" && touch "$work/data/.done"; }
./run.sh --stage 1 --stop_stage 8 --config "$config" --data "$work/data" --dump "$work/dump" --exp "$exp" \
  --augment conf/augment.yaml --augment_copies 1 --nj "$nj"
onnx=$exp/onnx
if [ "$model" = paraformer ]; then  # stages 7-8 are the streaming model's; the shipped Paraformer is int8
  onnx=$exp/onnx_int8
  [ -f "$onnx/model.onnx" ] || speechkit export onnx "$exp" "$onnx" --check-data "$work/data/test" --int8
fi
if [ -z "$synth_data" ]; then
  synth_data=$work/synth_test
  [ -f "$synth_data/.done" ] || { speechkit corpus synth --out "$synth_data" --hours 1 --seed 0 --nj "$nj" && touch "$synth_data/.done"; }
fi
rm -rf "$work/models_$model" && mkdir -p "$work/models_$model"
ln -s "$(realpath "../../../models/$shipped")" "$work/models_$model/$shipped"
ln -s "$(realpath "$onnx")" "$work/models_$model/asr-$model-finetuned"
local/real_dev_wer.sh --synth_data "$synth_data" --work "$work/real_dev" --nj "$nj" "$work/models_$model/$shipped" "$work/models_$model/asr-$model-finetuned"
rd=$work/real_dev
python3 local/ship_decision.py --label "models/$shipped" --out "$work/ship_decision_$model.json" \
  --new-real-dev "$rd/asr-$model-finetuned_real_dev/wer.json" --new-test "$rd/asr-$model-finetuned_test/wer.json" \
  --shipped-real-dev "$rd/${shipped}_real_dev/wer.json" --shipped-test "$rd/${shipped}_test/wer.json" \
  --paired "$rd/real_dev/text" "$rd/asr-$model-finetuned_real_dev/hyp" "$rd/${shipped}_real_dev/hyp"
