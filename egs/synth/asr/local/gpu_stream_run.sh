#!/usr/bin/env bash
# The GPU run behind the streaming section of egs/synth/asr/RESULTS.md: a 50 h synth corpus,
# the multi-look-ahead streaming conformer of conf/train_stream_gpu.yaml trained on one GPU
# (bf16) and averaged; full-context WER from PyTorch, streaming WER for each trained look-ahead
# from the ONNX Runtime streaming decoder (chunk by chunk, fp32 and int8). Work goes to $WORK
# (default /tmp/stream_gpu); $REPORT gets report.tgz (summary, metrics, hyps, export check),
# the int8 model.onnx and the fp16 weights in two parts.
#   bash egs/synth/asr/local/gpu_stream_run.sh [--hours 50] [--epochs N] [--stage N]
# Run it after the README's set-up on a GPU machine; start it detached:
#   (setsid nohup bash egs/synth/asr/local/gpu_stream_run.sh > /tmp/gpu_stream.log 2>&1 < /dev/null &)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
hours=50
epochs=
stage=0
WORK=${WORK:-/tmp/stream_gpu}
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="hours epochs stage"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
run_from_private_copy "$WORK/src"
cli_from_checkout
config=conf/train_stream_gpu.yaml
if [ -n "$epochs" ]; then
  sed "s/^  max_epochs: .*/  max_epochs: $epochs/" "$root/egs/synth/asr/$config" > "$WORK/train_stream_gpu.yaml"
  config=$WORK/train_stream_gpu.yaml
fi
data=$WORK/data exp=$WORK/exp
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$root/egs/synth/asr/run.sh" --stage "$stage" --stop_stage 5 --config "$config" --hours "$hours" --nj "$(nproc)" \
  --ngpu 1 --data "$data" --dump "$WORK/dump" --exp "$exp"

log() { echo "[$(date +%T)] $*"; }
log "full context (PyTorch, whole utterance)"
for s in test test_unseen; do
  speechkit decode "$exp" "$data/$s" "$exp/decode_${s}_full" --att-context full
  speechkit score "$data/$s/text" "$exp/decode_${s}_full/hyp" --out "$exp/decode_${s}_full/wer.json"
done
log "export (fp32 checked against PyTorch, and int8)"
speechkit export onnx "$exp" "$exp/onnx" --check-data "$data/test"
speechkit export onnx "$exp" "$exp/onnx_int8" --check-data "$data/test" --int8
for ctx in 64,0 64,4 64,12; do
  for s in test test_unseen; do
    out=$exp/decode_${s}_stream_${ctx/,/_}
    speechkit decode-stream "$exp/onnx" "$data/$s" "$out" --att-context "$ctx" --nj "$(nproc)"
    speechkit score "$data/$s/text" "$out/hyp" --out "$out/wer.json"
  done
done
for s in test test_unseen; do
  out=$exp/decode_${s}_stream_64_12_int8
  speechkit decode-stream "$exp/onnx_int8" "$data/$s" "$out" --att-context 64,12 --nj "$(nproc)"
  speechkit score "$data/$s/text" "$out/hyp" --out "$out/wer.json"
done

log "report"
mkdir -p "$REPORT"
python3 - "$exp" "$REPORT/summary.md" <<'PY'
import json, sys
from pathlib import Path
exp, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = ["| decode | split | WER % | CER % |", "|---|---|---|---|"]
for d in sorted(exp.glob("decode_*")):
    if (d / "wer.json").is_file():
        r = json.loads((d / "wer.json").read_text())
        rows.append(f"| {d.name} | {r.get('utterances')} utts | {r['wer']:.2f} | {r['cer']:.2f} |")
info = json.loads((exp / "model_info.json").read_text())
out.write_text(f"parameters {info['parameters']}, averaged {info['averaged']}\n\n" + "\n".join(rows) + "\n")
print(out.read_text())
PY
python3 - "$exp" "$REPORT" <<'PY'
import sys, torch
from pathlib import Path
exp, out = Path(sys.argv[1]), Path(sys.argv[2])
ck = torch.load(exp / "model_avg.pt", map_location="cpu", weights_only=True)
sd = {k: (v.half() if v.is_floating_point() else v) for k, v in ck["model"].items()}
keys = sorted(sd)
half = len(keys) // 2
for i, part in enumerate((keys[:half], keys[half:])):
    torch.save({"model": {k: sd[k] for k in part}, "config": ck["config"], "part": i, "parts": 2}, out / f"weights_fp16.part{i}.pt")
PY
cp "$exp/onnx_int8/model.onnx" "$REPORT/model.int8.onnx"
tar czf "$REPORT/report.tgz" -C "$exp" config.yaml metrics.jsonl model_info.json tokens.txt onnx/export.json onnx_int8/export.json \
  $(cd "$exp" && ls -d decode_*) -C "$REPORT" summary.md -C "$data" voices.json
ls -la "$REPORT"
