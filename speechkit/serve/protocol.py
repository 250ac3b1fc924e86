"""The WebSocket protocol of ``speechkit serve`` (docs/serve.md): close codes, limits, and the
parsing of client messages into checked values — every malformed message becomes one
:class:`ProtocolError` with a code and a one-line reason.

Two streams share the protocol: recognition at ``/asr`` (text results out) and voice conversion
at ``/vc`` (16-bit PCM frames out). A voice-conversion ``start`` names its target voice:
``"reference": "<preset>"`` (one of the server's, listed in ``/health``) or ``"reference":
"upload"``, and then the next message is the reference audio itself, one binary frame in the
start's rate and format (at least 1 s, not silent), before any source audio."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

PROTOCOL_VERSION = 1
FORMATS = {"pcm16": np.dtype("<i2"), "float32": np.dtype("<f4")}
MIN_RATE, MAX_RATE = 8000, 192000
MODES = ("asr", "vc")  # served at /asr and /vc
UPLOAD = "upload"  # a vc start's reference when the next message carries the audio
MAX_SEED = 2**32 - 1


class Close(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # the server is shutting down
    TOO_BIG = 1009  # a frame over max_frame_bytes; the websockets library closes with it
    INTERNAL = 1011
    BUSY = 1013  # max_connections reached: try again later
    BAD_MESSAGE = 4000
    IDLE = 4001
    TOO_LONG = 4002


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int = 256 * 1024
    max_stream_seconds: float = 600.0
    idle_timeout: float = 10.0  # seconds without a message, before or after `start`
    max_connections: int = 100

    def __post_init__(self):
        for name in ("max_frame_bytes", "max_stream_seconds", "idle_timeout", "max_connections"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


class ProtocolError(Exception):
    def __init__(self, reason: str, code: int = Close.BAD_MESSAGE):
        super().__init__(reason)
        self.code, self.reason = int(code), reason


@dataclass(frozen=True)
class Start:
    sample_rate: int
    format: str
    mode: str = "asr"
    reference: str | None = None  # vc: a preset's name, or UPLOAD
    seed: int = 0  # vc: the seed of the stream's noise (same seed, same audio)

    @property
    def dtype(self) -> np.dtype:
        return FORMATS[self.format]


def _message(text: str | bytes) -> dict:
    if isinstance(text, bytes):
        raise ProtocolError("expected a JSON text message, got binary data")
    try:
        msg = json.loads(text)
    except ValueError:
        raise ProtocolError(f"not JSON: {text[:40]!r}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError('a text message must be a JSON object with a "type"')
    return msg


def parse_start(text: str | bytes, mode: str = "asr") -> Start:
    """The first message on the ``mode`` endpoint → :class:`Start`."""
    msg = _message(text)
    if msg["type"] != "start":
        raise ProtocolError(f'the first message must be {{"type": "start", ...}}, got type {msg["type"]!r}')
    rate, fmt = msg.get("sample_rate"), msg.get("format", "pcm16")
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(f"start: sample_rate must be an integer in [{MIN_RATE}, {MAX_RATE}], got {rate!r}")
    if fmt not in FORMATS:
        raise ProtocolError(f"start: format must be one of {sorted(FORMATS)}, got {fmt!r}")
    asked = msg.get("mode", mode)
    if asked != mode:
        where = f"served at /{asked}" if asked in MODES else f"one of {list(MODES)}"
        raise ProtocolError(f"start: mode {asked!r} on /{mode}: mode is {where}")
    fields = {"type", "sample_rate", "format", "mode"} | ({"reference", "seed"} if mode == "vc" else set())
    unknown = set(msg) - fields
    if unknown:
        raise ProtocolError(f"start: unknown field {sorted(unknown)[0]!r}")
    if mode == "asr":
        return Start(rate, fmt)
    reference, seed = msg.get("reference"), msg.get("seed", 0)
    if not isinstance(reference, str) or not reference:
        raise ProtocolError(f'start: reference must be a preset\'s name or "{UPLOAD}", got {reference!r}')
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ProtocolError(f"start: seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return Start(rate, fmt, mode, reference, seed)


def parse_control(text: str) -> str:
    """A text message after `start` → its type (only "end" is defined)."""
    msg = _message(text)
    if msg["type"] != "end":
        raise ProtocolError(f'unexpected message type {msg["type"]!r} (after start only audio and {{"type": "end"}})')
    return "end"


def decode_audio(data: bytes, start: Start) -> np.ndarray:
    """A binary frame → float32 samples in [-1, 1]."""
    width = start.dtype.itemsize
    if len(data) % width:
        raise ProtocolError(f"an audio frame of {len(data)} bytes is not a whole number of {start.format} samples")
    x = np.frombuffer(data, dtype=start.dtype)
    if start.format == "pcm16":
        return x.astype(np.float32) / 32768.0
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ProtocolError("float32 audio frame with NaN or infinite samples")
    return x


def pcm16(samples: np.ndarray) -> bytes:
    """Float samples → little-endian 16-bit PCM (clipped to [-1, 1))."""
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).round().astype("<i2").tobytes()
