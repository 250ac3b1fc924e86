"""Decoding for many connections at once: one background task gathers every stream with a full
chunk ready, runs them through the model as one batch in a worker thread, and hands each
connection its new results. Streams are touched only by that worker thread; the event loop only
queues audio, so receiving never waits for the model and the model never waits for a slow client.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from time import perf_counter

import numpy as np

from speechkit.runtime.asr import DECODE_STAGES, OnlineRecognizer, Stream, feed_gates
from speechkit.runtime.events import Result, ResultTracker


@dataclass(eq=False, kw_only=True)
class StreamConnection:
    """Engine-side state every kind of stream shares. ``outbox`` carries what goes to the
    connection's writer (JSON-able dicts, or bytes for audio); a ``("close", code, reason)`` tuple
    tells it to close."""

    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    pending: list[np.ndarray] = field(default_factory=list)
    samples: int = 0  # received, at the client's rate
    ending: bool = False
    close_with: tuple[int, str] | None = None  # why the stream was ended, when not by `end`
    closed: bool = False


@dataclass(eq=False)
class Connection(StreamConnection):
    """One recognition stream: the runtime's stream and what its results were so far."""

    stream: Stream
    tracker: ResultTracker
    sample_rate: int


@dataclass
class EngineStats:
    calls: int = 0  # model calls
    streams_decoded: int = 0  # stream-chunks through the model
    max_batch_seen: int = 0
    connections_total: int = 0
    busy_seconds: float = 0.0  # wall seconds the worker thread spent in ``_step``
    # recognition: where those seconds went (see BatchEngine.STAGES), cumulative since start
    stage_seconds: dict[str, float] = field(default_factory=dict)


class StreamEngine:
    """The loop that the recognition and conversion engines share: connections queue audio from
    the event loop; one background task hands every connection with work (new audio, an end, a
    chunk ready) to ``_step`` in one worker thread, and delivers what comes back. Subclasses say
    what "input closed" and "ready" mean (``_closed``, ``_ready``), do the work (``_step``), deliver
    results (``_deliver``) and word the `done` message (``_done_message``)."""

    thread_name = "speechkit-engine"

    def __init__(self, max_batch: int = 64):
        self.max_batch = max_batch
        self.conns: set = set()
        self.stats = EngineStats()
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)
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

    def _add(self, conn: StreamConnection) -> StreamConnection:
        self.conns.add(conn)
        self.stats.connections_total += 1
        return conn

    def feed(self, conn: StreamConnection, samples: np.ndarray) -> None:
        conn.pending.append(samples)
        conn.samples += len(samples)
        self._wake.set()

    def end(self, conn: StreamConnection, close_with: tuple[int, str] | None = None) -> None:
        """No more audio: process the rest, send the last results and `done`, then close (with
        ``close_with`` = (code, reason) after an `error` message when the end was forced)."""
        if not conn.ending:
            conn.ending, conn.close_with = True, close_with
            self._wake.set()

    def drop(self, conn: StreamConnection) -> None:
        """The client is gone: forget the stream without processing the rest."""
        conn.closed = True
        self.conns.discard(conn)

    def _closed(self, conn) -> bool:
        raise NotImplementedError

    def _ready(self, conn) -> bool:
        raise NotImplementedError

    def _step(self, jobs: list) -> list:
        raise NotImplementedError

    def _deliver(self, conn, out) -> None:
        raise NotImplementedError

    def _done_message(self, conn) -> dict:
        raise NotImplementedError

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while jobs := self.take_jobs():
                self.deliver(await loop.run_in_executor(self._pool, self.timed_step, jobs))

    def take_jobs(self) -> list:
        """``(conn, audio, finish)`` of every stream with audio, an end to finish or a chunk ready;
        the audio is taken from its ``pending``."""
        jobs = []
        for c in list(self.conns):
            audio, c.pending = c.pending, []
            finish = c.ending and not self._closed(c)
            if audio or finish or self._ready(c):
                jobs.append((c, audio, finish))
        return jobs

    def deliver(self, results: list) -> list:
        """Each step result to its open connection, finishing those that are done → the finished."""
        finished = []
        for conn, out, done in results:
            if conn.closed:
                continue
            self._deliver(conn, out)
            if done:
                self._finish(conn)
                finished.append(conn)
        return finished

    def timed_step(self, jobs: list) -> list:
        """``_step`` of ``take_jobs``' jobs (the worker thread's part), its time added to the stats."""
        t = perf_counter()
        try:
            return self._step(jobs)
        finally:
            self.stats.busy_seconds += perf_counter() - t

    def _finish(self, conn: StreamConnection) -> None:
        conn.outbox.put_nowait(self._done_message(conn))
        if conn.close_with is not None:
            code, reason = conn.close_with
            conn.outbox.put_nowait({"type": "error", "code": code, "reason": reason})
            conn.outbox.put_nowait(("close", code, reason))
        else:
            conn.outbox.put_nowait(("close", 1000, "done"))
        self.conns.discard(conn)


