#!/usr/bin/env bash
# Generic codec recipe: validate → train → ONNX export (encoder + streaming decoder, checked
# against PyTorch) → eval (STOI, PESQ, MCD, ASR WER of the resynthesised test speech, codebook
# usage, RTF) → RESULTS.md. Called by egs/<corpus>/codec/run.sh with Kaldi data dirs under $data.
# Stages skip finished work (.done markers, the trainer's checkpoint), so a rerun resumes.
#   recipes/codec.sh --config conf/train_vae.yaml [--stage N] [--stop_stage N] ...
set -euo pipefail

stage=1
stop_stage=100
config=
data=data
exp=
train_set=train
test_sets="test test_unseen"
nj=$(nproc)
asr_model=
eval_utts=50
results=RESULTS.md
command_line="$0 $*"
_speechkit_opts="command_line stage stop_stage config data exp train_set test_sets nj asr_model eval_utts results"
. "$(dirname "$0")/../tools/parse_options.sh"

[ -n "$config" ] || { echo "$0: --config is required" >&2; exit 2; }
[ -n "$exp" ] || exp=exp/$(basename "${config%.*}")
[ -n "$asr_model" ] || asr_model=$(cd "$(dirname "$0")/.." && pwd)/models/asr-stream-synth
log() { echo "[$(date +%T)] $*" >&2; }

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "stage 1: validate data dirs"
  for s in $train_set $test_sets; do
    [ -f "$data/$s/.validated" ] && continue
    speechkit data validate "$data/$s" --nj "$nj" --allow-bad-audio
    touch "$data/$s/.validated"
  done
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "stage 2: train $exp (resumes if interrupted)"
  [ -f "$exp/model.pt" ] && [ "$exp/model.pt" -nt "$exp/checkpoint.pt" ] || \
    speechkit codec train --config "$config" --data "$data/$train_set" --exp-dir "$exp"
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "stage 3: ONNX export, checked against PyTorch over chained decoder chunks"
  speechkit codec export "$exp" "$exp/onnx" --check-data "$data/${test_sets%% *}"
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "stage 4: eval on $test_sets"
  speechkit codec eval "$exp" $(for s in $test_sets; do echo "$data/$s"; done) --asr-model "$asr_model" \
    --max-utts "$eval_utts" --samples-dir "$exp/samples" --out "$exp/eval.json" | tee "$exp/eval.txt"
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "stage 5: $results"
  rev=$(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo unknown)
  { echo "# codec results ($(basename "$config"))"; echo; echo "command: \`$command_line\` (git $rev)"; echo
    echo '```'; cat "$exp/eval.txt"; echo '```'; } > "$results"
  log "wrote $results"
fi
