"""`speechkit augment DATA OUT --config conf.yaml`: rooms, noise and channels applied to a Kaldi
data dir, written as a new one (see ``speechkit.data.augment``)."""

from __future__ import annotations

import argparse
import sys


def _augment(args: argparse.Namespace) -> None:
    from speechkit.data.augment import augment_data_dir, load_augment_config

    cfg = load_augment_config(args.config)
    report = augment_data_dir(args.data_dir, args.out_dir, cfg, seed=args.seed, copies=args.copies, nj=args.nj,
                              keep_clean=args.keep_clean)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.skipped:
        print(f"{args.data_dir}: {len(report.skipped)} bad file(s) skipped, listed in {args.out_dir}/skipped.txt", file=sys.stderr)
    print(f"wrote {report.written} utterances -> {args.out_dir} (what each got: {args.out_dir}/utt2aug)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser(
        "augment", help="rooms (image-method RIRs), noise (coloured, babble, music) and channels (mic, gain, clipping, "
                        "telephone, GSM, MP3, Opus) applied to a data dir, written as a new one",
        description="Write COPIES augmented copies of every utterance of DATA_DIR as a new Kaldi data dir OUT_DIR "
                    "(ids suffixed -aug1, -aug2, ...; utt2aug says what each got). The same seed gives the same "
                    "audio whatever the number of jobs. Bad input files are listed in OUT_DIR/skipped.txt.")
    a.add_argument("data_dir")
    a.add_argument("out_dir")
    a.add_argument("--config", required=True, help="YAML: probabilities and ranges (e.g. egs/synth/asr/conf/augment.yaml)")
    a.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default 0)")
    a.add_argument("--copies", type=int, default=1, help="augmented copies per utterance (default 1)")
    a.add_argument("--keep-clean", action="store_true", help="also list the original utterances, unchanged, in OUT_DIR")
    a.add_argument("--nj", type=int, default=None, help="parallel jobs (default: all cores)")
    a.set_defaults(func=_augment)
