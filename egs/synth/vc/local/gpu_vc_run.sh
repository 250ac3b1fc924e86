#!/usr/bin/env bash
# The GPU run behind egs/synth/vc/RESULTS.md: a synth corpus; the speaker encoder
# (conf/speaker_gpu.yaml, a time budget); the features of train and test_unseen (`speechkit vc
# prepare`: the shipped streaming ASR's content, the shipped VAE's latents, the speaker embeddings);
# then two chunk DiTs of the same size side by side on one GPU for the same time: mean flow
# (conf/vc_gpu.yaml) and its twin trained by plain flow matching (fm_fraction 1); `speechkit vc eval`
# converts the same test_unseen pairs with mean flow at 1 and 2 steps and flow matching at
# 1, 2, 4 and 10 (--judges none: the judges run where they are installed, with --reuse on OUT).
# Work goes to $WORK (default /tmp/vc_gpu); $REPORT gets logs, the eval folder (audio of the pairs)
# and the fp16 weights in < 16 MB parts (python tools/state_parts.py join REPORT model.pt --stem mf).
#   bash egs/synth/vc/local/gpu_vc_run.sh [--hours 20] [--minutes 10] [--speaker_minutes 4]
#        [--eval_utts 30] [--twins "mf fm"] [--stage N] [--stop_stage N]
# Run it after the README's set-up on a GPU machine; start it detached:
#   (setsid nohup bash egs/synth/vc/local/gpu_vc_run.sh > /tmp/gpu_vc.log 2>&1 < /dev/null &)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
hours=20
minutes=10
speaker_minutes=4
eval_utts=30
twins="mf fm"
stage=1
stop_stage=100
WORK=${WORK:-/tmp/vc_gpu}
SRC=${SRC:-$WORK/src}
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="hours minutes speaker_minutes eval_utts twins stage stop_stage"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
run_from_private_copy "$SRC"
cli_from_checkout
log() { echo "[$(date +%T)] $*"; }
here=$root/egs/synth/vc
data=$WORK/data exp=$WORK/exp
mkdir -p "$WORK/conf" "$REPORT" "$exp"
sed -e "s/^  max_steps: .*/  max_steps: 1000000\n  max_minutes: $speaker_minutes/" "$here/conf/speaker_gpu.yaml" > "$WORK/conf/speaker.yaml"
sed -e "s/^  max_minutes: .*/  max_minutes: $minutes/" "$here/conf/vc_gpu.yaml" > "$WORK/conf/mf.yaml"
sed -e "s/^  fm_fraction: .*/  fm_fraction: 1.0/" "$WORK/conf/mf.yaml" > "$WORK/conf/fm.yaml"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "corpus: $hours h"
  [ -f "$data/test_unseen/wav.scp" ] || speechkit corpus synth --out "$data" --hours "$hours" --seed 0 --nj "$(nproc)"
fi
if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  log "speaker encoder ($speaker_minutes min)"
  [ -f "$exp/speaker/model.pt" ] || speechkit speaker train --config "$WORK/conf/speaker.yaml" --data "$data/train" \
    --exp-dir "$exp/speaker" --eval-data "$data/test_unseen" 2>&1 | grep -v "step/s"
fi
if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  for s in train test_unseen; do
    log "features of $s"
    [ -f "$exp/dump/$s/stats.json" ] || speechkit vc prepare "$data/$s" "$exp/dump/$s" --codec "$root/models/codec-vae-synth" \
      --asr "$root/models/asr-stream-synth" --speaker-model "$exp/speaker" --nj "$(nproc)" 2>&1 | grep -v "utt/s"
  done
fi
if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  log "train $twins side by side ($minutes min each)"
  for t in $twins; do
    mkdir -p "$exp/$t"
    speechkit vc train --config "$WORK/conf/$t.yaml" --dump "$exp/dump/train" --exp-dir "$exp/$t" > "$exp/$t/train.log" 2>&1 &
  done
  wait
  tail -n 3 "$exp"/*/train.log
fi
if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  log "convert test_unseen pairs"
  systems=()
  [[ " $twins " == *" mf "* ]] && systems+=(--system "mf1=$exp/mf:meanflow:1" --system "mf2=$exp/mf:meanflow:2")
  [[ " $twins " == *" fm "* ]] && for n in 1 2 4 10; do systems+=(--system "fm$n=$exp/fm:euler:$n"); done
  speechkit vc eval "${systems[@]}" --dump "$exp/dump/test_unseen" --data "$data/test_unseen" --out-dir "$exp/eval" \
    --max-utts "$eval_utts" --judges none --codec "$root/models/codec-vae-synth" --out "$exp/eval/convert_only.json" 2>&1 | grep -v "utt/s"
fi
if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  log "report"
  for t in $twins; do
    python3 "$root/tools/state_parts.py" split "$exp/$t/model.pt" "$REPORT" --max-mb 15 --half --name "$t"
  done
  python3 "$root/tools/state_parts.py" split "$exp/speaker/model.pt" "$REPORT" --max-mb 15 --half --name speaker
  tar czf "$REPORT/report.tgz" -C "$exp" $(for t in $twins; do echo $t/config.yaml $t/metrics.jsonl $t/train.log; done) \
    speaker/eer.json speaker/metrics.jsonl dump/train/stats.json dump/test_unseen/stats.json
  tar czf "$REPORT/eval.tgz" -C "$exp" eval
  ls -la "$REPORT"
fi
