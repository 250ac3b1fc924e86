"""Load test of ``speechkit serve`` on loopback: one server process, then for each client count
(``--clients 100,500,1000``) a warm-up round and the measured rounds of that many concurrent
clients streaming test utterances at real-time pace. The clients run as asyncio tasks spread over
``--client-procs`` worker processes, so one Python event loop is not the bottleneck; the server
runs ``--workers`` processes (its CPU and memory are theirs summed).

Each count gets a row: every transcript against the same utterance sent by a single client alone,
the time from the end of speech (last audio frame sent) to the final result (`done`), the
server's CPU, memory growth and (``--device cuda[:N]``) the GPU's utilisation and memory, the engine's
time per stage when /health reports it, and the client side's own cost: its CPU and its send lag,
how late each audio frame left against its real-time schedule. A count whose clients fell behind
real time is marked so: its latency figures do not measure the server. The summary names the
largest count whose p95 latency holds ``--p95-bound``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from speechkit.bench import add_output_args, comma_list, emit
from speechkit.devices import device_arg
from speechkit.errors import SpeechkitError
from speechkit.proc import cpu_seconds, descendants, rss_mb

CLIENTS_PER_PROC = 250  # the default --client-procs gives each worker process at most this many clients


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_pids(pid: int) -> list[int]:
    """The server process and every process below it (its --workers)."""
    return [pid, *descendants(pid)]


def _tree_rss(pid: int) -> float:
    total = 0.0
    for p in _server_pids(pid):
        try:
            total += rss_mb(p)
        except OSError:  # gone meanwhile
            pass
    return total


def _proc(pid: int) -> tuple[float, float]:
    """The server's RSS (MB) and CPU seconds, summed over its processes."""
    cpu = 0.0
    for p in _server_pids(pid):
        try:
            cpu += cpu_seconds(p)
        except OSError:
            pass
    return _tree_rss(pid), cpu


def _health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:
        return json.loads(r.read())


def start_server(model_dir: str, port: int, extra: list[str], log=None) -> subprocess.Popen:
    """``speechkit serve`` on ``port``, its stderr into ``log`` (a file; a pipe that nobody reads
    could fill up and stall the server)."""
    cmd = [sys.executable, "-m", "speechkit.cli", "serve", model_dir, "--port", str(port), *extra]
    log = log if log is not None else tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SpeechkitError(f"the server exited: {log.read().strip()}")
        try:
            _health(port)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SpeechkitError("the server did not answer /health within 120 s")


def load_utterances(data_dir: Path, limit: int) -> list[tuple[str, np.ndarray, int]]:
    from speechkit.data.kaldi import read_table
    from speechkit.runtime.console import file_blocks

    if not (data_dir / "wav.scp").is_file():
        raise SpeechkitError(f"{data_dir}: no wav.scp (build test data with `speechkit corpus synth`, or give --data)")
    out = []
    for key, path in list(read_table(data_dir / "wav.scp").items())[:limit]:
        blocks = list(file_blocks(path))
        out.append((key, np.concatenate([b for b, _ in blocks]), blocks[0][1]))
    return out


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (the server and the worker
    processes inherit it) → the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 30


# --- the clients ----------------------------------------------------------------------------
async def _run_clients(url: str, utts, ids: list[int], rounds: int, realtime: bool, t_start: float, progress) -> tuple[list, list]:
    """Clients ``ids`` (client i streams utterance i + r in round r, one after another), all
    starting at ``t_start`` (monotonic) → ([(key, text, close code, latency ms, error)], send lags in s)."""
    from speechkit.serve.client import stream_audio

    results: list = []
    lags: list = []

    async def client(i: int) -> None:
        for r in range(rounds):
            key, x, rate = utts[(i + r) % len(utts)]
            try:
                res = await stream_audio(url, x, rate, realtime=realtime)
            except Exception as e:  # a refused or timed-out connection counts as a failed stream, not a crash
                results.append((key, None, None, float("nan"), f"{type(e).__name__}: {e}"))
            else:
                ok = res.close_code == 1000 and not math.isnan(res.t_done)
                results.append((key, res.text, res.close_code, (res.t_done - res.t_last_audio) * 1000 if ok else float("nan"), None))
                lags.extend(res.send_lag)
            progress()

    await asyncio.sleep(max(0.0, t_start - time.monotonic()))
    await asyncio.gather(*[client(i) for i in ids])
    return results, lags


