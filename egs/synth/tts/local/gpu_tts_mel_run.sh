#!/usr/bin/env bash
# GPU run 5 behind egs/synth/tts/RESULTS.md, in one machine hold: the synth corpus; the mel-input
# VAE conf/codec/train_vaemel32_gpu.yaml trained alone for --codec_minutes and exported
# (egs/synth/codec/local/gpu_codec_run.sh); CLEAR (conf/train_clear_mel_gpu.yaml) prepared on
# its latents, trained for --minutes, alignment-checked and evaluated zero-shot on test_unseen
# (local/gpu_tts_run.sh); meanwhile tools/codec_latent_probe.py on the codec (40 test_unseen
# utterances). $REPORT: CLEAR's report (local/gpu_tts_run.sh), the codec's fp16 parts
# (python tools/state_parts.py join REPORT exp/model.pt --stem vaemel32), and extra.tgz with the
# eval JSONs, the probe's and the codec's logs.
#   bash egs/synth/tts/local/gpu_tts_mel_run.sh [--codec_minutes 7] [--minutes 10] [--hours 12] [--variant vaemel32]
# Run it after the README's set-up on a GPU machine; start it detached (and niced: the
# corpus, prepare and probe steps load all cores).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
codec_minutes=7
minutes=10
hours=12
eval_utts=40
variant=vaemel32
export WORK=${WORK:-/tmp/tts_mel}
export REPORT=${REPORT:-$WORK/report}
SRC=${SRC:-$WORK/src}
_speechkit_opts="codec_minutes minutes hours eval_utts variant"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
run_from_private_copy "$SRC"
cli_from_checkout
export SRC
log() { echo "[$(date +%T)] $*"; }
bash "$root/egs/synth/codec/local/gpu_codec_run.sh" --hours "$hours" --minutes "$codec_minutes" --codecs "$variant" \
  --conf_dir "$root/egs/synth/tts/conf/codec" --stop_stage 3
codec=$WORK/exp/$variant/onnx
tts=(--hours "$hours" --minutes "$minutes" --codec "$codec" --config conf/train_clear_mel_gpu.yaml --eval_utts "$eval_utts")
bash "$root/egs/synth/tts/local/gpu_tts_run.sh" "${tts[@]}" --stage 2 --stop_stage 2
log "probe the codec's latents (background)"
python3 "$root/tools/codec_latent_probe.py" "$codec" "$WORK/data/test_unseen" --utts 40 --threads 2 \
  --asr-model "$root/models/asr-stream-synth" --json "$REPORT/probe_$variant.json" > "$WORK/probe.log" 2>&1 &
probe=$!
bash "$root/egs/synth/tts/local/gpu_tts_run.sh" "${tts[@]}" --stage 3
wait $probe || echo "probe failed: $(tail -n 2 "$WORK/probe.log")"
python3 "$root/tools/state_parts.py" split "$WORK/exp/$variant/model.pt" "$REPORT" --max-mb 15 --half --name "$variant"
mkdir -p "$WORK/extra/codec"  # at most 8 files come back: the small ones in one archive
cp "$WORK/exp/$variant"/{config.yaml,metrics.jsonl,train.log,onnx/export.json} "$WORK/extra/codec/"
mv "$REPORT"/eval_gpu*.json "$REPORT"/probe_*.json "$WORK/extra/" 2>/dev/null || true
cp "$WORK/probe.log" "$WORK/extra/" 2>/dev/null || true
tar czf "$REPORT/extra.tgz" -C "$WORK/extra" .
ls -la "$REPORT"
log "done"
