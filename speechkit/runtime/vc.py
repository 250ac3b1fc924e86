"""Streaming voice conversion with no torch, on an exported MeanVC (``speechkit.export.vc``): the
source's content frames from the streaming ASR graph (``runtime.content``), each chunk of them
turned into the target voice's VAE latents by ``step.onnx`` (mean-flow steps + KV-cache commit) and
into audio by the codec's causal streaming decoder. Many streams, of different target voices,
share one ``step.onnx`` call per chunk (:meth:`VoiceConverter.step_many`).

    vc = VoiceConverter("exp/vc/onnx")                 # codec and ASR from the model's provenance
    voice = vc.target(ref_samples)                     # >= 1 s of the target speaker
    audio = vc.convert(src_samples, voice)             # whole utterance (streamed inside)
    s = vc.stream(voice)
    out = s.accept(block)                              # audio of every chunk completed so far
    tail = s.finish()

Latency: a chunk's first sample waits for the content encoder's chunk, (right context + 1)
frames of 40 ms (200 ms at ``att_context`` (64, 4)), plus the 25 ms fbank window: 225 ms
(:attr:`VoiceConverter.latency_ms`), computing time not included. The MeanVC chunk and the content
chunk are both 5 frames in the shipped setup; a longer MeanVC chunk would wait for it instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkit.errors import AudioError, SpeechkitError
from speechkit.runtime.codec import CodecRuntime, DecoderStream
from speechkit.runtime.content import ContentEncoder, ContentStream
from speechkit.runtime.session import make_session
from speechkit.runtime.speaker import check_rate

FAMILY = "vc-meanvc"
CONFIG_FILE, REFERENCE_FILE, STEP_FILE, SPEAKER_DIR = "vc.json", "reference.onnx", "step.onnx", "speaker"
MIN_REFERENCE_SECONDS = 1.0
SILENCE_RMS = 1e-4  # a reference quieter than this (about -80 dBFS) holds no voice


def resolve(path: str | Path | None, what: str, flag: str) -> Path:
    """A folder from the user or from the model's provenance; a relative one is tried against the
    working directory, then the repository root; a missing one is a one-line error naming ``flag``."""
    if not path:
        raise SpeechkitError(f"the {what} is not known: pass {flag}")
    p = Path(path)
    for cand in (p, Path(__file__).resolve().parents[2] / p):
        if cand.exists():
            return cand
    raise SpeechkitError(f"{path}: no such {what} (pass {flag})")


def check_reference(samples, sample_rate: int, where: str = "reference") -> np.ndarray:
    """Mono, at least ``MIN_REFERENCE_SECONDS``, finite and not silent → float32 samples."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise AudioError(f"{where}: expected mono samples, got shape {x.shape}")
    seconds = len(x) / sample_rate
    if seconds < MIN_REFERENCE_SECONDS:
        raise AudioError(f"{where}: {seconds:.2f} s of audio; a reference voice needs at least {MIN_REFERENCE_SECONDS:g} s")
    if not np.isfinite(x).all() or float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) < SILENCE_RMS:
        raise AudioError(f"{where}: silent (or not finite); a reference voice needs speech")
    return x


@dataclass(frozen=True)
class Target:
    """A target voice. N: layers, H: heads, R: reference frames, d: head dim, D: latent dim, S: speaker dim.

    keys, values (N, 1, H, R, d): the reference's cross-attention keys and values; mask (1, R)
    bool; spk (S,) its speaker embedding; latents (R, D) the raw reference latents they came from."""

    keys: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    spk: np.ndarray
    latents: np.ndarray


