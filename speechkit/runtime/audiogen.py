"""Text-to-music with no torch, on a folder made by :mod:`speechkit.export.audiogen`: captions →
RVQ tokens by MAGNeT's span decoding, the delay-pattern AR model, or the hybrid of both (the loops
of ``speechkit.decoding.magnet``, fed by ONNX Runtime sessions), → audio by the codec's decoder.

    gen = MusicGenerator("exp/audiogen/onnx")
    clips = gen.generate(["calm piano in c major", "upbeat rock at 128 bpm"], seconds=10)   # 2 arrays
    clips = gen.generate(["calm piano"], 10, mode="hybrid", rescore=0.3, seed=1)

Graphs (B: batch, K: codebooks, T: frames, L: caption states, D: d_model, N: layers, H: heads,
d: head dim, M: cached AR steps):
  text.onnx      ids [B, L'] → text_states [B, L, D], text_mask [B, L]           MAGNeT's captions
  magnet.onnx    tokens [B, K, T], text_states, text_mask, stage [1|B] → logits [B, T, card]
  ar_text.onnx   ids → text_keys, text_values [N, B, H, L, d], text_mask         the AR's captions
  ar_step.onnx   tokens [B, K, S] (S new delay steps), keys, values [N, B, H, M, d], text_keys,
                 text_values, text_mask → logits [B, K, card] of the last step, new_keys, new_values
  ar_score.onnx  tokens [B, K, T] (MASK where unknown), text_keys, text_values, text_mask → logp [B, K, T]
The AR step and scorer hold one model's weights: they keep them once, in ``ar_weights.bin``.

The same seed gives the same tokens as the torch models' callables (``Magnet.logits_fn``,
``DelayAR.decoding_fns``) in float32: both draw from one ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from speechkit.decoding.magnet import ArOptions, MagnetOptions, ar_generate, hybrid_generate, magnet_generate
from speechkit.errors import SpeechkitError
from speechkit.text.captions import caption_words
from speechkit.runtime.codec import CodecRuntime
from speechkit.runtime.session import make_session

FAMILY = "audiogen"
CONFIG_FILE = "audiogen.json"
TEXT_FILE, MAGNET_FILE = "text.onnx", "magnet.onnx"
AR_TEXT_FILE, AR_STEP_FILE, AR_SCORE_FILE = "ar_text.onnx", "ar_step.onnx", "ar_score.onnx"
MAGNET_GRAPHS = (TEXT_FILE, MAGNET_FILE)
AR_GRAPHS = (AR_TEXT_FILE, AR_STEP_FILE, AR_SCORE_FILE)
AR_WEIGHTS_FILE = "ar_weights.bin"  # the AR step's and scorer's weights, one copy (ONNX external data)
CODEC_DIR = "codec"
MODES = ("magnet", "hybrid", "ar")
HYBRID_AR_SECONDS = 1.0  # hybrid mode: this much from the start autoregressively, the rest by MAGNeT
PAD, UNK = 0, 1  # the caption vocabulary's first two ids (``models/audiogen/text.py``)

Progress = Callable[[int, int], None]  # (model calls done, calls expected)


class CaptionIds:
    """A caption vocabulary (``<pad>``, ``<unk>``, words) → padded id arrays for a text graph."""

    def __init__(self, words: Sequence[str], max_tokens: int):
        self.ids = {w: i for i, w in enumerate(words)}
        self.max_tokens = max_tokens

    def batch(self, captions: Sequence[str]) -> np.ndarray:
        """Captions → ids [B, L] int64, right-padded with PAD, cut at ``max_tokens`` (L >= 1)."""
        rows = [[self.ids.get(w, UNK) for w in caption_words(c)][: self.max_tokens] for c in captions]
        out = np.full((len(rows), max([1, *map(len, rows)])), PAD, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out


def check_captions(captions) -> list[str]:
    """A caption or a list of them → the list; one-line errors for none, a non-string, or a
    caption with no words (the empty caption is the null condition of guidance, not a request)."""
    if isinstance(captions, str):
        captions = [captions]
    captions = list(captions)
    if not captions:
        raise SpeechkitError("no captions to generate from")
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise SpeechkitError(f"caption {i + 1} is a {type(c).__name__}, not text")
        if not caption_words(c):
            raise SpeechkitError(f"caption {i + 1} ({c!r}) is empty: describe the music in words")
    return captions


class MusicGraphs:
    """The exported models' sessions and the decoders' callables over them (numpy in and out).
    A folder with only ``text.onnx`` + ``magnet.onnx`` runs MAGNeT alone (``has_ar`` False)."""

    def __init__(self, folder: str | Path, words: Sequence[str], ar_words: Sequence[str] | None = None, num_threads: int = 1,
                 device: str = "cpu"):
        folder = Path(folder)
        self.folder, self.num_threads, self.device = folder, num_threads, device
        for name in MAGNET_GRAPHS:
            if not (folder / name).is_file():
                raise SpeechkitError(f"{folder / name}: no such file (an incomplete export)")
        self.text = make_session(folder / TEXT_FILE, num_threads, device=device)
        self.magnet = make_session(folder / MAGNET_FILE, num_threads, device=device)
        meta = self.magnet.get_modelmeta().custom_metadata_map
        if meta.get("model_family") != FAMILY:
            raise SpeechkitError(f"{folder / MAGNET_FILE}: not a text-to-music graph (model_family={meta.get('model_family')!r})")
        self.codebooks, self.card = int(meta["codebooks"]), int(meta["card"])
        self.captions = CaptionIds(words, int(meta["max_tokens"]))
        self.has_ar = (folder / AR_STEP_FILE).is_file()
        if self.has_ar:
            missing = [n for n in AR_GRAPHS if not (folder / n).is_file()]
            if missing or ar_words is None:
                raise SpeechkitError(f"{folder}: an incomplete AR export (missing {', '.join(missing) or 'the AR vocabulary'})")
            self.ar_text = make_session(folder / AR_TEXT_FILE, num_threads, device=device)
            self.ar_step = make_session(folder / AR_STEP_FILE, num_threads, device=device)
            ar_meta = self.ar_step.get_modelmeta().custom_metadata_map
            self.ar_captions = CaptionIds(ar_words, int(ar_meta["max_tokens"]))
            layers, _, heads, _, head_dim = self.ar_step.get_inputs()[1].shape  # keys [N, B, H, M, d]
            self._cache_dims = (int(layers), int(heads), int(head_dim))

    @cached_property
    def ar_score(self):
        """The scorer's session, opened on first use (only rescoring needs it)."""
        self._require_ar("rescore")
        return make_session(self.folder / AR_SCORE_FILE, self.num_threads, device=self.device)

    # -- MAGNeT

    def text_states(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Captions → MAGNeT's caption states [B, L, D] and mask [B, L]."""
        return tuple(self.text.run(None, {"ids": self.captions.batch(captions)}))

    def magnet_logits_fn(self, captions: Sequence[str], on_step: Callable[[], None] | None = None
                         ) -> Callable[[np.ndarray, int, bool], np.ndarray]:
        """``logits_fn(tokens [B, K, T], stage, null_text) → logits [B, T, card]`` for
        ``magnet_generate``; the null condition is the empty caption (NULL state alone).
        ``on_step`` is called after each conditional call (one per decoding step)."""
        cond = self.text_states(captions)
        states, mask = self.text.run(None, {"ids": np.full((1, 1), PAD, np.int64)})
        null = (np.repeat(states, len(captions), axis=0), np.repeat(mask, len(captions), axis=0))

        def logits(tokens: np.ndarray, stage: int, null_text: bool) -> np.ndarray:
            states, mask = null if null_text else cond
            out = self.magnet.run(None, {"tokens": tokens, "text_states": states, "text_mask": mask,
                                         "stage": np.array([stage], np.int64)})[0]
            if on_step is not None and not null_text:
                on_step()
            return out

        return logits

    # -- the AR model

    def _require_ar(self, what: str) -> None:
        if not self.has_ar:
            raise SpeechkitError(f"{what} needs the AR model's graphs ({', '.join(AR_GRAPHS)}): export with an AR model (--ar)")

    def ar_text_kv(self, captions: Sequence[str] | None, batch: int) -> list[np.ndarray]:
        """Captions (None: the empty caption for all ``batch`` rows) → [text_keys, text_values, text_mask]."""
        ids = self.ar_captions.batch(captions) if captions is not None else np.full((batch, 1), PAD, np.int64)
        return self.ar_text.run(None, {"ids": ids})

    def ar_fns(self, captions: Sequence[str], on_step: Callable[[], None] | None = None) -> tuple[Callable, Callable]:
        """``init_fn(null_text) → cache`` and ``step_fn(tokens [B, K], cache) → (logits [B, K,
        card], cache)`` for ``ar_generate``. Under guidance the conditional and the null cache run
        as one batch of 2B rows (:class:`_CachePair`). ``on_step`` is called once per step."""
        self._require_ar("the AR mode")
        batch = len(captions)
        layers, heads, head_dim = self._cache_dims
        empty = np.zeros((layers, batch, heads, 0, head_dim), np.float32)
        cond, null = self.ar_text_kv(captions, batch), []
        pair: _CachePair | None = None

        def init_fn(null_text: bool) -> _Half:
            nonlocal pair
            if not null_text:  # a generation starts: a new pair
                pair = _CachePair(empty, *cond)
                return _Half(pair, 0, 0)
            if pair is None:
                raise SpeechkitError("the null cache of guidance starts after the conditional one")
            null[:] = null or self.ar_text_kv(None, batch)
            pair.add_null(*null)
            return _Half(pair, 1, 0)

        def step_fn(tokens: np.ndarray, cache: _Half) -> tuple[np.ndarray, _Half]:
            return cache.pair.step(cache, tokens, self._run_step, on_step)

        return init_fn, step_fn

    def _run_step(self, tokens, keys, values, text_keys, text_values, text_mask) -> list[np.ndarray]:
        """One delay step [B, K] through ``ar_step.onnx`` → [logits, new_keys, new_values]."""
        return self.ar_step.run(None, {"tokens": tokens[..., None], "keys": keys, "values": values, "text_keys": text_keys,
                                       "text_values": text_values, "text_mask": text_mask})

    def rescore_fn(self, captions: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
        """``rescore_fn(tokens [B, K, T]) → log-probs [B, K, T]`` (MASK = card scores 0) for MAGNeT."""
        self._require_ar("rescore")
        tk, tv, tm = self.ar_text_kv(captions, len(captions))

        def rescore(tokens: np.ndarray) -> np.ndarray:
            return self.ar_score.run(None, {"tokens": tokens, "text_keys": tk, "text_values": tv, "text_mask": tm})[0]

        return rescore


class _Half:
    """One condition's view of a :class:`_CachePair`: its rows (0: conditional, 1: null) and the
    steps it has taken."""

    def __init__(self, pair: _CachePair, half: int, steps: int):
        self.pair, self.half, self.steps = pair, half, steps


class _CachePair:
    """The AR model's KV cache of the conditional rows [0, B) and, under guidance, the null rows
    [B, 2B), stepped in one ``ar_step.onnx`` call (a step costs about one call's overhead, not
    two). ``ar_generate`` steps both caches with the same tokens, the conditional first; the first
    call of a step runs both halves, the second takes the logits kept for it. The null caption's
    keys are padded to the caption's length, masked (the same attention)."""

    def __init__(self, empty: np.ndarray, text_keys: np.ndarray, text_values: np.ndarray, text_mask: np.ndarray):
        self.keys = self.values = empty
        self.text_keys, self.text_values, self.text_mask = text_keys, text_values, text_mask
        self.halves, self.steps = 1, 0
        self.kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # half → (tokens, logits) of the step just run

    def add_null(self, text_keys: np.ndarray, text_values: np.ndarray, text_mask: np.ndarray) -> None:
        if self.steps or self.halves == 2:
            raise SpeechkitError("the null cache of guidance starts with the conditional one, before any step")
        pad = self.text_mask.shape[1] - text_mask.shape[1]  # >= 0: a caption has a word, the null caption none
        kv = ((0, 0), (0, 0), (0, 0), (0, pad), (0, 0))
        self.text_keys = np.concatenate([self.text_keys, np.pad(text_keys, kv)], axis=1)
        self.text_values = np.concatenate([self.text_values, np.pad(text_values, kv)], axis=1)
        self.text_mask = np.concatenate([self.text_mask, np.pad(text_mask, ((0, 0), (0, pad)))], axis=0)
        self.keys = self.values = np.concatenate([self.keys, self.keys], axis=1)
        self.halves = 2

    def step(self, half: _Half, tokens: np.ndarray, run: Callable, on_step: Callable[[], None] | None = None) -> tuple[np.ndarray, _Half]:
        """``half``'s logits [B, K, card] for ``tokens`` [B, K] and its cache one step on; ``run``:
        ``MusicGraphs._run_step``."""
        if half.steps < self.steps:  # the other half ran this step: take what was kept
            kept = self.kept.pop(half.half, None)
            if kept is None or half.steps + 1 != self.steps or not np.array_equal(kept[0], tokens):
                raise SpeechkitError("guided AR decoding must step its two caches together with the same tokens")
            return kept[1], _Half(self, half.half, self.steps)
        if self.kept:
            raise SpeechkitError("guided AR decoding stepped one cache twice before the other")
        logits, self.keys, self.values = run(np.concatenate([tokens] * self.halves), self.keys, self.values, self.text_keys,
                                             self.text_values, self.text_mask)
        self.steps += 1
        if on_step is not None:
            on_step()
        parts = np.split(logits, self.halves)
        self.kept = {h: (tokens, parts[h]) for h in range(self.halves) if h != half.half}
        return parts[half.half], _Half(self, half.half, self.steps)


def _pair(value, what: str) -> tuple[float, float]:
    """A number (constant) or a (start, end) pair → (start, end)."""
    if isinstance(value, (int, float)):
        return float(value), float(value)
    try:
        start, end = (float(v) for v in value)
    except (TypeError, ValueError):
        raise SpeechkitError(f"{what} is a number or a (start, end) pair, got {value!r}") from None
    return start, end


def decoding_options(magnet: MagnetOptions, ar: ArOptions, rescore: float = 0.0, steps: Sequence[int] | None = None,
                     cfg=None, temperature=None, top_p: float | None = None) -> tuple[MagnetOptions, ArOptions]:
    """The defaults with the caller's changes. ``cfg`` and ``temperature``: a number is used
    throughout (MAGNeT at every step, the AR model), a pair (start, end) anneals MAGNeT's over its
    mask rate and gives the AR model its start. ``top_p`` goes to both."""
    m, a = {"rescore_weight": float(rescore)}, {}
    if steps is not None:
        m["steps"] = tuple(int(s) for s in steps)
    if cfg is not None:
        m["cfg"] = _pair(cfg, "cfg")
        a["cfg"] = m["cfg"][0]
    if temperature is not None:
        m["temperature"] = _pair(temperature, "temperature")
        a["temperature"] = m["temperature"][0]
    if top_p is not None:
        m["top_p"] = a["top_p"] = float(top_p)
    return replace(magnet, **m), replace(ar, **a)


class MusicGenerator:
    """An exported text-to-music folder (``audiogen.json``, the graphs, ``codec/``): captions →
    float32 mono clips at :attr:`sample_rate`."""

    def __init__(self, folder: str | Path, num_threads: int = 1, device: str = "cpu"):
        folder = Path(folder)
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise SpeechkitError(f"{path}: no such file (export a text-to-music model with `speechkit audiogen export`)")
        try:
            info = json.loads(path.read_text())
        except ValueError as e:
            raise SpeechkitError(f"{path}: not JSON ({e})") from None
        if info.get("model_family") != FAMILY:
            raise SpeechkitError(f"{folder}: not a text-to-music model (model_family={info.get('model_family')!r})")
        self.folder, self.info = folder, info
        self.graphs = MusicGraphs(folder, info["words"], info.get("ar_words"), num_threads, device)
        self.codec = CodecRuntime(folder / info.get("codec", CODEC_DIR), num_threads, device)
        self.codebooks, self.card = self.graphs.codebooks, self.graphs.card
        if self.codec.codebooks is None or self.codec.codebooks.shape[0] < self.codebooks or self.codec.codebooks.shape[1] != self.card:
            raise SpeechkitError(f"{folder}: the codec does not hold {self.codebooks} codebooks of {self.card} entries")
        self.sample_rate, self.frame_rate = self.codec.sample_rate, float(info["frame_rate"])
        self.max_frames = {"magnet": int(info["max_frames"]), "ar": int(info.get("ar_max_frames") or 0)}
        self.max_frames["hybrid"] = self.max_frames["magnet"]  # the AR part is shorter than the whole
        self.hybrid_ar_seconds = float(info["decoding"].get("hybrid_ar_seconds", HYBRID_AR_SECONDS))
        self.magnet_options = MagnetOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["decoding"]["magnet"].items()})
        self.ar_options = ArOptions(**info["decoding"]["ar"])

    @property
    def has_ar(self) -> bool:
        return self.graphs.has_ar

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this folder runs: all with the AR model's graphs, else MAGNeT's alone."""
        return MODES if self.has_ar else ("magnet",)

    def frames(self, seconds: float, mode: str = "magnet") -> int:
        """Codec frames of a clip of ``seconds``; one-line errors outside (0, the model's longest]."""
        if mode not in MODES:
            raise SpeechkitError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
        try:
            seconds = float(seconds)
        except (TypeError, ValueError):
            raise SpeechkitError(f"seconds must be a number, got {seconds!r}") from None
        if not math.isfinite(seconds) or seconds <= 0:
            raise SpeechkitError(f"seconds must be more than 0, got {seconds:g}")
        frames = round(seconds * self.frame_rate)
        limit = self.max_frames[mode]
        if mode != "magnet" and limit == 0:
            self.graphs._require_ar(f"mode {mode!r}")
        if frames > limit:
            raise SpeechkitError(f"{seconds:g} s is longer than this model generates in mode {mode!r}: "
                                 f"at most {limit / self.frame_rate:g} s ({limit} frames)")
        need = 2 if mode == "hybrid" else 1
        if frames < need:
            raise SpeechkitError(f"{seconds:g} s is shorter than {need} codec frame(s) ({need / self.frame_rate:g} s) in mode {mode!r}")
        return frames

    def hybrid_ar_frames(self, frames: int) -> int:
        """The frames of a ``frames``-long clip that hybrid mode makes autoregressively:
        ``hybrid_ar_seconds`` (audiogen.json's, or set on this object), at least one, and at
        least one frame fewer than the clip."""
        return min(max(1, round(self.hybrid_ar_seconds * self.frame_rate)), frames - 1)

    def tokens(self, captions, frames: int, mode: str = "magnet", rescore: float = 0.0, seed: int = 0,
               steps: Sequence[int] | None = None, cfg=None, temperature=None, top_p: float | None = None,
               progress: Progress | None = None) -> np.ndarray:
        """Captions → codes [B, K, frames] int64 (see :meth:`generate` for the options)."""
        captions = check_captions(captions)
        if mode not in MODES:
            raise SpeechkitError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
        if mode != "magnet":
            self.graphs._require_ar(f"mode {mode!r}")
        if rescore:
            if mode == "ar":
                raise SpeechkitError("rescore weighs MAGNeT's confidences (modes magnet, hybrid); mode 'ar' has none")
            self.graphs._require_ar("rescore")
        magnet, ar = decoding_options(self.magnet_options, self.ar_options, rescore, steps, cfg, temperature, top_p)
        b, k, card = len(captions), self.codebooks, self.card
        ar_frames = self.hybrid_ar_frames(frames)
        ar_steps = {"magnet": 0, "hybrid": ar_frames + k - 1, "ar": frames + k - 1}[mode]
        on_step = _counter((0 if mode == "ar" else sum(magnet.steps)) + ar_steps, progress) if progress else None
        logits_fn = self.graphs.magnet_logits_fn(captions, on_step) if mode != "ar" else None
        rescore_fn = self.graphs.rescore_fn(captions) if magnet.rescore_weight > 0 else None
        init_fn, step_fn = self.graphs.ar_fns(captions, on_step) if mode != "magnet" else (None, None)
        rng = np.random.default_rng(seed)
        if mode == "magnet":
            return magnet_generate(logits_fn, b, frames, k, card, magnet, rescore_fn=rescore_fn, rng=rng)
        if mode == "ar":
            return ar_generate(init_fn, step_fn, b, frames, k, card, ar, rng=rng)
        return hybrid_generate(logits_fn, init_fn, step_fn, b, frames, k, card, ar_frames, magnet, ar, rescore_fn=rescore_fn, rng=rng)

    def decode(self, codes: np.ndarray) -> list[np.ndarray]:
        """Codes [B, K, T] → B float32 clips of T × hop samples (the codec's streaming decoder)."""
        return [self.codec.decode(np.asarray(c, dtype=np.int64)) for c in codes]

    def generate(self, captions, seconds: float, mode: str = "magnet", rescore: float = 0.0, seed: int = 0,
                 steps: Sequence[int] | None = None, cfg=None, temperature=None, top_p: float | None = None,
                 progress: Progress | None = None) -> list[np.ndarray]:
        """Captions (one string or a list, generated as one batch) → one clip each of ``seconds``.

        mode: ``magnet`` (span decoding, ``steps`` per codebook), ``ar`` (one delay step at a time)
        or ``hybrid`` (the first ``hybrid_ar_seconds`` AR, the rest MAGNeT). rescore: w in [0, 1],
        MAGNeT's span confidences mixed with the AR model's log-probs. cfg, temperature: a number
        (constant) or (start, end) annealed over MAGNeT's mask rate; top_p: nucleus sampling; None
        keeps audiogen.json's defaults. The same seed gives the same clips.
        """
        frames = self.frames(seconds, mode)
        return self.decode(self.tokens(captions, frames, mode, rescore, seed, steps, cfg, temperature, top_p, progress))

    def describe(self) -> dict:
        """What the folder holds, for a report: graphs, weights, rates, default options."""
        return {"folder": str(self.folder), "graphs": self.info.get("graphs"), "weights": self.info.get("weights"),
                "codebooks": self.codebooks, "card": self.card, "frame_rate": self.frame_rate, "sample_rate": self.sample_rate,
                "max_seconds": self.max_frames["magnet"] / self.frame_rate, "has_ar": self.has_ar,
                "magnet": asdict(self.magnet_options), "ar": asdict(self.ar_options)}


def _counter(total: int, progress: Progress) -> Callable[[], None]:
    """A callable reporting (calls so far, ``total``) to ``progress`` each time it is called."""
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        progress(done, total)

    return tick
