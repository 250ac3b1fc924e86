#!/usr/bin/env bash
# Generic ASR recipe: validate → features/CMVN → tokenizer → train → average → decode → score →
# (streaming encoders) ONNX export → streaming decode with the ONNX runtime → RESULTS.md. Called by egs/<corpus>/asr/run.sh with the corpus's data dirs prepared under $data.
# Each stage skips work it has already finished (a .done marker or the trainer's checkpoint), so
# a rerun resumes where it stopped.
#   recipes/asr.sh --config conf/train.yaml [--stage N] [--stop_stage N] [--ngpu N] ...
# Several machines: the same command on each, stage 4 alone, with --nnodes M --rdzv_endpoint HOST:PORT
# (one of the machines, reachable from all; torchrun's c10d rendezvous) and the same --rdzv_id,
# the data, dump and exp on a shared filesystem.
set -euo pipefail

stage=1
stop_stage=100
config=
data=data
dump=dump
exp=
train_set=train
dev_set=dev
test_sets="test test_unseen"
speed_perturb=""
augment=""  # a `speechkit augment` config: train on the clean set plus augment_copies augmented copies
augment_copies=1
nj=$(nproc)
ngpu=0
nnodes=1  # machines taking part in training (stage 4); >1 needs --rdzv_endpoint
rdzv_endpoint=
rdzv_id=speechkit
decode_modes="greedy"
beam=10
results=RESULTS.md
results_title="conformer-CTC"
command_line="$0 $*"
_speechkit_opts="command_line stage stop_stage config data dump exp train_set dev_set test_sets speed_perturb augment augment_copies nj ngpu nnodes rdzv_endpoint rdzv_id decode_modes beam results results_title"
. "$(dirname "$0")/../tools/parse_options.sh"

[ -n "$config" ] || { echo "$0: --config is required" >&2; exit 2; }
[ "$nnodes" -le 1 ] || [ -n "$rdzv_endpoint" ] || { echo "$0: --nnodes $nnodes needs --rdzv_endpoint HOST:PORT (one of the machines)" >&2; exit 2; }
[ -n "$exp" ] || exp=exp/$(basename "${config%.*}")
log() { echo "[$(date +%T)] $*" >&2; }

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "stage 1: validate data dirs"
  for s in $train_set $dev_set $test_sets; do
    [ -f "$data/$s/.validated" ] && continue
    speechkit data validate "$data/$s" --nj "$nj" --allow-bad-audio
    touch "$data/$s/.validated"
  done
fi

if [ -n "$augment" ]; then  # the augmented set replaces the training set from stage 2 on
  aug_set=${train_set}_aug_$(basename "${augment%.*}")  # one set per config: recipes can compare configs
  if [ $stage -le 2 ] && [ $stop_stage -ge 2 ] && [ ! -f "$data/$aug_set/.done" ]; then
    log "stage 2: acoustic augmentation of $train_set ($augment, $augment_copies copies beside the clean one)"
    rm -rf "$data/$aug_set"
    speechkit augment "$data/$train_set" "$data/$aug_set" --config "$augment" --copies "$augment_copies" --keep-clean --nj "$nj"
    touch "$data/$aug_set/.done"
  fi
  train_set=$aug_set
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "stage 2: fbank features (speed perturbation: ${speed_perturb:-none}) and global CMVN stats"
  [ -f "$dump/$train_set/.done" ] || { speechkit features "$data/$train_set" "$dump/$train_set" --nj "$nj" ${speed_perturb:+--speed-perturb "$speed_perturb"} && touch "$dump/$train_set/.done"; }
  [ -f "$dump/$dev_set/.done" ] || { speechkit features "$data/$dev_set" "$dump/$dev_set" --nj "$nj" && touch "$dump/$dev_set/.done"; }
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "stage 3: tokenizer"
  speechkit tokenizer --config "$config" --text "$dump/$train_set/text" --exp-dir "$exp"
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "stage 4: train $exp (resumes if interrupted)"
  if [ "$nnodes" -gt 1 ]; then
    torchrun --nnodes "$nnodes" --nproc_per_node "$(( ngpu > 1 ? ngpu : 1 ))" --rdzv_backend c10d \
      --rdzv_endpoint "$rdzv_endpoint" --rdzv_id "$rdzv_id" -m speechkit.cli train --config "$config" \
      --train-dump "$dump/$train_set" --dev-dump "$dump/$dev_set" --exp-dir "$exp"
  elif [ "$ngpu" -gt 1 ]; then
    torchrun --standalone --nproc_per_node "$ngpu" -m speechkit.cli train --config "$config" \
      --train-dump "$dump/$train_set" --dev-dump "$dump/$dev_set" --exp-dir "$exp"
  else
    speechkit train --config "$config" --train-dump "$dump/$train_set" --dev-dump "$dump/$dev_set" --exp-dir "$exp"
  fi
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "stage 5: average the last train_conf.avg_last epochs"
  speechkit average "$exp"
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "stage 6: decode and score ($decode_modes)"
  for s in $test_sets; do
    for mode in $decode_modes; do
      out="$exp/decode_${s}"; b=1
      [ "$mode" = beam ] && { out="$exp/decode_${s}.beam$beam"; b=$beam; }
      speechkit decode "$exp" "$data/$s" "$out" --beam "$b"
      speechkit score "$data/$s/text" "$out/hyp" --out "$out/wer.json"
    done
  done
fi

streaming=$(python3 -c "import sys, yaml; print(int(yaml.safe_load(open(sys.argv[1])).get('encoder') == 'streaming_conformer'))" "$config")

if [ $stage -le 7 ] && [ $stop_stage -ge 7 ] && [ "$streaming" = 1 ]; then
  log "stage 7: ONNX export of the streaming model, checked against PyTorch -> $exp/onnx"
  speechkit export onnx "$exp" "$exp/onnx" --check-data "$data/$dev_set"
fi

if [ $stage -le 8 ] && [ $stop_stage -ge 8 ] && [ "$streaming" = 1 ]; then
  log "stage 8: streaming decode (ONNX runtime, chunk by chunk) and score"
  for s in $test_sets; do
    out="$exp/decode_${s}.stream"
    speechkit decode-stream "$exp/onnx" "$data/$s" "$out" --nj "$nj"
    speechkit score "$data/$s/text" "$out/hyp" --out "$out/wer.json"
  done
fi

if [ $stage -le 9 ] && [ $stop_stage -ge 9 ]; then
  log "stage 9: $results"
  speechkit results "$exp" --out "$results" --title "$results_title" --command "$command_line"
fi
