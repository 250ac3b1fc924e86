#!/usr/bin/env bash
# Issue 19's ablation on a GPU: what each training-data ingredient buys on real speech.
# One row per training corpus, each added to the one before:
#   engines  espeak-ng, flite and festival only (the corpus the shipped models learnt from)
#   voices   + the Piper neural voice (15 speakers from one voice)
#   rooms    + simulated rooms               (conf/augment_rooms.yaml)
#   noise    + noise at random SNRs          (conf/augment_rooms_noise.yaml)
#   channel  + microphones, gain, clipping, telephone and codecs (conf/augment.yaml)
# Every row trains conf/train_gpu_fast.yaml (the engine's quarter-time recipe) for the same
# minutes and is decoded on the same three sets: the real-speech dev set (speechkit data real-dev),
# and test / test_unseen of the corpus with the neural voice. Rows train one after another, or one
# per GPU when there are several, while the CPU makes the next rows' data in the background; the
# table in $REPORT/table.md is rewritten after every row.
#   bash egs/synth/asr/local/gpu_real_run.sh --real_dev DIR [--rows "engines voices rooms noise channel"]
#     [--hours 20] [--minutes 5.2] [--copies 1] [--config conf/train_gpu_fast.yaml]
#     [--engines espeak-ng,flite,festival]   (a machine without festival: --engines espeak-ng,flite)
# --real_dev: a data dir made by `speechkit data real-dev` (the GPU machine may not reach the
# package registries). Work goes to $WORK (default /tmp/real_gpu); the WER table and each row's
# files to $REPORT. Start it detached:
#   (setsid nohup bash egs/synth/asr/local/gpu_real_run.sh --real_dev /path/real_dev > /tmp/real.log 2>&1 < /dev/null &)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
rows="engines voices rooms noise channel"
hours=20
minutes=5.2
copies=1
real_dev=
seed=0
engines=espeak-ng,flite,festival  # the engines row's corpus; the other rows add piper (each one must be installed)
config=conf/train_gpu_fast.yaml
WORK=${WORK:-/tmp/real_gpu}
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="rows hours minutes copies real_dev seed config engines"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
[ -n "$real_dev" ] || { echo "$0: --real_dev DIR is required (a data dir from 'speechkit data real-dev')" >&2; exit 2; }
real_dev=$(real_dev_dir "$real_dev")
run_from_private_copy "$WORK/src"
cli_from_checkout
recipe=$root/egs/synth/asr
[[ $config = /* ]] || config=$recipe/$config
mkdir -p "$REPORT"
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l || true)
lanes=$(( ngpu > 0 ? ngpu : 1 ))  # without a GPU (a smoke run of the script) one row at a time on the CPU
log() { echo "[$(date +%T)] $*" | tee -a "$REPORT/log.txt" >&2; }

# The CPU's data work (corpora, validation, augmentation, features) runs in one background chain in
# the order the rows need it, so that a row trains on the GPU while the next row's data is made.
# Each row waits for its own marker; a failed chain leaves prep.failed and every waiting row stops.
prep_nj=$(( $(nproc) > 4 ? $(nproc) * 3 / 4 : 1 ))
corpus() {  # DIR ENGINES: synth_corpus (an engine that made no utterance is an error), timed
  [ -f "$1/.done" ] && return 0
  local t=$(date +%s)
  synth_corpus "$1" "$hours" "$seed" "$prep_nj" "$2" || return
  log "corpus $(basename "$1") ($2): $(( $(date +%s) - t )) s"
}
row_data() {  # ROW -> "DATA AUGMENT"
  case $1 in
    engines) echo "$WORK/data_engines -" ;;
    voices) echo "$WORK/data_voices -" ;;
    rooms) echo "$WORK/data_voices conf/augment_rooms.yaml" ;;
    noise) echo "$WORK/data_voices conf/augment_rooms_noise.yaml" ;;
    channel) echo "$WORK/data_voices conf/augment.yaml" ;;
    *) echo "unknown row $1" >&2; return 2 ;;
  esac
}
prep_row() {  # ROW: the row's corpus, validation, augmented set and features
  local data augment t=$(date +%s)
  read -r data augment < <(row_data "$1")
  [ "$augment" = - ] && augment=
  # explicit returns: prep calls this under ||, where set -e does not stop a function
  if [ "$data" = "$WORK/data_engines" ]; then corpus "$data" "$engines"; else corpus "$data" "$engines,piper"; fi || return
  "$recipe/run.sh" --stage 1 --stop_stage 2 --config "$config" --data "$data" \
    --dump "$WORK/dump_$(basename "$data")" --exp "$WORK/exp_prep" --nj "$prep_nj" --ngpu "$(( ngpu > 0 ))" \
    --augment "$augment" --augment_copies "$copies" || return
  log "prep $1: $(( $(date +%s) - t )) s"
}
prep() {
  local row
  for row in $rows; do
    prep_row "$row" > "$REPORT/prep_$row.log" 2>&1 || { log "prep $row failed: $REPORT/prep_$row.log"; touch "$WORK/prep.failed"; return 1; }
    touch "$WORK/prep_$row.done"
  done
  corpus "$WORK/data_voices" "$engines,piper" > "$REPORT/prep_testsets.log" 2>&1 \
    || { touch "$WORK/prep.failed"; return 1; }  # the test sets every row is scored on
  touch "$WORK/prep_testsets.done"
}
await() {  # MARKER: wait for the data chain
  until [ -f "$WORK/$1.done" ]; do
    [ -f "$WORK/prep.failed" ] && { log "no data for $1: the data chain failed"; return 1; }
    sleep 5
  done
}
rm -f "$WORK"/prep*.done "$WORK/prep.failed"
prep & prep_pid=$!

train_row() {  # ROW GPU: train, decode the three sets, score
  local row=$1 gpu=$2 data augment t
  read -r data augment < <(row_data "$row")
  [ "$augment" = - ] && augment=
  await "prep_$row" || return 1
  local exp=$WORK/exp_$row cfg=$WORK/train_$row.yaml
  sed "s/^  max_minutes: .*/  max_minutes: $minutes/" "$config" > "$cfg"
  t=$(date +%s)
  CUDA_VISIBLE_DEVICES=$gpu "$recipe/run.sh" --stage 3 --stop_stage 5 --config "$cfg" --data "$data" \
    --dump "$WORK/dump_$(basename "$data")" --exp "$exp" --nj "$(( $(nproc) / lanes ))" --ngpu "$(( ngpu > 0 ))" \
    --augment "$augment" --augment_copies "$copies"
  log "row $row: training $(( $(date +%s) - t )) s"
  await prep_testsets || return 1
  for set in "$real_dev" "$WORK/data_voices/test" "$WORK/data_voices/test_unseen"; do
    local name=$(basename "$set") out
    out=$exp/eval_$name
    CUDA_VISIBLE_DEVICES=$gpu speechkit decode "$exp" "$set" "$out"
    speechkit score "$set/text" "$out/hyp" --out "$out/wer.json" | tee -a "$REPORT/log.txt"
  done
  mkdir -p "$REPORT/$row"
  cp "$exp/metrics.jsonl" "$exp/config.yaml" "$REPORT/$row/"
  for f in "$exp"/eval_*/wer.json; do cp "$f" "$REPORT/$row/$(basename "$(dirname "$f")").wer.json"; done
  cp "$exp"/eval_*/hyp "$REPORT/$row/" 2>/dev/null || true
  table
}

table() {  # the WER table so far (rewritten after every row)
  {
    echo "| training corpus | real dev | test | test_unseen |"
    echo "|---|---|---|---|"
    for row in $rows; do
      line="| $row |"
      for name in $(basename "$real_dev") test test_unseen; do
        f=$REPORT/$row/eval_$name.wer.json
        line="$line $( [ -f "$f" ] && python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['wer']:.1f}\")" "$f" || echo -) |"
      done
      echo "$line"
    done
  } > "$REPORT/table.md"
}

failed=0
wait_rows() {  # every row started, counting the ones that failed (the others' results stand)
  local pid
  for pid in "${pids[@]}"; do wait "$pid" || failed=$(( failed + 1 )); done
  pids=()
}
i=0
pids=()
for row in $rows; do
  train_row "$row" $(( i % lanes )) > "$REPORT/row_$row.log" 2>&1 & pids+=($!)
  i=$(( i + 1 ))
  [ $(( i % lanes )) -ne 0 ] || wait_rows
done
wait_rows

wait "$prep_pid" || true
table
cat "$REPORT/table.md"
tar czf "$WORK/report.tgz" -C "$WORK" report
echo "done: $REPORT"
[ "$failed" -eq 0 ] || { echo "$0: $failed of the rows failed: see $REPORT/row_*.log" >&2; exit 1; }
