#!/usr/bin/env bash
# Stage 0 of every egs/synth recipe: the embedded synthetic corpus, built once (DATA/.done).
#   egs/synth/corpus.sh DATA HOURS SEED NJ
set -euo pipefail
data=$1 hours=$2 seed=$3 nj=$4
[ ! -f "$data/.done" ] || exit 0
echo "[$(date +%T)] stage 0: synthetic corpus, $hours h, seed $seed" >&2
speechkit corpus synth --out "$data" --hours "$hours" --seed "$seed" --nj "$nj"
touch "$data/.done"
