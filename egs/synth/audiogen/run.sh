#!/usr/bin/env bash
# Text-to-music (MAGNeT and a delay-pattern AR baseline) on the embedded music corpus: random but
# musical MIDI rendered offline with a General-MIDI soundfont and captioned from its labels.
#   ./run.sh                         CPU smoke: 0.1 h of 4-s clips, a tiny RVQ codec, MAGNeT, AR and judge
#                                    (every stage runs in a few minutes on 2 cores; not music yet)
#   ./run.sh --conf gpu --hours 20 --clip_seconds 10    the GPU configs (local/gpu_audiogen_run.sh runs
#                                    the whole GPU run with time budgets; RESULTS.md)
# Stage 0 builds the corpus; stages 1-6 are recipes/audiogen.sh (see its header).
set -euo pipefail
cd "$(dirname "$0")"
. ../asr/path.sh

stage=0
stop_stage=100
conf=cpu  # cpu | gpu: conf/{codec_rvq,magnet,ar,judge}_$conf.yaml
hours=0.1
clip_seconds=4
seed=0
nj=$(nproc)
data=data
exp=
device=
codebooks=4
systems=magnet,magnet_rescore,hybrid,ar
eval_clips=4
eval_seconds=4
eval_batch=4
eval_steps=4,2,2,2
hybrid_seconds=1
_speechkit_opts="stage stop_stage conf hours clip_seconds seed nj data exp device codebooks systems eval_clips eval_seconds eval_batch eval_steps hybrid_seconds"
command_line="egs/synth/audiogen/run.sh $*"
. ../../../tools/parse_options.sh
[ -n "$exp" ] || exp=exp/$conf

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  [ -f "$data/test/labels.jsonl" ] || speechkit corpus music --out "$data" --hours "$hours" --clip-seconds "$clip_seconds" \
    --seed "$seed" --nj "$nj"
fi

../../../recipes/audiogen.sh --stage "$((stage > 1 ? stage : 1))" --stop_stage "$stop_stage" \
  --codec_config "conf/codec_rvq_$conf.yaml" --magnet_config "conf/magnet_$conf.yaml" --ar_config "conf/ar_$conf.yaml" \
  --judge_config "conf/judge_$conf.yaml" --codebooks "$codebooks" --data "$data" --exp "$exp" --nj "$nj" --device "$device" \
  --systems "$systems" --eval_clips "$eval_clips" --eval_seconds "$eval_seconds" --eval_batch "$eval_batch" \
  --eval_steps "$eval_steps" --hybrid_seconds "$hybrid_seconds" --results "$exp/RESULTS.md" --command_line "$command_line"
