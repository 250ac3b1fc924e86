"""Speech synthesis for many connections over one CLEAR :class:`Synthesizer` (the ``/tts``
stream of ``speechkit serve``). Each connection's texts are said in order, cut into sentence
pieces (:func:`iter_pieces`) so that memory stays bounded and the first audio does not wait for a
long text; every audio chunk the runtime yields goes out at once as a 16-bit PCM frame.

CLEAR's runtime is not batched across streams, so one worker thread makes every chunk: the
connections take turns a chunk at a time (the worker's queue is first come, first served) while
the event loop keeps receiving and sending. The synthesiser, the phonemiser and every prompt are
touched only by that thread.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speechkit.decoding.tts_options import SynthOptions, check_prompt, iter_pieces, read_prompt
from speechkit.errors import SpeechkitError
from speechkit.runtime.tts import Synthesizer
from speechkit.serve.protocol import Close, pcm16

PROMPT_SECONDS = SynthOptions().prompt_seconds  # the runtime uses a prompt's first seconds; only they are kept


def cut_prompt(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """A prompt (N,) at the model's rate → the part the runtime uses, checked
    (:func:`check_prompt`: long enough, not silent), so that a stream never fails on its prompt
    after `ready`. One-line SpeechkitError otherwise."""
    return check_prompt(np.asarray(samples, np.float32)[: int(PROMPT_SECONDS * sample_rate)], sample_rate)


def load_prompts(folder: Path, sample_rate: int) -> dict[str, np.ndarray]:
    """Every ``*.wav`` in ``folder`` (any rate and channels) → its prompt samples at
    ``sample_rate``, by file stem; errors name the file."""
    prompts = {}
    for wav in sorted(folder.glob("*.wav")):
        samples = read_prompt(wav, sample_rate)  # its errors name the file
        try:
            prompts[wav.stem] = cut_prompt(samples, sample_rate)
        except SpeechkitError as e:
            raise SpeechkitError(f"{wav}: {e}") from None
    if not prompts:
        raise SpeechkitError(f"{folder}: no .wav files to use as prompt voices")
    return prompts


@dataclass(eq=False)
class TtsConnection:
    """One synthesis stream. ``texts`` holds what is still to be said (None: `end`); ``outbox``
    carries 16-bit PCM frames (bytes) and JSON-able dicts to the connection's writer, and a
    ``("close", code, reason)`` tuple closes it."""

    prompt: np.ndarray  # (N,) float32 at the model's rate, checked
    opts: SynthOptions
    max_samples: int  # the output limit (max_stream_seconds at the model's rate)
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    texts: asyncio.Queue = field(default_factory=asyncio.Queue)
    queued_chars: int = 0  # characters in `texts`
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set while the client may send more text
    speaking: bool = False
    quiet_since: float = field(default_factory=time.monotonic)  # when it last had nothing to say
    said: int = 0  # texts said to the end
    out_samples: int = 0
    compute_seconds: float = 0.0  # the worker's time on this stream's chunks
    t_first_text: float | None = None
    first_audio_ms: float | None = None  # first text received → first frame queued
    ending: bool = False
    close_with: tuple[int, str] | None = None  # why the stream was ended, when not by `end`
    closed: bool = False
    task: asyncio.Task | None = None


@dataclass
class TtsStats:
    texts: int = 0
    chunks: int = 0
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    connections_total: int = 0

    def as_dict(self) -> dict:
        return {"texts": self.texts, "chunks": self.chunks, "audio_seconds": round(self.audio_seconds, 3),
                "compute_seconds": round(self.compute_seconds, 3), "connections_total": self.connections_total}


class TtsEngine:
    """``max_queued_chars``: a connection whose queued text reaches this many characters is not
    read from until the synthesis takes some (TCP pushes back on the client), so memory stays
    bounded however much text is sent."""

    def __init__(self, tts: Synthesizer, max_queued_chars: int):
        self.tts, self.max_queued_chars = tts, max_queued_chars
        self.conns: set[TtsConnection] = set()
        self.stats = TtsStats()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speechkit-tts")

    def start(self) -> None:
        pass  # each connection has its own task, started by `open`

    async def stop(self) -> None:
        tasks = [c.task for c in self.conns if c.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pool.shutdown(wait=True)

    async def prompt(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """An uploaded prompt at ``sample_rate`` → checked samples at the model's rate (resampled
        in the worker thread). One-line SpeechkitError for one too short or silent."""
        from speechkit.audio.io import resample_audio

        rate = self.tts.sample_rate
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: cut_prompt(resample_audio(samples, sample_rate, rate), rate))

    def open(self, prompt: np.ndarray, seed: int, max_samples: int) -> TtsConnection:
        # steps=None: the flow head's own number of steps (10 rectified, 1 mean-flow)
        conn = TtsConnection(prompt, SynthOptions(steps=None, seed=seed), max_samples)
        conn.room.set()
        conn.task = asyncio.get_running_loop().create_task(self._speak(conn))
        self.conns.add(conn)
        self.stats.connections_total += 1
        return conn

    def say(self, conn: TtsConnection, text: str) -> None:
        if conn.t_first_text is None:
            conn.t_first_text = time.monotonic()
        conn.texts.put_nowait(text)
        conn.queued_chars += len(text)
        if conn.queued_chars >= self.max_queued_chars:
            conn.room.clear()

    async def room(self, conn: TtsConnection) -> None:
        """Wait until the client may send more text."""
        await conn.room.wait()

    def busy(self, conn: TtsConnection) -> bool:
        return conn.speaking or not conn.texts.empty()

    def end(self, conn: TtsConnection, close_with: tuple[int, str] | None = None) -> None:
        """No more text: say what is queued, send `done`, then close (with ``close_with`` = (code,
        reason) after an `error` message when the end was forced)."""
        if not conn.ending:
            conn.ending, conn.close_with = True, close_with
            conn.texts.put_nowait(None)

    def drop(self, conn: TtsConnection) -> None:
        """The client is gone: stop saying anything more."""
        conn.closed = True
        self.conns.discard(conn)
        if conn.task is not None:
            conn.task.cancel()

    # --- the connection's task ----------------------------------------------------------------
    async def _speak(self, conn: TtsConnection) -> None:
        try:
            while (text := await conn.texts.get()) is not None:
                conn.queued_chars -= len(text)
                if conn.queued_chars < self.max_queued_chars:
                    conn.room.set()
                conn.speaking = True
                whole = await self._say(conn, text)
                conn.speaking, conn.quiet_since = False, time.monotonic()
                if not whole:
                    limit = conn.max_samples / self.tts.sample_rate
                    conn.close_with = (Close.TOO_LONG, f"stream longer than {limit:g} s of audio")
                    break
                conn.said += 1
                self.stats.texts += 1
            self._finish(conn)
        except SpeechkitError as e:  # a text the model cannot say (nothing speakable, a word too long)
            self._fail(conn, Close.BAD_MESSAGE, str(e))
        except Exception as e:  # a bug, not the client's fault: say so, keep serving the others
            print(f"speechkit serve: internal error on a /tts connection: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            self._fail(conn, Close.INTERNAL, f"internal error: {type(e).__name__}")

    async def _say(self, conn: TtsConnection, text: str) -> bool:
        """Every chunk of ``text`` to the connection as it is made → False when the stream's
        output limit cut it short."""
        loop = asyncio.get_running_loop()
        chunks = self._chunks(text, conn)  # runs in the worker, a chunk per call
        try:
            while (chunk := await loop.run_in_executor(self._pool, self._next, conn, chunks)) is not None:
                room = conn.max_samples - conn.out_samples
                if len(chunk) > room:
                    self._deliver(conn, chunk[:room])
                    return False
                self._deliver(conn, chunk)
        finally:
            try:  # let the generator go in the worker, after a call still running
                self._pool.submit(chunks.close)
            except RuntimeError:
                pass  # the server is stopping: the pool takes no more work
        return True

    def _chunks(self, text: str, conn: TtsConnection) -> Iterator[np.ndarray]:
        for piece in iter_pieces(text):
            yield from self.tts.stream(piece, conn.prompt, conn.opts)

    def _next(self, conn: TtsConnection, chunks: Iterator[np.ndarray]) -> np.ndarray | None:
        """Worker thread: the next chunk (None at the end), timed."""
        t0 = time.perf_counter()
        chunk = next(chunks, None)
        dt = time.perf_counter() - t0
        conn.compute_seconds += dt
        self.stats.compute_seconds += dt
        return chunk

    def _deliver(self, conn: TtsConnection, chunk: np.ndarray) -> None:
        if conn.closed or not len(chunk):
            return
        if conn.first_audio_ms is None:
            conn.first_audio_ms = (time.monotonic() - conn.t_first_text) * 1000.0
        conn.outbox.put_nowait(pcm16(chunk))
        conn.out_samples += len(chunk)
        self.stats.chunks += 1
        self.stats.audio_seconds += len(chunk) / self.tts.sample_rate

    def _finish(self, conn: TtsConnection) -> None:
        rate = self.tts.sample_rate
        conn.outbox.put_nowait({"type": "done", "texts": conn.said, "audio_seconds": round(conn.out_samples / rate, 3),
                                "first_audio_ms": None if conn.first_audio_ms is None else round(conn.first_audio_ms, 1),
                                "compute_seconds": round(conn.compute_seconds, 3)})
        if conn.close_with is not None:
            self._fail(conn, *conn.close_with)
        else:
            conn.outbox.put_nowait(("close", Close.NORMAL, "done"))
            self._forget(conn)

    def _fail(self, conn: TtsConnection, code: int, reason: str) -> None:
        conn.outbox.put_nowait({"type": "error", "code": int(code), "reason": reason})
        conn.outbox.put_nowait(("close", int(code), reason[:120]))  # a close reason must fit in a control frame
        self._forget(conn)

    def _forget(self, conn: TtsConnection) -> None:
        self.conns.discard(conn)
        conn.room.set()  # a reader waiting for room reads on and meets the close
