"""`speechkit speaker train|export|embed|eval`: the speaker encoder (ECAPA-TDNN) trained on Kaldi data
dirs, exported to ONNX, one L2-normalised embedding per audio file, and the equal error rate of a
data dir's pairs. MODEL is an experiment dir (its model.pt), a model.pt or a training checkpoint.pt;
`embed` also takes an exported dir (speaker.onnx, run without torch)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from speechkit.bench import add_output_args
from speechkit.errors import SpeechkitError


def _train(args) -> None:
    from speechkit.train.speaker import load_speaker_experiment, train_speaker

    exp = load_speaker_experiment(args.config)
    info = train_speaker(exp, args.data, args.exp_dir, args.device, args.eval_data or ())
    print(f"trained {info['steps']} steps in {info['minutes']} min -> {args.exp_dir}/model.pt")
    for data, eer in info.get("eer", {}).items():
        print(f"EER {100 * eer:.2f} % on {data} (details: {args.exp_dir}/eer.json)")


def _export(args) -> None:
    from speechkit.export.speaker import MODEL_FILE, export_speaker

    if (args.out_dir is None) == (args.out is None):
        raise SpeechkitError("give the output folder once: `speechkit speaker export MODEL --out DIR` (or MODEL DIR)")
    out = args.out or args.out_dir
    info = export_speaker(args.model, out)
    worst = max(r["max_abs_diff"] for r in info["parity"])
    cosine = min(r["min_cosine"] for r in info["parity"])
    longest = max(r["frames"] for r in info["parity"])
    print(f"exported {out}/{MODEL_FILE} ({info['size_mb']} MB, float32); ONNX Runtime = PyTorch on "
          f"{len(info['parity'])} random inputs up to {longest} frames (max |Δ| {worst:.1e}, 1 − cosine {1.0 - cosine:.1e}; "
          f"report in {out}/export.json)")


def _embedder(model: str, device: str | None, threads: int) -> Callable[[str], np.ndarray]:
    """MODEL → a function audio path → embedding (D,): the ONNX runtime for an exported dir (on
    ``device`` cpu, the default, cuda[:N] or tensorrt[:N]), else PyTorch."""
    from speechkit.runtime.speaker import SpeakerRuntime, is_exported_speaker

    if is_exported_speaker(model):
        return SpeakerRuntime(model, threads, device or "cpu").embed_file
    from speechkit.models.speaker.embed import embed_file
    from speechkit.models.speaker.io import load_speaker_encoder

    encoder = load_speaker_encoder(model, device)
    return lambda path: embed_file(encoder, path)


def _embed(args) -> None:
    import sys

    embed_file = _embedder(args.model, args.device, args.threads)
    embs, failed = [], []
    for wav in args.wav:
        try:
            emb = embed_file(wav)
        except SpeechkitError as e:  # one bad file among several is reported; the others keep their rows
            if len(args.wav) == 1:
                raise
            print(f"speechkit: skipped: {e}", file=sys.stderr)
            failed.append(len(embs))
            emb = None
        embs.append(emb)
        if args.out is None and emb is not None:
            print(wav, " ".join(f"{v:.5f}" for v in emb))
    if args.out is not None and len(failed) < len(embs):
        dim = next(e for e in embs if e is not None).shape[0]
        rows = np.stack([e if e is not None else np.full(dim, np.nan, np.float32) for e in embs])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        np.save(args.out, rows)
        print(f"{args.out}: {len(embs)} x {dim} embeddings (L2-normalised, one row per file in order"
              + (f"; {len(failed)} skipped file(s) are rows of NaN" if failed else "") + ")")
    if failed:
        raise SpeechkitError(f"{len(failed)} of {len(embs)} file(s) skipped (listed above)")


def _eval(args) -> None:
    from speechkit.bench import emit
    from speechkit.models.speaker.io import load_speaker_encoder
    from speechkit.models.speaker.scoring import evaluate_data_dir

    if args.max_trials < 1:
        raise SpeechkitError("--max-trials must be at least 1")
    model = load_speaker_encoder(args.model, args.device)
    r = evaluate_data_dir(model, args.data, parts=args.parts, max_trials=args.max_trials, max_utts=args.max_utts, seed=args.seed)
    r["model"] = str(args.model)
    cut = "" if r["segments_per_utt"] == 1 else f", each utterance cut in {r['segments_per_utt']}"
    lines = [f"{args.data}: EER {100 * r['eer']:.2f} % over {r['target_trials']} same-speaker "
             f"({r['target_trials_same_utt']} within one utterance) and {r['nontarget_trials']} different-speaker pairs; "
             f"{r['segments']} segments of {r['utterances']} utterances, {r['speakers']} speakers{cut}",
             f"mean cosine: same speaker {r['target_score_mean']}, different {r['nontarget_score_mean']}"]
    if r["skipped"]:
        lines.append(f"skipped {len(r['skipped'])} unreadable files")
    emit(r, lines, args)


def add_parser(sub: argparse._SubParsersAction) -> None:
    speaker = sub.add_parser("speaker", help="speaker embeddings (ECAPA-TDNN): train, export, embed, eval"
                             ).add_subparsers(dest="speaker", metavar="ACTION", required=True)
    t = speaker.add_parser("train", help="train a speaker encoder from a YAML config on Kaldi data dirs (utt2spk gives the "
                           "classes; resumes from EXP_DIR/checkpoint.pt)")
    t.add_argument("--config", required=True)
    t.add_argument("--data", nargs="+", required=True, help="Kaldi data dirs whose fbank is cut into training crops")
    t.add_argument("--exp-dir", required=True)
    t.add_argument("--device", default=None, help="cuda | cpu (default: cuda when there is one)")
    t.add_argument("--eval-data", nargs="+", default=None, help="data dirs of held-out speakers: the final model's EER "
                   "on each is written to EXP_DIR/eer.json")
    t.set_defaults(func=_train)
    x = speaker.add_parser("export", help="the encoder to ONNX (fbank → L2-normalised embedding, float32), checked "
                           "against PyTorch; `speaker embed` and the torch-free runtime take the folder")
    x.add_argument("model", help="experiment dir (model.pt), model.pt or checkpoint.pt")
    x.add_argument("out_dir", nargs="?", default=None, help="as --out (the other exporters' form)")
    x.add_argument("--out", default=None, metavar="DIR", help="folder for speaker.onnx and export.json (the parity report)")
    x.set_defaults(func=_export)
    e = speaker.add_parser("embed", help="one L2-normalised embedding per audio file (any sample rate, mono or stereo; "
                           "at least 0.5 s with speech)")
    e.add_argument("model", help="experiment dir (model.pt), model.pt, checkpoint.pt, or exported dir (speaker.onnx, "
                   "run without torch)")
    e.add_argument("wav", nargs="+", help="audio files (a bad one is reported and gets a row of NaN in --out; exit status 1)")
    e.add_argument("--out", default=None, help="write an (N, D) .npy, one row per file in order (default: print "
                   "'<path> <values>' lines)")
    e.add_argument("--device", default="cpu", help="experiment dirs: cuda | cpu (default cpu); "
                   "exported dirs: ONNX Runtime on cpu (default), cuda[:N] or tensorrt[:N] (N: the GPU)")
    e.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for an exported dir (default 1)")
    e.set_defaults(func=_embed)
    v = speaker.add_parser("eval", help="equal error rate of same- vs different-speaker pairs of a data dir's utterances "
                           "(cosine scores)")
    v.add_argument("model", help="experiment dir (model.pt), model.pt or checkpoint.pt")
    v.add_argument("data", help="Kaldi data dir (wav.scp, utt2spk)")
    v.add_argument("--parts", type=int, default=0, help="segments per utterance (default 0: 1 when the dir has at least "
                   "20 same-speaker pairs of utterances, else 2, so each utterance's halves make same-speaker pairs)")
    v.add_argument("--max-trials", type=int, default=1_000_000, help="different-speaker pairs beyond this are subsampled "
                   "(every same-speaker pair is kept; default 1000000)")
    v.add_argument("--max-utts", type=int, default=None, help="at most this many utterances (the first in order)")
    v.add_argument("--seed", type=int, default=0, help="of the subsample (default 0)")
    v.add_argument("--device", default="cpu", help="cuda | cpu (default cpu)")
    add_output_args(v)
    v.set_defaults(func=_eval)
