"""`speechkit generate MODEL --text "..." --seconds 10 --out O.wav [--mode magnet|hybrid|ar] [--rescore W]`:
text-to-music with an exported model (ONNX, run without torch). Several ``--text`` are generated as
one batch into ``--out-dir``; ``--plot`` adds their log-mel spectrograms as one PNG."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from speechkit.bench import comma_list
from speechkit.devices import device_arg
from speechkit.errors import SpeechkitError

EXAMPLE = 'speechkit generate exp/audiogen/onnx --text "calm piano in c major at 90 bpm" --seconds 10 --out piano.wav'


def _one_or_pair(values: list[float] | None):
    """``--cfg 3`` → 3.0 (constant); ``--cfg 3,1`` → (3.0, 1.0) (annealed); None stays."""
    if values is None:
        return None
    if len(values) > 2:
        raise SpeechkitError(f"expected one number or a start,end pair, got {len(values)} numbers")
    return values[0] if len(values) == 1 else tuple(values)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "clip"


def _outputs(args) -> list[Path]:
    """One WAV path per ``--text``: ``--out`` for one, ``--out-dir/NN_caption.wav`` for any number."""
    if args.out and args.out_dir:
        raise SpeechkitError("give --out (one caption) or --out-dir (any number), not both")
    if args.out:
        if len(args.text) > 1:
            raise SpeechkitError(f"{len(args.text)} captions need --out-dir (--out writes one file)")
        return [Path(args.out)]
    if not args.out_dir:
        raise SpeechkitError("say where to write: --out O.wav or --out-dir DIR")
    return [Path(args.out_dir) / f"{i + 1:02d}_{_slug(t)}.wav" for i, t in enumerate(args.text)]


def _run(args) -> None:
    from tqdm import tqdm

    from speechkit.audio.io import save_audio
    from speechkit.runtime.audiogen import MusicGenerator, check_captions

    captions = check_captions(args.text)
    if args.threads < 1:
        raise SpeechkitError(f"--threads must be at least 1, got {args.threads}")
    outs = _outputs(args)
    cfg, temperature = _one_or_pair(args.cfg), _one_or_pair(args.temperature)
    gen = MusicGenerator(args.model, num_threads=args.threads, device=args.device)
    frames = gen.frames(args.seconds, args.mode)
    t0 = time.perf_counter()
    with tqdm(desc=f"generate ({args.mode}, {len(captions)} x {args.seconds:g} s)", unit="step", file=sys.stderr,
              disable=args.quiet) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        codes = gen.tokens(captions, frames, args.mode, args.rescore, args.seed, args.steps, cfg, temperature, args.top_p, progress)
    t1 = time.perf_counter()
    clips = gen.decode(codes)
    t2 = time.perf_counter()
    for path, clip in zip(outs, clips):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_audio(path, clip, gen.sample_rate)
    seconds = len(captions) * frames / gen.frame_rate
    for path, caption, clip in zip(outs, captions, clips):
        print(f"{path}: {len(clip) / gen.sample_rate:.2f} s, {caption!r}")
    print(f"{args.mode}: tokens {t1 - t0:.1f} s, codec {t2 - t1:.1f} s for {seconds:g} s of audio "
          f"(RTF {(t2 - t0) / seconds:.3f} on {args.device if args.device != 'cpu' else f'{args.threads} thread(s)'})", file=sys.stderr)
    if args.plot:
        _plot(outs, captions, clips, gen.sample_rate, args)


def _plot(outs: list[Path], captions: list[str], clips, sample_rate: int, args) -> None:
    try:
        from speechkit.eval.audio_quality import spectrogram_comparison
    except ImportError as e:
        raise SpeechkitError(f"--plot needs matplotlib (pip install 'speechkit[eval]'): {e}") from None
    png = outs[0].with_suffix(".png") if args.out else Path(args.out_dir) / "spectrograms.png"
    try:
        spectrogram_comparison([(c, x) for c, x in zip(captions, clips)], sample_rate, png, title=f"{args.mode}, seed {args.seed}")
    except ImportError as e:
        raise SpeechkitError(f"--plot needs matplotlib (pip install 'speechkit[eval]'): {e}") from None
    print(f"{png}: log-mel spectrograms")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="text-to-music: generate audio from captions with an exported MAGNeT model (no torch)",
                       description=__doc__.split("\n\n")[0].replace("`", "") + f"\n\nexample: {EXAMPLE}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an exported text-to-music folder (audiogen.json, text.onnx, magnet.onnx, codec/)")
    p.add_argument("--text", action="append", required=True, metavar="CAPTION",
                   help="what to generate; repeat for several clips, generated as one batch")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each clip (default 10)")
    p.add_argument("--out", default=None, metavar="WAV", help="the clip's file (one --text)")
    p.add_argument("--out-dir", default=None, metavar="DIR", help="write NN_caption.wav per --text here")
    p.add_argument("--mode", default="magnet",
                   help="magnet: span decoding (default); ar: the delay-pattern AR model; hybrid: its first second AR, "
                        "the rest MAGNeT (ar, hybrid need an export with the AR model)")
    p.add_argument("--rescore", type=float, default=0.0, metavar="W",
                   help="weigh MAGNeT's span confidences with the AR model's log-probs, w in [0, 1] (default 0: off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0): the same seed gives the same clips")
    p.add_argument("--steps", type=comma_list(int), default=None, metavar="N,N,..",
                   help="MAGNeT's decoding steps per codebook (default the model's, 20,10,10,10)")
    p.add_argument("--cfg", type=comma_list(float), default=None, metavar="S[,E]",
                   help="guidance scale: one number throughout, or start,end annealed over MAGNeT's steps (default 3,1; AR 3)")
    p.add_argument("--temperature", type=comma_list(float), default=None, metavar="T[,E]",
                   help="sampling temperature: one number, or start,end annealed (default MAGNeT 3,0.1; AR 1)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default MAGNeT 0.9; AR top-k 250)")
    p.add_argument("--device", type=device_arg, default="cpu", metavar="DEVICE",
                   help="ONNX Runtime on cpu (default), cuda[:N] or tensorrt[:N] (N: the GPU) (needs onnxruntime-gpu: "
                        "pip install 'speechkit[gpu]')")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    p.add_argument("--plot", action="store_true", help="also write the clips' log-mel spectrograms as a PNG (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
