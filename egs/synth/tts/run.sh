#!/usr/bin/env bash
# CLEAR zero-shot TTS on the embedded synthetic corpus, over the shipped VAE codec.
#   ./run.sh                         CPU smoke: 0.2 h corpus, a tiny CLEAR for 150 steps (every stage runs; not a voice)
#   ./run.sh --config conf/train_clear_gpu.yaml --hours 6    the GPU config (see local/gpu_tts_run.sh, RESULTS.md)
# Stage 0 builds the corpus; stages 1-6 are recipes/tts.sh (see its header).
set -euo pipefail
cd "$(dirname "$0")"
. ../asr/path.sh

stage=0
stop_stage=100
config=conf/train_clear_cpu.yaml
codec=../../../models/codec-vae-synth
hours=0.2
seed=0
nj=$(nproc)
data=data
exp=
judges=asr,pocketsphinx,resemblyzer,dnsmos
eval_utts=10
_speechkit_opts="stage stop_stage config codec hours seed nj data exp judges eval_utts"
command_line="egs/synth/tts/run.sh $*"
. ../../../tools/parse_options.sh
[ -n "$exp" ] || exp=exp/$(basename "${config%.*}")

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  ../corpus.sh "$data" "$hours" "$seed" "$nj"
fi

../../../recipes/tts.sh --stage "$((stage > 1 ? stage : 1))" --stop_stage "$stop_stage" --config "$config" --codec "$codec" \
  --data "$data" --exp "$exp" --nj "$nj" --judges "$judges" --eval_utts "$eval_utts" --results "$exp/RESULTS.md" \
  --command_line "$command_line"
