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
