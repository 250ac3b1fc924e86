"""Benchmark of the streaming recognizer on one CPU stream, for any exported streaming folder (our
CTC graph, or a sherpa-format transducer or CTC model, opened by family): real-time factor and
per-chunk compute, latency of the first partial and of the endpointed final, and resident-memory
growth while one stream runs for a long time. On a sherpa-format folder it can also decode the same
audio, in the same pieces, with sherpa-onnx's C++ runtime and report both side by side.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from speechkit.bench import add_output_args, emit
from speechkit.errors import SpeechkitError
from speechkit.proc import rss_mb

if TYPE_CHECKING:  # ONNX Runtime and the rest load with the benchmark, not with `speechkit --help`
    from tqdm import tqdm

    from speechkit.runtime.asr import OnlineRecognizer

TEST_WAVS = Path("egs/synth/asr/data/wav/test")  # relative to the repo that holds models/<name>
WARMUP_SECONDS = 60.0  # audio streamed before the first memory reading
ENDPOINT_SILENCE = 3.0  # seconds of zeros after the endpoint utterance (at least)
MAX_UTTERANCE = 15.0  # seconds; under the default max_segment so only trailing silence can fire
# fbank shifts fed past the last whole chunk in the sherpa-onnx comparison: then both runtimes have
# every chunk's frames without input_finished (sherpa-onnx wants one frame more than a chunk)
TAIL_SHIFTS = 2


@dataclass
class BenchAudio:
    samples: np.ndarray  # float32, looped as long as a run needs
    utterance: np.ndarray  # one utterance for the endpoint measurement
    info: dict


def synthetic_speech(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Deterministic speech-like signal: voiced bursts (a gliding harmonic buzz plus shaped noise,
    syllable-rate envelope) separated by short silences. Not speech, but it drives the encoder
    through the same code path at a realistic level."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    out = np.zeros(n, dtype=np.float32)
    pos = int(0.2 * sample_rate)
    while pos < n:
        length = min(int(rng.uniform(0.8, 2.5) * sample_rate), n - pos)
        t = np.arange(length) / sample_rate
        f0 = rng.uniform(90, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        buzz = sum(np.sin(k * phase) / k for k in range(1, 12))
        noise = np.convolve(rng.standard_normal(length), np.ones(8) / 8, mode="same")
        envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 6) * t), 0, None) ** 0.5 * np.hanning(length)
        out[pos : pos + length] = (0.12 * buzz + 0.08 * noise) * envelope
        pos += length + int(rng.uniform(0.2, 0.9) * sample_rate)
    return out


def _test_wavs(model_dir: Path) -> list[Path]:
    folder = model_dir.resolve().parent.parent / TEST_WAVS
    return sorted(folder.glob("*.wav")) if folder.is_dir() else []


def load_bench_audio(model_dir: Path, sample_rate: int, wav: str | Path | None) -> BenchAudio:
    """The user's wav; else the recipe's test wavs next to the model; else the synthetic signal."""
    from speechkit.audio.io import load_audio

    cap = int(MAX_UTTERANCE * sample_rate)
    if wav is not None:
        samples, _ = load_audio(wav, sample_rate)  # strict: AudioError for stereo or another rate
        info = {"source": "wav", "path": str(wav), "files": 1}
        return BenchAudio(samples, samples[:cap], info | {"seconds": round(samples.size / sample_rate, 3)})
    wavs = _test_wavs(model_dir)
    if wavs:
        clips = [load_audio(p, sample_rate)[0] for p in wavs]
        samples = np.concatenate(clips)
        info = {"source": "test-wavs", "path": str(wavs[0].parent), "files": len(wavs)}
        return BenchAudio(samples, clips[0][:cap], info | {"seconds": round(samples.size / sample_rate, 3)})
    samples = synthetic_speech(60.0, sample_rate)
    info = {"source": "synthetic", "path": None, "files": 0, "seconds": 60.0}
    return BenchAudio(samples, samples[: 4 * sample_rate], info)


def speech_end(samples: np.ndarray, sample_rate: int) -> int:
    """Sample index just past the last 10 ms frame within 40 dB of the loudest one: trailing
    silence in the file would otherwise count as endpoint latency."""
    hop = sample_rate // 100
    frames = samples[: samples.size // hop * hop].reshape(-1, hop)
    if frames.size == 0:
        return samples.size
    db = 10 * np.log10((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-12)
    loud = np.nonzero(db > db.max() - 40)[0]
    return int(loud[-1] + 1) * hop


def _pieces(samples: np.ndarray, piece: int, total: int) -> Iterator[np.ndarray]:
    """``total`` samples of ``samples`` looped, in pieces of ``piece`` (the last may be shorter);
    indices wrap so an hour never needs an hour-long array."""
    for start in range(0, total, piece):
        yield np.take(samples, np.arange(start, min(start + piece, total)), mode="wrap")


class StreamDecoder(Protocol):
    """What the timed loops need of a recognizer: ours and ``sherpa_onnx.OnlineRecognizer`` both have it."""

    def create_stream(self): ...

    def is_ready(self, s) -> bool: ...

    def decode_streams(self, streams: list) -> None: ...


def _decode_ready(rec: StreamDecoder, s, on_call: Callable[[float], None]) -> None:
    while rec.is_ready(s):
        t0 = time.perf_counter()
        rec.decode_streams([s])
        on_call(time.perf_counter() - t0)


def _piece(rec: OnlineRecognizer) -> int:
    """Samples in one encoder chunk's worth of fbank frames."""
    return rec.chunk_feats * int(round(rec.sample_rate * rec.fbank_cfg.frame_shift_ms / 1000.0))


