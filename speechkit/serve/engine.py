"""Decoding for many connections at once: one background task gathers every stream with a full
chunk ready, runs them through the model as one batch in a worker thread, and hands each
connection its new results. Streams are touched only by that worker thread; the event loop only
queues audio, so receiving never waits for the model and the model never waits for a slow client.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from speechkit.runtime.asr import OnlineRecognizer, Stream
from speechkit.runtime.events import Result, ResultTracker


@dataclass(eq=False)
class Connection:
    """Engine-side state of one stream. ``outbox`` carries JSON-able dicts to the connection's
    writer; a ``("close", code, reason)`` tuple tells it to close."""

    stream: Stream
    tracker: ResultTracker
    sample_rate: int
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    pending: list[np.ndarray] = field(default_factory=list)
    samples: int = 0  # received, at the client's rate
    ending: bool = False
    close_with: tuple[int, str] | None = None  # why the stream was ended, when not by `end`
    closed: bool = False


@dataclass
class EngineStats:
    calls: int = 0  # model calls
    streams_decoded: int = 0  # stream-chunks through the model
    max_batch_seen: int = 0
    connections_total: int = 0


class BatchEngine:
    def __init__(self, rec: OnlineRecognizer, max_batch: int = 64):
        self.rec, self.max_batch = rec, max_batch
        self.conns: set[Connection] = set()
        self.stats = EngineStats()
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speechkit-decode")
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

    def open(self, sample_rate: int) -> Connection:
        conn = Connection(self.rec.create_stream(), ResultTracker(self.rec), sample_rate)
        self.conns.add(conn)
        self.stats.connections_total += 1
        return conn

    def feed(self, conn: Connection, samples: np.ndarray) -> None:
        conn.pending.append(samples)
        conn.samples += len(samples)
        self._wake.set()

    def end(self, conn: Connection, close_with: tuple[int, str] | None = None) -> None:
        """No more audio: decode the rest, send the last results and `done`, then close (with
        ``close_with`` = (code, reason) after an `error` message when the end was forced)."""
        if not conn.ending:
            conn.ending, conn.close_with = True, close_with
            self._wake.set()

    def drop(self, conn: Connection) -> None:
        """The client is gone: forget the stream without decoding the rest."""
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
                    finish = c.ending and not c.stream.finished
                    if audio or finish or self.rec.is_ready(c.stream):
                        jobs.append((c, audio, finish))
                if not jobs:
                    break
                for conn, results, done in await loop.run_in_executor(self._pool, self._step, jobs):
                    if conn.closed:
                        continue
                    for r in results:
                        conn.outbox.put_nowait(r.to_dict())
                    if done:
                        self._finish(conn)

    def _step(self, jobs: list[tuple[Connection, list[np.ndarray], bool]]) -> list[tuple[Connection, list[Result], bool]]:
        """Worker thread: take in the queued audio, then one chunk for every ready stream, in
        batches of at most ``max_batch``."""
        for c, audio, finish in jobs:
            for x in audio:
                c.stream.accept_waveform(x, c.sample_rate)
            if finish:
                c.stream.input_finished()
        ready = [c.stream for c, _, _ in jobs if self.rec.is_ready(c.stream)]
        for i in range(0, len(ready), self.max_batch):
            batch = ready[i : i + self.max_batch]
            self.rec.decode_streams(batch)
            self.stats.calls += 1
            self.stats.streams_decoded += len(batch)
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
        done = [self.rec.is_done(c.stream) for c, _, _ in jobs]
        return [(c, c.tracker.update(c.stream), d) for (c, _, _), d in zip(jobs, done)]

    def _finish(self, conn: Connection) -> None:
        seconds = conn.samples / conn.sample_rate
        conn.outbox.put_nowait({"type": "done", "text": " ".join(seg.text for seg in conn.stream.finals),
                                "audio_seconds": round(seconds, 3)})
        if conn.close_with is not None:
            code, reason = conn.close_with
            conn.outbox.put_nowait({"type": "error", "code": code, "reason": reason})
            conn.outbox.put_nowait(("close", code, reason))
        else:
            conn.outbox.put_nowait(("close", 1000, "done"))
        self.conns.discard(conn)
