#!/usr/bin/env bash
# Generic CLEAR TTS recipe: validate → prepare (phonemes + VAE latents) → train → ONNX export
# (AR prefix/step with KV cache, flow head, the codec; checked against PyTorch) → zero-shot
# synthesis of a test set with prompts of the same speakers, judged (ASR WER, pocketsphinx WER,
# speaker similarity, DNSMOS, RTF, first-audio latency) → RESULTS.md. Called by
# egs/<corpus>/tts/run.sh with Kaldi data dirs under $data. Stages skip finished work.
#   recipes/tts.sh --config conf/train_clear.yaml --codec models/codec-vae-synth [--stage N] ...
set -euo pipefail

stage=1
stop_stage=100
config=
codec=
data=data
exp=
train_set=train
test_set=test_unseen
nj=$(nproc)
asr_model=
judges=asr,pocketsphinx,resemblyzer,dnsmos
eval_utts=20
results=RESULTS.md
command_line="$0 $*"
_speechkit_opts="command_line stage stop_stage config codec data exp train_set test_set nj asr_model judges eval_utts results"
. "$(dirname "$0")/../tools/parse_options.sh"

root=$(cd "$(dirname "$0")/.." && pwd)
[ -n "$config" ] || { echo "$0: --config is required" >&2; exit 2; }
[ -n "$codec" ] || codec=$root/models/codec-vae-synth
[ -n "$exp" ] || exp=exp/$(basename "${config%.*}")
[ -n "$asr_model" ] || asr_model=$root/models/asr-stream-synth
log() { echo "[$(date +%T)] $*" >&2; }

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "stage 1: validate data dirs"
  for s in $train_set $test_set; do
    [ -f "$data/$s/.validated" ] && continue
    speechkit data validate "$data/$s" --nj "$nj" --allow-bad-audio
    touch "$data/$s/.validated"
  done
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "stage 2: phonemes + latents of $codec"
  [ -f "$exp/prep/$train_set/prepare.json" ] || speechkit tts prepare "$data/$train_set" "$codec" "$exp/prep/$train_set" --nj "$nj"
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "stage 3: train $exp (resumes if interrupted)"
  [ -f "$exp/model.pt" ] && [ "$exp/model.pt" -nt "$exp/checkpoint.pt" ] || \
    speechkit tts train --config "$config" --data "$exp/prep/$train_set" --exp-dir "$exp"
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "stage 4: ONNX export, checked against PyTorch"
  speechkit tts export "$exp" "$exp/onnx"
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "stage 5: zero-shot synthesis of $test_set with the exported model (1 CPU thread), judged by $judges"
  speechkit tts eval "$exp/onnx" "$data/$test_set" --out-dir "$exp/eval_$test_set" --max-utts "$eval_utts" \
    --judges "$judges" --asr-model "$asr_model" --out "$exp/eval.json" | tee "$exp/eval.txt"
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "stage 6: $results"
  rev=$(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo unknown)
  { echo "# CLEAR TTS results ($(basename "$config"))"; echo; echo "command: \`$command_line\` (git $rev)"; echo
    echo '```'; cat "$exp/eval.txt"; echo '```'; } > "$results"
  log "wrote $results"
fi
