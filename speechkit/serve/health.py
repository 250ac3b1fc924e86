"""What the worker processes of `speechkit serve --workers N` know of each other: each one's
place and run folder (``WorkerSlot``), its /health figures published to a file there, and the
merge that makes the whole server's /health of them. The server (server.py) uses it inside a
worker; workers.py starts the workers."""

from __future__ import annotations

import json
import multiprocessing.connection
import os
import time
from dataclasses import dataclass
from pathlib import Path

PUBLISH_EVERY = 1.0  # seconds between a worker's health files when nothing else changes
SAME_IN_EVERY_WORKER = {"chunk_ms", "latency_ms", "output_rate", "model_rate", "max_text_chars"}


@dataclass
class WorkerSlot:
    """What one worker process knows of the others: its place (``index`` of ``count``), the run
    folder where every worker's health file lies, and ``link``, its pipe to the parent."""

    index: int
    count: int
    run_dir: str
    link: multiprocessing.connection.Connection

    def _file(self, index: int) -> Path:
        return Path(self.run_dir) / f"worker-{index}.json"

    def publish(self, health: dict) -> None:
        """This worker's health, written atomically (a reader never sees half a file)."""
        tmp = self._file(self.index).with_suffix(".tmp")
        tmp.write_text(json.dumps({"index": self.index, "pid": os.getpid(), "time": time.time(), "health": health}))
        os.replace(tmp, self._file(self.index))

    def gather(self, own: dict) -> dict:
        """The whole server's health: ``own`` (this worker's, fresh) merged with the other
        workers' last published ones."""
        entries = []
        for index in range(self.count):
            if index == self.index:
                entries.append({"index": index, "pid": os.getpid(), "time": time.time(), "health": own})
                continue
            try:
                entries.append(json.loads(self._file(index).read_text()))
            except (OSError, ValueError):
                pass  # not published yet
        out = merge_health([e["health"] for e in entries])
        out["workers"] = [{"index": e["index"], "pid": e["pid"], "connections": e["health"].get("connections", 0),
                           "connections_total": e["health"].get("connections_total", 0),
                           "engine_busy_seconds": e["health"].get("engine_busy_seconds", 0.0),
                           "age_seconds": round(max(0.0, time.time() - e["time"]), 1)} for e in entries]
        return out

    def ready(self, port: int, line: str) -> None:
        self.link.send(("ready", port, line))

    def failed(self, message: str) -> None:
        self.link.send(("error", message))


def merge_health(healths: list[dict]) -> dict:
    """Several workers' health dicts → one: counts and seconds summed (``rss_mb`` too: the
    server's memory), ``max_batch_seen`` the largest, per-model settings and names as they are."""
    out = {}
    for key, value in healths[0].items():
        values = [h[key] for h in healths if key in h]
        if isinstance(value, dict):
            out[key] = merge_health(values)
        elif key == "max_batch_seen":
            out[key] = max(values)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in SAME_IN_EVERY_WORKER:
            total = sum(values)
            out[key] = round(total, 6) if isinstance(total, float) else total
        else:
            out[key] = value
    return out
