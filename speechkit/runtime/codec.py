"""An exported codec with no torch: encode a waveform to latents (VAE) or codes (RVQ), and
decode them whole or chunk by chunk through the streaming decoder graph, so audio can start
before the last latent exists (what streaming TTS needs).

    codec = CodecRuntime("exp/codec_vae/onnx")
    z = codec.encode(samples)                  # (D, F) latents, or (n_q, F) codes for RVQ
    dec = codec.stream()
    for k in range(0, z.shape[1], 4):
        audio = dec.decode(z[:, k : k + 4])     # 4 × hop samples each
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speechkit.errors import SpeechkitError
from speechkit.runtime.session import cpu_session


class DecoderStream:
    """One stream's decoder state; ``decode`` takes the next latent frames (D, K) or codes (n, K)."""

    def __init__(self, codec: CodecRuntime):
        self.codec = codec
        self.state = [np.zeros([1 if isinstance(d, str) else d for d in i.shape], np.float32) for i in codec._state_inputs]

    def decode(self, frames: np.ndarray) -> np.ndarray:
        z = self.codec.latents(frames)
        out = self.codec.decoder.run(None, {"latents": z[None], **dict(zip(self.codec._state_names, self.state))})
        self.state = out[1:]
        return out[0][0, 0]


class CodecRuntime:
    def __init__(self, model_dir: str | Path, num_threads: int = 1):
        model_dir = Path(model_dir)
        for name in ("encoder.onnx", "decoder.onnx"):
            if not (model_dir / name).is_file():
                raise SpeechkitError(f"{model_dir / name}: no such file (export a codec with `speechkit codec export EXP OUT`)")
        self.encoder = cpu_session(model_dir / "encoder.onnx", num_threads)
        self.decoder = cpu_session(model_dir / "decoder.onnx", num_threads)
        meta = self.decoder.get_modelmeta().custom_metadata_map
        if not meta.get("model_family", "").startswith("codec-"):
            raise SpeechkitError(f"{model_dir}: not a codec (model_family={meta.get('model_family')!r})")
        self.kind = meta["model_family"].removeprefix("codec-")
        self.sample_rate, self.hop = int(meta["sample_rate"]), int(meta["hop"])
        self.latent_dim = int(meta["latent_dim"])
        self.codebooks = np.load(model_dir / "codebooks.npy") if self.kind == "rvq" else None  # (n_q, size, D)
        self._state_inputs = [i for i in self.decoder.get_inputs() if i.name.startswith("state_")]
        self._state_names = [i.name for i in self._state_inputs]

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """Mono float32 at the codec's rate → (D, F) latents or (n_q, F) codes; the end is padded
        with zeros to a whole frame."""
        x = np.asarray(samples, dtype=np.float32)
        n = -(-len(x) // self.hop) * self.hop
        x = np.pad(x, (0, n - len(x)))[None, None]
        return self.encoder.run(None, {"wav": x})[0][0]

    def latents(self, frames: np.ndarray) -> np.ndarray:
        """Codes (n, K) → the sum of their codebook vectors (D, K); latents pass through."""
        if self.codebooks is None:
            return np.asarray(frames, dtype=np.float32)
        codes = np.asarray(frames, dtype=np.int64)
        return sum(self.codebooks[q][codes[q]] for q in range(codes.shape[0])).T.astype(np.float32)

    def stream(self) -> DecoderStream:
        return DecoderStream(self)

    def decode(self, frames: np.ndarray) -> np.ndarray:
        """Latents or codes of a whole utterance → mono float32 samples (F × hop)."""
        return self.stream().decode(frames)
