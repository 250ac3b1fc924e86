#!/usr/bin/env bash
# The Paraformer against the AR baseline at small scale on a CPU, characters and BPE side by side:
# does the Paraformer's gap to the AR decoder (issue 19: within 5 % relative WER) close when both
# are trained well past the GPU runs' epochs on a small corpus, and do BPE tokens close it where
# characters do not? gpu_paraformer_run.sh with the CPU-sized configs (--conf_suffix cpu:
# conf/train_{attention,paraformer,paraformer_mwer}_cpu.yaml, 6 x 144 conformer, 3-block decoders):
# the corpus and features once, then the char run and the BPE run at once, each training the AR
# baseline (10 epochs) and, from its epoch-3 encoder, the Paraformer (8 epochs) and MWER (1), and
# decoding test / test_unseen (stages 1-4; no export, word times or bench).
#   bash egs/synth/asr/local/cpu_paraformer_vs_ar.sh [--hours 2] [--bpe 128] [--engines espeak-ng,flite]
# Work goes to $WORK (default /tmp/para_cpu); the summaries to WORK/report/summary.md and
# WORK/report_bpeN/summary.md. About 70 minutes on 2 cores at the defaults.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
hours=2
bpe=128
engines=espeak-ng,flite
_speechkit_opts="hours bpe engines"
. "$root/tools/parse_options.sh"
export WORK=${WORK:-/tmp/para_cpu}
mkdir -p "$WORK"
log() { echo "[$(date +%T)] $*"; }
run=("$root/egs/synth/asr/local/gpu_paraformer_run.sh" --conf_suffix cpu --init_epoch 3 --hours "$hours" --engines "$engines")

log "corpus and features ($hours h, $engines)"
bash "${run[@]}" --stop_stage 1 > "$WORK/prep.log" 2>&1 || { tail -n 30 "$WORK/prep.log"; exit 1; }
log "characters and BPE $bpe at once (one thread each): logs in $WORK/char.log and $WORK/bpe.log"
OMP_NUM_THREADS=1 bash "${run[@]}" --stage 2 --stop_stage 4 > "$WORK/char.log" 2>&1 &
char=$!
sleep 20  # the char run copies the checkout first
OMP_NUM_THREADS=1 bash "${run[@]}" --stage 2 --stop_stage 4 --bpe "$bpe" > "$WORK/bpe.log" 2>&1 &
bpe_pid=$!
status=0
wait "$char" || { status=1; log "char run failed"; tail -n 20 "$WORK/char.log"; }
wait "$bpe_pid" || { status=1; log "BPE run failed"; tail -n 20 "$WORK/bpe.log"; }
for r in "$WORK/report/summary.md" "$WORK/report_bpe$bpe/summary.md"; do [ -f "$r" ] && { echo "== $r"; cat "$r"; }; done
log "done"
exit $status
