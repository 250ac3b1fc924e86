#!/usr/bin/env bash
# GPU run 4 behind egs/synth/tts/RESULTS.md: a TTS-oriented VAE, then CLEAR on its latents. The
# shipped waveform VAE (egs/synth/codec/exp/vae_gpu/model.pt; fp16 copy carried) is fine-tuned for
# --codec_minutes with a 30x stronger KL term (conf/codec/train_vae_gpu.yaml) and exported; then
# local/gpu_tts_run.sh prepares, trains and evaluates CLEAR on that codec's latents. Report as
# local/gpu_tts_run.sh's, plus the fine-tuned VAE's ONNX export and latent statistics.
#   bash egs/synth/tts/local/gpu_tts_kl_run.sh --vae_init /abs/path/vae.pt [--codec_minutes 5] [--minutes 10] [--hours 12]
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
vae_init=
codec_minutes=5
minutes=10
hours=12
eval_utts=40
export WORK=${WORK:-/tmp/tts_gpu}
SRC=${SRC:-$WORK/src}
_speechkit_opts="vae_init codec_minutes minutes hours eval_utts"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
[ -n "$vae_init" ] || { echo "--vae_init: the VAE to fine-tune (a codec model.pt)" >&2; exit 1; }
vae_init=$(realpath "$vae_init")
run_from_private_copy "$SRC"
export SRC
bash "$root/egs/synth/codec/local/gpu_codec_run.sh" --hours "$hours" --minutes "$codec_minutes" --codecs vae \
  --vae_init "$vae_init" --conf_dir "$root/egs/synth/tts/conf/codec" --stop_stage 3
python3 - "$WORK/exp/vae/onnx" "$WORK/data/test" <<'PY'
import sys, numpy as np
sys.path.insert(0, ".")
from pathlib import Path
from speechkit.data.kaldi import read_table
from speechkit.audio.io import load_audio
from speechkit.runtime.codec import CodecRuntime
codec = CodecRuntime(sys.argv[1])
wavs = read_table(Path(sys.argv[2]) / "wav.scp")
z = [codec.encode(load_audio(w, 16000)[0]).T for w in list(wavs.values())[:40]]
cat = np.concatenate(z); std = cat.std(0)
lag = np.mean([np.corrcoef(np.concatenate([u[:-1, d] for u in z]), np.concatenate([u[1:, d] for u in z]))[0, 1] for d in range(cat.shape[1])])
print(f"fine-tuned VAE latents on 40 test utterances: per-dim std {std.min():.3f}..{std.max():.3f} (mean {std.mean():.3f}), lag-1 correlation {lag:.3f}")
PY
bash "$root/egs/synth/tts/local/gpu_tts_run.sh" --hours "$hours" --minutes "$minutes" --codec "$WORK/exp/vae/onnx" \
  --stage 2 --eval_utts "$eval_utts"