def _bar(progress: bool, seconds: float, desc: str) -> tqdm:
    from tqdm import tqdm

    return tqdm(total=round(seconds, 1), desc=desc, unit="s", disable=not progress, file=sys.stderr, leave=False)


Feed = Callable[[object, np.ndarray], None]  # (stream, float32 samples at the model's rate): accept_waveform


def _feed(s, x: np.ndarray) -> None:
    """Our streams' :data:`Feed` (sherpa-onnx's also takes the rate)."""
    s.accept_waveform(x)


def _warm(rec: StreamDecoder, feed: Feed, samples: np.ndarray) -> None:
    """Decode ``samples`` on a throw-away stream, untimed: ONNX Runtime allocates its buffers on
    the first runs."""
    s = rec.create_stream()
    feed(s, samples)
    s.input_finished()
    _decode_ready(rec, s, lambda dt: None)


def _compute_figures(call_seconds: list[float], feed_seconds: float, audio_seconds: float) -> dict:
    """Per-call decode times and the time spent feeding audio → the figures both runtimes report."""
    ms = 1000.0 * np.asarray(call_seconds)
    return {"calls": len(call_seconds), "rtf": float(ms.sum() / 1000.0 / audio_seconds),
            "chunk_compute_ms_p50": float(np.percentile(ms, 50)), "chunk_compute_ms_p95": float(np.percentile(ms, 95)),
            "feed_rtf": feed_seconds / audio_seconds}


def _latency_run(rec: OnlineRecognizer, audio: np.ndarray, seconds: float, progress: bool) -> dict:
    piece = _piece(rec)
    total = int(np.ceil(seconds * rec.sample_rate / piece)) * piece
    times: list[float] = []
    first_partial = None
    fed, feed_seconds = 0, 0.0
    s = rec.create_stream()

    def on_call(dt: float) -> None:
        nonlocal first_partial
        times.append(dt)
        if first_partial is None and s.partial:
            first_partial = 1000.0 * (fed / rec.sample_rate + dt)

    with _bar(progress, total / rec.sample_rate, "latency") as bar:
        for x in _pieces(audio, piece, total):
            t0 = time.perf_counter()
            s.accept_waveform(x)
            feed_seconds += time.perf_counter() - t0
            fed += x.size
            _decode_ready(rec, s, on_call)
            bar.update(x.size / rec.sample_rate)
        # the last chunk's frames wait for more audio: flush them so every fed sample is computed
        s.input_finished()
        _decode_ready(rec, s, on_call)
    return {"audio_seconds": round(total / rec.sample_rate, 3),
            **_compute_figures(times, feed_seconds, total / rec.sample_rate), "first_partial_ms": first_partial}


