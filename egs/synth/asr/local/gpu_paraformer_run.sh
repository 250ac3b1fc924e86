#!/usr/bin/env bash
# The GPU run behind the Paraformer section of egs/synth/asr/RESULTS.md: a 50 h synth corpus; the
# Paraformer (conf/train_paraformer_gpu.yaml) and the autoregressive baseline
# (conf/train_attention_gpu.yaml, same encoder; the Paraformer starts from the AR run's epoch-4
# encoder) trained side by side on one GPU (bf16); MWER
# fine-tuning of the Paraformer (conf/train_paraformer_mwer_gpu.yaml); test / test_unseen WER of
# Paraformer (with and without MWER) and of the AR decoder (greedy, beam, beam + CTC rescoring);
# the Paraformer exported to ONNX (parity-checked, fp32 and int8); CIF word times against a CTC
# forced alignment; `speechkit bench asr-decode`. Work goes to $WORK (default /tmp/para_gpu);
# $REPORT gets report.tgz, the int8 Paraformer and the fp16 weights of both models.
#   bash egs/synth/asr/local/gpu_paraformer_run.sh [--hours 50] [--epochs N] [--stage N]
# Run it after the README's set-up on a GPU machine; start it detached:
#   (setsid nohup bash egs/synth/asr/local/gpu_paraformer_run.sh > /tmp/gpu_para.log 2>&1 < /dev/null &)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
hours=50
epochs=
mwer_epochs=
stage=0
stop_stage=100
conf_dir=conf
init_epoch=4  # the AR run's checkpoint whose encoder the Paraformer starts from
train_minutes=0  # > 0: stop both trainings after this long and go on with the epochs they finished
WORK=${WORK:-/tmp/para_gpu}
SRC=${SRC:-$WORK/src}  # a later call for more stages while a run goes on: SRC=$WORK/src2
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="hours epochs mwer_epochs stage stop_stage conf_dir init_epoch train_minutes"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
run_from_private_copy "$SRC"
cli_from_checkout
log() { echo "[$(date +%T)] $*"; }
asr=$root/egs/synth/asr
data=$WORK/data dump=$WORK/dump
para=$WORK/exp/paraformer att=$WORK/exp/attention mwer=$WORK/exp/paraformer_mwer
mkdir -p "$WORK/conf"
case $conf_dir in /*) ;; *) conf_dir=$asr/$conf_dir ;; esac
sed -e "s#^  init_checkpoint: .*#  init_checkpoint: $att/epoch_$init_epoch.pt#" "$conf_dir/train_paraformer_gpu.yaml" > "$WORK/conf/paraformer.yaml"
cp "$conf_dir/train_attention_gpu.yaml" "$WORK/conf/attention.yaml"
sed -e "s#^  init_checkpoint: .*#  init_checkpoint: $para/model_avg.pt#" "$conf_dir/train_paraformer_mwer_gpu.yaml" > "$WORK/conf/paraformer_mwer.yaml"
[ -z "$epochs" ] || sed -i "s/^  max_epochs: .*/  max_epochs: $epochs/" "$WORK/conf/paraformer.yaml" "$WORK/conf/attention.yaml"
[ -z "$mwer_epochs" ] || sed -i "s/^  max_epochs: .*/  max_epochs: $mwer_epochs/" "$WORK/conf/paraformer_mwer.yaml"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
nj=$(nproc)

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "corpus and features"
  "$asr/run.sh" --stage 0 --stop_stage 2 --config "$WORK/conf/paraformer.yaml" --hours "$hours" --nj "$nj" \
    --data "$data" --dump "$dump" --exp "$para"
fi
if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  log "train the AR baseline; the Paraformer joins from its epoch-$init_epoch encoder, side by side on one GPU"
  if [ "$train_minutes" -gt 0 ]; then
    (sleep $((train_minutes * 60)); pkill -f "speechkit[.]cli train" && echo "[$(date +%T)] stopped training after $train_minutes min") &
    watchdog=$!
  fi
  mkdir -p "$att" "$para"
  speechkit train --config "$WORK/conf/attention.yaml" --train-dump "$dump/train" --dev-dump "$dump/dev" --exp-dir "$att" \
    > "$att/train.log" 2>&1 &
  trainer_att=$!
  while [ ! -f "$att/epoch_$init_epoch.pt" ] && kill -0 "$trainer_att" 2>/dev/null; do sleep 5; done
  log "Paraformer starts from $att/epoch_$init_epoch.pt"
  speechkit train --config "$WORK/conf/paraformer.yaml" --train-dump "$dump/train" --dev-dump "$dump/dev" --exp-dir "$para" \
    > "$para/train.log" 2>&1 &
  trainer_para=$!
  wait "$trainer_att" "$trainer_para" || true
  [ -z "${watchdog:-}" ] || kill "$watchdog" 2>/dev/null || true
  tail -n 3 "$para/train.log" "$att/train.log"
  speechkit average "$para"
  speechkit average "$att"
