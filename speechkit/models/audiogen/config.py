"""Typed configs of the text-to-music family: the caption encoder, MAGNeT and the delay-pattern AR
baseline. Built from YAML with ``speechkit.config.from_dict(MagnetConfig, d)`` (unknown keys and
wrong types are one-line errors); every checkpoint carries ``to_dict(cfg)``.

Token streams come from our RVQ codec (``models/codec/model.py``: 16 kHz, 50 frames/s, codebooks of
1024); the family models the first ``codebooks`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from speechkit.errors import ConfigError

FRAME_RATE = 50.0  # codec frames per second (16 kHz / hop 320)


@dataclass(frozen=True)
class TextEncoderConfig:
    """The caption encoder, trained with the model (its width is the model's ``d_model``)."""

    vocab_size: int = 0  # the caption vocabulary, set from the training captions (0: not yet known)
    layers: int = 2
    heads: int = 4
    ff: int = 1024
    max_tokens: int = 64  # longer captions are cut


@dataclass(frozen=True)
class MagnetConfig:
    codebooks: int = 4  # K: RVQ levels modelled, one decoding stage each
    card: int = 1024  # entries per codebook (the input tables have one more: MASK = card)
    d_model: int = 256
    layers: int = 8
    heads: int = 4
    ff: int = 1024
    dropout: float = 0.1
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    cond_dropout: float = 0.2  # training items whose caption is replaced by the null caption (for CFG)
    span: int = 3  # frames per masked span (60 ms at 50 frames/s)
    window: int | None = 5  # stages >= 1 attend to frames within +-window; None: everywhere
    max_frames: int = 1500  # 30 s at 50 frames/s

    def __post_init__(self):
        _check_common(self.codebooks, self.card, self.d_model, self.heads, self.cond_dropout, self.max_frames)
        if self.span < 1:
            raise ConfigError(f"span must be at least one frame, got {self.span}")
        if self.window is not None and self.window < 0:
            raise ConfigError(f"window must be >= 0 frames (or null for no restriction), got {self.window}")


@dataclass(frozen=True)
class DelayArConfig:
    codebooks: int = 4
    card: int = 1024  # the input tables have two more: MASK = card (unknown, for rescoring), EMPTY = card + 1
    d_model: int = 256
    layers: int = 8
    heads: int = 4
    ff: int = 1024
    dropout: float = 0.1
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    cond_dropout: float = 0.2
    # training items whose codebooks above a random level q are fed as MASK (loss on levels <= q):
    # teaches the model to score MAGNeT's partial sequences (stage q: higher levels not decoded yet)
    mask_higher_prob: float = 0.2
    max_frames: int = 1500

    def __post_init__(self):
        _check_common(self.codebooks, self.card, self.d_model, self.heads, self.cond_dropout, self.max_frames)
        if not 0.0 <= self.mask_higher_prob <= 1.0:
            raise ConfigError(f"mask_higher_prob must be in [0, 1], got {self.mask_higher_prob}")


def _check_common(codebooks: int, card: int, d_model: int, heads: int, cond_dropout: float, max_frames: int) -> None:
    if codebooks < 1 or card < 2:
        raise ConfigError(f"need at least one codebook of at least 2 entries, got codebooks={codebooks}, card={card}")
    if d_model % heads or (d_model // heads) % 2:
        raise ConfigError(f"d_model ({d_model}) / heads ({heads}) must be an even whole number (rotary positions)")
    if not 0.0 <= cond_dropout < 1.0:
        raise ConfigError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
    if max_frames < 1:
        raise ConfigError(f"max_frames must be at least 1, got {max_frames}")
