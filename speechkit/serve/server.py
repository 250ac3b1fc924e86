"""`speechkit serve`: the streaming recognizer behind a WebSocket (``/asr``, protocol in
docs/serve.md), the streaming voice converter behind another (``/vc``), streaming speech synthesis
behind a third (``/tts``), and the browser demo page over HTTP, from one asyncio process built on
the ``websockets`` library. Limits close only the offending connection, with a documented code.

``speechkit serve MODEL`` serves what MODEL is: a streaming ASR export (``/asr``), a MeanVC export
(``/vc`` alone) or a CLEAR export (``/tts`` alone); ``--vc VC_MODEL`` and ``--tts TTS_MODEL`` add
``/vc`` and ``/tts`` beside it, so that one page offers every mode. Each endpoint has its own
engine: the models share nothing a batch could. ``--workers N`` runs N such servers on one port
(speechkit/serve/workers.py)."""

from __future__ import annotations

import asyncio
import json
import mimetypes
import signal
import sys
import time
from http import HTTPStatus
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from speechkit.errors import AudioError, SpeechkitError
from speechkit.proc import rss_mb
from speechkit.runtime.console import model_family, open_recognizer
from speechkit.runtime.tts import FAMILY as TTS_FAMILY
from speechkit.runtime.tts import Synthesizer
from speechkit.runtime.vc import CONFIG_FILE as VC_CONFIG
from speechkit.runtime.vc import SPEAKER_DIR, Target, VoiceConverter
from speechkit.serve.engine import BatchEngine, Connection
from speechkit.serve.protocol import (PROTOCOL_VERSION, UPLOAD, Close, Limits, ProtocolError, Start, decode_audio,
                                      parse_control, parse_start, parse_text)
from speechkit.serve.tts_engine import TtsConnection, TtsEngine, TtsStats, load_prompts
from speechkit.serve.vc_engine import VcConnection, VcEngine
from speechkit.serve.health import PUBLISH_EVERY, WorkerSlot

STATIC = Path(__file__).parent / "static"
PAGES = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/capture-worklet.js": "capture-worklet.js"}
REFERENCES_DIR = "references"  # in a VC export: preset target voices, one wav each, named by the file
PROMPTS_DIR = "prompts"  # in a TTS export: preset prompt voices, one wav each, named by the file


def is_vc_model(model_dir: str | Path) -> bool:
    return (Path(model_dir) / VC_CONFIG).is_file()


def is_tts_model(model_dir: str | Path) -> bool:
    return model_family(model_dir) == TTS_FAMILY


def load_references(vc: VoiceConverter, folder: Path) -> dict[str, Target]:
    """Every ``*.wav`` in ``folder`` (any rate, channels mixed down) → its target voice, by file stem."""
    from speechkit.audio.io import load_audio

    presets = {}
    for wav in sorted(folder.glob("*.wav")):
        samples, rate = load_audio(wav, downmix=True)
        try:
            presets[wav.stem] = vc.target(samples, rate)
        except AudioError as e:
            raise SpeechkitError(f"{wav}: {e}") from None
    if not presets:
        raise SpeechkitError(f"{folder}: no .wav files to use as reference voices")
    return presets


