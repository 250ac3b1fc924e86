"""CLEAR text-to-speech on an exported model dir (:mod:`speechkit.export.tts`), no torch: the
generation loop of ``ClearTTS.generate`` around two ONNX graphs — the transformer over the prefix
once (one call on an empty cache), then per latent a stop check, the flow head's steps (guided
Euler steps of a rectified flow, or one or two mean-flow steps) and one cached transformer call on
that latent — with the codec's streaming decoder turning every ``chunk_frames`` latents into audio.

    tts = Synthesizer("models/tts-clear-synth")
    audio = tts.synthesize("hello there", prompt="prompt.wav")
    for chunk in tts.stream("hello there", prompt="prompt.wav"):
        play(chunk)

The noise comes from ``np.random.default_rng(seed)``: the same seed gives the same audio here,
but not the same audio as the torch synthesiser, whose noise is torch's.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from speechkit.decoding.tts_options import SynthOptions, flow_steps, iter_pieces, max_frames, read_prompt
from speechkit.errors import SpeechkitError
from speechkit.runtime.codec import CodecRuntime
from speechkit.runtime.session import make_session

FAMILY = "tts-clear"
STEP_FILE, FLOW_FILE, LEGACY_PREFIX_FILE = "ar_step.onnx", "flow.onnx", "ar_prefix.onnx"
GRAPHS = (STEP_FILE, FLOW_FILE)
STEP_INPUTS = ["kinds", "phones", "latents", "cache"]  # ar_step.onnx: a block of positions after a cache
LEGACY_STEP_INPUTS = ["latent", "cache"]  # exports before the single graph: one latent (the prefix had its own graph)
FLOW_INPUTS = {"rectified": ["x", "t", "c", "cfg_scale"], "meanflow": ["x", "r", "t", "c"]}  # flow.onnx's inputs


def phoneme_ids(vocab, text: str) -> list[int]:
    """Ids of ``text``'s phoneme symbols under ``vocab`` (a PhonemeVocab); one-line error when
    there is nothing to say."""
    from speechkit.text.phonemes import text_to_phonemes

    ph = text_to_phonemes([text])[0]
    if not ph:
        raise SpeechkitError(f"nothing to say in {text!r}")
    return vocab.encode(ph)


def prompt_latents(codec: CodecRuntime, prompt, seconds: float) -> np.ndarray:
    """The codec latents (P, D) of the prompt's first ``seconds`` (a path or float32 samples)."""
    x = read_prompt(prompt, codec.sample_rate)[: int(seconds * codec.sample_rate)]
    if len(x) < codec.hop:
        raise SpeechkitError("the prompt is shorter than one codec frame")
    return np.ascontiguousarray(codec.encode(x).T)


def decode_chunks(codec: CodecRuntime, latents: Iterable[np.ndarray], chunk_frames: int) -> Iterator[np.ndarray]:
    """Latents (D,) one by one → audio chunks of ``chunk_frames`` latents each through the
    codec's streaming decoder (the last chunk may be shorter)."""
    dec, buf = codec.stream(), []
    for z in latents:
        buf.append(z)
        if len(buf) == chunk_frames:
            yield dec.decode(np.stack(buf, axis=1))
            buf = []
    if buf:
        yield dec.decode(np.stack(buf, axis=1))


def model_codec(model_dir: Path, info: dict, codec_dir: str | Path | None = None) -> Path:
    """The codec of an exported model: ``codec_dir`` when given, else export.json's ``codec``, a
    path relative to the model dir (``"codec"``, copied in: the default and every older export; or
    a codec shipped beside the model, such as ``"../codec-vae-synth"``)."""
    from speechkit.runtime.vc import resolve

    if codec_dir:
        return resolve(codec_dir, "codec", "codec_dir")
    path = model_dir / info.get("codec", "codec")
    if not (path / "decoder.onnx").is_file():
        raise SpeechkitError(f"{path}: no exported codec there (export.json's codec is relative to {model_dir}: "
                             f"keep the model beside its codec, or pass codec_dir)")
    return path