def text_agreement(ours: str, theirs: str) -> dict:
    """Whether two transcripts of the same audio say the same words; the word error rate of ours
    against theirs (None when theirs is empty, where no rate is defined)."""
    import jiwer

    a, b = ours.split(), theirs.split()
    return {"texts_equal": a == b, "text_wer": float(jiwer.wer(" ".join(b), " ".join(a))) if b else None, "words": len(b)}


def _vs_sherpa_run(ours: OnlineRecognizer, theirs, audio: np.ndarray, seconds: float, progress: bool) -> dict:
    """Our recognizer and sherpa-onnx's (each warmed by two chunks first) fed the same pieces in
    turn, so a noisy machine slows both alike; each decode call timed, then their texts compared.
    Both get whole chunks plus ``TAIL_SHIFTS`` fbank shifts and no input_finished, so both decode
    the same whole chunks."""
    rate, piece = ours.sample_rate, _piece(ours)
    hop = int(round(rate * ours.fbank_cfg.frame_shift_ms / 1000.0))
    total = int(np.ceil(seconds * rate / piece)) * piece + TAIL_SHIFTS * hop
    recs = {"ours": ours, "sherpa": theirs}
    feeders: dict[str, Feed] = {"ours": _feed, "sherpa": lambda s, x: s.accept_waveform(rate, x)}
    for side, rec in recs.items():
        _warm(rec, feeders[side], audio[: 2 * piece])
    streams = {side: rec.create_stream() for side, rec in recs.items()}
    times: dict[str, list[float]] = {"ours": [], "sherpa": []}
    feed_seconds = {"ours": 0.0, "sherpa": 0.0}
    with _bar(progress, total / rate, "vs sherpa-onnx") as bar:
        for x in _pieces(audio, piece, total):
            for side in ("ours", "sherpa"):
                t0 = time.perf_counter()
                feeders[side](streams[side], x)
                feed_seconds[side] += time.perf_counter() - t0
                _decode_ready(recs[side], streams[side], times[side].append)
            bar.update(x.size / rate)
    figures = {side: _compute_figures(times[side], feed_seconds[side], total / rate) for side in times}
    texts = ours.text(streams["ours"]), theirs.get_result(streams["sherpa"])
    return {"audio_seconds": round(total / rate, 3), **figures,
            "rtf_ratio": figures["ours"]["rtf"] / figures["sherpa"]["rtf"],
            "p50_ratio": figures["ours"]["chunk_compute_ms_p50"] / figures["sherpa"]["chunk_compute_ms_p50"],
            **text_agreement(*texts)}


def _endpoint_run(rec: OnlineRecognizer, utterance: np.ndarray) -> float | None:
    """Audio ms fed past the end of speech, plus that call's compute, when a final appears;
    None when the utterance gave no text (then no final is ever emitted)."""
    end = speech_end(utterance, rec.sample_rate)
    silence = max(ENDPOINT_SILENCE, rec.endpoint.silence_after_speech + 3 * rec.chunk_ms / 1000.0)
    audio = np.concatenate([utterance[:end], np.zeros(int(silence * rec.sample_rate), dtype=np.float32)])
    s = rec.create_stream()
    fed = 0
    for x in _pieces(audio, _piece(rec), audio.size):
        s.accept_waveform(x)
        fed += x.size
        while rec.is_ready(s):
            before = len(s.finals)
            t0 = time.perf_counter()
            rec.decode_streams([s])
            dt = time.perf_counter() - t0
            # a final that fires before the speech has ended (a long inner pause) is not this one
            if fed > end and len(s.finals) > before:
                return 1000.0 * ((fed - end) / rec.sample_rate + dt)
    return None


