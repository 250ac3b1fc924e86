"""`speechkit serve --workers N`: N server processes on one port. Concurrent transcripts equal
the single-worker server's, /health sums what every worker published, connections reach both
workers, a host of two addresses is held on both, a dead worker takes the whole server
down with one line, and SIGTERM leaves nothing."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from serve_harness import LiveServer
from speechkit.errors import SpeechkitError
from speechkit.proc import descendants
from speechkit.serve.client import stream_audio
from speechkit.serve.health import merge_health
from speechkit.serve import workers
from speechkit.serve.workers import listen_addresses, reserve_port
from test_serve import LIMITS, MODEL, speech  # noqa: F401 - `speech` is a fixture

READY = re.compile(r"on http://127\.0\.0\.1:(\d+)/ .* in each of (\d+) workers \(at most (\d+) connections each\)")


class WorkersServer:
    """``speechkit serve MODEL --port 0 --workers N`` as a subprocess; its run folder goes under
    ``tmp`` (TMPDIR), where the test reads the workers' health files."""

    def __init__(self, tmp: Path, workers: int = 2, max_connections: int = 24):
        self.tmp, self.log = tmp, tmp / "serve.log"
        env = {**os.environ, "TMPDIR": str(tmp)}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "speechkit.cli", "serve", str(MODEL), "--port", "0",
                                          "--workers", str(workers), "--max-connections", str(max_connections),
                                          "--idle-timeout", "5"], stdout=subprocess.DEVNULL, stderr=log, env=env)
        deadline = time.monotonic() + 60
        while not (m := READY.search(self.log.read_text())):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)
        self.port, self.share = int(m.group(1)), int(m.group(3))
        self.ready_line = m.group(0)

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/asr"

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as r:
            return json.loads(r.read())

    def files(self) -> list[dict]:
        return [json.loads(f.read_text()) for f in sorted(self.tmp.glob("speechkit-serve-*/worker-*.json"))]

    def settled(self) -> tuple[dict, list[dict]]:
        """Wait up to 5 s until no connection is open and /health's counts are the sums of the
        workers' files → (/health, the files)."""
        time.sleep(0.3)  # a worker rewrites its file within 0.1 s of a connection opening or closing
        deadline = time.monotonic() + 5
        while True:
            health, files = self.health(), self.files()
            summed = {k: sum(f["health"][k] for f in files) for k in ("connections", "connections_total", "stream_chunks", "model_calls")}
            done = health["connections"] == 0 and all(health[k] == v for k, v in summed.items())
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(files) == 2 and done, (health, summed)
        return health, files

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def loopbacks(host: str, port: int) -> list[tuple]:
    """``listen_addresses`` of a host of two addresses, both loopback (Linux routes all of 127/8 to lo),
    so that the test needs no IPv6."""
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, ("127.0.0.1", port)),
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, ("127.0.0.2", port))]


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def single(speech):
    """Each utterance's transcript from the one-process server (the code path of --workers 1)."""
    server = LiveServer(MODEL, LIMITS)
    try:
        return [asyncio.run(stream_audio(server.url(), x, 16000)).text for x in speech]
    finally:
        server.close()


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    server = WorkersServer(tmp_path_factory.mktemp("workers"))
    yield server
    server.close()


def test_merge_health_sums_counts_and_keeps_settings():
    a = {"status": "ok", "modes": ["asr"], "connections": 2, "chunk_ms": 520, "stream_chunks": 10, "max_batch_seen": 4,
         "engine_busy_seconds": 0.25, "stage_seconds": {"features": 0.5, "session": 1.0}, "tts": {"texts": 1, "output_rate": 24000}}
    b = {**a, "connections": 1, "stream_chunks": 5, "max_batch_seen": 7, "engine_busy_seconds": 0.5,
         "stage_seconds": {"features": 0.25, "session": 2.0}, "tts": {"texts": 2, "output_rate": 24000}}
    assert merge_health([a, b]) == {
        "status": "ok", "modes": ["asr"], "connections": 3, "chunk_ms": 520, "stream_chunks": 15, "max_batch_seen": 7,
        "engine_busy_seconds": 0.75, "stage_seconds": {"features": 0.75, "session": 3.0}, "tts": {"texts": 3, "output_rate": 24000}}


def test_a_port_someone_listens_on_is_refused():
    with socket.socket() as other:  # another server that would share the port
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(SpeechkitError, match="cannot listen on 127.0.0.1"):
            reserve_port("127.0.0.1", other.getsockname()[1])
    [probe] = reserve_port("127.0.0.1", 0)  # a free port, held but taking no connections
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(probe.getsockname()[:2], timeout=2).close()
    finally:
        probe.close()


