#!/usr/bin/env bash
# The GPU run behind egs/synth/asr/RESULTS.md: a 50 h synth corpus built on every core, the
# conformer-CTC of conf/train_gpu.yaml trained on one GPU (bf16), averaged, decoded (greedy and
# prefix beam) and scored on test and test_unseen. Work goes to $WORK (default /tmp/synth_gpu);
# a compact report (RESULTS.md, metrics, configs, WER json, hypotheses) is copied to $REPORT.
#   bash egs/synth/asr/local/gpu_run.sh [--hours 50] [--epochs N] [--stage N]
# Run it after the README's set-up on a GPU machine; it takes long, so start it detached and
# watch the log:
#   (setsid nohup bash egs/synth/asr/local/gpu_run.sh > /tmp/gpu_run.log 2>&1 < /dev/null &)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
hours=50
epochs=
stage=0
decode_modes="greedy beam"
WORK=${WORK:-/tmp/synth_gpu}
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="hours epochs stage decode_modes"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
run_from_private_copy "$WORK/src"
cli_from_checkout
config=conf/train_gpu.yaml
if [ -n "$epochs" ]; then  # a copy of the config with another epoch count, recorded in the report
  sed "s/^  max_epochs: .*/  max_epochs: $epochs/" "$root/egs/synth/asr/$config" > "$WORK/train_gpu.yaml"
  config=$WORK/train_gpu.yaml
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$root/egs/synth/asr/run.sh" --stage "$stage" --config "$config" --hours "$hours" --nj "$(nproc)" --ngpu 1 \
  --data "$WORK/data" --dump "$WORK/dump" --exp "$WORK/exp" --decode_modes "$decode_modes"

mkdir -p "$REPORT"
cp "$WORK/exp/RESULTS.md" "$WORK/exp/metrics.jsonl" "$WORK/exp/config.yaml" "$WORK/exp/model_info.json" "$REPORT/"
cp "$WORK/data/voices.json" "$REPORT/" 2>/dev/null || true
tar czf "$REPORT/decode.tgz" -C "$WORK/exp" $(cd "$WORK/exp" && ls -d decode_*)
