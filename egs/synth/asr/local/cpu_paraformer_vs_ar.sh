#!/usr/bin/env bash
# The Paraformer against the AR baseline on a CPU, as heads on one frozen encoder: the paper's
# question (does one-pass NAR decoding lose < 5 % relative WER to AR decoding on the same
# encoder?) with the encoder held equal by construction and only the decoders trained, which a
# CPU can do where it cannot train whole models (issue 19; the GPU comparisons in RESULTS.md
# train both encoders). At the defaults the AR decoder has not converged (RESULTS.md, "Heads on
# one frozen encoder"), and its beam decodes, which loop to their length limit, take the longest.
#   1. models/asr-stream-synth's int8 ONNX back into a checkpoint (local/onnx_to_checkpoint.py)
#   2. a corpus (speechkit corpus synth --hours H --seed 0 --engines E) and its features, by
#      local/gpu_paraformer_run.sh's stage 1
#   3. four heads at once, one thread each, for --minutes each: the AR decoder and the Paraformer
#      (conf/train_attention_cpu.yaml, conf/train_paraformer_cpu.yaml) on characters, with the
#      shipped encoder and CTC layer frozen; the same two on BPE tokens (--bpe N; encoder frozen,
#      a new CTC layer trained, since the shipped one spells characters); --bpe 0 leaves them out
#   4. --more_minutes M > 0: the character pair again, two at once, each from its average for M
#      minutes more at lr 1e-3 (WORK/exp_more; the BPE pair stops at step 3)
#   5. local/gpu_paraformer_run.sh --stage 4 --stop_stage 4 for each run (characters, their continuation, BPE): Paraformer one
#      pass, AR greedy, beam 10, beam 10 + CTC 0.3 on test / test_unseen, and the target line;
#      the frozen encoder's own CTC layer (greedy, full context) on the same sets, the floor a
#      trained head on it should reach (WORK/shipped_init/decode_*_ctc)
#   bash egs/synth/asr/local/cpu_paraformer_vs_ar.sh [--hours 6] [--engines espeak-ng,flite] [--minutes 40]
#     [--bpe 256] [--more_minutes 0]
# Work goes to $WORK (default /tmp/para_cpu); summaries in WORK/report/summary.md, WORK/report_more
# (with --more_minutes) and WORK/report_bpeN/summary.md. About --minutes + --more_minutes + 15 on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
hours=6
engines=espeak-ng,flite
minutes=40
bpe=256
more_minutes=0
_speechkit_opts="hours engines minutes bpe more_minutes"
. "$root/tools/parse_options.sh"
export WORK=${WORK:-/tmp/para_cpu}
mkdir -p "$WORK"
WORK=$(realpath "$WORK")
log() { echo "[$(date +%T)] $*"; }
asr=$root/egs/synth/asr
run=("$asr/local/gpu_paraformer_run.sh" --conf_suffix cpu --hours "$hours" --engines "$engines")
init=$WORK/shipped_init/model.pt

[ -f "$init" ] || { log "models/asr-stream-synth -> $init"; python3 "$asr/local/onnx_to_checkpoint.py" "$root/models/asr-stream-synth" \
  "$WORK/shipped_init" --config "$asr/conf/train_stream_gpu.yaml"; }
log "corpus and features ($hours h, $engines)"
bash "${run[@]}" --stop_stage 1 > "$WORK/prep.log" 2>&1 || { tail -n 30 "$WORK/prep.log"; exit 1; }

# head_conf SRC DST INIT MINUTES BPE LR: a head's config, from SRC, starting from INIT (the shipped
# encoder and CTC layer, or with LR set, a whole earlier run) for MINUTES; BPE > 0: BPE tokens
head_conf() {
  python3 - "$@" <<'PY'
import sys, yaml
src, dst, init, minutes, bpe, lr = sys.argv[1:7]
cfg = yaml.safe_load(open(src))
tc = cfg["train_conf"]
tc.update(init_checkpoint=init, max_minutes=float(minutes))
if bpe != "0":  # the shipped CTC layer spells characters: BPE heads keep the encoder only and learn their own CTC layer
    cfg["tokenizer_conf"] = {"type": "bpe", "vocab_size": int(bpe)}
    tc.update(init_modules=["cmvn", "encoder"], freeze_modules=["encoder"])
if lr:  # a continuation: the whole model, head included, with a new warm-up
    tc.pop("init_modules", None)
    cfg["optim_conf"].update(lr=float(lr), warmup_steps=50)
yaml.safe_dump(cfg, open(dst, "w"), sort_keys=False)
PY
}
train_heads() {  # EXP_DIR...: each EXP_DIR/train.yaml trained at once, one thread each
  local pids=() e
  for e in "$@"; do
    OMP_NUM_THREADS=1 speechkit train --config "$e/train.yaml" --train-dump "$WORK/dump/train" --dev-dump "$WORK/dump/dev" \
      --exp-dir "$e" > "$e/train.log" 2>&1 &
    pids+=($!)
  done
  log "$# heads training at once (logs: */train.log): $*"
  wait "${pids[@]}"
  for e in "$@"; do speechkit average "$e"; done
}
decode() {  # tag [extra args]: stage 4 of gpu_paraformer_run.sh on WORK/exp$tag, summary printed
  local tag=$1; shift
  log "decode and score${tag:+ ($tag)}"
  bash "${run[@]}" --stage 4 --stop_stage 4 "$@" > "$WORK/decode$tag.log" 2>&1 || { tail -n 30 "$WORK/decode$tag.log"; exit 1; }
  cat "$WORK/report$tag/summary.md"
}

tags=("")
[ "$bpe" -eq 0 ] || tags+=("_bpe$bpe")
exps=()
for tag in "${tags[@]}"; do
  for head in attention paraformer; do
    mkdir -p "$WORK/exp$tag/$head"
    head_conf "$asr/conf/train_${head}_cpu.yaml" "$WORK/exp$tag/$head/train.yaml" "$init" "$minutes" "${tag#_bpe}" ""
    exps+=("$WORK/exp$tag/$head")
  done
done
train_heads "${exps[@]}"
if [ "$more_minutes" != 0 ]; then
  log "the character pair, $more_minutes min more each (WORK/exp_more)"
  for head in attention paraformer; do
    mkdir -p "$WORK/exp_more/$head"
    head_conf "$WORK/exp/$head/train.yaml" "$WORK/exp_more/$head/train.yaml" "$WORK/exp/$head/model_avg.pt" "$more_minutes" 0 0.001
  done
  train_heads "$WORK/exp_more/attention" "$WORK/exp_more/paraformer"
fi
decode ""
[ "$more_minutes" = 0 ] || decode _more --tag _more
[ "$bpe" -eq 0 ] || decode "_bpe$bpe" --bpe "$bpe"
log "the frozen encoder's CTC layer (greedy, full context)"
for s in test test_unseen; do
  speechkit decode "$WORK/shipped_init" "$WORK/data/$s" "$WORK/shipped_init/decode_${s}_ctc" --checkpoint model.pt --att-context full
  speechkit score "$WORK/data/$s/text" "$WORK/shipped_init/decode_${s}_ctc/hyp" --out "$WORK/shipped_init/decode_${s}_ctc/wer.json"
done
log "done"