def test_listen_addresses_are_every_address_once_in_order(monkeypatch):
    assert listen_addresses("127.0.0.1", 80) == [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, ("127.0.0.1", 80))]
    v4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))
    v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 80, 0, 0))
    asked = []

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        asked.append((host, port, family, type, flags))
        return [v6, v4, v6]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert listen_addresses("localhost", 80) == [v6[:3] + v6[4:], v4[:3] + v4[4:]]
    listen_addresses("", 80)  # every interface, as asyncio asks for it
    assert asked == [("localhost", 80, 0, socket.SOCK_STREAM, socket.AI_PASSIVE), (None, 80, 0, socket.SOCK_STREAM, socket.AI_PASSIVE)]


def test_a_host_of_two_addresses_is_held_on_both(monkeypatch):
    monkeypatch.setattr(workers, "listen_addresses", loopbacks)
    held = reserve_port("localhost", 0)
    try:
        port = held[0].getsockname()[1]
        assert [s.getsockname()[:2] for s in held] == [("127.0.0.1", port), ("127.0.0.2", port)]
        for addr in ("127.0.0.1", "127.0.0.2"):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((addr, port), timeout=2).close()
    finally:
        for sock in held:
            sock.close()
    with socket.socket() as other:  # another server on the second address alone
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.2", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(SpeechkitError, match=rf"^cannot listen on localhost:{port} \(127.0.0.2\): Address already in use$"):
            reserve_port("localhost", port)


def test_port_0_tries_another_port_taken_on_the_second_address(monkeypatch):
    monkeypatch.setattr(workers, "listen_addresses", loopbacks)
    hold, tried = workers._hold, []

    def taken_once(family, kind, proto, addr):
        tried.append(addr)
        if len(tried) == 2:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return hold(family, kind, proto, addr)

    monkeypatch.setattr(workers, "_hold", taken_once)
    held = reserve_port("localhost", 0)
    try:
        assert [addr[1] for addr in tried[::2]] == [0, 0] and tried[3][1] == held[0].getsockname()[1]
        assert [s.getsockname()[1] for s in held] == [tried[3][1]] * 2
    finally:
        for sock in held:
            sock.close()


def test_concurrent_transcripts_equal_the_single_worker_server(two, speech, single):
    assert two.share == 12  # --max-connections 24 is the total

    async def clients():
        return await asyncio.gather(*[stream_audio(two.url(), speech[i % len(speech)], 16000, frame_ms=100 + 40 * i)
                                      for i in range(8)])

    results = asyncio.run(clients())
    assert [r.close_code for r in results] == [1000] * 8
    assert [r.text for r in results] == [single[i % len(speech)] for i in range(8)]


def test_health_sums_every_worker_and_both_served(two, speech):
    before = two.settled()[0]["connections_total"]

    async def short_streams():  # many short connections, which the kernel's hash spreads over both workers,
        out = []                 # 6 at a time: well below a worker's share of 12, however unevenly spread
        for _ in range(4):
            out += await asyncio.gather(*[stream_audio(two.url(), speech[0][:8000], 16000) for _ in range(6)])
        return out

    assert [r.close_code for r in asyncio.run(short_streams())] == [1000] * 24
    health, files = two.settled()
    assert health["connections_total"] == before + 24
    assert health["max_batch_seen"] == max(f["health"]["max_batch_seen"] for f in files)
    assert health["engine_busy_seconds"] == pytest.approx(sum(f["health"]["engine_busy_seconds"] for f in files), abs=1e-4)
    workers = health["workers"]
    pids = {w["pid"] for w in workers}
    assert len(workers) == 2 and pids == {f["pid"] for f in files} and pids <= set(descendants(two.proc.pid))
    assert all(w["connections_total"] > 0 and w["engine_busy_seconds"] > 0 for w in workers)  # both served streams


def test_sigterm_stops_every_process(two):
    pids = descendants(two.proc.pid)
    assert len(pids) >= 2
    t0 = time.monotonic()
    two.proc.send_signal(signal.SIGTERM)
    assert two.proc.wait(10) == 0 and time.monotonic() - t0 < 5
    deadline = time.monotonic() + 3
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)
    assert not list(two.tmp.glob("speechkit-serve-*"))  # the run folder is removed


def test_a_killed_worker_stops_the_server(tmp_path):
    server = WorkersServer(tmp_path)
    try:
        victim = server.health()["workers"][1]["pid"]
        others = [p for p in descendants(server.proc.pid) if p != victim]
        os.kill(victim, signal.SIGKILL)
        assert server.proc.wait(20) != 0
        lines = [line for line in server.log.read_text().splitlines() if "Ctrl-C" not in line]
        assert lines == [f"speechkit: error: worker 1 (pid {victim}) exited unexpectedly with code -9; stopped the others"]
        deadline = time.monotonic() + 3
        while any(alive(p) for p in others) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in others)
    finally:
        server.close()