def _memory_run(rec: OnlineRecognizer, audio: np.ndarray, seconds: float, progress: bool) -> dict:
    piece = _piece(rec)
    total = int(np.ceil(seconds * rec.sample_rate / piece)) * piece
    warmup = int(WARMUP_SECONDS * rec.sample_rate)
    s = rec.create_stream()
    fed, after_warmup, start = 0, None, rss_mb()
    with _bar(progress, total / rec.sample_rate, "memory") as bar:
        for x in _pieces(audio, piece, total):
            s.accept_waveform(x)
            fed += x.size
            _decode_ready(rec, s, lambda dt: None)
            if after_warmup is None and fed >= warmup:
                gc.collect()  # readings compare live memory, not garbage awaiting collection
                after_warmup, warm_fed = rss_mb(), fed
            bar.update(x.size / rec.sample_rate)
    gc.collect()
    end = rss_mb()
    hours = (fed - warm_fed) / rec.sample_rate / 3600.0
    return {
        "memory_audio_seconds": round(fed / rec.sample_rate, 3),
        "rss_start_mb": round(start, 2),
        "rss_after_warmup_mb": round(after_warmup, 2),
        "rss_end_mb": round(end, 2),
        "rss_growth_mb_per_hour": (end - after_warmup) / hours,
        "memory_final_segments": len(s.finals),
    }


def machine() -> dict:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        names = [l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "cpus_usable": usable, "system": platform.platform(),
            "python": platform.python_version(), "onnxruntime": ort.__version__}


def search_name(family: str, beam: int) -> str:
    """The search a recognizer of ``family`` runs at ``beam``, in words."""
    from speechkit.runtime.transducer import TransducerRecognizer

    if beam == 1:
        return "greedy"
    return "modified beam" if family == TransducerRecognizer.family else "CTC prefix beam"


def bench_asr_stream(model_dir: str | Path, *, threads: int = 1, att_context: tuple[int, int] | None = None,
                     beam: int = 1, wav: str | Path | None = None, seconds: float = 60.0, memory_seconds: float = 600.0,
                     vs_sherpa: bool = False, progress: bool = True) -> dict:
    """Benchmark one stream of the exported streaming model in ``model_dir`` on this CPU: any folder
    ``speechkit.runtime.console.open_recognizer`` opens (our CTC graph, a sherpa-format transducer
    or CTC model), searched with ``beam`` (1: greedy; > 1: modified beam search for a transducer,
    CTC prefix beam search for our CTC graph). ``result["family"]``, ``["beam"]`` and
    ``["search"]`` say which.

    Audio is ``wav`` (mono, at the model's rate), else the recipe's test wavs found at
    ``model_dir/../../egs/synth/asr/data/wav/test``, else a synthetic speech-like signal; it is
    looped as long as needed and ``result["audio"]`` says which was used.

    Audio goes in pieces of exactly one encoder chunk (``chunk_feats`` fbank frames) and
    ``decode_streams`` runs while the stream is ready; each call is timed (fbank frame fetch,
    ONNX Runtime and the search). Figures:

    - ``rtf``: total compute seconds / audio seconds over ``seconds`` of audio.
    - ``chunk_compute_ms_p50`` / ``_p95``: compute of one call, percentiles over the calls.
    - ``feed_rtf``: seconds in ``accept_waveform`` (where the fbank and the speech gate are
      computed) / audio seconds; not part of ``rtf``.
    - ``first_partial_ms``: audio ms fed + compute ms of that call, when the first non-empty
      partial appeared (from the start of the audio, leading silence included; None if none).
    - ``final_after_endpoint_ms``: one utterance (trailing silence trimmed) then ≥ 3 s of zeros,
      default endpoint rules: audio ms fed past the end of speech + compute ms of that call,
      when the final segment appeared (None if the utterance gave no text).
    - ``rss_growth_mb_per_hour``: one stream fed ``memory_seconds`` of audio; (RSS at the end -
      RSS after 60 s of audio) / hours of audio after those 60 s. ``memory_seconds=0`` skips it.
    - ``vs_sherpa`` (None unless asked; a sherpa-format folder only): the same ``seconds`` of
      audio in the same pieces through our recognizer and ``sherpa_onnx.OnlineRecognizer`` on the
      same folder with ``threads`` threads and the same search, in turn piece by piece, both
      without endpointing and ours without its speech gate (sherpa-onnx has none), so both do
      the same work and their texts can be compared: per side (``ours``, ``sherpa``) ``calls``,
      ``rtf``, ``chunk_compute_ms_p50`` / ``_p95`` (each ``decode_streams`` call timed) and
      ``feed_rtf``; ``rtf_ratio`` and ``p50_ratio`` (ours / sherpa-onnx); ``texts_equal``,
      ``text_wer`` (ours against sherpa-onnx's) and ``words`` (sherpa-onnx's); the versions.
    - ``wall_seconds``: the runs, after the models were loaded and warmed by two chunks.
    """
    from speechkit.bench.sherpa_ref import sherpa_recognizer, sherpa_versions
    from speechkit.runtime.console import model_family, open_recognizer

    if threads < 1:
        raise SpeechkitError(f"threads must be at least 1, got {threads}")
    if not isinstance(beam, int) or beam < 1:
        raise SpeechkitError(f"beam must be a positive integer, got {beam!r}")
    if not seconds > 0:
        raise SpeechkitError(f"seconds must be positive, got {seconds}")
    if memory_seconds and not memory_seconds > WARMUP_SECONDS:
        raise SpeechkitError(f"memory_seconds must exceed the {WARMUP_SECONDS:g} s warm-up (or be 0 to skip), got {memory_seconds}")
    model_dir = Path(model_dir)
    family = model_family(model_dir)
    options = {"num_threads": threads, "att_context": att_context, "beam": beam}
    rec = open_recognizer(model_dir, **options)
    # refused here, before any run, when sherpa-onnx is missing or cannot load the folder
    theirs = sherpa_recognizer(model_dir, beam=beam, num_threads=threads) if vs_sherpa else None
    audio = load_bench_audio(model_dir, rec.sample_rate, wav)
    _warm(rec, _feed, audio.samples[: 2 * _piece(rec)])

    wall = time.perf_counter()
    result = {
        "model_dir": str(model_dir),
        "family": family,
        "beam": beam,
        "search": search_name(family, beam),
        "threads": threads,
        "att_context": list(rec.att_context),
        "chunk_ms": rec.chunk_ms,
        "audio": audio.info,
        **_latency_run(rec, audio.samples, seconds, progress),
        "final_after_endpoint_ms": _endpoint_run(rec, audio.utterance),
    }
    memory = {"memory_audio_seconds": 0.0, "rss_start_mb": None, "rss_after_warmup_mb": None, "rss_end_mb": None,
              "rss_growth_mb_per_hour": None, "memory_final_segments": None}
    if memory_seconds:
        memory = _memory_run(rec, audio.samples, memory_seconds, progress)
    result.update(memory)
    result["vs_sherpa"] = None
    if theirs is not None:
        plain = open_recognizer(model_dir, **options, endpoint=None, gate=None)
        result["vs_sherpa"] = {**sherpa_versions(), **_vs_sherpa_run(plain, theirs, audio.samples, seconds, progress)}
    result["machine"] = machine()
    result["wall_seconds"] = round(time.perf_counter() - wall, 2)
    return result