fi
if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  log "MWER fine-tuning of the Paraformer"
  speechkit train --config "$WORK/conf/paraformer_mwer.yaml" --train-dump "$dump/train" --dev-dump "$dump/dev" --exp-dir "$mwer" \
    > "$WORK/mwer_train.log" 2>&1 || { tail -n 20 "$WORK/mwer_train.log"; exit 1; }
  speechkit average "$mwer"
fi
if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  log "decode and score"
  dec() {  # exp name extra-args...
    local exp=$1 name=$2; shift 2
    for s in test test_unseen; do
      speechkit decode "$exp" "$data/$s" "$exp/decode_${s}_$name" --batch-seconds 600 "$@" 2>/dev/null
      speechkit score "$data/$s/text" "$exp/decode_${s}_$name/hyp" --out "$exp/decode_${s}_$name/wer.json"
    done
  }
  dec "$para" nar
  dec "$mwer" nar
  dec "$att" greedy
  dec "$att" beam10 --beam 10
  dec "$att" beam10_ctc0.3 --beam 10 --ctc-weight 0.3
fi
if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  log "export the Paraformer (fp32 checked against PyTorch, and int8)"
  best=$mwer
  speechkit export onnx "$best" "$best/onnx" --check-data "$data/test"
  speechkit export onnx "$best" "$best/onnx_int8" --check-data "$data/test" --int8
  speechkit decode-onnx "$best/onnx_int8" "$data/test" "$best/decode_test_onnx_int8" 2>/dev/null || true
  [ -f "$best/decode_test_onnx_int8/hyp" ] && speechkit score "$data/test/text" "$best/decode_test_onnx_int8/hyp" --out "$best/decode_test_onnx_int8/wer.json"
fi
if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  log "CIF word times against a CTC forced alignment"
  python3 "$root/egs/synth/asr/local/cif_word_times.py" "$mwer" "$att" "$data/test" --out "$WORK/exp/word_times.json"
fi
if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 7 ]; then
  log "bench asr-decode"
  speechkit bench asr-decode --paraformer "$mwer" --attention "$att" --data "$data/test" --onnx "$mwer/onnx" \
    --json --out "$WORK/exp/bench_asr_decode.json" || true
fi

log "report"
mkdir -p "$REPORT"
python3 - "$WORK/exp" "$REPORT/summary.md" <<'PY'
import json, sys
from pathlib import Path
root, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = ["| model | decode | WER % | CER % | utts |", "|---|---|---|---|---|"]
for exp in ("paraformer", "paraformer_mwer", "attention"):
    for d in sorted((root / exp).glob("decode_*")):
        if (d / "wer.json").is_file():
            r = json.loads((d / "wer.json").read_text())
            rows.append(f"| {exp} | {d.name} | {r['wer']:.2f} | {r['cer']:.2f} | {r['utterances']} |")
text = "\n".join(rows) + "\n"
for exp in ("paraformer", "attention", "paraformer_mwer"):
    p = root / exp / "model_info.json"
    if p.is_file():
        text += f"\n{exp}: {p.read_text().strip()}"
for name in ("word_times.json", "bench_asr_decode.json"):
    if (root / name).is_file():
        text += f"\n\n{name}: {(root / name).read_text().strip()[:3000]}"
out.write_text(text + "\n")
print(text)
PY
python3 - "$WORK/exp" "$REPORT" <<'PY'
import sys, torch
from pathlib import Path
root, out = Path(sys.argv[1]), Path(sys.argv[2])
for exp in ("paraformer_mwer", "attention"):
    p = root / exp / "model_avg.pt"
    if not p.is_file():
        continue
    ck = torch.load(p, map_location="cpu", weights_only=True)
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in ck["model"].items()}
    keys = sorted(sd)
    parts = [keys[i::3] for i in range(3)]  # three files of ~1/3 each: every file back stays under 16 MiB
    for i, part in enumerate(parts):
        torch.save({"model": {k: sd[k] for k in part}, "config": ck["config"], "part": i, "parts": 3}, out / f"{exp}.fp16.part{i}.pt")
PY
[ -f "$mwer/onnx_int8/model.onnx" ] && cp "$mwer/onnx_int8/model.onnx" "$REPORT/paraformer.int8.onnx"
(cd "$WORK/exp" && tar czf "$REPORT/report.tgz" --ignore-failed-read $(ls -d */config.yaml */metrics.jsonl */model_info.json */train.log \
  */tokens.txt */decode_* */onnx*/export.json word_times.json bench_asr_decode.json 2>/dev/null) -C "$REPORT" summary.md)
ls -la "$REPORT"
