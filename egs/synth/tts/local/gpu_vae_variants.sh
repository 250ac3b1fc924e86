#!/usr/bin/env bash
# GPU run 5a behind egs/synth/tts/RESULTS.md: three TTS-oriented VAEs trained side by side from
# scratch on one GPU, to be compared with tools/codec_latent_probe.py before CLEAR is trained on
# the best (local/gpu_tts_run.sh --codec DIR):
#   vaemel64  mel-input encoder (encoder_input: mel), 64-dim latents, KL 0.003, no waveform L1
#   vaemel32  mel-input encoder, 32-dim latents, KL 0.01, no waveform L1
#   vae32     the waveform encoder, 32-dim latents, KL 0.01, no waveform L1
# (configs: conf/codec/train_<name>_gpu.yaml). Each is exported (parity-checked); $REPORT gets the
# fp16 weights in < 16 MB parts (python tools/state_parts.py join REPORT model.pt --stem NAME),
# tools/codec_latent_probe.py's figures on 40 test_unseen utterances (ASR judge
# models/asr-stream-synth) and the logs.
#   bash egs/synth/tts/local/gpu_vae_variants.sh [--minutes 13] [--hours 12] [--variants "vaemel64 vaemel32 vae32"]
# Run it after the README's set-up on a GPU machine; start it detached.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
minutes=13
hours=12
variants="vaemel64 vaemel32 vae32"
export WORK=${WORK:-/tmp/vae_variants}
REPORT=${REPORT:-$WORK/report}
SRC=${SRC:-$WORK/src}
_speechkit_opts="minutes hours variants"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
run_from_private_copy "$SRC"
cli_from_checkout
export SRC REPORT
mkdir -p "$REPORT"
bash "$root/egs/synth/codec/local/gpu_codec_run.sh" --hours "$hours" --minutes "$minutes" --codecs "$variants" \
  --conf_dir "$root/egs/synth/tts/conf/codec" --stop_stage 3
for c in $variants; do
  python3 "$root/tools/codec_latent_probe.py" "$WORK/exp/$c/onnx" "$WORK/data/test_unseen" --utts 40 --threads 4 \
    --asr-model "$root/models/asr-stream-synth" --json "$WORK/exp/$c/probe.json" > "$WORK/exp/$c/probe.log" 2>&1 &
done
wait
for c in $variants; do
  cat "$WORK/exp/$c/probe.json"; echo
  python3 "$root/tools/state_parts.py" split "$WORK/exp/$c/model.pt" "$REPORT" --max-mb 16 --half --name "$c"
done
tar czf "$REPORT/report.tgz" -C "$WORK/exp" $(for c in $variants; do echo $c/config.yaml $c/metrics.jsonl $c/train.log $c/onnx/export.json $c/probe.json $c/probe.log; done)
ls -la "$REPORT"
