#!/usr/bin/env bash
# The GPU run behind egs/synth/codec/RESULTS.md: a synth corpus; the waveform VAE
# (conf/train_vae_gpu.yaml) and the RVQ codec (conf/train_rvq_gpu.yaml) trained side by side on
# one GPU (bf16) for a fixed time budget each; both exported to ONNX (parity-checked); `speechkit
# codec eval` of both on test and test_unseen (STOI, PESQ, MCD, ASR WER of the resynthesised
# speech with models/asr-stream-synth, codebook usage, RTF on the GPU and one CPU thread).
# Work goes to $WORK (default /tmp/codec_gpu); $REPORT gets the eval JSONs, logs, a few
# original/resynthesised pairs and the fp16 weights in < 16 MB parts
# (python tools/state_parts.py join REPORT exp/vae_gpu/model.pt --stem vae).
#   bash egs/synth/codec/local/gpu_codec_run.sh [--hours 6] [--minutes 15] [--codecs "vae rvq"]
#        [--vae_init model.pt] [--rvq_init model.pt] [--stage N] [--stop_stage N]
# Run it after the README's set-up on a GPU machine; start it detached:
#   (setsid nohup bash egs/synth/codec/local/gpu_codec_run.sh > /tmp/gpu_codec.log 2>&1 < /dev/null &)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
hours=6
minutes=15
stage=1
stop_stage=100
conf_dir=conf
eval_utts=100
codecs="vae rvq"
vae_init=
rvq_init=
WORK=${WORK:-/tmp/codec_gpu}
SRC=${SRC:-$WORK/src}  # a later call for more stages while a run goes on: SRC=$WORK/src2
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="hours minutes stage stop_stage conf_dir eval_utts codecs vae_init rvq_init"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
run_from_private_copy "$SRC"
cli_from_checkout
log() { echo "[$(date +%T)] $*"; }
here=$root/egs/synth/codec
case $conf_dir in /*) ;; *) conf_dir=$here/$conf_dir ;; esac
data=$WORK/data
mkdir -p "$WORK/conf" "$REPORT"
for c in $codecs; do
  sed -e "s/^  max_minutes: .*/  max_minutes: $minutes/" "$conf_dir/train_${c}_gpu.yaml" > "$WORK/conf/$c.yaml"
  init_var=${c}_init
  # train_conf is the last section: continue from earlier weights
  [ -z "${!init_var:-}" ] || echo "  init_checkpoint: ${!init_var}" >> "$WORK/conf/$c.yaml"
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "corpus: $hours h"
  [ -f "$data/test/wav.scp" ] || speechkit corpus synth --out "$data" --hours "$hours" --seed 0 --nj "$(nproc)"
fi
if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  log "train $codecs side by side ($minutes min each)"
  for c in $codecs; do
    mkdir -p "$WORK/exp/$c"
    speechkit codec train --config "$WORK/conf/$c.yaml" --data "$data/train" --exp-dir "$WORK/exp/$c" > "$WORK/exp/$c/train.log" 2>&1 &
  done
  wait
  tail -n 3 "$WORK"/exp/*/train.log
fi
if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  for c in $codecs; do
    log "export $c"
    speechkit codec export "$WORK/exp/$c" "$WORK/exp/$c/onnx" --check-data "$data/test" 2>&1 | grep -v Warning
  done
fi
if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  for c in $codecs; do
    log "eval $c"
    speechkit codec eval "$WORK/exp/$c" "$data/test" "$data/test_unseen" --asr-model "$root/models/asr-stream-synth" \
      --max-utts "$eval_utts" --samples-dir "$WORK/exp/$c/samples" --out "$REPORT/eval_$c.json" 2>&1 | grep -v "utt/s\|s/utt"
  done
fi
if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  log "report"
  for c in $codecs; do  # fp16 parts < 16 MB (codebooks and their EMA statistics stay float32)
    python3 "$root/tools/state_parts.py" split "$WORK/exp/$c/model.pt" "$REPORT" --max-mb 16 --half --name "$c" --keep-float quantizer
  done
  tar czf "$REPORT/report.tgz" -C "$WORK/exp" $(for c in $codecs; do echo $c/config.yaml $c/metrics.jsonl $c/train.log $c/onnx/export.json $c/samples; done) \
    -C "$data" voices.json
  ls -la "$REPORT"
fi
