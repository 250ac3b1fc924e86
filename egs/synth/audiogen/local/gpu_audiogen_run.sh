#!/usr/bin/env bash
# The GPU run behind egs/synth/audiogen/RESULTS.md (issue 22), on one GPU with time budgets, about
# 25 GPU-minutes in all with the defaults:
#   1. the music corpus (--hours of --clip_seconds clips on every core; ~1 min for 20 h on 16 cores)
#   2. the RVQ codec (conf/codec_rvq_gpu.yaml: 4 codebooks of 1024 at 50 frames/s, --codec_minutes)
#      and, beside it on the same GPU, the instrument judge on the train renders (--judge_minutes)
#   3. the token dump of the train split (`speechkit audiogen prepare`, on the GPU)
#   4. MAGNeT (conf/magnet_gpu.yaml) and the AR baseline (conf/ar_gpu.yaml) side by side (--minutes each)
#   5. `speechkit audiogen eval` on --eval_clips test captions: magnet, magnet + AR rescoring,
#      hybrid, AR; the codec's resynthesis of the real renders as the ceiling; 10-s generation timed
#      at batch 1 and --eval_batch
#   6. RESULTS.md; 7. the report folder
# Stages 2-6 are recipes/audiogen.sh's, run on configs whose budgets this script sets. Work goes to
# $WORK (default /tmp/audiogen_gpu); $REPORT gets RESULTS.md, eval.json/eval.md, the logs and
# metrics, a few generated clips per system, and the fp16 weights in < 16 MB parts
# (python tools/state_parts.py join REPORT exp/magnet/model.pt --stem magnet).
#   bash egs/synth/audiogen/local/gpu_audiogen_run.sh [--hours 20] [--codec_minutes 7] [--judge_minutes 4]
#        [--minutes 7] [--eval_clips 64] [--eval_batch 32] [--soundfont SF2] [--stage N] [--stop_stage N]
# Run it after the README's set-up on a GPU machine; start it detached:
#   (setsid nohup bash egs/synth/audiogen/local/gpu_audiogen_run.sh > /tmp/gpu_audiogen.log 2>&1 < /dev/null &)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
hours=20
clip_seconds=10
codec_minutes=7
judge_minutes=4
minutes=7
eval_clips=64
eval_batch=32
report_clips=6
soundfont=  # a General-MIDI .sf2 (default: the corpus builder's, Debian's TimGM6mb)
stage=1
stop_stage=100
WORK=${WORK:-/tmp/audiogen_gpu}
SRC=${SRC:-$WORK/src}
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="hours clip_seconds codec_minutes judge_minutes minutes eval_clips eval_batch report_clips soundfont stage stop_stage"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
run_from_private_copy "$SRC"
cli_from_checkout
log() { echo "[$(date +%T)] $*"; }
here=$root/egs/synth/audiogen
data=$WORK/data exp=$WORK/exp
mkdir -p "$WORK/conf" "$REPORT"
sed -e "s/^  max_minutes: .*/  max_minutes: $codec_minutes/" "$here/conf/codec_rvq_gpu.yaml" > "$WORK/conf/codec.yaml"
sed -e "s/^  max_minutes: .*/  max_minutes: $judge_minutes/" "$here/conf/judge_gpu.yaml" > "$WORK/conf/judge.yaml"
for m in magnet ar; do
  sed -e "s/^  max_minutes: .*/  max_minutes: $minutes/" "$here/conf/${m}_gpu.yaml" > "$WORK/conf/$m.yaml"
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
command_line="bash egs/synth/audiogen/local/gpu_audiogen_run.sh ${args[*]}"

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "corpus: $hours h of $clip_seconds-s clips"
  [ -f "$data/test/labels.jsonl" ] || speechkit corpus music --out "$data" --hours "$hours" --clip-seconds "$clip_seconds" \
    --seed 0 --nj "$(nproc)" ${soundfont:+--soundfont "$soundfont"} 2>&1 | grep -v "clip/s"
fi
if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 2 ]; then
  # recipe stages 2 (codec + judge) to 6 (RESULTS.md); the corpus builder's own dirs need no validation
  "$root/recipes/audiogen.sh" --stage "$((stage > 2 ? stage : 2))" --stop_stage "$((stop_stage < 6 ? stop_stage : 6))" \
    --codec_config "$WORK/conf/codec.yaml" --judge_config "$WORK/conf/judge.yaml" --magnet_config "$WORK/conf/magnet.yaml" \
    --ar_config "$WORK/conf/ar.yaml" --data "$data" --exp "$exp" --nj "$(nproc)" --eval_clips "$eval_clips" \
    --eval_seconds "$clip_seconds" --eval_batch "$eval_batch" --results "$REPORT/RESULTS.md" --command_line "$command_line" \
    2>&1 | grep -v "step/s\|s/step\|clip/s\|batch/s\|s/batch"
fi
if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 7 ]; then
  log "report"
  for m in magnet ar judge; do
    python3 "$root/tools/state_parts.py" split "$exp/$m/model.pt" "$REPORT" --max-mb 15 --half --name "$m"
  done
  # codebooks (and their EMA statistics) stay float32: the models' tokens are checked against them
  python3 "$root/tools/state_parts.py" split "$exp/codec/model.pt" "$REPORT" --max-mb 15 --half --name codec --keep-float quantizer
  cp "$exp/judge/model.json" "$REPORT/judge_model.json"
  (cd "$exp/eval" && for s in wav/*; do ls "$s" | head -n "$report_clips" | sed "s|^|$s/|"; done) > "$WORK/report_wavs.txt"
  tar czf "$REPORT/report.tgz" -C "$exp" codec/config.yaml codec/metrics.jsonl magnet/config.yaml magnet/metrics.jsonl \
    magnet/train.log ar/config.yaml ar/metrics.jsonl ar/train.log judge/report.json judge/metrics.jsonl judge.txt \
    dump/train/stats.json eval/eval.json eval/eval.md $(cd "$exp" && ls eval/*.jsonl) eval.txt
  tar czf "$REPORT/samples.tgz" -C "$exp/eval" -T "$WORK/report_wavs.txt"
  ls -la "$REPORT"
fi
