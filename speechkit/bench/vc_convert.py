"""Benchmark of streamed voice conversion (``speechkit.runtime.vc``) on the CPU: the real-time factor
of the whole streamed path (content encoder, ``step.onnx``, the codec's streaming decoder), the
compute of one chunk and each stage's share of it, the algorithmic latency, and the throughput of
:meth:`VoiceConverter.step_many` when N streams are converted together.

The sources are fed in blocks of one MeanVC chunk (200 ms in the shipped setup), as a microphone
would deliver them; the speed of a model does not depend on its weights, so any export of an
architecture measures the same.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkit.bench import add_output_args, emit
from speechkit.errors import SpeechkitError

STAGES = ("content", "step", "decoder")


@dataclass
class BlockTimes:
    """Seconds one block of source audio cost in each stage, and the chunks it completed."""

    content: float = 0.0
    step: float = 0.0
    decoder: float = 0.0
    chunks: int = 0

    @property
    def total(self) -> float:
        return self.content + self.step + self.decoder


def open_converter(model_dir: str | Path, threads: int):
    """The exported converter in ``model_dir``; a one-line error for anything else (an experiment
    dir, a missing folder)."""
    from speechkit.runtime.vc import CONFIG_FILE, STEP_FILE, VoiceConverter

    model_dir = Path(model_dir)
    if threads < 1:
        raise SpeechkitError(f"--threads must be at least 1, got {threads}")
    if not ((model_dir / STEP_FILE).is_file() and (model_dir / CONFIG_FILE).is_file()):
        hint = " (a training experiment: export it first)" if (model_dir / "model.pt").is_file() else ""
        raise SpeechkitError(f"{model_dir}: not an exported voice-conversion model (no {STEP_FILE} + {CONFIG_FILE}){hint}; "
                             f"make one with `speechkit vc export EXP_DIR OUT_DIR`")
    return VoiceConverter(model_dir, num_threads=threads)


def chunk_samples(vc) -> int:
    """Source samples in one MeanVC chunk of content frames."""
    return int(round(vc.sample_rate * vc.chunk / vc.content.frame_rate))


def _convert_ready(vc, s, times: BlockTimes) -> int:
    """Convert every chunk the stream holds, timing ``step_many``'s two halves apart → samples out."""
    out = 0
    while s.chunk_ready:
        t0 = time.perf_counter()
        latents = vc._step([s])
        t1 = time.perf_counter()
        (audio,) = vc._decode([s], latents)
        times.step += t1 - t0
        times.decoder += time.perf_counter() - t1
        times.chunks += 1
        out += len(audio)
    return out


def stream_times(vc, target, samples: np.ndarray, block: int, seed: int = 0) -> tuple[list[BlockTimes], int]:
    """One source streamed alone in blocks of ``block`` samples, then finished → (per block, the
    finish last: its stage times; samples of converted audio)."""
    s = vc.stream(target, seed=seed)
    rows, out = [], 0
    for piece in [*(samples[at : at + block] for at in range(0, len(samples), block)), None]:  # None: the finish
        times = BlockTimes()
        t0 = time.perf_counter()
        if piece is None:
            s.close()
        else:
            s.feed(piece)
        vc.encode_content([s])
        times.content = time.perf_counter() - t0
        out += _convert_ready(vc, s, times)
        rows.append(times)
    return rows, out


