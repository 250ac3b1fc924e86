"""Voice conversion for many connections at once, the twin of :mod:`speechkit.serve.engine`: one
background task gathers every stream with a chunk ready and converts them all with one
:meth:`VoiceConverter.step_many` call (one ``step.onnx`` run over every target voice, the codec
decoder batched) in a worker thread; each connection gets its chunk's audio as a 16-bit PCM frame.
Streams and target voices are touched only by that worker thread.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from speechkit.runtime.vc import Target, VcStream, VoiceConverter
from speechkit.serve.engine import EngineStats
from speechkit.serve.protocol import pcm16


@dataclass(eq=False)
class VcConnection:
    """Engine-side state of one conversion. ``outbox`` carries 16-bit PCM frames (bytes) and
    JSON-able dicts to the connection's writer; a ``("close", code, reason)`` tuple closes it."""

    stream: VcStream
    sample_rate: int
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    pending: list[np.ndarray] = field(default_factory=list)
    samples: int = 0  # received, at the client's rate
    out_samples: int = 0  # sent back, at the converter's rate
    ending: bool = False
    close_with: tuple[int, str] | None = None  # why the stream was ended, when not by `end`
    closed: bool = False


class VcEngine:
    def __init__(self, vc: VoiceConverter, max_batch: int = 64):
        self.vc, self.max_batch = vc, max_batch
        self.conns: set[VcConnection] = set()
        self.stats = EngineStats()
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speechkit-vc")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    async def target(self, samples: np.ndarray, sample_rate: int) -> Target:
        """An uploaded reference → its target voice, built in the worker thread (speaker encoder,
        codec encoder, reference graph) so that the event loop keeps serving. Raises ``AudioError``
        for a reference that is too short or silent."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.vc.target, samples, sample_rate)

    def open(self, target: Target, sample_rate: int, seed: int) -> VcConnection:
        conn = VcConnection(self.vc.stream(target, seed), sample_rate)
        self.conns.add(conn)
        self.stats.connections_total += 1
        return conn

    def feed(self, conn: VcConnection, samples: np.ndarray) -> None:
        conn.pending.append(samples)
        conn.samples += len(samples)
        self._wake.set()

    def end(self, conn: VcConnection, close_with: tuple[int, str] | None = None) -> None:
        """No more audio: convert the rest, send it and `done`, then close (with ``close_with`` =
        (code, reason) after an `error` message when the end was forced)."""
        if not conn.ending:
            conn.ending, conn.close_with = True, close_with
            self._wake.set()

    def drop(self, conn: VcConnection) -> None:
        """The client is gone: forget the stream without converting the rest."""
        conn.closed = True
        self.conns.discard(conn)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                jobs = []
                for c in list(self.conns):
                    audio, c.pending = c.pending, []
                    finish = c.ending and not c.stream.closed
                    if audio or finish or c.stream.ready:
                        jobs.append((c, audio, finish))
                if not jobs:
                    break
                for conn, frame, done in await loop.run_in_executor(self._pool, self._step, jobs):
                    if conn.closed:
                        continue
                    if frame:
                        conn.outbox.put_nowait(frame)
                    if done:
                        self._finish(conn)

    def _step(self, jobs: list[tuple[VcConnection, list[np.ndarray], bool]]) -> list[tuple[VcConnection, bytes, bool]]:
        """Worker thread: take in the queued audio, then convert one chunk of every ready stream,
        ``max_batch`` streams per ``step_many`` call → per job its chunk as 16-bit PCM (maybe
        empty) and whether the stream is done."""
        for c, audio, finish in jobs:
            for x in audio:
                c.stream.feed(x, c.sample_rate)
            if finish:
                c.stream.close()
        ready = [c for c, _, _ in jobs if c.stream.ready]
        frames: dict[int, bytes] = {}
        for i in range(0, len(ready), self.max_batch):
            batch = ready[i : i + self.max_batch]
            for c, audio in zip(batch, self.vc.step_many([c.stream for c in batch])):
                frames[id(c)] = pcm16(audio)
                c.out_samples += len(audio)
            self.stats.calls += 1
            self.stats.streams_decoded += len(batch)
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
        return [(c, frames.get(id(c), b""), c.stream.done) for c, _, _ in jobs]

    def _finish(self, conn: VcConnection) -> None:
        conn.outbox.put_nowait({"type": "done", "audio_seconds": round(conn.samples / conn.sample_rate, 3),
                                "output_seconds": round(conn.out_samples / self.vc.sample_rate, 3)})
        if conn.close_with is not None:
            code, reason = conn.close_with
            conn.outbox.put_nowait({"type": "error", "code": code, "reason": reason})
            conn.outbox.put_nowait(("close", code, reason))
        else:
            conn.outbox.put_nowait(("close", 1000, "done"))
        self.conns.discard(conn)