class VcStream:
    """One source converted into one target voice. ``accept``/``finish`` convert as they go, alone;
    a server batching many streams calls ``feed``/``close`` and then
    :meth:`VoiceConverter.step_many` while any stream is ``ready``."""

    def __init__(self, vc: VoiceConverter, target: Target, seed: int = 0, noise: np.ndarray | None = None):
        self.vc, self.target = vc, target
        self.content: ContentStream = vc.content.stream()
        self.decoder: DecoderStream = vc.codec.stream()
        self.keys = np.zeros(vc.cache_shape, np.float32)
        self.values = np.zeros(vc.cache_shape, np.float32)
        self.cache_len = np.zeros(1, np.int64)
        self.pending = np.zeros((0, vc.content_dim), np.float32)  # content frames not converted yet
        self.closed = False
        self._rng = np.random.default_rng(seed)
        self._noise = None if noise is None else np.asarray(noise, dtype=np.float32)
        self._noise_at = 0

    @property
    def ready(self) -> bool:
        """There is work for :meth:`VoiceConverter.step_many`: source audio for the content
        encoder, or a chunk of content to convert (a whole one, or a part once the input is closed)."""
        return self.content.ready or self.chunk_ready

    @property
    def chunk_ready(self) -> bool:
        """A chunk of encoded content can be converted now."""
        return len(self.pending) >= self.vc.chunk or (self.closed and len(self.pending) > 0)

    @property
    def done(self) -> bool:
        return self.closed and not self.content.ready and len(self.pending) == 0

    def feed(self, samples, sample_rate: int | None = None) -> None:
        """Source audio in (mono; another rate is resampled); the content encoder runs in the next
        :meth:`VoiceConverter.step_many`, batched with the other streams'."""
        if self.closed:
            raise SpeechkitError("this stream's input is finished; create a new stream")
        self.content.push(samples, sample_rate)

    def close(self) -> None:
        """No more source audio: the content encoder's last, partial chunk becomes ready."""
        if not self.closed:
            self.content.end()
            self.closed = True

    def push_content(self, frames: np.ndarray) -> None:
        """Content frames (k, C) in directly (what ``feed`` does after the content encoder)."""
        self.pending = np.concatenate([self.pending, np.asarray(frames, dtype=np.float32)])

    def accept(self, samples, sample_rate: int | None = None) -> np.ndarray:
        """→ the audio of every chunk the input so far completes (possibly none)."""
        self.feed(samples, sample_rate)
        return self._drain()

    def finish(self) -> np.ndarray:
        """→ the rest of the audio."""
        self.close()
        return self._drain()

    def _drain(self) -> np.ndarray:
        out = []
        while self.ready:
            out.extend(self.vc.step_many([self]))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def next_noise(self) -> np.ndarray:
        """(chunk, D) standard normal: the seeded generator's next draw, or the next rows of the
        given noise (zeros past its end, which only a last, partial chunk may reach)."""
        n, d = self.vc.chunk, self.vc.latent_dim
        if self._noise is None:
            return self._rng.standard_normal((n, d), dtype=np.float32)
        z = self._noise[self._noise_at : self._noise_at + n]
        self._noise_at += n
        if len(z) < min(n, len(self.pending)):
            raise SpeechkitError(f"the given noise has {len(self._noise)} frames, fewer than the source's content frames")
        return np.pad(z, ((0, n - len(z)), (0, 0)))