def throughput(vc, target, sources: list[np.ndarray], n: int, block: int) -> dict:
    """``n`` streams (stream i converts source i mod len(sources) with seed i), fed one block each
    in turn, every ready chunk converted by one ``step_many`` call over all of them."""
    streams = [vc.stream(target, seed=i) for i in range(n)]
    inputs = [sources[i % len(sources)] for i in range(n)]
    calls, chunks, samples_out, at = [], 0, 0, 0
    t0 = time.perf_counter()
    while not all(s.done for s in streams):
        for s, x in zip(streams, inputs):
            if at < len(x):
                s.feed(x[at : at + block])
            elif not s.closed:
                s.close()
        at += block
        while any(s.ready for s in streams):
            t = time.perf_counter()
            out = vc.step_many(streams)
            calls.append(time.perf_counter() - t)
            chunks += sum(len(a) > 0 for a in out)
            samples_out += sum(len(a) for a in out)
    seconds = time.perf_counter() - t0
    step_ms = 1000.0 * np.asarray(calls)
    return {
        "streams": n,
        "stream_chunks": chunks,
        "audio_seconds": round(samples_out / vc.sample_rate, 3),
        "compute_seconds": round(seconds, 4),
        "stream_chunks_per_second": chunks / seconds,
        "realtime_streams": samples_out / vc.sample_rate / seconds,
        "step_many_calls": len(calls),
        "step_many_ms_p50": float(np.percentile(step_ms, 50)),
        "step_many_ms_p95": float(np.percentile(step_ms, 95)),
        "step_many_share": float(step_ms.sum() / 1000.0 / seconds),
    }


def bench_vc(model_dir: str | Path, sources: list[str | Path], reference: str | Path, *, threads: int = 1,
             streams: list[int] = (), repeats: int = 1, stream_seconds: float = 5.0) -> dict:
    """Benchmark the exported converter in ``model_dir`` on this CPU with ``threads`` threads.

    Every source (any rate, downmixed) is streamed alone ``repeats`` times, in blocks of one chunk,
    after one untimed warm-up conversion. Figures:

    - ``rtf``: compute seconds of all three stages / source seconds.
    - ``chunk_compute_ms_p50`` / ``_p95``: the compute of each block that completed a chunk (its
      content encoding, the chunk's step and its decode), percentiles over those blocks;
      ``stages[name]``: that stage's ``share`` of all compute (the shares sum to 1) and its ms per
      such block, p50 and p95.
    - ``latency_ms``: the converter's algorithmic latency (content chunk + fbank window), compute
      not included; ``reference_ms``: the one-off cost of turning the reference into a target voice.
    - ``throughput`` (one row per ``streams`` entry N): N streams, each at most ``stream_seconds``
      of a source, converted together: stream-chunks per compute second and ``realtime_streams``,
      the seconds of converted audio per compute second (the real-time streams these threads carry).
    """
    from speechkit.audio.io import load_audio

    if not sources:
        raise SpeechkitError("give at least one --source WAV")
    if repeats < 1 or not stream_seconds > 0 or any(n < 1 for n in streams):
        raise SpeechkitError("--repeats, --streams and --stream-seconds must be positive")
    vc = open_converter(model_dir, threads)
    rate = vc.sample_rate
    audio = [load_audio(p, rate, resample=True, downmix=True)[0] for p in sources]
    ref = load_audio(reference, rate, resample=True, downmix=True)[0]
    t0 = time.perf_counter()
    target = vc.target(ref, rate)
    reference_ms = 1000.0 * (time.perf_counter() - t0)
    block = chunk_samples(vc)
    stream_times(vc, target, audio[0][: 3 * block], block)  # ONNX Runtime allocates its buffers on the first calls

    wall = time.perf_counter()
    rows: list[BlockTimes] = []
    for _ in range(repeats):
        for x in audio:
            rows.extend(stream_times(vc, target, x, block)[0])
    chunk_rows = [r for r in rows if r.chunks]
    if not chunk_rows:
        raise SpeechkitError("the sources are too short to complete a single chunk")
    total = sum(r.total for r in rows)
    source_seconds = repeats * sum(len(x) for x in audio) / rate

    def ms(values) -> tuple[float, float]:
        a = 1000.0 * np.asarray(list(values))
        return float(np.percentile(a, 50)), float(np.percentile(a, 95))

    p50, p95 = ms(r.total for r in chunk_rows)
    stages = {}
    for name in STAGES:
        s50, s95 = ms(getattr(r, name) for r in chunk_rows)
        stages[name] = {"share": sum(getattr(r, name) for r in rows) / total, "ms_p50": s50, "ms_p95": s95}
    capped = [x[: int(stream_seconds * rate)] for x in audio]
    rows_n = []
    for n in streams:
        throughput(vc, target, [x[: 3 * block] for x in capped], n, block)  # warm-up at this batch size
        rows_n.append(throughput(vc, target, capped, n, block))
    from speechkit.bench.asr_stream import machine

    return {
        "bench": "vc",
        "model_dir": str(model_dir),
        "threads": threads,
        "steps": vc.config.get("steps"),
        "sample_rate": rate,
        "chunk_ms": 1000.0 * vc.chunk / vc.content.frame_rate,
        "latency_ms": vc.latency_ms,
        "sources": {"files": [str(p) for p in sources], "seconds": round(source_seconds / repeats, 3), "repeats": repeats},
        "reference": str(reference),
        "reference_ms": reference_ms,
        "audio_seconds": round(source_seconds, 3),
        "blocks": len(rows),
        "chunks": sum(r.chunks for r in rows),
        "rtf": total / source_seconds,
        "chunk_compute_ms_p50": p50,
        "chunk_compute_ms_p95": p95,
        "stages": stages,
        "throughput": rows_n,
        "machine": machine(),
        "wall_seconds": round(time.perf_counter() - wall, 2),
    }


