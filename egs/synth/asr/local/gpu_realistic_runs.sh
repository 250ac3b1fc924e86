#!/usr/bin/env bash
# Issue 19's three GPU runs on one realistic corpus, side by side on one GPU: the corpus (formant
# voices and the Piper neural voice, plus one copy augmented by conf/augment.yaml) and its features
# are made once, then these three run at once, sharing them:
#   1. local/gpu_paraformer_run.sh: the Paraformer against the AR baseline on the same encoder,
#      characters (WORK/para/exp, report in WORK/para/report);
#   2. the same on BPE tokens (--bpe N; WORK/para/exp_bpeN, WORK/para/report_bpeN);
#   3. local/gpu_stream_run.sh --config conf/finetune_paraformer_real_gpu.yaml: the shipped
#      Paraformer fine-tuned on the corpus and put to the ship rule (WORK/pft/report).
# One corpus for the three saves two corpus builds and keeps the GPU busy while each run decodes.
#   bash egs/synth/asr/local/gpu_realistic_runs.sh --real_dev DIR [--hours 6] [--minutes 7] [--init_epoch 6]
#     [--bpe 256] [--batch_seconds 800] [--finetune_minutes 5]
#   --real_dev DIR        a data dir from `speechkit data real-dev` (required: the ship rules read it)
#   --minutes M           each head's training budget in runs 1 and 2 (--train_minutes there)
#   --init_epoch N        the AR baseline's epoch whose encoder the Paraformer starts from
#   --batch_seconds S     runs 1 and 2: audio seconds per batch (four trainers share the card)
#   --finetune_minutes M  run 3's training budget
# --bpe 0 leaves out run 2 and --finetune_minutes 0 run 3, for a hold too short for all three.
# Run it after the README's set-up on a GPU machine, detached; each run logs to WORK/*.log:
#   (setsid nohup bash egs/synth/asr/local/gpu_realistic_runs.sh --real_dev DIR > /tmp/realistic.log 2>&1 < /dev/null &)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
hours=6
minutes=7
init_epoch=6
bpe=256
batch_seconds=800
finetune_minutes=5
real_dev=
_speechkit_opts="hours minutes init_epoch bpe batch_seconds finetune_minutes real_dev"
. "$root/tools/parse_options.sh"
[ -n "$real_dev" ] || { echo "$0: give --real_dev DIR (speechkit data real-dev DIR makes one)" >&2; exit 2; }
. "$root/tools/gpu_common.sh"
real_dev=$(real_dev_dir "$real_dev")
WORK=${WORK:-/tmp/realistic_gpu}
mkdir -p "$WORK/pft"
log() { echo "[$(date +%T)] $*"; }
asr=$root/egs/synth/asr/local
corpus=(--hours "$hours" --engines espeak-ng,flite,piper --augment conf/augment.yaml --real_dev "$real_dev")
para=("${corpus[@]}" --train_minutes "$minutes" --init_epoch "$init_epoch" --batch_seconds "$batch_seconds")

log "corpus, augmentation and features, once (WORK/para/data, WORK/para/dump)"
WORK=$WORK/para bash "$asr/gpu_paraformer_run.sh" "${para[@]}" --stop_stage 1 > "$WORK/prep.log" 2>&1 \
  || { tail -n 30 "$WORK/prep.log"; exit 1; }
ln -sfn "$WORK/para/data" "$WORK/pft/data"
ln -sfn "$WORK/para/dump" "$WORK/pft/dump"

log "at once: characters, BPE $bpe (0: none), the shipped Paraformer's fine-tune for $finetune_minutes min (0: none)"
runs=()
WORK=$WORK/para bash "$asr/gpu_paraformer_run.sh" "${para[@]}" --stage 2 > "$WORK/char.log" 2>&1 &
runs+=("char:$!")
if [ "$bpe" -gt 0 ]; then
  sleep 20  # the char run copies the checkout first; the BPE run's copy then does not race it
  WORK=$WORK/para bash "$asr/gpu_paraformer_run.sh" "${para[@]}" --stage 2 --bpe "$bpe" > "$WORK/bpe.log" 2>&1 &
  runs+=("bpe:$!")
fi
if [ "$finetune_minutes" != 0 ]; then
  WORK=$WORK/pft bash "$asr/gpu_stream_run.sh" --config conf/finetune_paraformer_real_gpu.yaml "${corpus[@]}" \
    --minutes "$finetune_minutes" > "$WORK/pft.log" 2>&1 &
  runs+=("pft:$!")
fi
status=0
for name in "${runs[@]}"; do
  wait "${name#*:}" || { status=1; log "run ${name%%:*} failed: tail of $WORK/${name%%:*}.log"; tail -n 20 "$WORK/${name%%:*}.log"; }
done
for r in "$WORK/para/report/summary.md" "$WORK/para/report_bpe$bpe/summary.md" "$WORK/pft/report/summary.md"; do
  [ -f "$r" ] && { echo "== $r"; cat "$r"; }
done
log "done"
exit $status