class BatchEngine(StreamEngine):
    """Recognition: every ready stream's chunk through the model in batches of ``max_batch``."""

    thread_name = "speechkit-decode"
    # where the worker thread's time goes: taking in audio (resampling, fbank, the speech gate),
    # the recognizer's decode_streams parts (asr.DECODE_STAGES), turning streams into results
    STAGES = ("features", *DECODE_STAGES, "results")

    def __init__(self, rec: OnlineRecognizer, max_batch: int = 64):
        super().__init__(max_batch)
        self.rec = rec
        self.stats.stage_seconds = dict.fromkeys(self.STAGES, 0.0)
        self._dropped: list = []  # streams of gone clients whose state slots the worker thread frees

    def drop(self, conn: Connection) -> None:
        super().drop(conn)
        self._dropped.append(conn.stream)  # released in the worker thread: a decode may be running now

    def open(self, sample_rate: int) -> Connection:
        return self._add(Connection(self.rec.create_stream(), ResultTracker(self.rec), sample_rate))

    def _closed(self, conn: Connection) -> bool:
        return conn.stream.finished

    def _ready(self, conn: Connection) -> bool:
        return self.rec.is_ready(conn.stream)

    def _deliver(self, conn: Connection, results: list[Result]) -> None:
        for r in results:
            conn.outbox.put_nowait(r.to_dict())

    def _step(self, jobs: list[tuple[Connection, list[np.ndarray], bool]]) -> list[tuple[Connection, list[Result], bool]]:
        """Worker thread: take in the queued audio, then one chunk for every ready stream, in
        batches of at most ``max_batch``; each part's wall time into ``stats.stage_seconds``."""
        stages, timings = self.stats.stage_seconds, self.rec.timings
        while self._dropped:  # a finished stream's slot is freed by is_done below
            self.rec.release(self._dropped.pop())
        t0 = perf_counter()
        for c, audio, finish in jobs:
            if audio:
                # one call for all the frames queued since the last step: the fbank, resampler and
                # speech gate give the same bits however the audio is split, and their per-call cost
                # (the gate's most of all) is paid once, so a lagging engine catches up
                c.stream.accept_waveform(audio[0] if len(audio) == 1 else np.concatenate(audio), c.sample_rate, gate=False)
            if finish:
                c.stream.input_finished(gate=False)
        # then every stream's speech gate in one pass (the same bits as one by one, less numpy work a stream)
        feed_gates([c.stream for c, _, _ in jobs])
        stages["features"] += perf_counter() - t0
        ready = [c.stream for c, _, _ in jobs if self.rec.is_ready(c.stream)]
        for i in range(0, len(ready), self.max_batch):
            batch = ready[i : i + self.max_batch]
            before = dict(timings)  # the recognizer's own accumulators: this call's share is the difference
            self.rec.decode_streams(batch)
            for k in DECODE_STAGES:
                stages[k] += timings[k] - before[k]
            self.stats.calls += 1
            self.stats.streams_decoded += len(batch)
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
        t0 = perf_counter()
        # a stream's text changes only when it is decoded or done: the others have no news, and
        # asking their trackers would spell their partials again for nothing
        decoded = {id(s) for s in ready}
        out = []
        for c, _, _ in jobs:
            done = self.rec.is_done(c.stream)
            out.append((c, c.tracker.update(c.stream) if done or id(c.stream) in decoded else [], done))
        stages["results"] += perf_counter() - t0
        return out

    def _done_message(self, conn: Connection) -> dict:
        return {"type": "done", "text": " ".join(seg.text for seg in conn.stream.finals),
                "audio_seconds": round(conn.samples / conn.sample_rate, 3)}
