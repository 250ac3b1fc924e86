"""`speechkit audiogen prepare|train|judge|sample|eval`: the text-to-music family's training side
(codec tokens of a music corpus, MAGNeT and the AR baseline on the one engine, the instrument
judge, a torch sample, and the comparison of the decoding systems on a test split's captions)."""

from __future__ import annotations

import argparse
import time

from speechkit.bench import comma_list
from speechkit.errors import SpeechkitError
from speechkit.eval.audiogen_eval import SYSTEMS, num, pct



def _prepare(args) -> None:
    from speechkit.train.audiogen_prepare import prepare_audiogen_dump

    st = prepare_audiogen_dump(args.data, args.out_dir, args.codec, args.codebooks, args.device, args.batch, args.max_clips)
    print(f"{args.out_dir}: {st['clips']} clips ({st['hours']} h, {st['frames']} frames at {st['frame_rate']:g}/s, "
          f"{st['codebooks']} codebooks of {st['card']}), {st['skipped']} skipped")


def _train(args) -> None:
    from speechkit.train.audiogen import load_audiogen_experiment, train_audiogen

    exp = load_audiogen_experiment(args.config)
    info = train_audiogen(exp, args.dump, args.exp_dir, args.device)
    print(f"trained {exp.kind}: {info['steps']} steps in {info['minutes']} min ({info['params_m']} M parameters) -> {args.exp_dir}/model.pt")


def _judge(args) -> None:
    from speechkit.config import from_dict, load_yaml
    from speechkit.eval.music_classifier import InstrumentExperiment, train_instrument_classifier

    exp = None
    if args.config:
        data, lines = load_yaml(args.config)
        exp = from_dict(InstrumentExperiment, data, source=args.config, lines=lines)
    if (args.minutes is not None and args.minutes <= 0) or (args.steps is not None and args.steps < 1):
        raise SpeechkitError("--minutes must be positive and --steps at least 1")
    r = train_instrument_classifier(args.train, args.test, args.out_dir, steps=0 if args.minutes else args.steps,
                                    minutes=args.minutes, device=args.device, exp=exp)
    acc, prec, ap = r["instrument_accuracy"], r["instrument_precision"], r["mean_ap"]
    print(f"instrument judge -> {args.out_dir}: {r['steps']} steps in {r['minutes']} min; on {r['clips']} held-out clips "
          f"({args.test}): instrument accuracy {pct(acc)}, precision {pct(prec)}, mean AP {num(ap)}, "
          f"exact-set accuracy {pct(r['exact_set_accuracy'])}")


def _generation_options(args):
    from speechkit.decoding.magnet import MagnetOptions
    from speechkit.inference.audiogen import GenerationOptions

    magnet = None
    if args.steps:
        magnet = MagnetOptions(steps=tuple(args.steps))
    return GenerationOptions(magnet=magnet, hybrid_seconds=args.hybrid_seconds, batch=getattr(args, "batch", 1))


def _generator(args, magnet: str):
    from speechkit.inference.audiogen import MusicGeneratorTorch

    gen = MusicGeneratorTorch(magnet, args.ar, args.codec, args.device)
    opts = _generation_options(args)
    if opts.magnet is not None:  # the model's span, not the decoder's default
        from dataclasses import replace

        if len(opts.magnet.steps) != gen.codebooks:
            raise SpeechkitError(f"--steps gives {len(opts.magnet.steps)} counts; the model has {gen.codebooks} codebooks")
        opts = replace(opts, magnet=replace(opts.magnet, span=gen.magnet.cfg.span))
    return gen, opts


def _sample(args) -> None:
    from speechkit.audio.io import save_audio

    gen, opts = _generator(args, args.model)
    t0 = time.perf_counter()
    audio = gen.generate([args.text], args.seconds, args.mode, args.rescore, args.seed, opts)[0]
    took = time.perf_counter() - t0
    save_audio(args.out, audio, gen.sample_rate)
    rescored = f", rescored by the AR model at {args.rescore:g}" if args.rescore else ""
    print(f"{args.out}: {len(audio) / gen.sample_rate:.2f} s by {args.mode}{rescored} in {took:.2f} s on {gen.device} "
          f"(seed {args.seed})")


def _eval(args) -> None:
    from speechkit.eval.audiogen_eval import evaluate_audiogen, table_lines

    gen, opts = _generator(args, args.magnet)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    result = evaluate_audiogen(gen, opts, args.data, args.judge, args.out_dir, systems, clips_wanted=args.clips,
                               seconds=args.seconds, batch=args.batch, rescore_weight=args.rescore_weight, seed=args.seed)
    print("\n".join(table_lines(result)))
    print(f"-> {args.out_dir}/eval.json, eval.md")


# -- the parser -------------------------------------------------------------------------------------
def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when there is one)")


def _export(args) -> None:
    from speechkit.export.audiogen import run_export

    run_export(args)