def _parse_context(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        left, right = (int(v) for v in text.split(","))
    except ValueError:
        raise SpeechkitError(f"--att-context wants LEFT,RIGHT in encoder frames (e.g. 64,12), got {text!r}") from None
    return left, right


def _fmt(value: float | None, unit: str, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _vs_sherpa_lines(v: dict) -> list[str]:
    ours, theirs = v["ours"], v["sherpa"]
    if v["texts_equal"]:
        texts = f"equal ({v['words']} words)"
    elif v["text_wer"] is None:
        texts = "differ (sherpa-onnx's is empty)"
    else:
        texts = f"differ, WER {100 * v['text_wer']:.2f} % against sherpa-onnx's {v['words']} words"
    return [
        f"vs sherpa-onnx: {v['sherpa_onnx']} (its ONNX Runtime {v['sherpa_onnxruntime']}), {v['audio_seconds']:.1f} s in the same "
        "pieces, no endpointing, our speech gate off",
        f"vs sherpa-onnx rtf: ours {ours['rtf']:.4f}, sherpa-onnx {theirs['rtf']:.4f}, ratio {v['rtf_ratio']:.2f}",
        f"vs sherpa-onnx chunk compute p50: ours {ours['chunk_compute_ms_p50']:.2f} ms, sherpa-onnx "
        f"{theirs['chunk_compute_ms_p50']:.2f} ms, ratio {v['p50_ratio']:.2f}",
        f"vs sherpa-onnx chunk compute p95: ours {ours['chunk_compute_ms_p95']:.2f} ms, sherpa-onnx {theirs['chunk_compute_ms_p95']:.2f} ms",
        f"vs sherpa-onnx calls: ours {ours['calls']}, sherpa-onnx {theirs['calls']}",
        f"vs sherpa-onnx feed (fbank) rtf: ours {ours['feed_rtf']:.4f}, sherpa-onnx {theirs['feed_rtf']:.4f}",
        f"vs sherpa-onnx texts: {texts}",
    ]


def report_lines(r: dict) -> list[str]:
    """The human-readable figures, one a line."""
    a = r["audio"]
    source = {"wav": a["path"], "test-wavs": f"{a['files']} test wavs in {a['path']}", "synthetic": "synthetic signal"}[a["source"]]
    return [
        f"audio: {source} ({a['seconds']:.1f} s, looped)",
        f"model: {r['family']}, {r['search']} search (beam {r['beam']})",
        f"threads: {r['threads']}",
        f"att_context: {r['att_context'][0]},{r['att_context'][1]}",
        f"chunk: {r['chunk_ms']:.0f} ms",
        f"rtf: {r['rtf']:.4f} ({r['audio_seconds']:.1f} s audio, {r['calls']} calls)",
        f"chunk compute p50: {r['chunk_compute_ms_p50']:.2f} ms",
        f"chunk compute p95: {r['chunk_compute_ms_p95']:.2f} ms",
        f"feed rtf: {r['feed_rtf']:.4f} (accept_waveform: fbank and speech gate, not in rtf)",
        f"first partial: {_fmt(r['first_partial_ms'], ' ms')} (audio fed + compute)",
        f"final after endpoint: {_fmt(r['final_after_endpoint_ms'], ' ms')} (audio after speech end + compute)",
        f"rss after warm-up: {_fmt(r['rss_after_warmup_mb'], ' MB')}",
        f"rss at end: {_fmt(r['rss_end_mb'], ' MB')} ({r['memory_audio_seconds']:.0f} s audio on one stream)",
        f"rss growth: {_fmt(r['rss_growth_mb_per_hour'], ' MB/hour', 2)}",
        *(_vs_sherpa_lines(r["vs_sherpa"]) if r.get("vs_sherpa") else []),
        f"machine: {r['machine']['cpu']}, {r['machine']['cpus_usable']} of {r['machine']['cpu_count']} CPUs usable",
    ]


def main(args: argparse.Namespace) -> None:
    result = bench_asr_stream(args.model_dir, threads=args.threads, att_context=_parse_context(args.att_context),
                              beam=args.beam, wav=args.wav, seconds=args.seconds, memory_seconds=args.memory_seconds,
                              vs_sherpa=args.vs_sherpa, progress=sys.stderr.isatty())
    emit(result, report_lines(result), args)


def add_parser(bench_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``asr-stream`` to the ``bench`` subcommands."""
    p = bench_sub.add_parser("asr-stream", help="RTF, latency and memory growth of the streaming ONNX recognizer "
                                                  "(optionally against sherpa-onnx)")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="ONNX Runtime threads (default 1)")
    p.add_argument("--att-context", default=None, metavar="LEFT,RIGHT", help="one of the exported contexts (default: the first)")
    p.add_argument("--beam", type=int, default=1, metavar="N",
                   help="1: greedy search (default); N > 1: modified beam search of N paths (transducer), CTC prefix beam (our CTC)")
    p.add_argument("--wav", default=None, metavar="FILE", help="mono wav at the model's rate (default: the recipe's test wavs, else synthetic)")
    p.add_argument("--seconds", type=float, default=60.0, help="audio for the RTF and latency run (default 60)")
    p.add_argument("--memory-seconds", type=float, default=3600.0, help="audio on one stream for the memory run; 0 skips it (default 3600)")
    p.add_argument("--vs-sherpa", action="store_true",
                   help="also decode the --seconds run with sherpa-onnx's C++ runtime on the same folder (one made by "
                        "`speechkit export sherpa`; pip install sherpa-onnx) and compare speed and text")
    add_output_args(p)
    p.set_defaults(func=main)
    return p
