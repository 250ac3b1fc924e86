#!/usr/bin/env bash
# Neural audio codecs on the embedded synthetic corpus.
#   ./run.sh                                   CPU smoke: 0.2 h corpus, a tiny VAE for 150 steps
#   ./run.sh --config conf/train_rvq_cpu.yaml  the RVQ codec instead
#   ./run.sh --config conf/train_vae_gpu.yaml --hours 6    the GPU configs (see local/gpu_codec_run.sh)
# Stage 0 builds the corpus; stages 1-5 are recipes/codec.sh (see its header).
set -euo pipefail
cd "$(dirname "$0")"
. ../asr/path.sh

stage=0
stop_stage=100
config=conf/train_vae_cpu.yaml
hours=0.2
seed=0
nj=$(nproc)
data=data
exp=
eval_utts=20
_speechkit_opts="stage stop_stage config hours seed nj data exp eval_utts"
command_line="egs/synth/codec/run.sh $*"
. ../../../tools/parse_options.sh
[ -n "$exp" ] || exp=exp/$(basename "${config%.*}")

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  ../corpus.sh "$data" "$hours" "$seed" "$nj"
fi

../../../recipes/codec.sh --stage "$((stage > 1 ? stage : 1))" --stop_stage "$stop_stage" --config "$config" \
  --data "$data" --exp "$exp" --nj "$nj" --eval_utts "$eval_utts" --results "$exp/RESULTS.md" --command_line "$command_line"
