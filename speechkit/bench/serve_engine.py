"""Where one server process's CPU goes: the recognition engine's decoding tick (``BatchEngine``:
fbank, speech gates, batched model calls, results), driven without sockets by N simulated
real-time streams. Every tick each live stream gets one message of ``--message-ms`` of speech, and
the engine runs the loop ``speechkit serve`` runs; the stream starts are spread over one chunk, so
each tick decodes the share of streams whose chunk is full, as a steady server does.

The parts are timed from outside the runtime: the recognizer's and the engine's calls are wrapped
here (a stream's kaldi-native-fbank object, ``feed_gates``, ``next_chunks``, ``read_frames``,
``batch_states``, the ONNX Runtime session's run) and each wrapper charges the process CPU time
(``time.process_time``) spent inside it to its part, exclusive of the parts nested within; what no
wrapper covers is "other". Every stream's transcript must equal the same audio decoded alone.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import numpy as np

from speechkit.bench import add_output_args, emit
from speechkit.devices import device_arg
from speechkit.errors import SpeechkitError

# the project's own espeak speech (never the held-out test sets), relative to the repository root
SPEECH = ("egs/synth/codec/samples/original.flac", "egs/synth/codec/samples/unseen_original.flac",
          "egs/synth/tts/samples/espeak-en-029-grandma-test_unseen-000055.real.flac")
DISTINCT = 16  # different signals among the streams: each is also decoded alone, as the reference
DATA_UTTERANCES = 200  # --data: the first this many utterances of its wav.scp (memory stays bounded)
PARTS = {  # part → its row in the table, in order
    "fbank": "kaldi-native-fbank accept_waveform / input_finished",
    "reads": "knf frame reads (read_frames' get_frame) and pop",
    "gates": "speech gates (feed_gates)",
    "model_input": "the model input (next_chunks: fill in place; batch_states: stack states)",
    "session": "ONNX Runtime session.run",
    "other": "un-stacking, search, results, other Python",
}
SUM_TOLERANCE = 0.03  # the parts and the driver against the process's CPU time over the run


class Profile:
    """Exclusive CPU seconds per part: ``switch`` charges the time since the last switch to the
    current part and makes another current; ``wrap`` makes a call's time its part's."""

    def __init__(self, part: str):
        self.seconds: dict[str, float] = defaultdict(float)
        self.part, self.switches = part, 0
        self.t = time.process_time()

    def switch(self, part: str) -> str:
        now = time.process_time()
        self.seconds[self.part] += now - self.t
        self.t, self.switches = now, self.switches + 1
        prev, self.part = self.part, part
        return prev

    def wrap(self, part: str, fn):
        def timed(*args, **kwargs):
            prev = self.switch(part)
            try:
                return fn(*args, **kwargs)
            finally:
                self.switch(prev)

        return timed

    def reset(self) -> None:
        """Forget everything charged so far; the current part starts again now."""
        self.seconds.clear()
        self.switches, self.t = 0, time.process_time()


def wrapper_cost(calls: int = 20000) -> float:
    """CPU seconds one ``Profile.wrap`` call adds (two clock reads and the Python around them)."""
    prof, x = Profile("calibration"), (1, 2)
    timed = prof.wrap("inner", len)
    t0 = time.process_time()
    for _ in range(calls):
        len(x)
    t1 = time.process_time()
    for _ in range(calls):
        timed(x)
    t2 = time.process_time()
    return max(0.0, (t2 - t1) - (t1 - t0)) / calls


class TimedFbank:
    """A stream's kaldi-native-fbank with its calls charged to parts: taking audio to ``fbank``,
    ``pop`` to ``reads``; ``get_frame`` is timed by the caller's ``read_frames`` (one wrapper a
    chunk, not a frame), ``num_frames_ready`` goes untimed to whoever asks."""

    def __init__(self, fbank, prof: Profile):
        self._fbank = fbank
        self.get_frame = fbank.get_frame
        self.accept_waveform = prof.wrap("fbank", fbank.accept_waveform)
        self.input_finished = prof.wrap("fbank", fbank.input_finished)
        self.pop = prof.wrap("reads", fbank.pop)

    @property
    def num_frames_ready(self) -> int:
        return self._fbank.num_frames_ready

    def __getattr__(self, name):
        return getattr(self._fbank, name)


def instrument(stack: ExitStack, rec, prof: Profile) -> None:
    """Wrap the recognizer's and the engine's calls (undone when ``stack`` closes)."""
    import speechkit.runtime.asr as asr
    import speechkit.serve.engine as engine_module

    stack.enter_context(mock.patch.object(engine_module, "feed_gates", prof.wrap("gates", engine_module.feed_gates)))
    stack.enter_context(mock.patch.object(asr, "read_frames", prof.wrap("reads", asr.read_frames)))
    # the module whose decode_streams the recognizer runs (ours, or the transducer's) names its own helpers
    for module in {asr, inspect.getmodule(type(rec).decode_streams)}:
        for name in ("next_chunks", "batch_states"):
            if hasattr(module, name):
                stack.enter_context(mock.patch.object(module, name, prof.wrap("model_input", getattr(module, name))))
    pool = getattr(rec, "_pool", None)  # a GPU's device state pool runs its own session, with bindings
    if pool is not None:
        stack.enter_context(mock.patch.object(pool.session, "run_with_iobinding", prof.wrap("session", pool.session.run_with_iobinding)))
    else:
        stack.enter_context(mock.patch.object(rec.session, "run", prof.wrap("session", rec.session.run)))


def engine_tick(engine) -> list:
    """What ``StreamEngine._run`` does on a wake-up, without the event loop: step every stream with
    work in the engine's worker code and deliver, until none has work → the finished connections."""
    finished = []
    while jobs := engine.take_jobs():
        finished += engine.deliver(engine.timed_step(jobs))
    return finished


