"""`speechkit serve --workers N`: N server processes on one port, so that the host-side work
(features, gates, results) and the sessions of many streams spread over several cores. The
kernel spreads the connections (SO_REUSEPORT); each worker publishes its /health figures to a
file in a run folder, and whichever worker answers /health sums them."""

from __future__ import annotations

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


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (``port`` 0: a free one) with SO_REUSEPORT but not
    listening: it keeps the port from anyone else while the workers bind it beside it, and takes
    no connections. Fails (one line) when something already listens there, even with SO_REUSEPORT,
    so that a second server never silently joins the first."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as plain:
            plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            plain.bind(addr)
            addr = (addr[0], plain.getsockname()[1], *addr[2:])
        probe = socket.socket(family, kind, proto)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind(addr)
    except OSError as e:
        raise SpeechkitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return probe


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
    probe = reserve_port(host, port)
    port = probe.getsockname()[1]
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
        probe.close()
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
