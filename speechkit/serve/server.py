"""`speechkit serve`: the streaming recognizer behind a WebSocket (``/asr``, protocol in
docs/serve.md) and the browser demo page over HTTP, from one asyncio process built on the
``websockets`` library. Limits close only the offending connection, with a documented code."""

from __future__ import annotations

import asyncio
import json
import mimetypes
import signal
import sys
from http import HTTPStatus
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from speechkit.proc import rss_mb
from speechkit.runtime.asr import OnlineRecognizer
from speechkit.serve.engine import BatchEngine, Connection
from speechkit.serve.protocol import PROTOCOL_VERSION, Close, Limits, ProtocolError, decode_audio, parse_control, parse_start

STATIC = Path(__file__).parent / "static"
PAGES = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/capture-worklet.js": "capture-worklet.js"}


class AsrServer:
    def __init__(self, model_dir: str | Path, *, limits: Limits = Limits(), num_threads: int = 1, max_batch: int = 64,
                 att_context: tuple[int, int] | None = None):
        self.model_dir = str(model_dir)
        # no memory arena: working memory follows the batch size instead of staying at its peak
        self.rec = OnlineRecognizer(model_dir, num_threads=num_threads, att_context=att_context, memory_arena=False)
        self.limits, self.max_batch = limits, max_batch
        self.engine: BatchEngine | None = None
        self.active = 0  # open WebSocket connections, counted at the handshake

    # --- HTTP ---------------------------------------------------------------------------------
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None  # the WebSocket handshake goes on
        path = request.path.split("?", 1)[0]
        if path == "/health":
            return self._response(HTTPStatus.OK, json.dumps(self.health()).encode(), "application/json")
        if path in PAGES and (STATIC / PAGES[path]).is_file():
            file = STATIC / PAGES[path]
            ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            return self._response(HTTPStatus.OK, file.read_bytes(), ctype + ("; charset=utf-8" if ctype.startswith(("text/", "application/javascript")) else ""))
        return self._response(HTTPStatus.NOT_FOUND, f"not found: {path}\n".encode(), "text/plain; charset=utf-8")

    @staticmethod
    def _response(status: HTTPStatus, body: bytes, ctype: str) -> Response:
        headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
        return Response(status.value, status.phrase, headers, body)

    def health(self) -> dict:
        stats = self.engine.stats if self.engine else None
        return {"status": "ok", "model": self.model_dir, "connections": self.active, "rss_mb": round(rss_mb(), 1),
                "chunk_ms": round(self.rec.chunk_ms), "model_calls": stats.calls if stats else 0,
                "stream_chunks": stats.streams_decoded if stats else 0, "max_batch_seen": stats.max_batch_seen if stats else 0,
                "connections_total": stats.connections_total if stats else 0}

    # --- WebSocket ----------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        if ws.request.path.split("?", 1)[0] != "/asr":
            await ws.close(Close.BAD_MESSAGE, "unknown path; the recognizer is at /asr")
            return
        if self.active >= self.limits.max_connections:
            await ws.close(Close.BUSY, f"server full ({self.limits.max_connections} connections); try again later")
            return
        self.active += 1
        conn: Connection | None = None
        writer: asyncio.Task | None = None
        try:
            start = parse_start(await self._recv(ws, "no start message"))
            conn = self.engine.open(start.sample_rate)
            writer = asyncio.create_task(self._writer(ws, conn))
            conn.outbox.put_nowait({"type": "ready", "protocol": PROTOCOL_VERSION, "model_rate": self.rec.sample_rate,
                                    "chunk_ms": round(self.rec.chunk_ms), "max_frame_bytes": self.limits.max_frame_bytes,
                                    "max_stream_seconds": self.limits.max_stream_seconds, "idle_timeout": self.limits.idle_timeout})
            await self._read_audio(ws, conn, start)
            await writer  # sends the last results and `done`, then closes
        except ProtocolError as e:
            if conn is not None:
                self.engine.drop(conn)
            await self._error(ws, e.code, e.reason)
        except _Idle as e:
            if conn is None:
                await self._error(ws, Close.IDLE, str(e))
            else:  # decode what came, send it, then close with the idle code
                self.engine.end(conn, (Close.IDLE, str(e)))
                await writer
        except ConnectionClosed:
            pass
        except Exception as e:  # a bug, not the client's fault: say so, keep serving the others
            print(f"speechkit serve: internal error on a connection: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            await self._error(ws, Close.INTERNAL, f"internal error: {type(e).__name__}")
        finally:
            self.active -= 1
            if conn is not None:
                self.engine.drop(conn)
            if writer is not None and not writer.done():
                writer.cancel()

    async def _recv(self, ws: ServerConnection, what: str):
        try:
            return await asyncio.wait_for(ws.recv(), self.limits.idle_timeout)
        except TimeoutError:
            raise _Idle(f"{what} for {self.limits.idle_timeout:g} s") from None

    async def _read_audio(self, ws: ServerConnection, conn: Connection, start) -> None:
        max_samples = int(self.limits.max_stream_seconds * start.sample_rate)
        while True:
            msg = await self._recv(ws, "no message")
            if isinstance(msg, str):
                parse_control(msg)  # only "end" passes
                self.engine.end(conn)
                return
            x = decode_audio(msg, start)
            room = max_samples - conn.samples
            if len(x) > room:
                self.engine.feed(conn, x[:room])
                self.engine.end(conn, (Close.TOO_LONG, f"stream longer than {self.limits.max_stream_seconds:g} s"))
                return
            self.engine.feed(conn, x)

    async def _writer(self, ws: ServerConnection, conn: Connection) -> None:
        try:
            while True:
                item = await conn.outbox.get()
                if isinstance(item, tuple):
                    _, code, reason = item
                    await ws.close(code, reason)
                    return
                await ws.send(json.dumps(item))
        except ConnectionClosed:
            pass  # the client went away; the handler forgets the stream

    @staticmethod
    async def _error(ws: ServerConnection, code: int, reason: str) -> None:
        try:
            await ws.send(json.dumps({"type": "error", "code": int(code), "reason": reason}))
            await ws.close(code, reason[:120])  # a close reason must fit in a control frame
        except ConnectionClosed:
            pass

    # --- running ------------------------------------------------------------------------------
    async def serve(self, host: str = "127.0.0.1", port: int = 8765, ready: asyncio.Future | None = None,
                    stop: asyncio.Future | None = None) -> None:
        """Serve until ``stop`` resolves (or forever); ``ready`` gets the bound port."""
        self.engine = BatchEngine(self.rec, self.max_batch)
        self.engine.start()
        async with serve(self._handler, host, port, process_request=self._http, max_size=self.limits.max_frame_bytes,
                         max_queue=64, compression=None) as server:
            bound = server.sockets[0].getsockname()[1]
            if ready is not None:
                ready.set_result(bound)
            try:
                await (stop if stop is not None else asyncio.Future())
            finally:
                for c in list(self.engine.conns):  # what was decoded was sent; say why we stop
                    c.outbox.put_nowait({"type": "error", "code": Close.GOING_AWAY, "reason": "server shutting down"})
                    c.outbox.put_nowait(("close", Close.GOING_AWAY, "server shutting down"))
                await asyncio.sleep(0.2)
                server.close()  # anything still open (a client that never sent `start`) gets 1001
                await server.wait_closed()
                await self.engine.stop()


class _Idle(Exception):
    pass


def run_server(model_dir: str, host: str, port: int, *, limits: Limits, num_threads: int, max_batch: int,
               att_context=None) -> None:
    server = AsrServer(model_dir, limits=limits, num_threads=num_threads, max_batch=max_batch, att_context=att_context)

    async def main():
        loop = asyncio.get_running_loop()
        stop, ready = loop.create_future(), loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        task = asyncio.create_task(server.serve(host, port, ready, stop))
        bound = await asyncio.wait_for(asyncio.shield(ready), 30) if not task.done() else None
        if bound is not None:
            print(f"speechkit serve: {model_dir} on http://{host}:{bound}/ (WebSocket ws://{host}:{bound}/asr); "
                  f"chunk {server.rec.chunk_ms:.0f} ms, {num_threads} thread(s); Ctrl-C to stop", file=sys.stderr, flush=True)
        await task

    asyncio.run(main())