def _done_text(conn) -> str | None:
    text = None
    while not conn.outbox.empty():
        m = conn.outbox.get_nowait()
        if isinstance(m, dict) and m.get("type") == "done":
            text = m["text"]
    return text


def load_speech(sample_rate: int, wav: str | None, data: str | None) -> tuple[np.ndarray, dict]:
    """The speech the streams loop over, at ``sample_rate``: ``wav``, the first ``DATA_UTTERANCES``
    utterances of the Kaldi data dir ``data``, else the project's espeak samples (``SPEECH``)."""
    from speechkit.audio.io import load_audio, resample_audio

    if data is not None:
        from speechkit.bench.serve_load import load_utterances

        utts = load_utterances(Path(data), DATA_UTTERANCES)
        if not utts:
            raise SpeechkitError(f"{data}: wav.scp lists no audio")
        clips = [resample_audio(x, rate, sample_rate) for _, x, rate in utts]
        info = {"source": "data", "path": str(data), "files": len(clips)}
    else:
        root = Path(__file__).resolve().parents[2]
        paths = [Path(wav)] if wav is not None else [root / p for p in SPEECH]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise SpeechkitError(f"no audio at {missing[0]}" + ("" if wav else " (give --wav FILE or --data DIR)"))
        clips = [load_audio(p, sample_rate, resample=True)[0] for p in paths]
        info = {"source": "wav" if wav else "espeak-samples", "path": str(wav) if wav else [str(p) for p in SPEECH],
                "files": len(clips)}
    speech = np.concatenate(clips)
    return speech, info | {"seconds": round(speech.size / sample_rate, 3)}


