"""`speechkit serve --workers N`: N server processes on one port, so that the host-side work
(features, gates, results) and the sessions of many streams spread over several cores. The
kernel spreads the connections (SO_REUSEPORT); each worker publishes its /health figures to a
file in a run folder, and whichever worker answers /health sums them."""

from __future__ import annotations

import errno
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import replace

from speechkit.errors import SpeechkitError
from speechkit.serve.health import WorkerSlot
from speechkit.serve.protocol import Limits

STOP_SECONDS = 15.0  # a worker still running this long after SIGTERM is killed
FREE_PORT_TRIES = 10  # for --port 0: a port free on the first address may be taken on another


def listen_addresses(host: str, port: int) -> list[tuple]:
    """Every ``(family, type, proto, sockaddr)`` that asyncio's ``loop.create_server(host=host,
    port=port)``, and so each worker, binds: all that ``host`` resolves to ("localhost" is often
    127.0.0.1 and ::1; "" is every interface of both families), in getaddrinfo's order, once each."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return list(dict.fromkeys((family, kind, proto, addr) for family, kind, proto, _, addr in infos))


def reserve_port(host: str, port: int) -> list[socket.socket]:
    """One socket on every address of ``host`` (``listen_addresses``), all bound to ``port``
    (0: one that is free on all of them) with SO_REUSEPORT but not listening: they keep the port
    from anyone else while the workers bind it beside them, and take no connections. Fails (one
    line) when something already listens on any of them, even with SO_REUSEPORT, so that a second
    server never silently joins the first."""
    try:
        addresses = [a for a in listen_addresses(host, port) if _supported(*a[:3])]
    except OSError as e:
        raise SpeechkitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    if not addresses:
        raise SpeechkitError(f"cannot listen on {host}:{port}: {os.strerror(errno.EAFNOSUPPORT)}")
    for _ in range(FREE_PORT_TRIES if port == 0 else 1):
        held: list[socket.socket] = []
        try:
            for family, kind, proto, addr in addresses:
                where = addr[0]
                if held:  # the port the first address got
                    addr = (addr[0], held[0].getsockname()[1], *addr[2:])
                held.append(_hold(family, kind, proto, addr))
            return held
        except OSError as e:
            for sock in held:
                sock.close()
            error = e
            if error.errno != errno.EADDRINUSE:
                break
    named = f" ({where})" if len(addresses) > 1 else ""
    raise SpeechkitError(f"cannot listen on {host}:{port}{named}: {error.strerror or error}")


def _supported(family: int, kind: int, proto: int) -> bool:
    """Whether this machine makes such sockets: asyncio skips an address it cannot (IPv6 turned off
    while "localhost" still resolves to ::1), and so the workers bind it nowhere."""
    try:
        socket.socket(family, kind, proto).close()
    except OSError:
        return False
    return True


def _hold(family: int, kind: int, proto: int, addr: tuple) -> socket.socket:
    """``addr`` bound with SO_REUSEPORT, after a plain bind there (which fails where anyone
    listens) found it free; an IPv6 socket is IPv6 only, as asyncio makes the workers'."""
    def bound(reuse_port: bool, addr: tuple) -> socket.socket:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
        except OSError:
            sock.close()
            raise
        return sock

    with bound(False, addr) as plain:
        addr = (addr[0], plain.getsockname()[1], *addr[2:])
    return bound(True, addr)


def _worker(slot: WorkerSlot, model_dir: str, host: str, port: int, options: dict) -> None:
    """One worker process: ``run_server`` on the shared port; a load error goes to the parent."""
    from speechkit.serve.server import run_server  # in the worker alone: the parent loads no model code

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards Ctrl-C; a second copy would only interrupt loading
    try:
        run_server(model_dir, host, port, slot=slot, **options)
    except SpeechkitError as e:
        slot.failed(str(e))
        sys.exit(1)
    except OSError as e:  # a model file, or the port
        slot.failed(f"{e.filename or f'{host}:{port}'}: {e.strerror or e}")
        sys.exit(1)


def run_workers(workers: int, model_dir: str, host: str, port: int, *, limits: Limits, **options) -> None:
    """Serve with ``workers`` processes until SIGINT/SIGTERM (forwarded to them); a worker that
    dies is a SpeechkitError once the others are stopped. ``limits.max_connections`` is the
    total: each worker takes its share, rounded up."""
    held = reserve_port(host, port)
    port = held[0].getsockname()[1]
    run_dir = tempfile.mkdtemp(prefix="speechkit-serve-")
    share = replace(limits, max_connections=math.ceil(limits.max_connections / workers))
    ctx = multiprocessing.get_context("spawn")
    procs, links = [], []
    stopping: list[int] = []

    def forward(signum, frame):
        stopping.append(signum)
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                os.kill(p.pid, signal.SIGTERM)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index in range(workers):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_worker, name=f"speechkit-serve-worker-{index}", daemon=True,
                            args=(WorkerSlot(index, workers, run_dir, theirs), model_dir, host, port, {"limits": share, **options}))
            p.start()
            theirs.close()
            procs.append(p)
            links.append(mine)
        line = _await_ready(procs, links, stopping)
        if line is not None:
            print(f"{line} in each of {workers} workers (at most {share.max_connections} connections each); Ctrl-C to stop",
                  file=sys.stderr, flush=True)
        while not stopping:
            dead = [p for p in procs if p.exitcode is not None]
            if dead:
                raise SpeechkitError(f"worker {procs.index(dead[0])} (pid {dead[0].pid}) exited unexpectedly with code "
                                     f"{dead[0].exitcode}; stopped the others")
            multiprocessing.connection.wait([p.sentinel for p in procs], timeout=0.5)
    finally:
        _stop(procs)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for link in links:
            link.close()
        for sock in held:
            sock.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _await_ready(procs, links, stopping: list) -> str | None:
    """Wait until every worker listens → the first one's ready line (None when stopped first);
    a worker that fails or dies first is a SpeechkitError."""
    line, waiting = None, set(range(len(procs)))
    while waiting and not stopping:
        for k in list(waiting):
            msg = None
            if links[k].poll():
                try:
                    msg = links[k].recv()
                except EOFError:  # it died: its exit code says how
                    procs[k].join(5)
            if msg is not None and msg[0] == "error":
                raise SpeechkitError(msg[1])
            if msg is not None:
                line = line or msg[2]
                waiting.discard(k)
            elif procs[k].exitcode is not None:
                raise SpeechkitError(f"worker {k} (pid {procs[k].pid}) exited with code {procs[k].exitcode} before it "
                                     "was ready")
        multiprocessing.connection.wait([links[k] for k in waiting] + [procs[k].sentinel for k in waiting], timeout=0.5)
    return line


def _stop(procs) -> None:
    """SIGTERM to every worker still running, then SIGKILL to any that outlives STOP_SECONDS."""
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.exitcode is None:
            p.kill()
            p.join(5)
