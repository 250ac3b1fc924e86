"""The WebSocket protocol of ``speechkit serve`` (docs/serve.md): close codes, limits, and the
parsing of client messages into checked values — every malformed message becomes one
:class:`ProtocolError` with a code and a one-line reason.

Three streams share the protocol: recognition at ``/asr`` (text results out), voice conversion
at ``/vc`` and speech synthesis at ``/tts`` (16-bit PCM frames out). A voice-conversion ``start``
names its target voice: ``"reference": "<preset>"`` (one of the server's, listed in ``/health``)
or ``"reference": "upload"``, and then the next message is the reference audio itself, one binary
frame in the start's rate and format (at least 1 s, not silent), before any source audio. A
synthesis ``start`` names its prompt voice the same way (``"prompt"``; its ``sample_rate`` and
``format`` describe the uploaded prompt and are needed only for one), and then the client sends
``{"type": "text", "text": "..."}`` messages, each said in order, and ``end``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from speechkit.decoding.tts_options import check_text
from speechkit.errors import SpeechkitError

PROTOCOL_VERSION = 1
FORMATS = {"pcm16": np.dtype("<i2"), "float32": np.dtype("<f4")}
MIN_RATE, MAX_RATE = 8000, 192000
MODES = ("asr", "vc", "tts")  # served at /asr, /vc and /tts
UPLOAD = "upload"  # a vc start's reference (a tts start's prompt) when the next message carries the audio
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
    max_text_chars: int = 5000  # tts: characters in one text message (about five minutes of speech)

    def __post_init__(self):
        for name in ("max_frame_bytes", "max_stream_seconds", "idle_timeout", "max_connections", "max_text_chars"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


class ProtocolError(Exception):
    def __init__(self, reason: str, code: int = Close.BAD_MESSAGE):
        super().__init__(reason)
        self.code, self.reason = int(code), reason


@dataclass(frozen=True)
class Start:
    sample_rate: int  # of the audio the client sends; 0 for a tts start that sends none (a preset prompt)
    format: str
    mode: str = "asr"
    reference: str | None = None  # vc: a preset's name, or UPLOAD
    seed: int = 0  # vc, tts: the seed of the stream's noise (same seed, same audio)
    prompt: str | None = None  # tts: a preset prompt voice's name, or UPLOAD

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
    asked = msg.get("mode", mode)
    if asked != mode:
        modes = f"mode is one of {list(MODES)}, each at its own path"
        where = f"it is served at /{asked} ({modes})" if asked in MODES else modes
        raise ProtocolError(f"start: mode {asked!r} on /{mode}: {where}")
    voice = {"vc": "reference", "tts": "prompt"}.get(mode)
    fields = {"type", "sample_rate", "format", "mode"} | ({voice, "seed"} if voice else set())
    unknown = set(msg) - fields
    if unknown:
        raise ProtocolError(f"start: unknown field {sorted(unknown)[0]!r}")
    name = msg.get(voice) if voice else None
    if voice and (not isinstance(name, str) or not name):
        raise ProtocolError(f'start: {voice} must be a preset\'s name or "{UPLOAD}", got {name!r}')
    rate, fmt = msg.get("sample_rate"), msg.get("format", "pcm16")
    if rate is None and mode == "tts" and name != UPLOAD:
        rate = 0  # a tts stream with a preset prompt sends no audio: its rate may go unsaid
    elif isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(f"start: sample_rate must be an integer in [{MIN_RATE}, {MAX_RATE}], got {rate!r}")
    if fmt not in FORMATS:
        raise ProtocolError(f"start: format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if mode == "asr":
        return Start(rate, fmt)
    seed = msg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ProtocolError(f"start: seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    if mode == "vc":
        return Start(rate, fmt, mode, name, seed)
    return Start(rate, fmt, mode, seed=seed, prompt=name)


def parse_control(text: str) -> str:
    """A text message after `start` → its type (only "end" is defined)."""
    msg = _message(text)
    if msg["type"] != "end":
        raise ProtocolError(f'unexpected message type {msg["type"]!r} (after start only audio and {{"type": "end"}})')
    return "end"


def parse_text(text: str | bytes, max_chars: int) -> str | None:
    """A message on ``/tts`` after `start` (and the uploaded prompt) → the text to say, stripped,
    or None for `end`. Empty text and text over ``max_chars`` characters are errors."""
    if isinstance(text, bytes):
        raise ProtocolError('expected {"type": "text", "text": ...} or {"type": "end"}, got binary data')
    msg = _message(text)
    if msg["type"] == "end":
        return None
    if msg["type"] != "text":
        raise ProtocolError(f'unexpected message type {msg["type"]!r} '
                            '(after start only {"type": "text", ...} and {"type": "end"})')
    unknown = set(msg) - {"type", "text"}
    if unknown:
        raise ProtocolError(f"text: unknown field {sorted(unknown)[0]!r}")
    say = msg.get("text")
    if not isinstance(say, str):
        raise ProtocolError(f"text: the text must be a string, got {type(say).__name__}")
    if len(say) > max_chars:
        raise ProtocolError(f"text: {len(say)} characters, more than the {max_chars} one message may have (send it in several)")
    try:
        return check_text(say)
    except SpeechkitError as e:
        raise ProtocolError(f"text: {e}") from None


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
