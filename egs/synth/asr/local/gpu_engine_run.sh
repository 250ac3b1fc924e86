#!/usr/bin/env bash
# The training engine on a GPU, measured (egs/synth/asr/RESULTS.md, "One engine"): the 50 h synth
# corpus and its features; `speechkit bench train` of conf/train_gpu.yaml against the revision
# before the engine (--old: that revision's source tree or a git revision); then the recipe's
# training stage with the engine, timed, with `nvidia-smi dmon` beside it, averaged, decoded and
# scored; optionally a second, longer run on the time saved (--more_minutes).
#   bash egs/synth/asr/local/gpu_engine_run.sh --old REV_OR_DIR [--hours 50] [--more_minutes 0]
#     [--bench 1] [--bench_batches "1600 3200"] [--train_config conf/train_gpu.yaml] [--corpus_src DIR]
#     [--stage 0] [--stop_stage 3]
#   --bench 0: no bench stage; --corpus_src: build the corpus with the source tree in DIR (a revision
#   before the corpus gained the neural voice and the v2 sentence split, to rerun on the corpus of
#   earlier runs; features, training and scoring stay this checkout's). Stages: 0 corpus and
#   features, 1 bench, 2 the quarter-time run (--train_config), 3 the longer run (--more_minutes);
#   e.g. only the longer run: --stage 0 --stop_stage 0, then --stage 3 --more_minutes 16
# Work goes to $WORK (default /tmp/engine_gpu); a compact report to $REPORT. Start it detached:
#   (setsid nohup bash egs/synth/asr/local/gpu_engine_run.sh --old d231589 > /tmp/engine.log 2>&1 < /dev/null &)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
hours=50
old=
stage=0
stop_stage=3
bench_steps=200
bench_warmup=30
bench_batches=1600
corpus_src=
more_minutes=0
more_config=conf/train_gpu_more.yaml
bench=1
train_config=conf/train_gpu.yaml
WORK=${WORK:-/tmp/engine_gpu}
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="hours old stage stop_stage bench_steps bench_warmup bench_batches corpus_src more_minutes more_config bench train_config"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
run_from_private_copy "$WORK/src"
cli_from_checkout
mkdir -p "$REPORT"
recipe=$root/egs/synth/asr
run() { "$recipe/run.sh" --hours "$hours" --nj "$(nproc)" --ngpu 1 --data "$WORK/data" --dump "$WORK/dump" "$@"; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  t=$(date +%s)
  if [ -n "$corpus_src" ] && [ ! -f "$WORK/data/.done" ]; then
    PYTHONPATH="$corpus_src${PYTHONPATH:+:$PYTHONPATH}" python3 -m speechkit.cli corpus synth --out "$WORK/data" --hours "$hours" --seed 0 --nj "$(nproc)"
    touch "$WORK/data/.done"
  fi
  run --stage 0 --stop_stage 2 --config "$train_config" --exp "$WORK/exp_engine"
  echo "corpus + validation + features: $(( $(date +%s) - t )) s" | tee -a "$REPORT/timing.txt"
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ] && [ "$bench" != 0 ]; then
  cd "$recipe"
  speechkit bench train conf/train_gpu.yaml --data "$WORK/dump/train" --steps "$bench_steps" --warmup "$bench_warmup" \
    ${old:+--compare "$old"} --out "$REPORT/bench_asr.json"
  for b in $bench_batches; do
    speechkit bench train conf/train_gpu.yaml --data "$WORK/dump/train" --steps 60 --warmup 15 --no-ceiling \
      --set train_conf.batch_seconds="$b" --out "$REPORT/bench_asr_b$b.json"
  done
  cd - >/dev/null
fi

train_and_score() {  # CONFIG EXP: the recipe's training (timed, SM sampled) and scoring stages
  local config=$1 exp=$2 t
  run --stage 3 --stop_stage 3 --config "$config" --exp "$exp"
  nvidia-smi dmon -s u -d 5 > "$REPORT/dmon_$(basename "$exp").txt" 2>&1 & dmon=$!
  t=$(date +%s)
  run --stage 4 --stop_stage 4 --config "$config" --exp "$exp"
  echo "$(basename "$exp"): training stage $(( $(date +%s) - t )) s" | tee -a "$REPORT/timing.txt"
  kill $dmon || true
  run --stage 5 --stop_stage 9 --config "$config" --exp "$exp" --decode_modes greedy
  mkdir -p "$REPORT/$(basename "$exp")"
  cp "$exp/RESULTS.md" "$exp/metrics.jsonl" "$exp/config.yaml" "$exp/model_info.json" "$REPORT/$(basename "$exp")/"
  for f in "$exp"/decode_*/wer.json; do cp "$f" "$REPORT/$(basename "$exp")/$(basename "$(dirname "$f")").wer.json"; done
}

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  train_and_score "$train_config" "$WORK/exp_engine"
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ] && [ "$more_minutes" != 0 ]; then
  sed "s/^  max_minutes: .*/  max_minutes: $more_minutes/" "$recipe/$more_config" > "$WORK/more.yaml"
  train_and_score "$WORK/more.yaml" "$WORK/exp_more"
fi
tar czf "$WORK/report.tgz" -C "$WORK" report
echo "done: $REPORT"
