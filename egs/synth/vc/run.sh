#!/usr/bin/env bash
# MeanVC-style zero-shot voice conversion on the embedded synthetic corpus: content from the
# shipped streaming ASR encoder, latents of the shipped VAE codec, our own speaker encoder.
#   ./run.sh                         CPU smoke: 0.3 h corpus, tiny models, every stage runs (not a voice)
#   ./run.sh --config conf/vc_gpu.yaml --speaker_config conf/speaker_gpu.yaml --hours 20   the GPU run
#                                    (local/gpu_vc_run.sh, RESULTS.md)
# Stage 0 builds the corpus; stages 1-8 are recipes/vc.sh (see its header).
set -euo pipefail
cd "$(dirname "$0")"
. ../asr/path.sh

stage=0
stop_stage=100
config=conf/vc_cpu.yaml
speaker_config=conf/speaker_cpu.yaml
hours=0.3
seed=0
nj=$(nproc)
data=data
exp=
device=
judges=asr,pocketsphinx,resemblyzer,dnsmos
eval_utts=10
systems=""
_speechkit_opts="stage stop_stage config speaker_config hours seed nj data exp device judges eval_utts systems"
command_line="egs/synth/vc/run.sh $*"
. ../../../tools/parse_options.sh
[ -n "$exp" ] || exp=exp/$(basename "${config%.*}")

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  ../corpus.sh "$data" "$hours" "$seed" "$nj"
fi

../../../recipes/vc.sh --stage "$((stage > 1 ? stage : 1))" --stop_stage "$stop_stage" --config "$config" \
  --speaker_config "$speaker_config" --data "$data" --exp "$exp" --nj "$nj" --device "$device" --judges "$judges" \
  --eval_utts "$eval_utts" --systems "$systems" --results "$exp/RESULTS.md" --command_line "$command_line"
