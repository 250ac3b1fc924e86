"""A live `speechkit serve` for tests: the server on its own event loop in a thread, on a free
loopback port, and a raw WebSocket client that sends what it is given and records what comes back.
Imported by the server tests of every mode (ASR, transducer, VC, TTS)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from speechkit.serve.protocol import Limits


class LiveServer:
    """A SpeechServer for ``model`` (extra keyword arguments go to it) on a free port."""

    def __init__(self, model: Path, limits: Limits, max_batch: int = 16, **server_options):
        from speechkit.serve.server import SpeechServer

        self.server = SpeechServer(model, limits=limits, max_batch=max_batch, **server_options)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self.thread.start()
        assert self.ready.wait(60), "server did not start"

    async def _main(self):
        self.stop = self.loop.create_future()
        ready = self.loop.create_future()
        ready.add_done_callback(lambda f: (setattr(self, "port", f.result()), self.ready.set()))
        await self.server.serve("127.0.0.1", 0, ready, self.stop)

    def url(self, path: str = "/asr") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http(self, path: str) -> tuple[int, str, bytes]:
        """GET ``path`` → (status, content type, body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()

    def health(self) -> dict:
        return json.loads(self.http("/health")[2])

    def settled(self, engine) -> bool:
        """Wait up to 5 s until no connection is open and ``engine`` holds none; → whether it did."""
        for _ in range(50):
            if self.health()["connections"] == 0 and not engine.conns:
                return True
            asyncio.run(asyncio.sleep(0.1))
        return False

    def close(self):
        self.loop.call_soon_threadsafe(lambda: self.stop.done() or self.stop.set_result(None))
        self.thread.join(30)


async def raw_session(url: str, *messages, wait_close: float = 10.0):
    """Send ``messages`` as given (str → text, bytes → binary), then read until the server closes
    → (JSON messages received, 16-bit samples received in binary frames, close code, close reason)."""
    got, samples = [], 0
    async with connect(url, max_size=None) as ws:
        try:
            for m in messages:
                await ws.send(m)
            async with asyncio.timeout(wait_close):
                async for raw in ws:
                    if isinstance(raw, bytes):
                        samples += len(raw) // 2
                    else:
                        got.append(json.loads(raw))
        except ConnectionClosed:
            pass
    return got, samples, ws.close_code, ws.close_reason
