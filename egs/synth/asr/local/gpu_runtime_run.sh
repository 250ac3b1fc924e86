#!/usr/bin/env bash
# The torch-free runtime on a GPU (issue 25): ONNX Runtime's CUDA provider against the CPU on the
# shipped recognisers, then the server's load test on CUDA. Needs onnxruntime-gpu in place of the CPU
# onnxruntime (`pip uninstall -y onnxruntime && pip install 'speechkit[gpu]'`, see pyproject.toml).
#   bash egs/synth/asr/local/gpu_runtime_run.sh [--hours 0.5] [--clients 100,500,1000] [--rounds 2] [--utts 200]
#     [--devices "cpu cuda"] [--workers "1 8"]
# 1. a test set: `speechkit corpus synth --hours H --seed 0`'s test split (parity and speed only, no
#    accuracy is claimed from it);
# 2. `speechkit decode-onnx` of models/asr-stream-synth and models/asr-paraformer-synth on cpu and
#    cuda at batch 1 and 64: wall time of the command (model load included), RTF, and whether every
#    hypothesis is the same text on both devices;
# 3. `speechkit bench serve models/asr-stream-synth --device cuda --clients C` (and the CPU at the
#    first count for reference): latency, the largest count within p95 <= 300 ms, GPU/CPU use; once
#    per --workers count (server processes sharing the GPU: one process's host-side work, fbank
#    and gates, is about 5 ms per stream-second, so one process alone tops out near 190-210 streams; docs/serve.md);
#    before it, `speechkit bench serve-engine --device cuda`: that host time measured with the model on the GPU.
# Work goes to $WORK (default /tmp/runtime_gpu), the report (runtime.json, JSON per bench) to $REPORT.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
hours=0.5
clients=100,500,1000
devices="cpu cuda"  # a CPU-only check of this script: --devices cpu
rounds=2
utts=200
workers="1 8"
WORK=${WORK:-/tmp/runtime_gpu}
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="hours clients rounds utts devices workers"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
run_from_private_copy "$WORK/src"
cli_from_checkout
mkdir -p "$REPORT"
cd "$root"
[[ " $devices " != *" cuda "* ]] || python3 -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else
'this onnxruntime has no CUDAExecutionProvider: pip uninstall -y onnxruntime && pip install \"speechkit[gpu]\"')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$REPORT/gpu.txt" || true
[ -f "$WORK/data/.done" ] || { speechkit corpus synth --out "$WORK/data" --hours "$hours" --seed 0 --nj "$(nproc)"; touch "$WORK/data/.done"; }
test_dir=$WORK/data/test

for model in asr-stream-synth asr-paraformer-synth; do
  for device in $devices; do
    for batch in 1 64; do
      out=$WORK/dec_${model}_${device}_b$batch
      t=$(date +%s%N)
      speechkit decode-onnx "models/$model" "$test_dir" "$out" --batch "$batch" --device "$device"
      echo "$model $device $batch $(( ($(date +%s%N) - t) / 1000000 ))" >> "$WORK/decode_times.txt"
    done
  done
done

python3 - "$WORK" "$test_dir" "$REPORT/runtime.json" <<'EOF'
import json, sys
from pathlib import Path
import soundfile as sf
work, test_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
audio = sum(sf.info(line.split(maxsplit=1)[1].strip()).duration for line in open(test_dir / "wav.scp") if line.strip())
def hyps(d):
    return dict(line.rstrip("\n").partition(" ")[::2] for line in open(d / "hyp") if line.strip())
rows = []
for line in open(work / "decode_times.txt"):
    model, device, batch, ms = line.split()
    rows.append({"model": model, "device": device, "batch": int(batch), "wall_s": round(int(ms) / 1000, 2),
                 "rtf": round(int(ms) / 1000 / audio, 4)})
for r in rows:
    if r["device"] != "cpu" and (work / f"dec_{r['model']}_cpu_b{r['batch']}").is_dir():
        a, b = hyps(work / f"dec_{r['model']}_cpu_b{r['batch']}"), hyps(work / f"dec_{r['model']}_cuda_b{r['batch']}")
        r["same_text_as_cpu"] = sum(a.get(k) == v for k, v in b.items())
        r["utterances"] = len(a)
        r["differ"] = [k for k, v in b.items() if a.get(k) != v][:10]
json.dump({"test_audio_seconds": round(audio, 1), "decode": rows}, open(out, "w"), indent=1)
for r in rows:
    print(r)
EOF

last=${devices##* }
# where one process's host time goes when the model runs on $last (docs/serve.md's profile)
speechkit bench serve-engine models/asr-stream-synth --device "$last" --streams 1000 --message-ms 20 --seconds 6 \
  --json --out "$REPORT/engine_${last}.json" || true
for w in $workers; do
  speechkit bench serve models/asr-stream-synth --device "$last" --data "$test_dir" --clients "$clients" --rounds "$rounds" \
    --utts "$utts" --workers "$w" --json --out "$REPORT/serve_${last}_w$w.json" || true
done
[ "$last" = cpu ] || speechkit bench serve models/asr-stream-synth --device cpu --data "$test_dir" --clients "${clients%%,*}" \
  --rounds "$rounds" --utts "$utts" --json --out "$REPORT/serve_cpu.json" || true
tar czf "$WORK/report.tgz" -C "$WORK" report
echo "done: $REPORT"
