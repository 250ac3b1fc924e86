"""Text-to-music with trained experiments in PyTorch, on any device: a MAGNeT ``model.pt``, optionally
the delay-pattern AR baseline's (for ``mode="ar"``, ``"hybrid"`` and rescoring), and the RVQ codec
whose tokens they model. The decoding loops are ``speechkit.decoding.magnet``'s (numpy), fed by the
models' ``logits_fn`` / ``decoding_fns`` / ``rescore_fn``; the exported, torch-free generator is
``speechkit.runtime.audiogen``. Modes:

  magnet  MAGNeT's iterative span decoding, stage by stage (``rescore`` > 0: each step's span
          confidences mix in the AR model's log-probabilities with that weight)
  hybrid  the first ``hybrid_seconds`` autoregressively, the rest by MAGNeT given them
  ar      the AR model alone, one delay-pattern step per frame
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from speechkit.data.audiogen_dump import file_sha256, model_file
from speechkit.decoding.magnet import ArOptions, MagnetOptions, ar_generate, hybrid_generate, magnet_generate
from speechkit.errors import SpeechkitError
from speechkit.models.audiogen.ar import DelayAR
from speechkit.models.audiogen.io import load_audiogen
from speechkit.models.audiogen.magnet import Magnet
from speechkit.models.audiogen.text import CaptionTokenizer
from speechkit.models.codec.io import load_codec
from speechkit.models.codec.model import RvqCodec
from speechkit.train.audiogen_prepare import codebooks_sha256

MODES = ("magnet", "hybrid", "ar")


def default_steps(codebooks: int) -> tuple[int, ...]:
    """MAGNeT's decoding steps per stage: 20 for the first codebook, 10 for each finer one (the paper's)."""
    return (20,) + (10,) * (codebooks - 1)


@dataclass(frozen=True)
class GenerationOptions:
    magnet: MagnetOptions | None = None  # None: default_steps(K), the model's training span, the decoder's defaults
    ar: ArOptions = ArOptions()
    hybrid_seconds: float = 2.0  # hybrid mode: seconds made autoregressively before MAGNeT takes over
    batch: int = 32  # captions per decoding call
    # where MAGNeT's per-step sampling runs: "auto" (on a GPU there, else numpy), "torch" or "numpy"
    # (numpy is the torch-free runtime's arithmetic: the same seed gives the runtime's tokens)
    sampler: str = "auto"


class TorchSampler:
    """:class:`speechkit.decoding.magnet.NumpySampler`'s three steps on torch tensors, so MAGNeT's
    logits never leave the device: only the sampled ids and the frames' log-probabilities do. The
    same inverse-CDF draw from the same uniforms, in float32 (the numpy one uses float64), so ids
    can differ where a uniform falls within rounding of a boundary."""

    def __init__(self, device: torch.device):
        self.device = device

    def guided(self, cond: torch.Tensor, null: torch.Tensor | None, scale: float) -> torch.Tensor:
        return cond if null is None else null + scale * (cond - null)

    def sample(self, logits: torch.Tensor, where: np.ndarray, u: np.ndarray, temperature: float, top_k: int | None,
               top_p: float | None) -> np.ndarray:
        rows = logits[torch.from_numpy(where).to(self.device)]
        if temperature <= 0:
            return rows.argmax(-1).cpu().numpy()
        z = rows / temperature
        v = z.shape[-1]
        if top_k is not None and top_k < v:
            z = z.masked_fill(z < z.topk(top_k, dim=-1).values[:, -1:], float("-inf"))
        p = (z - z.amax(-1, keepdim=True)).exp()
        order = None
        if top_p is not None and top_p < 1.0:
            p, order = p.sort(dim=-1, descending=True)
            before = p.cumsum(-1) - p
            p = torch.where(before < top_p * p.sum(-1, keepdim=True), p, torch.zeros_like(p))
        c = p.cumsum(-1)
        uu = torch.from_numpy(u[where]).to(self.device, torch.float32)[:, None]
        j = (c <= uu * c[:, -1:]).sum(-1).clamp(max=v - 1)
        ids = j if order is None else order.gather(-1, j[:, None])[:, 0]
        return ids.cpu().numpy().astype(np.int64)

    def token_logprob(self, logits: torch.Tensor, tokens: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(tokens).to(self.device)
        return logits.log_softmax(-1).gather(-1, t[..., None])[..., 0].double().cpu().numpy()


class MusicGeneratorTorch:
    """``generate(captions, seconds, mode, rescore, seed)`` → one float32 waveform per caption at the
    codec's rate. ``codec``: a `speechkit codec train` experiment dir or model.pt (default: the one
    the MAGNeT model's tokens came from); it must be that codec, or a copy with the same codebooks."""

    def __init__(self, magnet: str | Path, ar: str | Path | None = None, codec: str | Path | None = None,
                 device: str | torch.device | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.magnet, self.magnet_words, self.tokens = _load_kind(magnet, "magnet", self.device)
        self.magnet_path, self.ar_path = Path(magnet), Path(ar) if ar is not None else None
        self.ar: DelayAR | None = None
        self.ar_words: CaptionTokenizer | None = None
        if ar is not None:
            self.ar, self.ar_words, ar_tokens = _load_kind(ar, "ar", self.device)
            _same_tokens(self.magnet, self.tokens, self.ar, ar_tokens, ar)
        self.codec_path = model_file(codec or self.tokens.get("codec") or "")
        self.codec = _load_codec(self.codec_path, self.tokens, self.magnet.cfg, self.device)
        self.sample_rate = self.codec.cfg.sample_rate
        self.frame_rate = self.codec.cfg.frame_rate
        self.hop = self.codec.cfg.hop

    @property
    def codebooks(self) -> int:
        return self.magnet.cfg.codebooks

    @property
    def card(self) -> int:
        return self.magnet.cfg.card

    def frames_for(self, seconds: float) -> int:
        """Codec frames covering ``seconds`` (checked against the models' limits)."""
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
            raise SpeechkitError(f"seconds must be a positive number, got {seconds!r}")
        frames = math.ceil(seconds * self.frame_rate - 1e-6)
        limit = self.magnet.cfg.max_frames if self.ar is None else min(self.magnet.cfg.max_frames, self.ar.cfg.max_frames)
        if frames > limit:
            raise SpeechkitError(f"{seconds:g} s is {frames} frames; the models make at most {limit} "
                                 f"({limit / self.frame_rate:g} s)")
        return frames

    def check_request(self, captions: list[str], seconds: float, mode: str, rescore: float,
                      options: GenerationOptions = GenerationOptions()) -> int:
        """One-line errors for what ``generate`` cannot do (no or empty captions, a length that is
        not positive or past the models' limit, an unknown mode, a weight outside [0, 1], the AR
        model missing where it is needed, a hybrid clip no longer than its AR part) → frames to make."""
        if isinstance(captions, str) or not captions:
            raise SpeechkitError("give a list of at least one caption")
        for i, c in enumerate(captions):
            if not isinstance(c, str) or not c.strip():
                raise SpeechkitError(f"caption {i + 1} of {len(captions)} is empty")
        if mode not in MODES:
            raise SpeechkitError(f"unknown mode '{mode}' (known: {', '.join(MODES)})")
        if not 0.0 <= rescore <= 1.0:
            raise SpeechkitError(f"the rescoring weight must be in [0, 1], got {rescore}")
        if self.ar is None and (mode != "magnet" or rescore > 0):
            what = f"mode '{mode}'" if mode != "magnet" else f"rescoring (weight {rescore:g})"
            raise SpeechkitError(f"{what} needs the AR model (--ar AR_MODEL)")
        if mode == "ar" and rescore > 0:
            raise SpeechkitError("rescoring applies to the magnet and hybrid modes, not ar")
        if options.batch < 1:
            raise SpeechkitError(f"batch must be at least 1, got {options.batch}")
        frames = self.frames_for(seconds)
        if mode == "hybrid" and not 0 < self.hybrid_frames(options) < frames:
            raise SpeechkitError(f"hybrid mode makes {options.hybrid_seconds:g} s autoregressively: ask for more than that "
                                 f"(got {seconds:g} s)")
        return frames

    def hybrid_frames(self, options: GenerationOptions) -> int:
        return round(options.hybrid_seconds * self.frame_rate)

    def magnet_options(self, options: GenerationOptions, rescore: float) -> MagnetOptions:
        opts = options.magnet or MagnetOptions(steps=default_steps(self.codebooks), span=self.magnet.cfg.span)
        return replace(opts, rescore_weight=float(rescore))

    @torch.no_grad()
    def generate_codes(self, captions: list[str], seconds: float, mode: str = "magnet", rescore: float = 0.0,
                       seed: int = 0, options: GenerationOptions = GenerationOptions()) -> np.ndarray:
        """Codes [N, K, T] (int64, 0..card-1) for N captions, made ``options.batch`` at a time;
        the same captions, seed and batch give the same codes."""
        frames = self.check_request(captions, seconds, mode, rescore, options)
        mopts = self.magnet_options(options, rescore)
        ar_frames = self.hybrid_frames(options)
        rng = np.random.default_rng(seed)
        k, card = self.codebooks, self.card
        if options.sampler not in ("auto", "torch", "numpy"):
            raise SpeechkitError(f"unknown sampler '{options.sampler}' (known: auto, torch, numpy)")
        use_torch = options.sampler == "torch" or (options.sampler == "auto" and self.device.type == "cuda")
        sampler = TorchSampler(self.device) if use_torch else None
        out = []
        for at in range(0, len(captions), options.batch):
            part = captions[at : at + options.batch]
            b = len(part)
            text = self.magnet_words.batch(part, self.magnet.cfg.text.max_tokens).to(self.device)
            init_fn = step_fn = rescore_fn = None
            if self.ar is not None:
                ar_text = self.ar_words.batch(part, self.ar.cfg.text.max_tokens).to(self.device)
                init_fn, step_fn = self.ar.decoding_fns(ar_text)
                rescore_fn = self.ar.rescore_fn(ar_text) if rescore > 0 else None
            on_device = sampler is not None
            if mode == "magnet":
                codes = magnet_generate(self.magnet.logits_fn(text, on_device), b, frames, k, card, mopts, rescore_fn=rescore_fn,
                                        rng=rng, sampler=sampler)
            elif mode == "hybrid":
                codes = hybrid_generate(self.magnet.logits_fn(text, on_device), init_fn, step_fn, b, frames, k, card, ar_frames,
                                        mopts, options.ar, rescore_fn=rescore_fn, rng=rng, sampler=sampler)
            else:
                codes = ar_generate(init_fn, step_fn, b, frames, k, card, options.ar, rng=rng)
            out.append(codes)
        codes = np.concatenate(out)
        if codes.min() < 0 or codes.max() >= card:  # MASK or EMPTY left behind: a decoder bug, never audio
            raise RuntimeError(f"generation left tokens outside 0..{card - 1}")
        return codes

    @torch.no_grad()
    def decode(self, codes: np.ndarray) -> list[np.ndarray]:
        """Codes [N, K, T] → N float32 waveforms of T × hop samples (one codec call)."""
        z = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64)).to(self.device)
        audio = self.codec.decode(z)[:, 0].float().cpu().numpy()
        return [a for a in audio]

    def generate(self, captions: list[str], seconds: float, mode: str = "magnet", rescore: float = 0.0, seed: int = 0,
                 options: GenerationOptions = GenerationOptions()) -> list[np.ndarray]:
        """N captions → N float32 waveforms of round(seconds × rate) samples at ``self.sample_rate``."""
        codes = self.generate_codes(captions, seconds, mode, rescore, seed, options)
        n = round(seconds * self.sample_rate)
        out = []
        for at in range(0, len(codes), options.batch):
            out += [a[:n] for a in self.decode(codes[at : at + options.batch])]
        return out


