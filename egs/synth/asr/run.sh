#!/usr/bin/env bash
# Conformer-CTC on the embedded synthetic corpus (espeak-ng / flite / festival voices).
#   ./run.sh                          CPU-sized default: 0.5 h corpus, ~8 min of training on 2 cores
#   ./run.sh --config conf/train_gpu.yaml --hours 50 --ngpu 1 --decode_modes "greedy beam"
# Stage 0 builds the corpus; stages 1-7 are recipes/asr.sh (see its header).
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
data=data
dump=dump
exp=
speed_perturb=""
decode_modes="greedy"
_speechkit_opts="stage stop_stage config hours seed nj ngpu data dump exp speed_perturb decode_modes"
command_line="egs/synth/asr/run.sh $*"
. ../../../tools/parse_options.sh
[ -n "$exp" ] || exp=exp/$(basename "${config%.*}")

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  ../corpus.sh "$data" "$hours" "$seed" "$nj"
fi

../../../recipes/asr.sh --stage "$((stage > 1 ? stage : 1))" --stop_stage "$stop_stage" --config "$config" \
  --data "$data" --dump "$dump" --exp "$exp" --nj "$nj" --ngpu "$ngpu" --speed_perturb "$speed_perturb" \
  --decode_modes "$decode_modes" --results "$exp/RESULTS.md" --results_title "conformer-CTC, synth $hours h ($(basename "$config"))" \
  --command_line "$command_line"

if [ $stop_stage -ge 9 ]; then
  echo "== per-split WER ($exp) =="
  for f in "$exp"/decode_*/wer.json; do
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"{sys.argv[1].split('/')[-2]:<28} WER {r['wer']:6.2f}%  CER {r['cer']:6.2f}%  ({r['utterances']} utts)\")" "$f"
  done
fi
