"""An exported codec with no torch: encode a waveform to latents (VAE) or codes (RVQ), and
decode them whole or chunk by chunk through the streaming decoder graph, so audio can start
before the last latent exists (what streaming TTS needs).

    codec = CodecRuntime("exp/codec_vae/onnx")
    z = codec.encode(samples)                  # (D, F) latents, or (n_q, F) codes for RVQ
    dec = codec.stream()
    for k in range(0, z.shape[1], 4):
        audio = dec.decode(z[:, k : k + 4])     # 4 × hop samples each

Long audio goes through in blocks (:func:`encode_blocks`, :func:`decode_blocks`): the encoder
graph takes whole waveforms, so each block is encoded with enough audio before it to cover the
causal encoder's receptive field (measured once by :func:`receptive_frames`) and keeps only its
own frames — the latents of one call over the whole input, in memory for one block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from speechkit.errors import SpeechkitError
from speechkit.runtime.session import make_session

ENCODE_BLOCK_SECONDS = 10.0  # audio per encoder call on long inputs (~80 MB of activations for the shipped VAE)
DECODE_BLOCK_FRAMES = 50  # latent frames per decoder call on long inputs (2 s at 25 Hz, ~60 MB)
WHOLE_DECODE_FRAMES = 250  # ``decode`` makes one call up to this many frames, then goes by blocks


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


def receptive_frames(encode: Callable[[np.ndarray], np.ndarray], hop: int, probe_frames: int = 48) -> int:
    """How many output frames of a causal ``encode`` (samples → (C, F)) a change in the first
    frame's samples reaches: the frames of audio a block needs before it to be encoded exactly.
    Measured on noise with three different changes (codes may hide a change a latent shows); an
    encoder that never forgets (an LSTM) gives ``probe_frames``."""
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(probe_frames * hop)).astype(np.float32)
    base, reach = encode(x), 1
    for _ in range(3):
        y = x.copy()
        y[:hop] += (0.3 * rng.standard_normal(hop)).astype(np.float32)
        changed = np.flatnonzero(np.any(encode(y) != base, axis=0))
        reach = max(reach, int(changed[-1]) + 1 if len(changed) else 1)
    return reach


def encode_blocks(encode: Callable[[np.ndarray], np.ndarray], blocks: Iterable[np.ndarray], hop: int, context_frames: int,
                  block_frames: int) -> Iterator[np.ndarray]:
    """Consecutive blocks of one waveform (any sizes) → its frames (C, K), ``block_frames`` at a
    time (the last block padded with zeros to a whole frame, as ``encode`` pads). Each call sees
    the block plus ``context_frames`` of audio before it and keeps the block's own frames."""
    size, past, pending, held = block_frames * hop, np.zeros(0, np.float32), [], 0

    def run(x: np.ndarray) -> np.ndarray:
        nonlocal past
        y = encode(np.concatenate([past, x]))[:, len(past) // hop :]
        past = np.concatenate([past, x])[-context_frames * hop :] if context_frames else past
        return y

    for block in blocks:
        pending.append(np.asarray(block, dtype=np.float32))
        held += len(pending[-1])
        if held < size:
            continue
        x = np.concatenate(pending)
        at = 0
        while len(x) - at >= size:
            yield run(x[at : at + size])
            at += size
        pending, held = [x[at:]], len(x) - at
    if held:
        x = np.concatenate(pending)
        yield run(np.pad(x, (0, -len(x) % hop)))


def decode_blocks(stream: DecoderStream, frames: Iterable[np.ndarray], block_frames: int = DECODE_BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """Frames (C, K) of one input, any K → audio, at most ``block_frames`` frames per decoder call
    through ``stream``'s state (chunked output equals whole output)."""
    for z in frames:
        for k in range(0, z.shape[1], block_frames):
            yield stream.decode(z[:, k : k + block_frames])


class CodecRuntime:
    """An exported codec folder: decoder.onnx (+ codebooks.npy for RVQ) and, unless the folder is
    decoder-only (text-to-music ships one: it never encodes audio), encoder.onnx."""

    def __init__(self, model_dir: str | Path, num_threads: int = 1, device: str = "cpu"):
        model_dir = self.model_dir = Path(model_dir)
        if not (model_dir / "decoder.onnx").is_file():
            raise SpeechkitError(f"{model_dir / 'decoder.onnx'}: no such file (export a codec with `speechkit codec export EXP OUT`)")
        has_encoder = (model_dir / "encoder.onnx").is_file()
        self.encoder = make_session(model_dir / "encoder.onnx", num_threads, device=device) if has_encoder else None
        self.decoder = make_session(model_dir / "decoder.onnx", num_threads, device=device)
        meta = self.decoder.get_modelmeta().custom_metadata_map
        if not meta.get("model_family", "").startswith("codec-"):
            raise SpeechkitError(f"{model_dir}: not a codec (model_family={meta.get('model_family')!r})")
        self.kind = meta["model_family"].removeprefix("codec-")
        self.sample_rate, self.hop = int(meta["sample_rate"]), int(meta["hop"])
        self.latent_dim = int(meta["latent_dim"])
        self.codebooks = np.load(model_dir / "codebooks.npy") if self.kind == "rvq" else None  # (n_q, size, D)
        self._state_inputs = [i for i in self.decoder.get_inputs() if i.name.startswith("state_")]
        self._state_names = [i.name for i in self._state_inputs]
        self._context = None  # frames of audio a block needs before it (measured on first use)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """Mono float32 at the codec's rate → (D, F) latents or (n_q, F) codes; the end is padded
        with zeros to a whole frame. Inputs longer than ``ENCODE_BLOCK_SECONDS`` go by blocks."""
        x = np.asarray(samples, dtype=np.float32)
        size = int(ENCODE_BLOCK_SECONDS * self.sample_rate)
        if len(x) <= size:
            return self._encode(x)
        return np.concatenate(list(self.encode_blocks(x[at : at + size] for at in range(0, len(x), size))), axis=1)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        if self.encoder is None:
            raise SpeechkitError(f"{self.model_dir}: a decoder-only codec (no encoder.onnx): it decodes tokens but cannot "
                                 "encode audio; use the full codec export")
        n = -(-len(x) // self.hop) * self.hop
        x = np.pad(x, (0, n - len(x)))[None, None]
        return self.encoder.run(None, {"wav": x})[0][0]

    def encode_blocks(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Consecutive blocks of one long waveform → its latents or codes, a block at a time."""
        if self._context is None:
            self._context = receptive_frames(self._encode, self.hop) + 2
        block_frames = int(ENCODE_BLOCK_SECONDS * self.sample_rate) // self.hop
        return encode_blocks(self._encode, blocks, self.hop, self._context, block_frames)

    def latents(self, frames: np.ndarray) -> np.ndarray:
        """Codes (n, K) → the sum of their codebook vectors (D, K); latents pass through."""
        if self.codebooks is None:
            return np.asarray(frames, dtype=np.float32)
        codes = np.asarray(frames, dtype=np.int64)
        return sum(self.codebooks[q][codes[q]] for q in range(codes.shape[0])).T.astype(np.float32)

    def stream(self) -> DecoderStream:
        return DecoderStream(self)

    def decode(self, frames: np.ndarray) -> np.ndarray:
        """Latents or codes of a whole utterance → mono float32 samples (F × hop); more than
        ``WHOLE_DECODE_FRAMES`` go through the streaming state by blocks."""
        if frames.shape[1] <= WHOLE_DECODE_FRAMES:
            return self.stream().decode(frames)
        return np.concatenate(list(decode_blocks(self.stream(), [frames])))