def _load_kind(path: str | Path, kind: str, device: torch.device) -> tuple[Magnet | DelayAR, CaptionTokenizer, dict]:
    if not model_file(path).is_file():
        raise SpeechkitError(f"{path}: no such text-to-music model (a `speechkit audiogen train` experiment dir or its model.pt)")
    model, words, tokens = load_audiogen(path, device)
    want = Magnet if kind == "magnet" else DelayAR
    if not isinstance(model, want):
        got = "magnet" if isinstance(model, Magnet) else "ar"
        raise SpeechkitError(f"{path}: a '{got}' model where a '{kind}' model was expected")
    return model, words, tokens


def _same_tokens(magnet: Magnet, tokens: dict, ar: DelayAR, ar_tokens: dict, ar_path: str | Path) -> None:
    if (ar.cfg.codebooks, ar.cfg.card) != (magnet.cfg.codebooks, magnet.cfg.card):
        raise SpeechkitError(f"{ar_path}: {ar.cfg.codebooks} codebooks of {ar.cfg.card}, the MAGNeT model has "
                             f"{magnet.cfg.codebooks} of {magnet.cfg.card}")
    a, b = tokens.get("codebooks_sha256"), ar_tokens.get("codebooks_sha256")
    if a and b and a != b:
        raise SpeechkitError(f"{ar_path}: trained on another codec's tokens than the MAGNeT model")


def _load_codec(path: Path, tokens: dict, cfg, device: torch.device) -> RvqCodec:
    if not path.is_file():
        raise SpeechkitError(f"{path}: no such codec; give the RVQ codec the model was trained on (--codec)")
    model = load_codec(path, device)
    if not isinstance(model, RvqCodec) or model.cfg.rvq_conf.n_q < cfg.codebooks or model.cfg.rvq_conf.codebook_size != cfg.card:
        raise SpeechkitError(f"{path}: the models need an RVQ codec of at least {cfg.codebooks} codebooks of {cfg.card} entries")
    # the file itself, or a re-saved copy with the same codebooks (the tokens mean the same vectors)
    same_file = tokens.get("codec_sha256") in (None, file_sha256(path))
    if not same_file and tokens.get("codebooks_sha256") != codebooks_sha256(model, cfg.codebooks):
        raise SpeechkitError(f"{path}: not the codec the model's tokens came from (its codebooks differ); give that one (--codec)")
    return model
