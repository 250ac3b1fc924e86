"""Voice conversion for many connections at once, the twin of :mod:`speechkit.serve.engine`: one
background task gathers every stream with a chunk ready and converts them all with one
:meth:`VoiceConverter.step_many` call (one ``step.onnx`` run over every target voice, the codec
decoder batched) in a worker thread; each connection gets its chunk's audio as a 16-bit PCM frame.
Streams and target voices are touched only by that worker thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from speechkit.runtime.vc import Target, VcStream, VoiceConverter
from speechkit.serve.engine import StreamConnection, StreamEngine
from speechkit.serve.protocol import pcm16


@dataclass(eq=False)
class VcConnection(StreamConnection):
    """One conversion: the runtime's stream; ``outbox`` also carries 16-bit PCM frames (bytes)."""

    stream: VcStream
    sample_rate: int
    out_samples: int = 0  # sent back, at the converter's rate


class VcEngine(StreamEngine):
    thread_name = "speechkit-vc"

    def __init__(self, vc: VoiceConverter, max_batch: int = 64):
        super().__init__(max_batch)
        self.vc = vc

    async def target(self, samples: np.ndarray, sample_rate: int) -> Target:
        """An uploaded reference → its target voice, built in the worker thread (speaker encoder,
        codec encoder, reference graph) so that the event loop keeps serving. Raises ``AudioError``
        for a reference that is too short or silent."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.vc.target, samples, sample_rate)

    def open(self, target: Target, sample_rate: int, seed: int) -> VcConnection:
        return self._add(VcConnection(self.vc.stream(target, seed), sample_rate))

    def _closed(self, conn: VcConnection) -> bool:
        return conn.stream.closed

    def _ready(self, conn: VcConnection) -> bool:
        return conn.stream.ready

    def _deliver(self, conn: VcConnection, frame: bytes) -> None:
        if frame:
            conn.outbox.put_nowait(frame)

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

    def _done_message(self, conn: VcConnection) -> dict:
        return {"type": "done", "audio_seconds": round(conn.samples / conn.sample_rate, 3),
                "output_seconds": round(conn.out_samples / self.vc.sample_rate, 3)}
