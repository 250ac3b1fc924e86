"""A client for ``speechkit serve`` (protocol in docs/serve.md): stream samples, optionally at
real-time pace, or send texts to be said, and collect every message with its arrival time. Used
by the load test, the tests and ``speechkit stream --server``.

    result = asyncio.run(stream_audio("ws://127.0.0.1:8765/asr", samples, 16000, realtime=True))
    print(result.text, result.close_code)
    # voice conversion: the reference uploaded (or {"reference": "<preset>"}), audio back
    result = asyncio.run(stream_audio("ws://127.0.0.1:8765/vc", samples, 16000, start={"reference": "upload"},
                                      reference=ref_samples))
    converted = result.output  # float32 at the server's output rate
    # speech synthesis: texts in, audio frames back as they are made
    result = asyncio.run(speak("ws://127.0.0.1:8765/tts", ["Hello there.", "How are you?"], start={"prompt": "alice"}))
    speech, first = result.output, result.t_audio[0] - result.t_first_text
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from speechkit.serve.protocol import pcm16


@dataclass
class StreamResult:
    text: str = ""  # from `done`
    messages: list[dict] = field(default_factory=list)  # every server message, with "t" = arrival (monotonic s)
    close_code: int | None = None
    close_reason: str = ""
    t_first_audio: float = float("nan")
    t_last_audio: float = float("nan")  # when the last audio frame was sent ("end of speech")
    t_done: float = float("nan")
    audio: list[bytes] = field(default_factory=list)  # binary server messages (vc, tts: 16-bit PCM frames)
    t_audio: list[float] = field(default_factory=list)  # their arrival times (monotonic s)
    t_first_text: float = float("nan")  # tts: when the first text was sent
    send_lag: list[float] = field(default_factory=list)  # realtime: per audio frame, s it left after its real-time schedule

    @property
    def finals(self) -> list[dict]:
        return [m for m in self.messages if m.get("type") == "final"]

    @property
    def errors(self) -> list[dict]:
        return [m for m in self.messages if m.get("type") == "error"]

    @property
    def output(self) -> np.ndarray:
        """The binary frames as one float32 signal (N,), in [-1, 1)."""
        return np.frombuffer(b"".join(self.audio), dtype="<i2").astype(np.float32) / 32768.0


async def _session(url: str, out: StreamResult, send, on_message=None, open_timeout: float = 30.0) -> StreamResult:
    """Connect, run ``send(ws)`` while every server message is collected into ``out``, wait for
    the server to close."""
    async with connect(url, open_timeout=open_timeout, max_size=None, compression=None) as ws:

        async def receive():
            try:
                async for raw in ws:
                    if isinstance(raw, bytes):
                        out.audio.append(raw)
                        out.t_audio.append(time.monotonic())
                    else:
                        _on(json.loads(raw))
            except ConnectionClosed:
                pass  # the close code says why

        def _on(msg: dict) -> None:
            msg["t"] = time.monotonic()
            out.messages.append(msg)
            if msg.get("type") == "done":
                out.text, out.t_done = msg.get("text", ""), msg["t"]
            if on_message is not None:
                on_message(msg)

        reader = asyncio.create_task(receive())
        try:
            await send(ws)
        except ConnectionClosed:
            pass
        await reader
    out.close_code, out.close_reason = ws.close_code, ws.close_reason or ""
    return out


async def stream_audio(url: str, samples: np.ndarray, sample_rate: int, *, realtime: bool = False, frame_ms: float = 100.0,
                       fmt: str = "pcm16", on_message=None, open_timeout: float = 30.0, start: dict | None = None,
                       reference: np.ndarray | None = None) -> StreamResult:
    """Send ``start`` (with the extra fields ``start``), the ``reference`` samples as one frame when
    given, the samples in ``frame_ms`` frames (paced like a microphone when ``realtime``, each
    frame's lateness against that pace in ``send_lag``), then ``end``; return everything the server
    said."""
    out = StreamResult()
    step = max(1, int(sample_rate * frame_ms / 1000))

    async def send(ws):
        await ws.send(json.dumps({"type": "start", "sample_rate": sample_rate, "format": fmt, **(start or {})}))
        if reference is not None:
            await ws.send(_encode(reference, fmt))
        t0 = time.monotonic()
        out.t_first_audio = t0
        for at in range(0, len(samples), step):
            if realtime:
                await asyncio.sleep(max(0.0, t0 + at / sample_rate - time.monotonic()))
            await ws.send(_encode(samples[at : at + step], fmt))
            if realtime:
                out.send_lag.append(time.monotonic() - (t0 + at / sample_rate))
        out.t_last_audio = time.monotonic()
        await ws.send(json.dumps({"type": "end"}))

    return await _session(url, out, send, on_message, open_timeout)


async def speak(url: str, texts: list[str], *, start: dict | None = None, prompt: np.ndarray | None = None,
                prompt_rate: int = 16000, fmt: str = "pcm16", on_message=None, open_timeout: float = 30.0) -> StreamResult:
    """/tts: send ``start`` (with the extra fields ``start``; ``"prompt": "upload"`` and the
    ``prompt`` samples at ``prompt_rate`` as one frame when ``prompt`` is given), each of
    ``texts`` as a text message, then ``end``; return everything the server said (the speech in
    ``output``)."""
    out = StreamResult()
    head = {"type": "start", "mode": "tts", **({"prompt": "upload", "sample_rate": prompt_rate, "format": fmt}
                                               if prompt is not None else {}), **(start or {})}

    async def send(ws):
        await ws.send(json.dumps(head))
        if prompt is not None:
            await ws.send(_encode(prompt, fmt))
        out.t_first_text = time.monotonic()
        for text in texts:
            await ws.send(json.dumps({"type": "text", "text": text}))
        await ws.send(json.dumps({"type": "end"}))

    return await _session(url, out, send, on_message, open_timeout)


def _encode(samples: np.ndarray, fmt: str) -> bytes:
    return pcm16(samples) if fmt == "pcm16" else np.asarray(samples, dtype="<f4").tobytes()
