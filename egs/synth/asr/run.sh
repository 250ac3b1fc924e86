#!/usr/bin/env bash
# Conformer-CTC on the embedded synthetic corpus (espeak-ng / flite / festival voices).
#   ./run.sh                          CPU-sized default: 0.5 h corpus, ~8 min of training on 2 cores
#   ./run.sh --config conf/train_gpu.yaml --hours 50 --ngpu 1 --decode_modes "greedy beam"
# Stage 0 builds the corpus; stages 1-9 are recipes/asr.sh (see its header); stage 10 decodes the
# same test sets with the shipped model of this recipe and prints it beside this run.
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh

stage=0
stop_stage=100
config=conf/train_cpu.yaml
hours=0.5
seed=0
nj=$(nproc)
ngpu=0
nnodes=1  # several machines: the same command on each with --nnodes M --rdzv_endpoint HOST:PORT (see recipes/asr.sh)
rdzv_endpoint=
data=data
dump=dump
exp=
speed_perturb=""
augment=""
augment_copies=1
decode_modes="greedy"
shipped=../../../models/asr-stream-synth
_speechkit_opts="stage stop_stage config hours seed nj ngpu nnodes rdzv_endpoint data dump exp speed_perturb augment augment_copies decode_modes shipped"
command_line="egs/synth/asr/run.sh $*"
. ../../../tools/parse_options.sh
[ -n "$exp" ] || exp=exp/$(basename "${config%.*}")

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  ../corpus.sh "$data" "$hours" "$seed" "$nj"
fi

../../../recipes/asr.sh --stage "$((stage > 1 ? stage : 1))" --stop_stage "$stop_stage" --config "$config" \
  --data "$data" --dump "$dump" --exp "$exp" --nj "$nj" --ngpu "$ngpu" --nnodes "$nnodes" --rdzv_endpoint "$rdzv_endpoint" --speed_perturb "$speed_perturb" \
  --augment "$augment" --augment_copies "$augment_copies" --decode_modes "$decode_modes" --results "$exp/RESULTS.md" --results_title "conformer-CTC, synth $hours h ($(basename "$config"))" \
  --command_line "$command_line"

if [ $stop_stage -ge 9 ]; then
  echo "== per-split WER ($exp) =="
  for f in "$exp"/decode_*/wer.json; do
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"{sys.argv[1].split('/')[-2]:<28} WER {r['wer']:6.2f}%  CER {r['cer']:6.2f}%  ({r['utterances']} utts)\")" "$f"
  done
fi

if [ $stage -le 10 ] && [ $stop_stage -ge 10 ]; then
  echo "[$(date +%T)] stage 10: the shipped model $shipped on the same test sets" >&2
  for s in test test_unseen; do
    speechkit decode-stream "$shipped" "$data/$s" "$exp/shipped/decode_$s" --nj "$nj" >&2
    speechkit score "$data/$s/text" "$exp/shipped/decode_$s/hyp" --out "$exp/shipped/decode_$s/wer.json" >&2
  done
  python3 local/compare_shipped.py --exp "$exp" --data "$data" --decodes "$exp/shipped" --model "$shipped" \
    --config "$config" --ngpu "$ngpu" --results "$exp/RESULTS.md"
fi