class VoiceConverter:
    """An exported MeanVC folder; the codec and the content encoder (streaming ASR) default to the
    folders the model was trained with (its provenance in ``vc.json``)."""

    def __init__(self, model_dir: str | Path, codec_dir: str | Path | None = None, asr_dir: str | Path | None = None,
                 num_threads: int = 1, device: str = "cpu"):
        model_dir = Path(model_dir)
        cfg_path = model_dir / CONFIG_FILE
        if not cfg_path.is_file():
            raise SpeechkitError(f"{cfg_path}: no such file (export a model with `speechkit vc export MODEL OUT`)")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("model_family") != FAMILY:
            raise SpeechkitError(f"{cfg_path}: not a voice-conversion export (model_family={cfg.get('model_family')!r})")
        for name in (REFERENCE_FILE, STEP_FILE):
            if not (model_dir / name).is_file():
                raise SpeechkitError(f"{model_dir / name}: no such file (export a model with `speechkit vc export MODEL OUT`)")
        self.model_dir, self.config, self.device = model_dir, cfg, device
        self.chunk, self.latent_dim, self.content_dim, self.spk_dim = cfg["chunk"], cfg["latent_dim"], cfg["content_dim"], cfg["spk_dim"]
        self.ref_frames = cfg["ref_frames"]
        self.cache_shape = (cfg["layers"], 1, cfg["heads"], cfg["cache_frames"], cfg["head_dim"])
        self.reference_session = make_session(model_dir / REFERENCE_FILE, num_threads, device=device)
        self.step_session = make_session(model_dir / STEP_FILE, num_threads, device=device)
        features = cfg.get("features") or {}
        self.codec = CodecRuntime(resolve(codec_dir or features.get("codec"), "codec", "--codec"), num_threads, device)
        if self.codec.kind != "vae" or self.codec.latent_dim != self.latent_dim:
            raise SpeechkitError(f"the codec is a {self.codec.kind} of {self.codec.latent_dim}-dim latents; "
                                 f"the model makes {self.latent_dim}-dim VAE latents")
        att = features.get("att_context")
        self.content = ContentEncoder(resolve(asr_dir or features.get("asr"), "content encoder (streaming ASR model)", "--asr"),
                                      layer=features.get("content_layer"), att_context=tuple(att) if att else None,
                                      num_threads=num_threads, device=device)
        if self.content.dim != self.content_dim:
            raise SpeechkitError(f"the content encoder gives {self.content.dim} dims, the model takes {self.content_dim}")
        if abs(self.content.frame_rate - cfg["frame_rate"]) > 1e-6:
            raise SpeechkitError(f"the content encoder gives {self.content.frame_rate:g} frames/s, the model {cfg['frame_rate']:g}")
        self.sample_rate = self.codec.sample_rate
        self._speaker = None

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency: the longest wait, over the chunks, from the start of a chunk's audio
        to the last input sample its output needs. A chunk of ``chunk`` frames needs every content
        frame up to its end, which come in content chunks of ``right + 1`` frames; the last fbank
        frame of those reaches half a window past its centre (``snip_edges`` off: centres at
        shift/2, 3 shift/2, ...), so the input needed ends (window - shift)/2 after the frames."""
        c, n = self.content.att_context[1] + 1, self.chunk
        frame_ms = 1000.0 / self.content.frame_rate
        fb = self.content.fbank_cfg
        edge = (fb.frame_length_ms - fb.frame_shift_ms) / 2
        wait = max(-(-((k + 1) * n) // c) * c - k * n for k in range(c))
        return wait * frame_ms + edge

    # target voices

    def target(self, ref_samples, sample_rate: int | None = None, spk: np.ndarray | None = None) -> Target:
        """Reference audio of the target speaker (mono, >= 1 s, not silent; ``sample_rate`` defaults
        to the codec's) → a :class:`Target`. ``spk`` (S,): its speaker embedding, when the export
        ships no speaker encoder (``speaker/``) or to override it."""
        from speechkit.audio.io import resample_audio

        rate = self.sample_rate if sample_rate is None else check_rate(sample_rate)
        x = check_reference(ref_samples, rate)
        x = resample_audio(x, rate, self.sample_rate)
        emb = self.speaker_embedding(x) if spk is None else np.asarray(spk, dtype=np.float32)
        if emb.shape != (self.spk_dim,):
            raise SpeechkitError(f"the speaker embedding has shape {emb.shape}; the model takes ({self.spk_dim},)")
        return self.target_from_latents(self.codec.encode(x).T, emb)

    def target_from_latents(self, latents: np.ndarray, spk: np.ndarray) -> Target:
        """Raw reference latents (R, D) (the middle ``ref_frames`` kept, as ``MeanVC.reference``
        does) and a speaker embedding (S,) → a :class:`Target`."""
        z = np.asarray(latents, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim or len(z) == 0:
            raise SpeechkitError(f"reference latents must be (R, {self.latent_dim}) with R >= 1, got {z.shape}")
        if len(z) > self.ref_frames:
            at = (len(z) - self.ref_frames) // 2
            z = z[at : at + self.ref_frames]
        mask = np.ones((1, len(z)), dtype=bool)
        keys, values = self.reference_session.run(None, {"ref_latents": np.ascontiguousarray(z[None]), "ref_mask": mask})
        return Target(keys, values, mask, np.asarray(spk, dtype=np.float32), z)

    def speaker_embedding(self, samples: np.ndarray) -> np.ndarray:
        """The shipped speaker encoder's embedding (S,) of samples at the codec's rate. The hook for
        ``speechkit.runtime.speaker``: without ``speaker/`` in the export, pass ``spk=``."""
        if self._speaker is None:
            folder = self.model_dir / SPEAKER_DIR
            if not folder.is_dir():
                raise SpeechkitError(f"{self.model_dir} ships no speaker encoder: pass spk= (an embedding) "
                                     f"or export with --speaker-model DIR")
            try:
                from speechkit.runtime.speaker import SpeakerRuntime
            except ImportError:
                raise SpeechkitError("this speechkit has no torch-free speaker encoder (speechkit.runtime.speaker): "
                                     "pass spk= (an embedding)") from None
            self._speaker = SpeakerRuntime(folder, device=self.device)
        return np.asarray(self._speaker.embed(samples), dtype=np.float32)

    # conversion

    def stream(self, target: Target, seed: int = 0, noise: np.ndarray | None = None) -> VcStream:
        """A stream into ``target``'s voice; its noise comes from ``seed`` (or ``noise`` (F, D), rows
        taken in order)."""
        return VcStream(self, target, seed, noise)

    def convert(self, samples, target: Target, sample_rate: int | None = None, seed: int = 0,
                noise: np.ndarray | None = None) -> np.ndarray:
        """A whole source utterance → the same words in the target voice (the codec's rate), by
        streaming: the same audio as feeding a stream in any blocks."""
        rate = self.sample_rate if sample_rate is None else check_rate(sample_rate)
        x = np.asarray(samples, dtype=np.float32)
        s = self.stream(target, seed, noise)
        block = rate  # one second at a time, as the ASR runtime feeds: memory follows the output only
        parts = [s.accept(x[at : at + block], rate) for at in range(0, len(x), block)]
        parts.append(s.finish())
        if s.content.frames == 0:
            raise AudioError("source: too short to hold a single content frame")
        return np.concatenate(parts)

    def convert_latents(self, content: np.ndarray, target: Target, seed: int = 0, noise: np.ndarray | None = None) -> np.ndarray:
        """Content frames (F, C) → raw latents (F, D), chunk by chunk through the same graphs (no
        audio): for comparing with ``MeanVC.convert`` and for evaluation."""
        s = self.stream(target, seed, noise)
        s.push_content(content)
        s.closed = True
        out = []
        while s.chunk_ready:
            out.append(self._step([s])[0])
        return np.concatenate(out) if out else np.zeros((0, self.latent_dim), np.float32)

    def step_many(self, streams: Sequence[VcStream]) -> list[np.ndarray]:
        """The source audio of every stream through the content encoder (one batched call per
        encoder chunk), then one chunk of every stream that has one in one ``step.onnx`` call
        (targets may differ: their references are padded to the longest and masked), decoded to
        audio → per stream its audio (empty for a stream without a chunk). Each stream's audio is
        what it gets alone."""
        self.encode_content(streams)
        ready = [s for s in streams if s.chunk_ready]
        audio = {id(s): a for s, a in zip(ready, self._decode(ready, self._step(ready)))} if ready else {}
        return [audio.get(id(s), np.zeros(0, np.float32)) for s in streams]

    def encode_content(self, streams: Sequence[VcStream]) -> None:
        """All source audio the streams hold through the content encoder, every stream with an
        encoder chunk waiting in one call per chunk; the frames join each stream's pending content."""
        while True:
            waiting = [s for s in streams if s.content.ready]
            if not waiting:
                break
            for s, frames in zip(waiting, self.content.step_many([s.content for s in waiting])):
                s.push_content(frames)

    def _step(self, streams: list[VcStream]) -> list[np.ndarray]:
        """The next chunk of each stream (all ready) → its raw latents (n_i, D); caches advanced."""
        n, r = self.chunk, max(s.target.mask.shape[1] for s in streams)
        lens = [min(n, len(s.pending)) for s in streams]

        def pad_ref(a: np.ndarray) -> np.ndarray:  # (N, 1, H, R_i, d) → (N, 1, H, r, d)
            return np.pad(a, ((0, 0), (0, 0), (0, 0), (0, r - a.shape[3]), (0, 0)))

        feeds = {
            "noise": np.stack([s.next_noise() for s in streams]),
            "content": np.stack([np.pad(s.pending[:k], ((0, n - k), (0, 0))) for s, k in zip(streams, lens)]),
            "ref_keys": np.concatenate([pad_ref(s.target.keys) for s in streams], axis=1),
            "ref_values": np.concatenate([pad_ref(s.target.values) for s in streams], axis=1),
            "ref_mask": np.concatenate([np.pad(s.target.mask, ((0, 0), (0, r - s.target.mask.shape[1]))) for s in streams]),
            "spk": np.stack([s.target.spk for s in streams]),
            "keys": np.concatenate([s.keys for s in streams], axis=1),
            "values": np.concatenate([s.values for s in streams], axis=1),
            "cache_len": np.concatenate([s.cache_len for s in streams]),
            "chunk_lens": np.array(lens, dtype=np.int64),
        }
        latents, keys, values, cache_len = self.step_session.run(None, feeds)
        out = []
        for i, (s, k) in enumerate(zip(streams, lens)):
            s.keys, s.values, s.cache_len = keys[:, i : i + 1], values[:, i : i + 1], cache_len[i : i + 1]
            s.pending = s.pending[k:]
            out.append(latents[i, :k])
        return out

    def _decode(self, streams: list[VcStream], latents: list[np.ndarray]) -> list[np.ndarray]:
        """Each stream's latents (k_i, D) through its own decoder state, streams of equal k in one
        decoder call → audio (k_i × hop,) each."""
        out: list[np.ndarray | None] = [None] * len(streams)
        for k in sorted({len(z) for z in latents}):
            group = [i for i, z in enumerate(latents) if len(z) == k]
            dec = self.codec.decoder
            z = np.stack([latents[i].T for i in group])  # (G, D, k)
            states = [np.concatenate([streams[i].decoder.state[j] for i in group]) for j in range(len(self.codec._state_names))]
            audio, *new = dec.run(None, {"latents": z, **dict(zip(self.codec._state_names, states))})
            for g, i in enumerate(group):
                streams[i].decoder.state = [st[g : g + 1] for st in new]
                out[i] = audio[g, 0]
        return out
