#!/usr/bin/env bash
# Issue 19 on a CPU, before its GPU run: fine-tune the shipped streaming model on realistic data
# for an hour and see what it buys on real speech.
#   1. models/asr-stream-synth's int8 ONNX back into a checkpoint (local/onnx_to_checkpoint.py;
#      exact: the runtime computes with the same dequantized weights)
#   2. a corpus with the Piper neural voice (speechkit corpus synth, all installed engines)
#   3. the recipe's stages 1-8 with conf/finetune_real_cpu.yaml (init_checkpoint = step 1) and
#      conf/augment.yaml (rooms, noise, channel; the clean set kept beside one augmented copy)
#   4. local/real_dev_wer.sh: real dev set and synth test sets, pocketsphinx, the shipped model
#      and the fine-tuned one, in one table
#   bash local/cpu_finetune_real.sh [--hours 6] [--work exp/finetune_real] [--synth_data DIR]
# --synth_data: the test sets to score on (default: a 1 h seed-0 corpus made here; its test
# sentences are from the sentence stream's eval part, so in no model's training text).
set -euo pipefail
cd "$(dirname "$0")/.."
. ./path.sh
hours=6
seed=0
work=exp/finetune_real
synth_data=
nj=$(nproc)
_speechkit_opts="hours seed work synth_data nj"
. ../../../tools/parse_options.sh
log() { echo "[$(date +%T)] $*" >&2; }
config=conf/finetune_real_cpu.yaml
init=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['train_conf']['init_checkpoint'])" "$config")

[ -f "$init" ] || { log "the shipped model -> $init"; python3 local/onnx_to_checkpoint.py ../../../models/asr-stream-synth "$(dirname "$init")"; }
[ -f "$work/data/.done" ] || { log "corpus: $hours h, seed $seed"; speechkit corpus synth --out "$work/data" --hours "$hours" --seed "$seed" --nj "$nj" && touch "$work/data/.done"; }
./run.sh --stage 1 --stop_stage 8 --config "$config" --data "$work/data" --dump "$work/dump" --exp "$work/exp" \
  --augment conf/augment.yaml --augment_copies 1 --nj "$nj"
if [ -z "$synth_data" ]; then
  synth_data=$work/synth_test
  [ -f "$synth_data/.done" ] || { speechkit corpus synth --out "$synth_data" --hours 1 --seed 0 --nj "$nj" && touch "$synth_data/.done"; }
fi
rm -rf "$work/models" && mkdir -p "$work/models"
ln -s "$(realpath ../../../models/asr-stream-synth)" "$work/models/asr-stream-synth"
ln -s "$(realpath "$work/exp/onnx")" "$work/models/asr-stream-finetuned"
local/real_dev_wer.sh --synth_data "$synth_data" --work "$work/real_dev" --nj "$nj" "$work/models/asr-stream-synth" "$work/models/asr-stream-finetuned"
