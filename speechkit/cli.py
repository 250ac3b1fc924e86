"""The speechkit command: one subcommand per stage of a recipe.

Heavy imports (torch, the model code) happen inside each command so ``--help`` is instant.
A ``SpeechkitError`` is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from speechkit.errors import SpeechkitError


def _corpus_synth(args: argparse.Namespace) -> None:
    from speechkit.data.synth.corpus import build_synth_corpus

    build_synth_corpus(args.out, hours=args.hours, seed=args.seed, nj=args.nj, engines=args.engines)


def _data_validate(args: argparse.Namespace) -> None:
    from speechkit.data.kaldi import validate_data_dir

    failed = False
    for d in args.data_dirs:
        report = validate_data_dir(d, sample_rate=args.sample_rate, check_audio=not args.no_audio)
        for line in report.bad_audio:
            print(f"bad audio: {line}", file=sys.stderr)
        status = "OK" if not report.bad_audio else f"{len(report.bad_audio)} bad audio file(s)"
        print(f"{d}: {report.num_utts} utterances, {report.num_speakers} speakers, {report.hours:.2f} h: {status}")
        failed |= bool(report.bad_audio)
    if failed:
        raise SpeechkitError("validation found bad audio files (listed above)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechkit", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    corpus = sub.add_parser("corpus", help="build corpora").add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    s = corpus.add_parser(
        "synth",
        help="the embedded default corpus, synthesised offline by espeak-ng, flite and festival",
        description="Build a multi-speaker English corpus as Kaldi data dirs train/dev/test/test_unseen.",
    )
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--hours", type=float, default=1.0, help="total hours of audio over all splits (default 1.0)")
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same corpus (default 0)")
    s.add_argument("--nj", type=int, default=None, help="parallel synthesis jobs (default: all cores)")
    s.add_argument("--engines", default="espeak-ng,flite,festival", help="engines to use where installed")
    s.set_defaults(func=_corpus_synth)

    data = sub.add_parser("data", help="Kaldi data directories").add_subparsers(dest="data", metavar="ACTION", required=True)
    v = data.add_parser("validate", help="check a data dir: sorted unique keys, consistent files, readable audio")
    v.add_argument("data_dirs", nargs="+", metavar="DATA_DIR")
    v.add_argument("--sample-rate", type=int, default=16000, help="expected sample rate (default 16000)")
    v.add_argument("--no-audio", action="store_true", help="check the tables only, do not open the audio")
    v.set_defaults(func=_data_validate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SpeechkitError as e:
        print(f"speechkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speechkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
