#!/usr/bin/env bash
# The GPU run behind egs/synth/tts/RESULTS.md: a synth corpus; phonemes + latents of the shipped
# waveform VAE (models/codec-vae-synth); CLEAR (conf/train_clear_gpu.yaml) trained on one GPU
# (bf16) for a fixed time budget; zero-shot synthesis of test_unseen on the GPU (timing: RTF and
# first-audio latency, the ASR judge). $REPORT gets the eval JSON, the synthesised speech and the
# real recordings it is judged against (flac, for the CPU-side judges: pocketsphinx, resemblyzer,
# DNSMOS, which the GPU image lacks), logs, and the fp16 weights in < 16 MB parts
# (python tools/state_parts.py join PARTS_DIR exp/model.pt).
#   bash egs/synth/tts/local/gpu_tts_run.sh [--hours 12] [--minutes 15] [--eval_utts 60] [--stage N]
#        [--config conf/train_clear_gpu.yaml] [--prep DIR]
# --prep DIR trains on a dir made elsewhere by `speechkit tts prepare` (no corpus, no codec, no
# speech engines needed on the GPU machine) and skips the eval.
# Run it after the README's set-up on a GPU machine; start it detached:
#   (setsid nohup bash egs/synth/tts/local/gpu_tts_run.sh > /tmp/gpu_tts.log 2>&1 < /dev/null &)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
hours=12
minutes=15
stage=1
stop_stage=100
eval_utts=60
steps=10
codec=models/codec-vae-synth
config=conf/train_clear_gpu.yaml
prep=
WORK=${WORK:-/tmp/tts_gpu}
SRC=${SRC:-$WORK/src}
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="hours minutes stage stop_stage eval_utts steps codec config prep"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
run_from_private_copy "$SRC"
cli_from_checkout
log() { echo "[$(date +%T)] $*"; }
here=$root/egs/synth/tts
case $codec in /*) ;; *) codec=$root/$codec ;; esac
case $config in /*) ;; *) config=$here/$config ;; esac
if [ -n "$prep" ]; then prep=$(realpath "$prep"); stage=$((stage > 3 ? stage : 3)); fi
train_prep=${prep:-$WORK/prep/train}
data=$WORK/data
exp=$WORK/exp/clear
mkdir -p "$WORK/conf" "$REPORT" "$exp"
sed -e "s/^  max_minutes: .*/  max_minutes: $minutes/" "$config" > "$WORK/conf/clear.yaml"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "corpus: $hours h"
  [ -f "$data/test/wav.scp" ] || speechkit corpus synth --out "$data" --hours "$hours" --seed 0 --nj "$(nproc)"
fi
if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  for s in train test_unseen; do
    log "prepare $s"
    [ -f "$WORK/prep/$s/prepare.json" ] || speechkit tts prepare "$data/$s" "$codec" "$WORK/prep/$s" --nj "$(nproc)"
  done
fi
if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  log "train ($minutes min)"
  speechkit tts train --config "$WORK/conf/clear.yaml" --data "$train_prep" --exp-dir "$exp" 2>&1 | tr '\r' '\n' | grep -v "step/s" | tail -n 5
fi
if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ] && [ -z "$prep" ]; then
  log "does it read the text: right- vs wrong-transcript flow loss, attention maps (test_unseen)"
  python3 "$root/tools/tts_alignment.py" "$exp" "$WORK/prep/test_unseen" --out "$WORK/align" | tail -n 1
  judges=none  # the ASR judge when the ASR model came along (the carry limit may leave it behind)
  [ ! -f "$root/models/asr-stream-synth/model.onnx" ] || judges=asr
  log "zero-shot synthesis of test_unseen on the GPU ($eval_utts utts, $steps flow steps), judges: $judges"
  speechkit tts eval "$exp" "$data/test_unseen" --out-dir "$WORK/eval" --max-utts "$eval_utts" --steps "$steps" \
    --judges "$judges" --asr-model "$root/models/asr-stream-synth" --out "$REPORT/eval_gpu.json" 2>&1 | grep -v "utt/s\|s/utt"
  log "the same on the GPU with 4 flow steps (timing only, 20 utts)"
  speechkit tts eval "$exp" "$data/test_unseen" --out-dir "$WORK/eval_steps4" --max-utts 20 --steps 4 \
    --judges none --out "$REPORT/eval_gpu_steps4.json" 2>&1 | grep -v "utt/s\|s/utt"
fi
if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  log "report"
  python3 "$root/tools/state_parts.py" split "$exp/model.pt" "$REPORT" --max-mb 15 --half
  if [ ! -f "$WORK/eval/pairs.jsonl" ]; then  # no eval this run (--prep, or --stop_stage 3 then --stage 5)
    tar czf "$REPORT/report.tgz" -C "$exp" config.yaml metrics.jsonl phones.txt
    ls -la "$REPORT"; exit 0
  fi
  # the eval set as flac: synthesised speech, the real recordings, their prompts (judged on a CPU machine)
  python3 - "$WORK/eval" "$data/test_unseen" "$WORK/evalpack" <<'PY'
import json, sys
from pathlib import Path
import soundfile as sf
ev, data, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
(out / "synth").mkdir(parents=True, exist_ok=True)
(out / "data" / "wav").mkdir(parents=True, exist_ok=True)
pairs = [json.loads(l) for l in open(ev / "pairs.jsonl")]
keep = {p["utt"] for p in pairs} | {p["prompt_utt"] for p in pairs}
for p in pairs:
    x, sr = sf.read(ev / "wav" / f"{p['utt']}.wav")
    sf.write(out / "synth" / f"{p['utt']}.flac", x, sr)
def table(name):
    return dict(l.rstrip("\n").split(" ", 1) for l in open(data / name) if l.strip())
wavs = table("wav.scp")
for name in ("text", "utt2spk"):
    t = table(name)
    (out / "data" / name).write_text("".join(f"{u} {t[u]}\n" for u in sorted(keep)))
lines = []
for u in sorted(keep):
    x, sr = sf.read(wavs[u])
    sf.write(out / "data" / "wav" / f"{u}.flac", x, sr)
    lines.append(f"{u} wav/{u}.flac\n")
(out / "data" / "wav.scp").write_text("".join(lines))
PY
  tar czf "$REPORT/evalpack.tgz" -C "$WORK" evalpack
  tar czf "$REPORT/report.tgz" -C "$exp" config.yaml metrics.jsonl phones.txt -C "$WORK/eval" synth.json pairs.jsonl \
    -C "$WORK" align \
    -C "$WORK/prep" train/prepare.json test_unseen/prepare.json -C "$data" voices.json
  ls -la "$REPORT"
fi