def report_lines(r: dict) -> list[str]:
    """The human-readable figures, one a line."""
    st = r["stages"]
    lines = [
        f"model: {r['model_dir']} ({r['steps']} step(s) per chunk), {r['threads']} thread(s) on {r['machine']['cpu']}",
        f"sources: {len(r['sources']['files'])} file(s), {r['sources']['seconds']:.1f} s, x{r['sources']['repeats']}; "
        f"reference {r['reference']} (target voice in {r['reference_ms']:.0f} ms, once)",
        f"rtf: {r['rtf']:.4f} (content encoder + step graph + codec decoder, {r['audio_seconds']:.1f} s of source)",
        f"chunk compute ({r['chunk_ms']:.0f} ms chunk): p50 {r['chunk_compute_ms_p50']:.2f} ms, p95 {r['chunk_compute_ms_p95']:.2f} ms "
        f"over {r['chunks']} chunks",
        "  " + ", ".join(f"{name} {st[name]['share']:.0%} (p50 {st[name]['ms_p50']:.2f} ms)" for name in STAGES),
        f"algorithmic latency: {r['latency_ms']:.0f} ms (content chunk + fbank window, compute not included)",
    ]
    for t in r["throughput"]:
        lines.append(f"{t['streams']:>3} stream(s): {t['stream_chunks_per_second']:.1f} stream-chunks/s, "
                     f"{t['realtime_streams']:.1f} real-time streams; step_many p50 {t['step_many_ms_p50']:.2f} ms "
                     f"({t['step_many_share']:.0%} of the time)")
    return lines


def main(args: argparse.Namespace) -> None:
    result = bench_vc(args.model_dir, args.source, args.reference, threads=args.threads, streams=args.streams,
                      repeats=args.repeats, stream_seconds=args.stream_seconds)
    emit(result, report_lines(result), args)


def add_parser(bench_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``vc`` to the ``bench`` subcommands."""
    p = bench_sub.add_parser("vc", help="streamed voice conversion: RTF, per-chunk compute by stage, latency, "
                             "batched throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", metavar="MODEL_DIR", help="exported voice-conversion model (step.onnx, vc.json)")
    p.add_argument("--source", nargs="+", required=True, metavar="WAV", help="speech to convert (any rate; downmixed)")
    p.add_argument("--reference", required=True, metavar="WAV", help="the target voice (at least 1 s)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="ONNX Runtime threads (default 1)")
    p.add_argument("--streams", type=int, nargs="*", default=[1, 8, 32], metavar="N",
                   help="throughput of N streams converted together, per N (default 1 8 32; none: skip)")
    p.add_argument("--stream-seconds", type=float, default=5.0, help="source seconds per stream in the throughput runs (default 5)")
    p.add_argument("--repeats", type=int, default=1, help="times every source is streamed alone (default 1)")
    add_output_args(p)
    p.set_defaults(func=main)
    return p