def _worker(conn, utts, counter) -> None:
    """A client worker process: for each job (url, ids, rounds, realtime, t_start) received, run
    those clients and send back ("ok", results, send lags, its CPU seconds); None ends it."""
    def progress():
        with counter.get_lock():
            counter.value += 1

    import speechkit.serve.client  # noqa: F401 - loaded before "ready", so the first round starts together

    conn.send(("ready",))
    while (job := conn.recv()) is not None:
        url, ids, rounds, realtime, t_start = job
        c0 = time.process_time()
        try:
            results, lags = asyncio.run(_run_clients(url, utts, ids, rounds, realtime, t_start, progress)) if ids else ([], [])
            conn.send(("ok", results, np.asarray(lags, dtype=np.float32), time.process_time() - c0))
        except BaseException as e:  # noqa: BLE001 - reported by the parent as one line
            conn.send(("error", f"{type(e).__name__}: {e}", None, time.process_time() - c0))


class ClientPool:
    """``procs`` client worker processes (spawned; 1: the clients run in this process)."""

    def __init__(self, utts, procs: int):
        self.utts, self.procs, self.workers = utts, procs, []
        if procs > 1:
            ctx = multiprocessing.get_context("spawn")
            self.counter = ctx.Value("i", 0)
            for _ in range(procs):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_worker, args=(child, utts, self.counter), daemon=True)
                p.start()
                child.close()
                self.workers.append((p, parent))
            for k, (p, conn) in enumerate(self.workers):  # imported and listening, so the first round starts together
                if not conn.poll(60):
                    raise SpeechkitError(f"client worker process {k} did not start within 60 s")
                conn.recv()

    def run(self, url: str, clients: int, rounds: int, realtime: bool, timeout: float, what: str) -> dict:
        """One load of ``clients`` clients × ``rounds`` → {"results", "lags", "cpu" (client CPU s),
        "cpu_per_proc", "procs", "wall"}."""
        from tqdm import tqdm

        t_start = time.monotonic() + (0.5 if self.workers else 0.0)
        with tqdm(total=clients * rounds, desc=f"{what}: {clients} clients", unit="stream") as bar:
            if not self.workers:
                c0 = time.process_time()
                try:
                    results, lags = asyncio.run(asyncio.wait_for(
                        _run_clients(url, self.utts, list(range(clients)), rounds, realtime, t_start, lambda: bar.update(1)), timeout))
                except TimeoutError:
                    raise SpeechkitError(f"the {what} rounds did not finish within --timeout {timeout:g} s") from None
                cpu = [time.process_time() - c0]
                wall = time.monotonic() - t_start
                return {"results": results, "lags": np.asarray(lags), "cpu": cpu[0], "cpu_per_proc": cpu, "procs": 1, "wall": wall}
            with self.counter.get_lock():
                self.counter.value = 0
            ids = [list(range(p, clients, self.procs)) for p in range(self.procs)]
            for (_, conn), mine in zip(self.workers, ids):
                conn.send((url, mine, rounds, realtime, t_start))
            replies: dict[int, tuple] = {}
            deadline = t_start + timeout
            while len(replies) < len(self.workers):
                waiting = {conn: k for k, (_, conn) in enumerate(self.workers) if k not in replies}
                for conn in multiprocessing.connection.wait(list(waiting), timeout=0.2):
                    replies[waiting[conn]] = conn.recv()
                for k in waiting.values():
                    if k not in replies and not self.workers[k][0].is_alive():
                        raise SpeechkitError(f"client worker process {k} died (exit code {self.workers[k][0].exitcode})")
                bar.update(self.counter.value - bar.n)
                if time.monotonic() > deadline:
                    raise SpeechkitError(f"the {what} rounds did not finish within --timeout {timeout:g} s")
            wall = time.monotonic() - t_start
            bar.update(self.counter.value - bar.n)
        errors = [r[1] for r in replies.values() if r[0] != "ok"]
        if errors:
            raise SpeechkitError(f"a client worker process failed: {errors[0]}")
        order = [replies[k] for k in range(len(self.workers))]
        return {"results": [x for r in order for x in r[1]], "lags": np.concatenate([r[2] for r in order]),
                "cpu": sum(r[3] for r in order), "cpu_per_proc": [r[3] for r, mine in zip(order, ids) if mine],
                "procs": sum(1 for mine in ids if mine), "wall": wall}

    def close(self) -> None:
        for p, conn in self.workers:
            try:
                conn.send(None)
            except OSError:
                pass
        for p, _ in self.workers:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)