def _decoding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=comma_list(int, positive=True), default=None, metavar="N,N,..",
                   help="MAGNeT decoding steps per codebook, comma-separated (default 20,10,10,...)")
    p.add_argument("--hybrid-seconds", type=float, default=2.0, help="hybrid mode: seconds made by the AR model first (default 2)")
    p.add_argument("--codec", default=None, help="the RVQ codec the models were trained on (default: the one recorded in the model)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0): the same seed gives the same audio")
    _device(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("audiogen", help="text-to-music (MAGNeT, AR baseline): prepare tokens, train, judge, sample, eval",
                       description=__doc__.splitlines()[0]).add_subparsers(dest="audiogen", metavar="ACTION", required=True)
    p = a.add_parser("prepare", help="a music data dir → RVQ codec tokens (the first K codebooks), captions and labels")
    p.add_argument("data", help="music data dir (`speechkit corpus music`: wav.scp, text = caption, labels.jsonl)")
    p.add_argument("out_dir")
    p.add_argument("--codec", required=True, help="a trained RVQ codec (`speechkit codec train` experiment dir or its model.pt)")
    p.add_argument("--codebooks", type=int, default=4, help="RVQ levels kept (default 4)")
    p.add_argument("--batch", type=int, default=32, help="clips per encoder call (default 32)")
    p.add_argument("--max-clips", type=int, default=None, help="only the first N clips")
    _device(p)
    p.set_defaults(func=_prepare)
    t = a.add_parser("train", help="train MAGNeT or the AR baseline from a YAML config (kind: magnet|ar) on a token dump "
                     "(resumes from EXP_DIR/checkpoint.pt)")
    t.add_argument("--config", required=True)
    t.add_argument("--dump", required=True, help="a dir made by `speechkit audiogen prepare`")
    t.add_argument("--exp-dir", required=True)
    _device(t)
    t.set_defaults(func=_train)
    j = a.add_parser("judge", help="train the instrument judge on a corpus's real renders; prints its held-out accuracy")
    j.add_argument("--train", required=True, help="music data dir it learns from (e.g. the corpus's train split)")
    j.add_argument("--test", required=True, help="music data dir it is scored on (e.g. the test split)")
    j.add_argument("--out-dir", required=True)
    j.add_argument("--config", default=None, help="YAML of model_conf/optim_conf/train_conf (default: the judge's defaults)")
    budget = j.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="a wall-time budget instead of the config's steps")
    budget.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the config's)")
    _device(j)
    j.set_defaults(func=_judge)
    s = a.add_parser("sample", help="one caption → a wav with a trained MAGNeT experiment (torch)")
    s.add_argument("model", help="MAGNeT experiment dir or its model.pt")
    s.add_argument("--text", required=True, help="the caption, e.g. \"calm jazz tune, F major, 90 bpm: piano and drums\"")
    s.add_argument("--seconds", type=float, default=10.0, help="length (default 10)")
    s.add_argument("--out", required=True, help="output wav")
    s.add_argument("--ar", default=None, help="AR experiment (needed by --mode ar|hybrid and --rescore)")
    s.add_argument("--mode", default="magnet", choices=("magnet", "hybrid", "ar"), help="decoding (default magnet)")
    s.add_argument("--rescore", type=float, default=0.0, help="weight of the AR model's log-probabilities in MAGNeT's "
                   "span confidences (default 0: none)")
    _decoding_args(s)
    s.set_defaults(func=_sample)
    e = a.add_parser("eval", help="generate a test split's captions with each system; tempo, key, instrument and FD "
                     "judges beside the codec's resynthesis (the ceiling); generation time at batch 1 and B")
    e.add_argument("--magnet", required=True, help="MAGNeT experiment dir or model.pt")
    e.add_argument("--ar", default=None, help="AR experiment dir or model.pt (systems magnet_rescore, hybrid, ar)")
    e.add_argument("--data", required=True, help="the test split (music data dir with labels.jsonl)")
    e.add_argument("--judge", required=True, help="instrument judge dir (`speechkit audiogen judge`)")
    e.add_argument("--out-dir", required=True, help="wavs, per-clip judgements, eval.json and eval.md")
    e.add_argument("--systems", default="magnet,magnet_rescore,hybrid,ar", help=f"comma-separated of {', '.join(SYSTEMS)} (default: all)")
    e.add_argument("--clips", type=int, default=64, help="captions generated by each system (default 64)")
    e.add_argument("--seconds", type=float, default=10.0, help="length of each clip (default 10)")
    e.add_argument("--batch", type=int, default=32, help="captions per decoding call, and B of the timing (default 32)")
    e.add_argument("--rescore-weight", type=float, default=0.5, help="the AR weight of magnet_rescore (default 0.5)")
    _decoding_args(e)
    e.set_defaults(func=_eval)
    x = a.add_parser("export", help="MAGNeT (+ the AR baseline) and the codec decoder to ONNX, checked against PyTorch; "
                     "the folder `speechkit generate` and speechkit.load run without torch")
    x.add_argument("magnet", help="a MAGNeT experiment dir or model.pt")
    x.add_argument("out", help="the folder for the graphs, codec/, audiogen.json and export.json")
    x.add_argument("--ar", default=None, metavar="MODEL",
                   help="a delay-pattern AR experiment dir or model.pt (modes ar, hybrid; rescoring)")
    x.add_argument("--codec", default=None, metavar="DIR",
                   help="the RVQ codec: an export or an experiment (default: the one MAGNeT's tokens came from)")
    x.add_argument("--weights", choices=("fp32", "fp16", "int8"), default="fp16",
                   help="stored weights (float32 arithmetic either way; default fp16: half the file)")
    x.set_defaults(func=_export)
