"""Load test of ``speechkit serve`` on loopback: a server process, then N concurrent clients
streaming test utterances at real-time pace for a few rounds. Checks every transcript against
the same utterance sent by a single client alone, and reports the time from the end of speech
(last audio frame sent) to the final result (`done`), the server's CPU and its memory growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from tqdm import tqdm

from speechkit.bench import add_output_args, emit
from speechkit.data.kaldi import read_table
from speechkit.errors import SpeechkitError
from speechkit.proc import cpu_seconds, rss_mb
from speechkit.runtime.console import file_blocks
from speechkit.serve.client import stream_audio

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc(pid: int) -> tuple[float, float]:
    return rss_mb(pid), cpu_seconds(pid)


def _health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        return json.loads(r.read())


def start_server(model_dir: str, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "speechkit.cli", "serve", model_dir, "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SpeechkitError(f"the server exited: {proc.stderr.read().strip()}")
        try:
            _health(port)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SpeechkitError("the server did not answer /health within 60 s")


def load_utterances(data_dir: Path, limit: int) -> list[tuple[str, np.ndarray, int]]:
    if not (data_dir / "wav.scp").is_file():
        raise SpeechkitError(f"{data_dir}: no wav.scp (build test data with `speechkit corpus synth`, or give --data)")
    out = []
    for key, path in list(read_table(data_dir / "wav.scp").items())[:limit]:
        blocks = list(file_blocks(path))
        out.append((key, np.concatenate([b for b, _ in blocks]), blocks[0][1]))
    return out


async def _client(url: str, utts, first: int, rounds: int, realtime: bool, results: list, bar) -> None:
    for r in range(rounds):
        key, x, rate = utts[(first + r) % len(utts)]
        res = await stream_audio(url, x, rate, realtime=realtime)
        results.append((key, res))
        bar.update(1)


async def _load(url: str, utts, clients: int, rounds: int, realtime: bool, pid: int, samples: list, what: str) -> list:
    results: list = []
    stop = asyncio.Event()

    async def sample():  # the server's memory and CPU once a second
        while not stop.is_set():
            samples.append((time.monotonic(), *_proc(pid)))
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass

    sampler = asyncio.create_task(sample())
    with tqdm(total=clients * rounds, desc=f"{what}: {clients} clients", unit="stream") as bar:
        await asyncio.gather(*[_client(url, utts, i, rounds, realtime, results, bar) for i in range(clients)])
    stop.set()
    await sampler
    return results


def main(args: argparse.Namespace) -> None:
    utts = load_utterances(Path(args.data), args.utts)
    port = free_port()
    url = f"ws://127.0.0.1:{port}/asr"
    server = start_server(args.model_dir, port, ["--threads", str(args.threads), "--max-batch", str(args.max_batch)])
    try:
        # single-client references, one utterance at a time (also warms the server up)
        alone = {}
        for key, x, rate in tqdm(utts, desc="single client", unit="utt"):
            alone[key] = asyncio.run(stream_audio(url, x, rate)).text
        rss_single, _ = _proc(server.pid)
        # one load round to bring the server to its working size, then the measured rounds
        asyncio.run(_load(url, utts, args.clients, 1, not args.fast, server.pid, [], "warm-up round"))
        rss0, cpu0 = _proc(server.pid)
        samples: list = []
        t0 = time.monotonic()
        try:
            results = asyncio.run(asyncio.wait_for(_load(url, utts, args.clients, args.rounds, not args.fast, server.pid, samples,
                                                          "measured"), args.timeout))
        except TimeoutError:
            raise SpeechkitError(f"the measured rounds did not finish within --timeout {args.timeout:g} s") from None
        wall = time.monotonic() - t0
        rss1, cpu1 = _proc(server.pid)
        health = _health(port)
    finally:
        server.terminate()
        server.wait(10)
    lat = np.array([(res.t_done - res.t_last_audio) * 1000 for _, res in results if res.close_code == 1000])
    mismatched = [key for key, res in results if res.text != alone[key]]
    bad_close = [res.close_code for _, res in results if res.close_code != 1000]
    audio_s = sum(len(utts[(i + r) % len(utts)][1]) / utts[(i + r) % len(utts)][2] for i in range(args.clients) for r in range(args.rounds))
    rss_curve = [round(s[1], 1) for s in samples]
    result = {
        "model": args.model_dir, "clients": args.clients, "rounds": args.rounds, "streams": len(results), "realtime": not args.fast,
        "threads": args.threads, "utterances": len(utts), "audio_seconds": round(audio_s, 1), "wall_seconds": round(wall, 1),
        "transcripts_equal_single_client": len(results) - len(mismatched), "mismatched": mismatched[:10],
        "abnormal_closes": bad_close[:10],
        "end_of_speech_to_final_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p95": round(float(np.percentile(lat, 95)), 1),
                                      "max": round(float(lat.max()), 1)} if lat.size else None,
        "server_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / wall, 1),
        "server_rss_mb": {"after_single_client": round(rss_single, 1), "after_warmup_round": round(rss0, 1),
                          "peak": round(max(rss_curve + [rss1]), 1), "end": round(rss1, 1), "growth": round(rss1 - rss0, 1)},
        "engine": {k: health[k] for k in ("model_calls", "stream_chunks", "max_batch_seen")},
        "machine": f"{os.cpu_count()} CPUs",
    }
    result["engine"]["mean_batch"] = round(health["stream_chunks"] / max(1, health["model_calls"]), 2)
    lines = [
        f"{args.clients} clients x {args.rounds} rounds = {len(results)} streams, {audio_s:.0f} s of audio in {wall:.1f} s "
        f"({'real-time pace' if not args.fast else 'as fast as possible'})",
        f"transcripts equal to the single-client result: {len(results) - len(mismatched)} / {len(results)}",
        f"abnormal closes: {len(bad_close)}",
    ]
    if lat.size:
        lines.append(f"end of speech -> final: p50 {result['end_of_speech_to_final_ms']['p50']:.0f} ms, "
                     f"p95 {result['end_of_speech_to_final_ms']['p95']:.0f} ms, max {lat.max():.0f} ms")
    lines += [
        f"server CPU: {result['server_cpu_percent_of_one_core']}% of one core ({args.threads} ONNX thread(s); {os.cpu_count()} CPUs)",
        f"server RSS: {rss_single:.1f} MB after the single-client runs, {rss0:.1f} MB after a warm-up round of "
        f"{args.clients} clients, peak {result['server_rss_mb']['peak']} MB, end {rss1:.1f} MB "
        f"(growth over the measured rounds {rss1 - rss0:+.1f} MB)",
        f"model calls: {health['model_calls']}, mean batch {result['engine']['mean_batch']}, largest {health['max_batch_seen']}",
    ]
    emit(result, lines, args)
    if mismatched or bad_close:
        raise SpeechkitError(f"{len(mismatched)} transcript(s) differ from the single-client result, {len(bad_close)} abnormal close(s)")


def add_parser(bench_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``bench`` subcommands."""
    p = bench_sub.add_parser("serve", help="load test of `speechkit serve` on loopback: N real-time clients, latency, CPU, memory")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--data", default="egs/synth/asr/data/test", help="Kaldi data dir whose wavs the clients stream (default: the recipe's test set)")
    p.add_argument("--utts", type=int, default=50, help="at most this many utterances of --data (default 50)")
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    p.add_argument("--rounds", type=int, default=3, help="utterances each client streams, one after another (default 3)")
    p.add_argument("--threads", type=int, default=1, help="the server's ONNX Runtime threads (default 1)")
    p.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch (default 64)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up when the measured rounds take longer (default 600 s)")
    p.add_argument("--fast", action="store_true", help="send audio as fast as possible instead of at real-time pace")
    add_output_args(p)
    p.set_defaults(func=main)
    return p
