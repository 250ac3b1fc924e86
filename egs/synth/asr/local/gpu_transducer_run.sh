#!/usr/bin/env bash
# The GPU run behind the hybrid CTC/transducer section of egs/synth/asr/RESULTS.md (issue 23): the
# synth corpus, conf/train_transducer_gpu.yaml (the shipped streaming model's encoder with a
# stateless-predictor transducer head and a CTC head, one loss 0.7 RNN-T + 0.3 CTC) trained on one
# GPU and averaged; WER of CTC greedy, transducer greedy and modified beam search (4) from PyTorch
# at full context and at each trained look-ahead; both heads exported to sherpa-onnx's formats at
# 64,12 (transducer, also with int8 weights; zipformer2 CTC) and decoded chunk by chunk by our runtime; `speechkit bench
# asr-stream` of both folders against sherpa-onnx on one thread. $REPORT gets report.tgz (summary,
# metrics, hyps, export reports, bench JSON), the int8 transducer and CTC folders as sherpa_*.tgz.
#   bash egs/synth/asr/local/gpu_transducer_run.sh [--hours 50] [--minutes 0] [--stage 0]
#     [--config conf/train_transducer_gpu.yaml] [--corpus_src DIR] [--contexts "full 64,0 64,4 64,12"]
#     [--sherpa_context 64,12] [--real_dev DIR]
#   --minutes M: a training budget (train_conf.max_minutes; the schedule is fitted to it) instead of
#   the config's epochs; --corpus_src: build the corpus with the source tree in DIR (an older
#   revision, to train on the corpus of earlier runs); --real_dev DIR: a data dir from `speechkit
#   data real-dev`, decoded beside test and test_unseen (PyTorch and runtime)
# Run it after the README's set-up on a GPU machine; start it detached:
#   (setsid nohup bash egs/synth/asr/local/gpu_transducer_run.sh --minutes 14 > /tmp/gpu_rnnt.log 2>&1 < /dev/null &)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
hours=50
minutes=0
stage=0
config=conf/train_transducer_gpu.yaml
corpus_src=
contexts="full 64,0 64,4 64,12"
sherpa_context=64,12
real_dev=
WORK=${WORK:-/tmp/rnnt_gpu}
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="hours minutes stage config corpus_src contexts sherpa_context real_dev"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
real_dev=$(real_dev_dir "$real_dev")
run_from_private_copy "$WORK/src"
cli_from_checkout
recipe=$root/egs/synth/asr
data=$WORK/data exp=$WORK/exp
sets="test test_unseen${real_dev:+ real_dev}"
set_dir() { if [ "$1" = real_dev ]; then echo "$real_dev"; else echo "$data/$1"; fi; }
mkdir -p "$WORK" "$REPORT"
cfg=$recipe/$config
if [ "$minutes" != 0 ]; then  # the budget goes under train_conf (replacing one already there)
  python3 - "$cfg" "$WORK/train.yaml" "$minutes" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["train_conf"]["max_minutes"] = float(sys.argv[3])
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
PY
  cfg=$WORK/train.yaml
fi
log() { echo "[$(date +%T)] $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

if [ "$stage" -le 0 ] && [ -n "$corpus_src" ] && [ ! -f "$data/.done" ]; then
  PYTHONPATH="$corpus_src${PYTHONPATH:+:$PYTHONPATH}" python3 -m speechkit.cli corpus synth --out "$data" --hours "$hours" --seed 0 --nj "$(nproc)"
  touch "$data/.done"
fi
if [ "$stage" -le 5 ]; then
  t=$(date +%s)
  "$recipe/run.sh" --stage "$stage" --stop_stage 5 --config "$cfg" --hours "$hours" --nj "$(nproc)" \
    --ngpu 1 --data "$data" --dump "$WORK/dump" --exp "$exp"
  log "corpus, features, training, averaging: $(( $(date +%s) - t )) s" | tee -a "$REPORT/timing.txt"
fi

if [ "$stage" -le 6 ]; then
  log "decode (PyTorch): CTC greedy, transducer greedy and beam 4 at each context"
  for s in $sets; do
    for ctx in $contexts; do
      for dec in "ctc:--decoder ctc" "greedy:" "beam4:--beam 4"; do
        out=$exp/decode_${s}_${ctx/,/_}_${dec%%:*}
        [ -f "$out/wer.json" ] && continue
        # shellcheck disable=SC2086
        speechkit decode "$exp" "$(set_dir "$s")" "$out" --att-context "$ctx" ${dec#*:}
        speechkit score "$(set_dir "$s")/text" "$out/hyp" --out "$out/wer.json" >/dev/null
      done
    done
  done
fi

if [ "$stage" -le 7 ]; then
  log "sherpa-onnx folders at $sherpa_context (transducer; CTC head), decoded chunk by chunk by our runtime"
  speechkit export sherpa "$exp" "$exp/sherpa_transducer" --att-context "$sherpa_context"
  speechkit export sherpa "$exp" "$exp/sherpa_ctc" --att-context "$sherpa_context" --head ctc
  speechkit export sherpa "$exp" "$exp/sherpa_transducer_int8" --att-context "$sherpa_context" --int8
  for m in transducer ctc transducer_int8; do
    for s in $sets; do
      out=$exp/decode_${s}_runtime_${m}
      speechkit decode-stream "$exp/sherpa_$m" "$(set_dir "$s")" "$out" --nj "$(nproc)"
      speechkit score "$(set_dir "$s")/text" "$out/hyp" --out "$out/wer.json" >/dev/null
    done
    wav=$(head -1 "$data/test/wav.scp" | cut -d' ' -f2)
    speechkit bench asr-stream "$exp/sherpa_$m" --wav "$wav" --seconds 60 --memory-seconds 0 --vs-sherpa \
      --out "$REPORT/bench_asr_stream_$m.json"
  done
fi

log "report"
python3 - "$exp" "$REPORT/summary.md" <<'PY'
import json, sys
from pathlib import Path
exp, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = ["| decode | WER % | CER % |", "|---|---|---|"]
for d in sorted(exp.glob("decode_*")):
    if (d / "wer.json").is_file():
        r = json.loads((d / "wer.json").read_text())
        rows.append(f"| {d.name} | {r['wer']:.2f} | {r['cer']:.2f} |")
info = json.loads((exp / "model_info.json").read_text())
out.write_text(f"parameters {info['parameters']}, averaged {info['averaged']}\n\n" + "\n".join(rows) + "\n")
print(out.read_text())
PY
for m in transducer_int8 ctc; do  # the shipped folder is the int8 one
  [ -d "$exp/sherpa_$m" ] && tar czf "$REPORT/sherpa_$m.tgz" -C "$exp" "sherpa_$m"
done
python3 - "$exp" "$REPORT" <<'PY'  # the averaged weights in fp16, two parts (exports and resumes elsewhere)
import sys, torch
from pathlib import Path
exp, out = Path(sys.argv[1]), Path(sys.argv[2])
ck = torch.load(exp / "model_avg.pt", map_location="cpu", weights_only=True)
sd = {k: (v.half() if v.is_floating_point() else v) for k, v in ck["model"].items()}
keys = sorted(sd)
for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
    torch.save({"model": {k: sd[k] for k in part}, "config": ck["config"], "part": i, "parts": 2}, out / f"weights_fp16.part{i}.pt")
PY
tar czf "$REPORT/report.tgz" -C "$exp" config.yaml metrics.jsonl model_info.json \
  $(cd "$exp" && ls -d decode_*) -C "$REPORT" summary.md $(cd "$REPORT" && ls timing.txt bench_*.json 2>/dev/null)
ls -la "$REPORT"