# --- sampling the server and the GPU ----------------------------------------------------------
class GpuProbe:
    """The utilisation (%) and memory used (MiB) of the GPU that ``cuda:device_index`` names, through
    pynvml when importable, else nvidia-smi; ``available`` False when neither answers."""

    def __init__(self, device_index: int = 0):
        # CUDA numbers only the CUDA_VISIBLE_DEVICES, in their order; NVML and nvidia-smi number every GPU
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        ordinal = visible[device_index].strip() if device_index < len(visible) else ""
        self.index = int(ordinal) if ordinal.isdigit() else device_index
        self.nvml = self.handle = None
        self.how = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml, self.handle, self.how = pynvml, pynvml.nvmlDeviceGetHandleByIndex(self.index), "pynvml"
        except Exception:  # noqa: BLE001 - no pynvml or no driver: try nvidia-smi
            if shutil.which("nvidia-smi") and self._smi() is not None:
                self.how = "nvidia-smi"

    @property
    def available(self) -> bool:
        return self.how is not None

    def _smi(self):
        try:
            out = subprocess.run(["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            util, mem = out.stdout.strip().splitlines()[0].split(",")
            return float(util), float(mem)
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def sample(self):
        if self.how == "pynvml":
            try:
                util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
                return float(util), self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used / 2**20
            except Exception:  # noqa: BLE001
                return None
        return self._smi() if self.how else None


class Sampler:
    """Once a second, in a thread: the server's RSS (MB) and, with ``gpu``, the GPU's utilisation
    and memory."""

    def __init__(self, pid: int, gpu: GpuProbe | None):
        self.pid, self.gpu, self.rss, self.gpu_samples = pid, gpu, [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while True:
            try:
                self.rss.append(_tree_rss(self.pid))
            except OSError:
                pass
            if self.gpu is not None and (s := self.gpu.sample()) is not None:
                self.gpu_samples.append(s)
            if self.stop.wait(1.0):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


# --- one row --------------------------------------------------------------------------------
def _pcts(a: np.ndarray, scale: float = 1.0) -> dict | None:
    if not a.size:
        return None
    a = a * scale
    return {"p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1), "max": round(float(a.max()), 1)}


def _stage_shares(before: dict, after: dict) -> dict | None:
    """The engine's seconds per stage over the measured rounds and their shares of the total,
    from /health's cumulative ``stage_seconds`` (None when the server does not report it)."""
    b, a = before.get("stage_seconds"), after.get("stage_seconds")
    if not isinstance(a, dict) or not a:
        return None
    b = b if isinstance(b, dict) else {}
    delta = {k: max(0.0, float(a[k]) - float(b.get(k, 0.0))) for k in a if isinstance(a[k], (int, float))}
    total = sum(delta.values())
    return {"seconds": {k: round(v, 3) for k, v in delta.items()},
            "share": {k: round(v / total, 3) if total > 0 else None for k, v in delta.items()}}


def measure(args, pool: ClientPool, url: str, port: int, server: subprocess.Popen, utts, alone: dict, clients: int,
            gpu: GpuProbe | None, nofile: int) -> dict:
    realtime = not args.fast
    pool.run(url, clients, 1, realtime, args.timeout, "warm-up round")
    rss0, cpu0 = _proc(server.pid)
    h0 = _health(port)
    with Sampler(server.pid, gpu) as sampler:
        load = pool.run(url, clients, args.rounds, realtime, args.timeout, "measured")
    wall = load["wall"]
    rss1, cpu1 = _proc(server.pid)
    h1 = _health(port)
    results = load["results"]
    lat = np.array([r[3] for r in results if r[2] == 1000 and not math.isnan(r[3])])
    mismatched = [key for key, text, code, _, err in results if err is None and code == 1000 and text != alone[key]]
    bad_close = [code for _, _, code, _, err in results if err is None and code != 1000]
    failed = [err for *_, err in results if err is not None]
    equal = sum(1 for key, text, code, _, err in results if err is None and code == 1000 and text == alone[key])
    audio_s = sum(len(utts[(i + r) % len(utts)][1]) / utts[(i + r) % len(utts)][2] for i in range(clients) for r in range(args.rounds))
    lag = _pcts(load["lags"], 1000.0) if realtime else None
    behind = bool(lag and lag["p95"] > args.max_send_lag)
    calls = h1.get("model_calls", 0) - h0.get("model_calls", 0)
    chunks = h1.get("stream_chunks", 0) - h0.get("stream_chunks", 0)
    gpu_row = None
    if gpu is not None and sampler.gpu_samples:
        g = np.array(sampler.gpu_samples)
        gpu_row = {"util_percent": {"mean": round(float(g[:, 0].mean()), 1), "max": round(float(g[:, 0].max()), 1)},
                   "memory_used_mb": {"mean": round(float(g[:, 1].mean()), 1), "max": round(float(g[:, 1].max()), 1)},
                   "samples": len(g), "via": gpu.how, "index": gpu.index}
    row = {
        "clients": clients, "rounds": args.rounds, "streams": len(results), "audio_seconds": round(audio_s, 1),
        "wall_seconds": round(wall, 1),
        "transcripts_equal_single_client": equal, "mismatched": mismatched[:10], "abnormal_closes": bad_close[:10],
        "failed_connections": len(failed), "failures": failed[:3],
        "end_of_speech_to_final_ms": _pcts(lat),
        "send_lag_ms": lag, "clients_kept_real_time": (not behind) if realtime else None,
        "latency_valid": realtime and not behind,
        "client_procs": load["procs"],
        "client_cpu_percent_of_one_core": round(100 * load["cpu"] / wall, 1),
        "busiest_client_proc_cpu_percent": round(100 * max(load["cpu_per_proc"]) / wall, 1),
        "server_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / wall, 1),
        "server_rss_mb": {"after_warmup_round": round(rss0, 1), "peak": round(max(sampler.rss + [rss1]), 1), "end": round(rss1, 1),
                          "growth": round(rss1 - rss0, 1)},
        "gpu": gpu_row,
        "engine": {"model_calls": calls, "stream_chunks": chunks, "mean_batch": round(chunks / max(1, calls), 2),
                   "max_batch_seen": h1.get("max_batch_seen"), "stages": _stage_shares(h0, h1)},
        "open_file_limit_ok": nofile >= clients + 64,
    }
    row["holds_p95_bound"] = holds(row, args.p95_bound)
    return row


def holds(row: dict, bound_ms: float) -> bool:
    """Whether a row's count held p95 end-of-speech -> final ≤ ``bound_ms`` with every transcript
    equal to the single-client one and the clients at real-time pace (its latency valid)."""
    lat = row["end_of_speech_to_final_ms"]
    return bool(row["latency_valid"] and lat and row["transcripts_equal_single_client"] == row["streams"] and lat["p95"] <= bound_ms)


def largest_within(rows: list[dict], bound_ms: float) -> int | None:
    """The largest client count holding ``bound_ms`` (see ``holds``), None when no count does."""
    return max((r["clients"] for r in rows if holds(r, bound_ms)), default=None)


def summary_line(best: int | None, bound_ms: float) -> str:
    return (f"largest client count holding p95 <= {bound_ms:g} ms (with every transcript equal and the clients at "
            f"real-time pace): {best if best is not None else 'none'}")


def row_lines(row: dict, args) -> list[str]:
    n, realtime = row["clients"], not args.fast
    rounds = f"{row['rounds']} round{'s' if row['rounds'] != 1 else ''}"
    out = [f"{n} clients x {rounds} = {row['streams']} streams, {row['audio_seconds']:.0f} s of audio in {row['wall_seconds']:.1f} s "
           f"({'real-time pace' if realtime else 'as fast as possible'}; {row['client_procs']} client process{'es' if row['client_procs'] != 1 else ''})"]
    fails = f", failed connections: {row['failed_connections']} ({row['failures'][0]})" if row["failed_connections"] else ""
    out.append(f"  transcripts equal to the single-client result: {row['transcripts_equal_single_client']} / {row['streams']}; "
               f"abnormal closes: {len(row['abnormal_closes'])}{fails}")
    lat = row["end_of_speech_to_final_ms"]
    if lat:
        note = "" if row["latency_valid"] else (" (NOT VALID: the clients fell behind real time, see the send lag)" if realtime
                                                 else " (as-fast-as-possible sending: not a real-time latency)")
        out.append(f"  end of speech -> final: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, max {lat['max']:.0f} ms{note}")
    else:
        out.append("  end of speech -> final: no stream finished normally")
    if row["send_lag_ms"]:
        s = row["send_lag_ms"]
        verdict = ("the clients kept real-time pace" if row["clients_kept_real_time"] else
                   f"p95 over {args.max_send_lag:g} ms: the CLIENTS FELL BEHIND real time, so the latency above is not valid for {n} clients")
        out.append(f"  client send lag (how late audio frames left against real time): p50 {s['p50']:.1f} ms, p95 {s['p95']:.1f} ms, "
                   f"max {s['max']:.0f} ms; {verdict}")
    out.append(f"  client side's own CPU: {row['client_cpu_percent_of_one_core']}% of one core over {row['client_procs']} "
               f"process(es), busiest process {row['busiest_client_proc_cpu_percent']}%")
    r = row["server_rss_mb"]
    out.append(f"  server: CPU {row['server_cpu_percent_of_one_core']}% of one core; RSS {r['after_warmup_round']:.1f} MB after the warm-up "
               f"round, peak {r['peak']:.1f}, end {r['end']:.1f} (growth over the measured rounds {r['growth']:+.1f} MB)")
    if args.device != "cpu":
        g = row["gpu"]
        out.append(f"  GPU {g['index']}: utilisation mean {g['util_percent']['mean']:.0f}%, max {g['util_percent']['max']:.0f}%; memory used "
                   f"mean {g['memory_used_mb']['mean']:.0f} MiB, max {g['memory_used_mb']['max']:.0f} MiB ({g['samples']} samples, {g['via']})"
                   if g else "  GPU: not measured (neither pynvml nor nvidia-smi answered)")
    e = row["engine"]
    stages = ""
    if e["stages"]:
        stages = "; engine time: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in e["stages"]["share"].items() if v is not None)
    out.append(f"  engine: {e['model_calls']} model calls, mean batch {e['mean_batch']}, largest so far {e['max_batch_seen']}{stages}")
    return out


def main(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from speechkit.devices import parse_device
    from speechkit.serve.client import stream_audio

    for name in ("utts", "rounds", "threads", "max_batch", "client_procs", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SpeechkitError(f"--{name.replace('_', '-')} must be at least 1")
    counts = args.clients
    top = max(counts)
    nofile = raise_open_file_limit()
    need = top + 64  # the server holds one socket per client, plus its own files
    if nofile < need:
        print(f"warning: the open-file limit is {nofile} (hard limit), below the ~{need} that {top} clients need; "
              "expect refused connections (raise it with `ulimit -Hn` as root)", file=sys.stderr)
    procs = args.client_procs or max(1, min(os.cpu_count() or 1, math.ceil(top / CLIENTS_PER_PROC)))
    utts = load_utterances(Path(args.data), args.utts)
    kind, index = parse_device(args.device)
    gpu = GpuProbe(index) if kind != "cpu" else None
    port = free_port()
    url = f"ws://127.0.0.1:{port}/asr"
    # the total: with --workers each worker takes a share, and the kernel's spread is uneven
    extra = ["--threads", str(args.threads), "--max-batch", str(args.max_batch), "--device", args.device,
             "--max-connections", str(max(top, 100) * args.workers), "--workers", str(args.workers)]
    log = tempfile.TemporaryFile("w+")
    server = start_server(args.model_dir, port, extra, log)
    pool = None
    rows = []
    try:
        # single-client references, one utterance at a time (also warms the server up)
        alone = {}
        for key, x, rate in tqdm(utts, desc="single client", unit="utt"):
            alone[key] = asyncio.run(stream_audio(url, x, rate)).text
        rss_single, _ = _proc(server.pid)
        pool = ClientPool(utts, procs)
        for n in counts:
            if server.poll() is not None:
                log.seek(0)
                raise SpeechkitError(f"the server exited: {log.read().strip()[-500:]}")
            rows.append(measure(args, pool, url, port, server, utts, alone, n, gpu, nofile))
    finally:
        if pool is not None:
            pool.close()
        server.terminate()
        server.wait(10)
    best = largest_within(rows, args.p95_bound)
    result = {
        "model": args.model_dir, "device": args.device, "clients": counts, "rounds": args.rounds, "realtime": not args.fast,
        "threads": args.threads, "max_batch": args.max_batch, "workers": args.workers, "utterances": len(utts),
        "client_procs": procs,
        "open_file_limit": nofile, "machine": f"{os.cpu_count()} CPUs",
        "server_rss_mb_after_single_client": round(rss_single, 1),
        "p95_bound_ms": args.p95_bound, "max_send_lag_ms": args.max_send_lag,
        "largest_clients_within_p95_bound": best,
        "rows": rows,
    }
    lines = [f"speechkit serve {args.model_dir} --device {args.device} --threads {args.threads} --max-batch {args.max_batch} "
             f"--workers {args.workers} on loopback; "
             f"clients in {procs} process{'es' if procs != 1 else ''}; {os.cpu_count()} CPUs shared by server and clients; "
             f"open-file limit {nofile}",
             f"single-client references: {len(utts)} utterances; server RSS after them {rss_single:.1f} MB"]
    for row in rows:
        lines += row_lines(row, args)
    lines.append(summary_line(best, args.p95_bound))
    emit(result, lines, args)
    wrong = [(r["clients"], r["streams"] - r["transcripts_equal_single_client"]) for r in rows
             if r["transcripts_equal_single_client"] != r["streams"]]
    if wrong:
        raise SpeechkitError("streams that differ from the single-client result or did not close normally: "
                             + ", ".join(f"{k} at {n} clients" for n, k in wrong))


def add_parser(bench_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``bench`` subcommands."""
    p = bench_sub.add_parser("serve", help="load test of `speechkit serve` on loopback: N real-time clients per count, latency, "
                                           "CPU, GPU, memory, the clients' own cost")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="the model folder `speechkit serve` opens")
    p.add_argument("--data", default="egs/synth/asr/data/test", help="Kaldi data dir whose wavs the clients stream (default: the recipe's test set)")
    p.add_argument("--utts", type=int, default=50, help="at most this many utterances of --data (default 50)")
    p.add_argument("--clients", type=comma_list(int, positive=True), default=[50], metavar="N[,N...]",
                   help="concurrent client counts, one row each, e.g. 100,500,1000 (default 50)")
    p.add_argument("--client-procs", type=int, default=None, metavar="N",
                   help=f"worker processes the clients are spread over (default: enough for at most {CLIENTS_PER_PROC} clients "
                        "each at the largest count, at most the CPU count; 1: all in this process)")
    p.add_argument("--rounds", type=int, default=3, help="utterances each client streams, one after another (default 3)")
    p.add_argument("--device", type=device_arg, default="cpu", metavar="DEVICE",
                   help="the server's --device: cpu (default), cuda[:N] or tensorrt[:N]; a GPU's utilisation and memory are sampled too")
    p.add_argument("--threads", type=int, default=1, help="the server's ONNX Runtime threads (default 1)")
    p.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch (default 64)")
    p.add_argument("--workers", type=int, default=1, help="the server's --workers: its processes on the one port (default 1)")
    p.add_argument("--p95-bound", type=float, default=300.0, metavar="MS",
                   help="the summary names the largest count whose p95 end-of-speech -> final latency is at most this (default 300 ms)")
    p.add_argument("--max-send-lag", type=float, default=50.0, metavar="MS",
                   help="a count whose p95 send lag (audio frames leaving late against real time) exceeds this is marked as "
                        "clients fallen behind, its latency not valid (default 50 ms)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up when one count's rounds take longer (default 600 s)")
    p.add_argument("--fast", action="store_true", help="send audio as fast as possible instead of at real-time pace "
                                                       "(no send lag; latency then is not a real-time figure)")
    add_output_args(p)
    p.set_defaults(func=main)
    return p