def bench_serve_engine(model_dir: str, *, streams: int = 1000, message_ms: float = 20.0, seconds: float = 20.0,
                       device: str = "cpu", threads: int = 1, max_batch: int = 64, wav: str | None = None,
                       data: str | None = None, progress: bool = False) -> dict:
    """Drive ``BatchEngine`` with ``streams`` real-time streams of ``seconds`` of speech each, in
    messages of ``message_ms``; → the result dict (see ``report_lines``)."""
    from tqdm import tqdm

    from speechkit.runtime.console import open_recognizer
    from speechkit.serve.engine import BatchEngine

    for name, value in (("streams", streams), ("threads", threads), ("max-batch", max_batch)):
        if value < 1:
            raise SpeechkitError(f"--{name} must be at least 1")
    if not (message_ms > 0 and seconds > 0):
        raise SpeechkitError("--message-ms and --seconds must be positive")
    # as the server opens it: no memory arena, so working memory follows the batch size
    rec = open_recognizer(model_dir, num_threads=threads, memory_arena=False, device=device)
    rate = rec.sample_rate
    step = max(1, round(message_ms * rate / 1000))
    length = max(1, round(seconds * rate))
    speech, audio_info = load_speech(rate, wav, data)
    k = min(streams, DISTINCT)
    signals = [np.take(speech, np.arange(length) + j * speech.size // k, mode="wrap").astype(np.float32) for j in range(k)]
    alone = [rec.transcribe(x) for x in tqdm(signals, desc="single-stream references", unit="signal", disable=not progress,
                                             file=sys.stderr, leave=False)]

    engine = BatchEngine(rec, max_batch)
    messages = math.ceil(length / step)
    spread = max(1, round(rec.chunk_ms / (step * 1000 / rate)))  # ticks in one chunk: stream i starts at tick i % spread
    ticks = spread - 1 + messages
    prof = Profile("driver")
    conns = []
    with ExitStack() as stack:
        instrument(stack, rec, prof)
        for _ in range(streams):
            c = engine.open(rate)
            c.stream.fbank = TimedFbank(c.stream.fbank, prof)
            conns.append(c)
        texts: dict[int, str | None] = {}
        index = {id(c): i for i, c in enumerate(conns)}
        prof.reset()
        wall0, cpu0, times0 = time.perf_counter(), time.process_time(), os.times()
        bar = tqdm(total=ticks, desc=f"{streams} streams, {message_ms:g} ms messages", unit="tick", disable=not progress,
                   file=sys.stderr, leave=False)
        tick = 0
        while engine.conns:
            if tick < ticks:
                for i in range(streams):
                    m = tick - i % spread
                    if 0 <= m < messages:
                        c = conns[i]
                        engine.feed(c, signals[i % k][m * step : (m + 1) * step])
                        if m == messages - 1:
                            engine.end(c)
                bar.update(1)
            prof.switch("other")
            done = engine_tick(engine)
            prof.switch("driver")
            for c in done:
                texts[index[id(c)]] = _done_text(c)
            tick += 1
        bar.close()
        prof.switch("driver")  # charges the driver's last stretch
        cpu, wall, times1 = time.process_time() - cpu0, time.perf_counter() - wall0, os.times()
    overhead = wrapper_cost() * prof.switches / 2

    stream_seconds = streams * length / rate
    ms = {p: 1000 * prof.seconds.get(p, 0.0) / stream_seconds for p in PARTS}
    total = sum(ms.values())
    driver = 1000 * prof.seconds.get("driver", 0.0) / stream_seconds
    measured = 1000 * cpu / stream_seconds
    mismatched = [i for i in range(streams) if texts.get(i) != alone[i % k]]
    st = engine.stats
    return {
        "model": str(model_dir), "device": device, "threads": threads, "max_batch": max_batch, "streams": streams,
        "message_ms": round(step * 1000 / rate, 3), "seconds_per_stream": round(length / rate, 3), "start_spread_ticks": spread,
        "chunk_ms": rec.chunk_ms, "audio": audio_info, "distinct_signals": k, "stream_seconds": round(stream_seconds, 1),
        "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
        # kernel time: page faults of memory the allocator gave back (docs/serve.md, "the session's kernel time")
        "cpu_user_seconds": round(times1.user - times0.user, 2), "cpu_system_seconds": round(times1.system - times0.system, 2),
        "parts": {p: {"label": label, "cpu_ms_per_stream_second": round(ms[p], 3), "share": round(ms[p] / total, 4) if total else None}
                  for p, label in PARTS.items()},
        "total_cpu_ms_per_stream_second": round(total, 3),
        "driver_cpu_ms_per_stream_second": round(driver, 3),
        "process_cpu_ms_per_stream_second": round(measured, 3),
        "parts_and_driver_over_process_cpu": round((total + driver) / measured, 4) if measured else None,
        "profiling_overhead_ms_per_stream_second": round(1000 * overhead / stream_seconds, 3),
        "engine": {"model_calls": st.calls, "stream_chunks": st.streams_decoded, "mean_batch": round(st.streams_decoded / max(1, st.calls), 2),
                   "max_batch_seen": st.max_batch_seen, "busy_seconds": round(st.busy_seconds, 2),
                   "stage_seconds": {s: round(v, 3) for s, v in st.stage_seconds.items()}},
        "transcripts_equal_single_stream": not mismatched, "mismatched_streams": mismatched[:10], "single_stream_texts": alone,
        "machine": {"cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }


def report_lines(r: dict) -> list[str]:
    a = r["audio"]
    source = {"espeak-samples": "the project's espeak samples", "wav": a["path"], "data": f"{a['files']} utterances of {a['path']}"}[a["source"]]
    e = r["engine"]
    lines = [f"{r['model']} --device {r['device']} --threads {r['threads']} --max-batch {r['max_batch']}: {r['streams']} streams x "
             f"{r['seconds_per_stream']:g} s of {source} ({r['distinct_signals']} distinct signals), {r['message_ms']:g} ms messages, "
             f"starts spread over {r['start_spread_ticks']} ticks ({r['chunk_ms']:g} ms chunks)",
             f"engine: {e['model_calls']} model calls, mean batch {e['mean_batch']}, largest {e['max_batch_seen']}; "
             f"{r['stream_seconds']:g} stream-seconds in {r['wall_seconds']:g} s wall, {r['cpu_seconds']:g} s CPU "
             f"({r['cpu_system_seconds']:g} s of it in the kernel)",
             "CPU ms per stream-second:"]
    width = max(len(v["label"]) for v in r["parts"].values())
    for v in r["parts"].values():
        lines.append(f"  {v['label']:<{width}}  {v['cpu_ms_per_stream_second']:7.2f}  {100 * v['share']:5.1f} %")
    lines.append(f"  {'total':<{width}}  {r['total_cpu_ms_per_stream_second']:7.2f}")
    lines.append(f"the driver (slicing messages, queueing them, reading results): {r['driver_cpu_ms_per_stream_second']:.2f}; "
                 f"parts + driver = {100 * r['parts_and_driver_over_process_cpu']:.1f} % of the process's CPU time; the profiling "
                 f"wrappers cost about {r['profiling_overhead_ms_per_stream_second']:.2f}, inside the figures")
    lines.append(f"transcripts equal to the single-stream decode: {'yes' if r['transcripts_equal_single_stream'] else 'NO'}"
                 + ("" if r["transcripts_equal_single_stream"] else f" (streams {r['mismatched_streams']})"))
    return lines


def main(args: argparse.Namespace) -> None:
    r = bench_serve_engine(args.model_dir, streams=args.streams, message_ms=args.message_ms, seconds=args.seconds,
                           device=args.device, threads=args.threads, max_batch=args.max_batch, wav=args.wav, data=args.data,
                           progress=sys.stderr.isatty())
    emit(r, report_lines(r), args)
    if not r["transcripts_equal_single_stream"]:
        raise SpeechkitError(f"streams whose transcript differs from the single-stream decode: {r['mismatched_streams']}")
    if abs(r["parts_and_driver_over_process_cpu"] - 1) > SUM_TOLERANCE:
        raise SpeechkitError(f"the parts sum to {100 * r['parts_and_driver_over_process_cpu']:.1f} % of the process's CPU time")


def add_parser(bench_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``serve-engine`` to the ``bench`` subcommands."""
    p = bench_sub.add_parser("serve-engine", help="CPU per part of the server's decoding tick (fbank, gates, model, search) "
                                                    "under N simulated real-time streams, without sockets")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="the model folder `speechkit serve` opens")
    p.add_argument("--streams", type=int, default=1000, help="simulated real-time streams (default 1000)")
    p.add_argument("--message-ms", type=float, default=20.0, metavar="MS", help="audio in each message a stream sends (default 20)")
    p.add_argument("--seconds", type=float, default=20.0, help="audio each stream sends (default 20)")
    p.add_argument("--device", type=device_arg, default="cpu", metavar="DEVICE",
                   help="the recognizer's device: cpu (default), cuda[:N] or tensorrt[:N] (the host side is profiled the same)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    p.add_argument("--max-batch", type=int, default=64, help="most streams in one model call, as serve's --max-batch (default 64)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--wav", default=None, metavar="FILE", help="speech the streams loop over (default: the project's espeak samples)")
    src.add_argument("--data", default=None, metavar="DIR", help="a Kaldi data dir: its first 200 wav.scp utterances are what the streams loop over")
    add_output_args(p)
    p.set_defaults(func=main)
    return p