class ArTransformer:
    """The exported transformer. B: batch (1 here), T: new positions, D: latent dim, d: model dim,
    L: layers, H: heads, hd: head dim; caches are (L, 2, B, H, T_cache, hd), keys and values.

    ``ar_step.onnx`` takes a block of T ≥ 1 positions (kinds, phones (B, T), latents (B, T, D))
    after the cache of the earlier ones → the last position's hidden (B, d), stop_logit (B,) and
    the cache T positions longer. The prefix is one call on an empty cache, a latent one call with
    T = 1. Exports from before the single graph (``ar_prefix.onnx`` + an ``ar_step.onnx`` of one
    latent) run their two graphs."""

    def __init__(self, model_dir: Path, latent_kind: int, num_threads: int = 1, device: str = "cpu"):
        self.graph = make_session(model_dir / STEP_FILE, num_threads, device=device)
        inputs = [i.name for i in self.graph.get_inputs()]
        self.legacy_prefix = None
        if inputs == LEGACY_STEP_INPUTS:
            if not (model_dir / LEGACY_PREFIX_FILE).is_file():
                raise SpeechkitError(f"{model_dir / LEGACY_PREFIX_FILE}: no such file (an incomplete export)")
            self.legacy_prefix = make_session(model_dir / LEGACY_PREFIX_FILE, num_threads, device=device)
        elif inputs != STEP_INPUTS:
            raise SpeechkitError(f"{model_dir / STEP_FILE}: inputs {inputs} are not a CLEAR transformer's (re-export the model)")
        layers, _, _, heads, _, hd = self.graph.get_inputs()[-1].shape
        self.empty = np.zeros((layers, 2, 1, heads, 0, hd), np.float32)
        self.latent_kind, self.no_phone = np.full((1, 1), latent_kind, np.int64), np.zeros((1, 1), np.int64)

    def prefix(self, positions: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``positions`` (kinds, phones, latents: the whole prefix) on an empty cache → [hidden, stop_logit, cache]."""
        if self.legacy_prefix is not None:
            return self.legacy_prefix.run(None, positions)
        return self.graph.run(None, {**positions, "cache": self.empty})

    def block(self, positions: dict[str, np.ndarray], cache: np.ndarray) -> list[np.ndarray]:
        """Any block of positions after ``cache`` → [hidden, stop_logit, cache]. The text encoder
        sees this block alone: it holds none of the phonemes, or all of them and starts the
        utterance (phonemes first, ``cache`` empty: ``self.empty``)."""
        if self.legacy_prefix is not None:
            raise SpeechkitError("this export's transformer takes one latent at a time (re-export the model for blocks)")
        return self.graph.run(None, {**positions, "cache": cache})

    def step(self, z: np.ndarray, cache: np.ndarray) -> list[np.ndarray]:
        """One generated latent z (1, D), normalised, after ``cache`` → [hidden, stop_logit, cache]."""
        if self.legacy_prefix is not None:
            return self.graph.run(None, {"latent": z, "cache": cache})
        return self.graph.run(None, {"kinds": self.latent_kind, "phones": self.no_phone, "latents": z[:, None], "cache": cache})


class LatentSynthesizer:
    """Audio from a ``latents(text, prompt, opts)`` generator through ``self.codec``: streamed in
    chunks or whole. The ONNX :class:`Synthesizer` and the torch ``TorchSynthesizer`` share it."""

    codec: CodecRuntime
    PROMPT_CACHE = 16  # prompts whose latents are kept: a voice used again skips the codec encoder

    def prompt_latents(self, prompt, seconds: float) -> np.ndarray:
        """:func:`prompt_latents` through a small cache keyed by the prompt's samples (a server or
        a long text that speaks in the same voice again encodes it once)."""
        x = read_prompt(prompt, self.codec.sample_rate)[: int(seconds * self.codec.sample_rate)]
        key = hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).digest()
        cache: OrderedDict = self.__dict__.setdefault("_prompt_cache", OrderedDict())
        if key in cache:
            cache.move_to_end(key)
        else:
            cache[key] = prompt_latents(self.codec, x, seconds)
            if len(cache) > self.PROMPT_CACHE:
                cache.popitem(last=False)
        return cache[key]

    def latents(self, text: str, prompt, opts: SynthOptions = SynthOptions()) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def text_latents(self, text: str, prompt, opts: SynthOptions = SynthOptions()) -> Iterator[np.ndarray]:
        """The latents of any length of text: its sentence-sized pieces (:func:`iter_pieces`, at
        most ``PIECE_PHONEMES`` phoneme symbols each, the lengths the model was trained on) one
        after another in the prompt's voice, piece i drawing its noise from ``seed + i``. Memory
        and the time to the first latent do not grow with the text; a text of one piece gives
        exactly ``latents(text, ...)``."""
        samples = read_prompt(prompt, self.codec.sample_rate)  # read once for every piece
        for i, piece in enumerate(iter_pieces(text)):
            yield from self.latents(piece, samples, replace(opts, seed=opts.seed + i))

    def stream(self, text: str, prompt, opts: SynthOptions = SynthOptions()) -> Iterator[np.ndarray]:
        """Audio chunks (float32 mono at ``sample_rate``), one per ``chunk_frames`` latents."""
        yield from decode_chunks(self.codec, self.text_latents(text, prompt, opts), opts.chunk_frames)

    def synthesize(self, text: str, prompt, opts: SynthOptions = SynthOptions()) -> np.ndarray:
        """The whole text: every latent first, then one decoder call (what the stream must equal)."""
        z = list(self.text_latents(text, prompt, opts))
        return self.codec.decode(np.stack(z, axis=1)) if z else np.zeros(0, np.float32)


class Synthesizer(LatentSynthesizer):
    def __init__(self, model_dir: str | Path, num_threads: int = 1, codec_dir: str | Path | None = None, device: str = "cpu"):
        """``codec_dir``: the codec to use instead of the one export.json names."""
        from speechkit.text.phonemes import PhonemeVocab

        model_dir = Path(model_dir)
        info_path = model_dir / "export.json"
        if not info_path.is_file():
            raise SpeechkitError(f"{info_path}: no such file (export a CLEAR model with `speechkit tts export EXP OUT`)")
        info = json.loads(info_path.read_text())
        if info.get("model_family") != FAMILY:
            raise SpeechkitError(f"{model_dir}: not a CLEAR TTS model (model_family={info.get('model_family')!r})")
        for name in GRAPHS:
            if not (model_dir / name).is_file():
                raise SpeechkitError(f"{model_dir / name}: no such file (an incomplete export)")
        self.ar = ArTransformer(model_dir, int(info["kinds"]["latent"]), num_threads, device)
        self.flow = make_session(model_dir / FLOW_FILE, num_threads, device=device)
        self.objective = info.get("flow_objective", "rectified")  # exports before mean flow had a rectified head
        inputs = [i.name for i in self.flow.get_inputs()]
        if FLOW_INPUTS.get(self.objective) != inputs:
            raise SpeechkitError(f"{model_dir / 'flow.onnx'}: inputs {inputs} do not fit a {self.objective!r} flow head "
                                 f"(export.json's flow_objective)")
        codec_dir = self.codec_dir = model_codec(model_dir, info, codec_dir)
        self.codec = CodecRuntime(codec_dir, num_threads, device)
        self.vocab = PhonemeVocab.load(model_dir / "phones.txt")
        self.latent_dim, self.frame_rate = int(info["latent_dim"]), float(info["frame_rate"])
        if self.codec.latent_dim != self.latent_dim:
            raise SpeechkitError(f"{codec_dir}: {self.codec.latent_dim}-dim latents, the model's are {self.latent_dim}-dim")
        self.mean = np.asarray(info["latent_mean"], np.float32)
        self.std = np.asarray(info["latent_std"], np.float32)
        self.kinds = info["kinds"]
        thr = float(info["stop_threshold"])
        self.stop_logit = float(np.log(thr / (1.0 - thr)))  # sigmoid(logit) > thr, without exp overflow
        self.sample_rate = self.codec.sample_rate
        self.device_name = "cpu" if device == "cpu" else f"{device} (onnxruntime)"  # what timings report

    def prefix_inputs(self, ids: list[int], prompt: np.ndarray) -> dict[str, np.ndarray]:
        """``[phonemes] [sep] [prompt] [bos]`` as the transformer's inputs (as ``ClearTTS.prefix``);
        ``prompt`` (P, D) normalised."""
        k, tp, p = self.kinds, len(ids), len(prompt)
        kinds = np.array([k["phone"]] * tp + [k["sep"]] + [k["prompt"]] * p + [k["bos"]], np.int64)
        phones = np.concatenate([np.asarray(ids, np.int64), np.zeros(p + 2, np.int64)])
        latents = np.zeros((tp + p + 2, self.latent_dim), np.float32)
        latents[tp + 1 : tp + 1 + p] = prompt
        return {"kinds": kinds[None], "phones": phones[None], "latents": latents[None]}

    def sample(self, h: np.ndarray, noise: np.ndarray, opts: SynthOptions) -> np.ndarray:
        """The flow from ``temperature * noise`` (1, D) at t=0 to t=1, conditioned on the hidden
        state ``h`` (1, d) → a normalised latent (1, D): guided Euler steps (rectified), or
        mean-flow steps ``x_r = x_t - (t - r) u(x_t, r, t)`` (``cfg_scale`` unused: guidance is
        trained in). ``opts.steps`` equal steps (None: the objective's ``FLOW_STEPS``)."""
        x = (noise * opts.temperature).astype(np.float32)
        steps = flow_steps(self.objective, opts.steps)
        if self.objective == "meanflow":
            for i in range(steps):
                t, r = i / steps, (i + 1) / steps
                u = self.flow.run(None, {"x": x, "r": np.full(1, r, np.float32), "t": np.full(1, t, np.float32), "c": h})[0]
                x = x - (t - r) * u
            return x
        w = np.array([opts.cfg_scale], np.float32)
        for i in range(steps):
            v = self.flow.run(None, {"x": x, "t": np.full(1, i / steps, np.float32), "c": h, "cfg_scale": w})[0]
            x = x + v / steps
        return x

    def latents(self, text: str, prompt, opts: SynthOptions = SynthOptions()) -> Iterator[np.ndarray]:
        """Generated latents (D,), denormalised for the codec, one by one until the stop head
        fires or the length limit."""
        ids = phoneme_ids(self.vocab, text)
        z_prompt = (self.prompt_latents(prompt, opts.prompt_seconds) - self.mean) / self.std
        rng = np.random.default_rng(opts.seed)
        h, stop, cache = self.ar.prefix(self.prefix_inputs(ids, z_prompt.astype(np.float32)))
        for _ in range(max_frames(len(ids), self.frame_rate)):
            if float(stop[0]) > self.stop_logit:
                return
            z = self.sample(h, rng.standard_normal((1, self.latent_dim), dtype=np.float32), opts)
            yield z[0] * self.std + self.mean
            h, stop, cache = self.ar.step(z, cache)
