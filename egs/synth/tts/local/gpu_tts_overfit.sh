#!/usr/bin/env bash
# GPU run 6 behind egs/synth/tts/RESULTS.md: can CLEAR learn the text → latent mapping at all?
# CLEAR (conf/train_clear_mel_gpu.yaml) trained for --minutes on a small training subset
# (--utts utterances of whole speakers, so every one has same-speaker prompts) of a --hours corpus,
# on the latents of a codec that comes as fp16 parts (run 5's mel VAE:
# python tools/state_parts.py split ... --name vaemel32). $REPORT gets the model's fp16 parts and
# prep.tgz (the prepared subset and test_unseen), for `tools/tts_latents.py probe` on the training
# utterances themselves and on held-out ones:
#   bash egs/synth/tts/local/gpu_tts_overfit.sh --parts DIR [--stem vaemel32] [--utts 300] [--minutes 9] [--hours 1]
# Run it after the README's set-up on a GPU machine; start it detached.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
parts=
stem=vaemel32
utts=300
minutes=9
hours=1
export WORK=${WORK:-/tmp/tts_overfit}
REPORT=${REPORT:-$WORK/report}
SRC=${SRC:-$WORK/src}
_speechkit_opts="parts stem utts minutes hours"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
[ -n "$parts" ] || { echo "--parts DIR: the codec's fp16 parts (tools/state_parts.py split)" >&2; exit 1; }
parts=$(realpath "$parts")
run_from_private_copy "$SRC"
cli_from_checkout
log() { echo "[$(date +%T)] $*"; }
data=$WORK/data
mkdir -p "$WORK/codec" "$WORK/conf" "$REPORT"
log "corpus: $hours h"
[ -f "$data/test/wav.scp" ] || speechkit corpus synth --out "$data" --hours "$hours" --seed 0 --nj "$(nproc)"
log "codec: join $stem and export"
python3 "$root/tools/state_parts.py" join "$parts" "$WORK/codec/model.pt" --stem "$stem"
speechkit codec export "$WORK/codec" "$WORK/codec/onnx" --check-data "$data/test" 2>&1 | grep -v Warning
log "subset: $utts utterances of whole speakers"
python3 - "$data/train" "$data/train_sub" "$utts" <<'PY'
import sys
from pathlib import Path
src, dst, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
table = lambda name: dict(l.rstrip("\n").split(" ", 1) for l in open(src / name) if l.strip())
spk = table("utt2spk")
by: dict[str, list[str]] = {}
for u in sorted(spk):
    by.setdefault(spk[u], []).append(u)
keep = []
for s in sorted(by, key=lambda s: -len(by[s])):  # speakers with most utterances first: prompts for each
    if len(keep) >= n:
        break
    keep += by[s]
dst.mkdir(parents=True, exist_ok=True)
for name in ("wav.scp", "text", "utt2spk"):
    t = table(name)
    (dst / name).write_text("".join(f"{u} {t[u]}\n" for u in sorted(keep)))
print(f"{dst}: {len(keep)} utterances of {len({spk[u] for u in keep})} speakers")
PY
for s in train_sub test_unseen; do
  speechkit tts prepare "$data/$s" "$WORK/codec/onnx" "$WORK/prep/$s" --nj "$(nproc)"
done
sed -e "s/^  max_minutes: .*/  max_minutes: $minutes/" "$root/egs/synth/tts/conf/train_clear_mel_gpu.yaml" > "$WORK/conf/clear.yaml"
log "train on the subset ($minutes min)"
speechkit tts train --config "$WORK/conf/clear.yaml" --data "$WORK/prep/train_sub" --exp-dir "$WORK/exp" 2>&1 | tr '\r' '\n' | grep -v "step/s" | tail -n 3
python3 "$root/tools/tts_alignment.py" "$WORK/exp" "$WORK/prep/train_sub" --out "$WORK/align_train" | tail -n 1
python3 "$root/tools/tts_alignment.py" "$WORK/exp" "$WORK/prep/test_unseen" --out "$WORK/align_test" | tail -n 1
python3 "$root/tools/state_parts.py" split "$WORK/exp/model.pt" "$REPORT" --max-mb 15 --half
tar czf "$REPORT/prep.tgz" -C "$WORK" prep exp/config.yaml exp/metrics.jsonl exp/phones.txt align_train/alignment.json align_test/alignment.json
ls -la "$REPORT"
log "done"