class SpeechServer:
    """``model_dir``: a streaming ASR export, a MeanVC export (then ``/vc`` without ``/asr``) or a
    CLEAR export (then ``/tts`` without ``/asr``); ``vc_dir``, ``tts_dir``: a MeanVC or CLEAR
    export served at ``/vc`` or ``/tts`` beside it; ``references``, ``prompts``: folders of preset
    reference or prompt wavs (default: the export's ``references/`` or ``prompts/``, if any)."""

    def __init__(self, model_dir: str | Path, *, vc_dir: str | Path | None = None, references: str | Path | None = None,
                 tts_dir: str | Path | None = None, prompts: str | Path | None = None, limits: Limits = Limits(),
                 num_threads: int = 1, max_batch: int = 64, att_context: tuple[int, int] | None = None, beam: int = 1,
                 device: str = "cpu", lm=None):
        self.model_dir = str(model_dir)
        self.rec = None
        if is_vc_model(model_dir):
            if vc_dir is not None:
                raise SpeechkitError(f"{model_dir} is a voice-conversion model; --vc adds one beside a streaming ASR model")
            vc_dir = model_dir
        elif is_tts_model(model_dir):
            if tts_dir is not None:
                raise SpeechkitError(f"{model_dir} is a TTS model; --tts adds one beside a streaming ASR or "
                                     "voice-conversion model")
            tts_dir = model_dir
        else:
            # no memory arena: working memory follows the batch size instead of staying at its peak
            self.rec = open_recognizer(model_dir, num_threads=num_threads, att_context=att_context, memory_arena=False,
                                       beam=beam, device=device, lm=lm)
        if self.rec is None and lm is not None:
            raise SpeechkitError("--lm needs a streaming ASR model to fuse into")
        if vc_dir is None and references is not None:
            raise SpeechkitError("--references needs a voice-conversion model (MODEL or --vc)")
        if tts_dir is None and prompts is not None:
            raise SpeechkitError("--prompts needs a TTS model (MODEL or --tts)")
        self.vc = self.presets = None
        self.vc_dir = None if vc_dir is None else str(vc_dir)
        if vc_dir is not None:
            self.vc = VoiceConverter(vc_dir, num_threads=num_threads, device=device)
            if not (Path(vc_dir) / SPEAKER_DIR).is_dir():
                raise SpeechkitError(f"{vc_dir} ships no speaker encoder ({SPEAKER_DIR}/), which the server needs to take "
                                     "reference voices: export it with --speaker-model")
            folder = Path(references) if references is not None else Path(vc_dir) / REFERENCES_DIR
            self.presets = load_references(self.vc, folder) if references is not None or folder.is_dir() else {}
        self.tts = self.prompts = None
        self.tts_dir = None if tts_dir is None else str(tts_dir)
        if tts_dir is not None:
            self.tts = Synthesizer(tts_dir, num_threads=num_threads, device=device)
            folder = Path(prompts) if prompts is not None else Path(tts_dir) / PROMPTS_DIR
            self.prompts = load_prompts(folder, self.tts.sample_rate) if prompts is not None or folder.is_dir() else {}
        self.limits, self.max_batch = limits, max_batch
        self.engine: BatchEngine | None = None
        self.vc_engine: VcEngine | None = None
        self.tts_engine: TtsEngine | None = None
        self.active = 0  # open WebSocket connections, counted at the handshake
        self.slot: WorkerSlot | None = None  # one of --workers N: /health answers for all of them

    @property
    def modes(self) -> list[str]:
        return [m for m, on in (("asr", self.rec is not None), ("vc", self.vc is not None), ("tts", self.tts is not None)) if on]

    # --- HTTP ---------------------------------------------------------------------------------
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None  # the WebSocket handshake goes on
        path = request.path.split("?", 1)[0]
        if path == "/health":
            health = self.health() if self.slot is None else self.slot.gather(self.health())
            return self._response(HTTPStatus.OK, json.dumps(health).encode(), "application/json")
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
        """The server's state; the recognizer's figures at the top level (when it serves ``/asr``),
        the converter's under ``"vc"``, the synthesiser's under ``"tts"``."""
        out = {"status": "ok", "model": self.model_dir, "modes": self.modes, "connections": self.active,
               "rss_mb": round(rss_mb(), 1)}
        if self.rec is not None:
            out.update(chunk_ms=round(self.rec.chunk_ms), **_stats(self.engine), **_stage_stats(self.engine))
        if self.vc is not None:
            out["vc"] = {"model": self.vc_dir, "chunk_ms": round(self.vc_chunk_ms), "latency_ms": round(self.vc.latency_ms),
                         "output_rate": self.vc.sample_rate, "references": sorted(self.presets), **_stats(self.vc_engine)}
        if self.tts is not None:
            stats = self.tts_engine.stats if self.tts_engine else TtsStats()
            out["tts"] = {"model": self.tts_dir, "output_rate": self.tts.sample_rate, "prompts": sorted(self.prompts),
                          "max_text_chars": self.limits.max_text_chars, **stats.as_dict()}
        return out

    @property
    def vc_chunk_ms(self) -> float:
        return self.vc.chunk * 1000.0 / self.vc.config["frame_rate"]

    # --- WebSocket ----------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        mode = ws.request.path.split("?", 1)[0].lstrip("/")
        if mode not in self.modes:
            where = " and ".join(f"/{m}" for m in self.modes)
            await ws.close(Close.BAD_MESSAGE, f"unknown path; this server serves {where}")
            return
        if self.active >= self.limits.max_connections:
            await ws.close(Close.BUSY, f"server full ({self.limits.max_connections} connections); try again later")
            return
        self.active += 1
        engine = {"asr": self.engine, "vc": self.vc_engine, "tts": self.tts_engine}[mode]
        opener = {"asr": self._open_asr, "vc": self._open_vc, "tts": self._open_tts}[mode]
        conn = None
        writer: asyncio.Task | None = None
        try:
            start = parse_start(await self._recv(ws, "no start message"), mode)
            conn, ready = await opener(ws, start)
            writer = asyncio.create_task(self._writer(ws, conn))
            conn.outbox.put_nowait({"type": "ready", "protocol": PROTOCOL_VERSION, "mode": mode, **ready,
                                    "max_frame_bytes": self.limits.max_frame_bytes,
                                    "max_stream_seconds": self.limits.max_stream_seconds, "idle_timeout": self.limits.idle_timeout})
            if mode == "tts":
                await self._read_texts(ws, conn)
            else:
                await self._read_audio(ws, engine, conn, start)
            await writer  # sends the last results and `done`, then closes
        except ProtocolError as e:
            if conn is not None:
                engine.drop(conn)
            await self._error(ws, e.code, e.reason)
        except _Idle as e:
            if conn is None:
                await self._error(ws, Close.IDLE, str(e))
            else:  # decode what came, send it, then close with the idle code
                engine.end(conn, (Close.IDLE, str(e)))
                await writer
        except ConnectionClosed:
            pass
        except Exception as e:  # a bug, not the client's fault: say so, keep serving the others
            print(f"speechkit serve: internal error on a connection: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            await self._error(ws, Close.INTERNAL, f"internal error: {type(e).__name__}")
        finally:
            self.active -= 1
            if conn is not None:
                engine.drop(conn)
            if writer is not None and not writer.done():
                writer.cancel()

    async def _open_asr(self, ws: ServerConnection, start: Start) -> tuple[Connection, dict]:
        return self.engine.open(start.sample_rate), {"model_rate": self.rec.sample_rate, "chunk_ms": round(self.rec.chunk_ms)}

    async def _voice(self, ws: ServerConnection, start: Start, what: str, choice: str, presets: dict, build):
        """A start's voice: the preset named ``choice``, or for ``"upload"`` the binary frame that
        follows, made into a voice by ``await build(samples, rate)``; every failure is one
        ProtocolError (4000) naming ``what`` (reference, prompt)."""
        if choice == UPLOAD:
            msg = await self._recv(ws, f"no {what} audio")
            if isinstance(msg, str):
                raise ProtocolError(f'start: {what} "{UPLOAD}": the next message must be the {what} audio (binary)')
            try:
                return await build(decode_audio(msg, start), start.sample_rate)
            except SpeechkitError as e:  # AudioError included: too short, silent
                raise ProtocolError(str(e)) from None
        if choice in presets:
            return presets[choice]
        names = ", ".join(sorted(presets)) or "none"
        raise ProtocolError(f'start: unknown {what} {choice!r} (presets: {names}; or "{UPLOAD}")')

    async def _open_vc(self, ws: ServerConnection, start: Start) -> tuple[VcConnection, dict]:
        """The start's target voice (a preset, or the reference frame that follows) → the connection
        and what `ready` tells about it."""
        target = await self._voice(ws, start, "reference", start.reference, self.presets, self.vc_engine.target)
        conn = self.vc_engine.open(target, start.sample_rate, start.seed)
        return conn, {"model_rate": self.vc.sample_rate, "output_rate": self.vc.sample_rate, "output_format": "pcm16",
                      "chunk_ms": round(self.vc_chunk_ms), "latency_ms": round(self.vc.latency_ms),
                      "reference": start.reference, "seed": start.seed}

    async def _open_tts(self, ws: ServerConnection, start: Start) -> tuple[TtsConnection, dict]:
        """The start's prompt voice (a preset, or the prompt frame that follows) → the connection
        and what `ready` tells about it."""
        prompt = await self._voice(ws, start, "prompt", start.prompt, self.prompts, self.tts_engine.prompt)
        rate = self.tts.sample_rate
        conn = self.tts_engine.open(prompt, start.seed, int(self.limits.max_stream_seconds * rate))
        return conn, {"model_rate": rate, "output_rate": rate, "output_format": "pcm16", "prompt": start.prompt,
                      "seed": start.seed, "max_text_chars": self.limits.max_text_chars}

    async def _read_texts(self, ws: ServerConnection, conn: TtsConnection) -> None:
        """/tts: text messages to the engine, in order, until `end`; no reading while the
        connection's queued text is at its bound."""
        while True:
            await self.tts_engine.room(conn)
            text = parse_text(await self._recv_text(ws, conn), self.limits.max_text_chars)
            if text is None:
                self.tts_engine.end(conn)
                return
            self.tts_engine.say(conn, text)

    async def _recv_text(self, ws: ServerConnection, conn: TtsConnection):
        """The next message on /tts. A client waiting for its speech is not idle: the idle time
        counts from the later of its last message and the end of the speech it asked for."""
        idle, since = self.limits.idle_timeout, time.monotonic()
        while True:
            busy = self.tts_engine.busy(conn)
            wait = idle if busy else max(since, conn.quiet_since) + idle - time.monotonic()
            try:
                return await asyncio.wait_for(ws.recv(), max(wait, 0.01))
            except TimeoutError:
                if not self.tts_engine.busy(conn) and time.monotonic() >= max(since, conn.quiet_since) + idle:
                    raise _Idle(f"no message for {idle:g} s") from None

    async def _recv(self, ws: ServerConnection, what: str):
        try:
            return await asyncio.wait_for(ws.recv(), self.limits.idle_timeout)
        except TimeoutError:
            raise _Idle(f"{what} for {self.limits.idle_timeout:g} s") from None

    async def _read_audio(self, ws: ServerConnection, engine, conn, start: Start) -> None:
        max_samples = int(self.limits.max_stream_seconds * start.sample_rate)
        while True:
            msg = await self._recv(ws, "no message")
            if isinstance(msg, str):
                parse_control(msg)  # only "end" passes
                engine.end(conn)
                return
            x = decode_audio(msg, start)
            room = max_samples - conn.samples
            if len(x) > room:
                engine.feed(conn, x[:room])
                engine.end(conn, (Close.TOO_LONG, f"stream longer than {self.limits.max_stream_seconds:g} s"))
                return
            engine.feed(conn, x)

    async def _writer(self, ws: ServerConnection, conn) -> None:
        try:
            while True:
                item = await conn.outbox.get()
                if isinstance(item, tuple):
                    _, code, reason = item
                    await ws.close(code, reason)
                    return
                await ws.send(item if isinstance(item, bytes) else json.dumps(item))
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
        engines = []
        if self.rec is not None:
            self.engine = BatchEngine(self.rec, self.max_batch)
            engines.append(self.engine)
        if self.vc is not None:
            self.vc_engine = VcEngine(self.vc, self.max_batch)
            engines.append(self.vc_engine)
        if self.tts is not None:
            self.tts_engine = TtsEngine(self.tts, self.limits.max_text_chars)
            engines.append(self.tts_engine)
        for engine in engines:
            engine.start()
        async with serve(self._handler, host, port, process_request=self._http, max_size=self.limits.max_frame_bytes,
                         max_queue=64, compression=None, reuse_port=self.slot is not None) as server:
            bound = server.sockets[0].getsockname()[1]
            publisher = None
            if self.slot is not None:
                self.slot.publish(self.health())  # before `ready`: /health counts every worker from the start
                publisher = asyncio.create_task(self._keep_published())
            if ready is not None:
                ready.set_result(bound)
            try:
                await (stop if stop is not None else asyncio.Future())
            finally:
                if publisher is not None:
                    publisher.cancel()
                for c in [c for engine in engines for c in engine.conns]:  # what was decoded was sent; say why we stop
                    c.outbox.put_nowait({"type": "error", "code": Close.GOING_AWAY, "reason": "server shutting down"})
                    c.outbox.put_nowait(("close", Close.GOING_AWAY, "server shutting down"))
                await asyncio.sleep(0.2)
                server.close()  # anything still open (a client that never sent `start`) gets 1001
                await server.wait_closed()
                for engine in engines:
                    await engine.stop()

    async def _keep_published(self) -> None:
        """A worker's health file: rewritten within 0.1 s of a connection opening or closing, else
        every PUBLISH_EVERY s."""
        last, at = None, time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            health = self.health()
            now = time.monotonic()
            seen = (health["connections"], health.get("connections_total"))
            if seen != last or now - at >= PUBLISH_EVERY:
                self.slot.publish(health)
                last, at = seen, now


AsrServer = SpeechServer  # the name from before /vc


class _Idle(Exception):
    pass


def _stats(engine: BatchEngine | VcEngine | None) -> dict:
    stats = engine.stats if engine else None
    return {"model_calls": stats.calls if stats else 0, "stream_chunks": stats.streams_decoded if stats else 0,
            "max_batch_seen": stats.max_batch_seen if stats else 0, "connections_total": stats.connections_total if stats else 0}


def _stage_stats(engine: BatchEngine | None) -> dict:
    """Where the recognition worker's time went, cumulative wall seconds since start: the parts
    (``stage_seconds``, keys BatchEngine.STAGES) and the whole (``engine_busy_seconds``, which also
    holds the little between the parts)."""
    stats = engine.stats if engine else None
    stages = dict(stats.stage_seconds) if stats else dict.fromkeys(BatchEngine.STAGES, 0.0)
    return {"stage_seconds": {k: round(v, 6) for k, v in stages.items()},
            "engine_busy_seconds": round(stats.busy_seconds, 6) if stats else 0.0}


def run_server(model_dir: str, host: str, port: int, *, limits: Limits, num_threads: int, max_batch: int,
               att_context=None, vc_dir: str | None = None, references: str | None = None, tts_dir: str | None = None,
               prompts: str | None = None, beam: int = 1, device: str = "cpu", slot: WorkerSlot | None = None, lm=None) -> None:
    """Serve until SIGINT/SIGTERM; ``slot``: as one worker of ``--workers N`` (then the parent
    prints the ready line, and the worker stops when the parent goes)."""
    server = SpeechServer(model_dir, vc_dir=vc_dir, references=references, tts_dir=tts_dir, prompts=prompts, limits=limits,
                          num_threads=num_threads, max_batch=max_batch, att_context=att_context, beam=beam, device=device, lm=lm)
    server.slot = slot

    async def main():
        loop = asyncio.get_running_loop()
        stop, ready = loop.create_future(), loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        if slot is not None:  # the parent never writes: readable means it is gone
            loop.add_reader(slot.link.fileno(), lambda: stop.done() or stop.set_result(None))
        task = asyncio.create_task(server.serve(host, port, ready, stop))
        bound = await asyncio.wait_for(asyncio.shield(ready), 30) if not task.done() else None
        if bound is not None:
            parts = []
            if server.rec is not None:
                parts.append(f"ws://{host}:{bound}/asr, chunk {server.rec.chunk_ms:.0f} ms")
            if server.vc is not None:
                parts.append(f"ws://{host}:{bound}/vc, chunk {server.vc_chunk_ms:.0f} ms, "
                             f"{len(server.presets)} preset reference(s)")
            if server.tts is not None:
                parts.append(f"ws://{host}:{bound}/tts, {len(server.prompts)} preset prompt(s), "
                             "streams take turns a chunk at a time")
            line = (f"speechkit serve: {model_dir} on http://{host}:{bound}/ (WebSocket {'; '.join(parts)}); "
                    f"{num_threads} thread(s) on {device}")
            if slot is None:
                print(f"{line}; Ctrl-C to stop", file=sys.stderr, flush=True)
            else:
                slot.ready(bound, line)
        await task

    asyncio.run(main())
