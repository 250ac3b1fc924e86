"""Benchmark of text-to-music generation on the CPU (``speechkit.runtime.audiogen``): for each
decoding mode and batch size, the wall time of generating ``--batch`` clips of ``--seconds`` in one
call, split into the token decoding (the ONNX graphs and the numpy loops) and the codec's decoder,
and the real-time factor (wall time / seconds of audio made, batch × seconds), as medians over
``--repeats``.

The speed of a model does not depend on its weights, so an export of random weights of an
architecture measures the same as a trained one; every run uses the same captions and seed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

from speechkit.bench import add_output_args, comma_list, emit
from speechkit.errors import SpeechkitError

CAPTIONS = ("an upbeat pop song with piano drums and bass at 120 bpm", "a calm ambient piece with strings in a minor",
            "fast rock with electric guitar", "slow jazz with saxophone and double bass")


def time_generation(gen, mode: str, batch: int, frames: int, rescore: float, steps, seed: int = 0) -> tuple[float, float]:
    """Seconds of one call's token decoding and of decoding its codes to audio."""
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    t0 = time.perf_counter()
    codes = gen.tokens(captions, frames, mode, rescore=rescore, seed=seed, steps=steps)
    t1 = time.perf_counter()
    gen.decode(codes)
    return t1 - t0, time.perf_counter() - t1


def bench_audiogen(model_dir: str | Path, seconds: float, batches: list[int], modes: list[str], threads: int = 1, repeats: int = 3,
                   rescore: float = 0.0, steps: list[int] | None = None) -> dict:
    from speechkit.runtime.audiogen import CONFIG_FILE, MusicGenerator

    model_dir = Path(model_dir)
    if threads < 1 or repeats < 1 or min(batches) < 1:
        raise SpeechkitError("--threads, --repeats and every --batch must be at least 1")
    if not (model_dir / CONFIG_FILE).is_file():
        hint = " (a training experiment: export it first with `speechkit audiogen export`)" if (model_dir / "model.pt").is_file() else ""
        raise SpeechkitError(f"{model_dir}: not an exported text-to-music model (no {CONFIG_FILE}){hint}")
    gen = MusicGenerator(model_dir, num_threads=threads)
    frames = {mode: gen.frames(seconds, mode) for mode in modes}  # one-line errors before any timing
    if rescore and "ar" in modes:
        raise SpeechkitError("--rescore applies to modes magnet and hybrid; run mode ar without it")
    rows = []
    for mode in modes:
        time_generation(gen, mode, 1, min(frames[mode], max(2, round(gen.frame_rate))), rescore, steps)  # warm-up: 1 s
        for batch in batches:
            runs = [time_generation(gen, mode, batch, frames[mode], rescore, steps) for _ in range(repeats)]
            tokens, codec = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
            total = statistics.median(r[0] + r[1] for r in runs)
            audio = batch * frames[mode] / gen.frame_rate
            rows.append({"mode": mode, "batch": batch, "seconds_per_clip": frames[mode] / gen.frame_rate, "tokens_s": round(tokens, 3),
                         "codec_s": round(codec, 3), "total_s": round(total, 3), "rtf": round(total / audio, 4),
                         "clip_seconds_per_second": round(audio / total, 3)})
    info = gen.describe()
    device = f"cpu ({platform.processor() or platform.machine()}), {threads} thread(s)"
    return {"bench": "audiogen", "model": str(model_dir), "device": device,
            "threads": threads, "repeats": repeats, "rescore": rescore, "weights": info["weights"],
            "magnet_steps": list(steps or info["magnet"]["steps"]), "rows": rows}


def report_lines(result: dict) -> list[str]:
    lines = [f"text-to-music generation: {result['model']} ({result['weights']} weights) on {result['device']}; "
             f"MAGNeT steps {','.join(map(str, result['magnet_steps']))}, rescore {result['rescore']:g}, medians of {result['repeats']}",
             f"{'mode':>7} {'batch':>5} {'clip s':>7} {'tokens':>9} {'codec':>9} {'total':>9} {'RTF':>8}"]
    for r in result["rows"]:
        lines.append(f"{r['mode']:>7} {r['batch']:>5} {r['seconds_per_clip']:>7g} {r['tokens_s']:>7.2f} s {r['codec_s']:>7.2f} s "
                     f"{r['total_s']:>7.2f} s {r['rtf']:>8.4f}")
    return lines


def main(args: argparse.Namespace) -> None:
    result = bench_audiogen(args.model, args.seconds, args.batch, args.modes, threads=args.threads, repeats=args.repeats,
                            rescore=args.rescore, steps=args.steps)
    emit(result, report_lines(result), args)


def add_parser(bench_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``audiogen`` to the ``bench`` subcommands."""
    p = bench_sub.add_parser("audiogen", help="text-to-music generation speed: time and RTF per mode and batch",
                             description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an exported text-to-music folder (audiogen.json)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each clip (default 10)")
    p.add_argument("--batch", type=comma_list(int, positive=True), default=[1], metavar="N,N,..", help="clips per call, comma-separated (default 1)")
    p.add_argument("--modes", type=comma_list(str), default=["magnet"], metavar="MODE,..",
                   help="magnet, hybrid, ar, comma-separated (default magnet; hybrid and ar need the AR graphs)")
    p.add_argument("--rescore", type=float, default=0.0, metavar="W", help="MAGNeT's rescoring weight (default 0: off)")
    p.add_argument("--steps", type=comma_list(int), default=None, metavar="N,N,..", help="MAGNeT's steps per codebook (default the model's)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per mode and batch; medians reported (default 3)")
    add_output_args(p)
    p.set_defaults(func=main)
    return p
