#!/usr/bin/env bash
# WER on the real-speech dev set (speechkit data real-dev) and on the synth test sets, for
# pocketsphinx's bundled model and for each model dir given, as one markdown table.
#   local/real_dev_wer.sh [--synth_data data] [--work exp/real_dev] MODEL_DIR...
# MODEL_DIR: an exported model (streaming CTC or Paraformer; decoded through the torch-free runtime).
set -euo pipefail
cd "$(dirname "$0")/.."
synth_data=data
work=exp/real_dev
nj=$(nproc)
_speechkit_opts="synth_data work nj"
. ../../../tools/parse_options.sh
[ $# -ge 1 ] || { echo "usage: $0 [--synth_data DIR] [--work DIR] MODEL_DIR..." >&2; exit 2; }

[ -f "$work/real_dev/manifest.json" ] || speechkit data real-dev "$work/real_dev"
sets="$work/real_dev"
for s in test test_unseen; do [ -d "$synth_data/$s" ] && sets="$sets $synth_data/$s"; done

row() {  # NAME DECODE_DIR_PREFIX
  local line="| $1 |"
  for d in $sets; do
    local w="$2_$(basename "$d")/wer.json"
    line="$line $(python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['wer']:.1f}\")" "$w") |"
  done
  echo "$line"
}

for d in $sets; do
  out="$work/pocketsphinx_$(basename "$d")"
  [ -f "$out/wer.json" ] || { python3 local/pocketsphinx_decode.py "$d" "$out" --nj "$nj" && speechkit score "$d/text" "$out/hyp" --out "$out/wer.json" >/dev/null; }
done
table="| model | $(for d in $sets; do echo -n "$(basename "$d") | "; done)"
table="$table"$'\n'"|---|$(for d in $sets; do printf '%s' '---|'; done)"
table="$table"$'\n'"$(row "pocketsphinx (en-us, bundled)" "$work/pocketsphinx")"
for m in "$@"; do
  name=$(basename "$m")
  for d in $sets; do
    out="$work/${name}_$(basename "$d")"
    [ -f "$out/wer.json" ] || { speechkit decode-onnx "$m" "$d" "$out" --nj "$nj" >&2 && speechkit score "$d/text" "$out/hyp" --out "$out/wer.json" >/dev/null; }
  done
  table="$table"$'\n'"$(row "$name" "$work/$name")"
done
echo "$table" | tee "$work/table.md"
