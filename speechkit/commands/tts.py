"""`speechkit tts MODEL --text ... --prompt P.wav --out OUT.wav [--stream]` and
`speechkit tts prepare|train|export|eval`. MODEL is an exported dir (ONNX, run without torch) or a
training experiment (its model.pt, run with torch)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields

from speechkit.bench import add_output_args
from speechkit.errors import SpeechkitError

ACTIONS = ("prepare", "train", "export", "eval", "synth")
DEVICE_HELP = ("experiment dirs: cuda | cpu (default: cuda when there is one); "
               "exported dirs: ONNX Runtime on cpu (default), cuda[:N] or tensorrt[:N] (N: the GPU)")


def _options(args):
    from speechkit.decoding.tts_options import SynthOptions

    return SynthOptions(**{f.name: getattr(args, f.name) for f in fields(SynthOptions)})


def _add_synth_options(p: argparse.ArgumentParser) -> None:
    from speechkit.decoding.tts_options import SynthOptions

    d = SynthOptions()
    p.add_argument("--steps", type=int, default=d.steps,
                   help="flow-head steps per latent (default: the model's, 10 for a rectified-flow head, 1 for mean flow)")
    p.add_argument("--cfg-scale", dest="cfg_scale", type=float, default=d.cfg_scale, help=f"classifier-free guidance, 1 = off (default {d.cfg_scale})")
    p.add_argument("--temperature", type=float, default=d.temperature, help=f"scale of the flow's starting noise (default {d.temperature})")
    p.add_argument("--chunk-frames", dest="chunk_frames", type=int, default=d.chunk_frames, help=f"latents per streamed audio chunk (default {d.chunk_frames})")
    p.add_argument("--prompt-seconds", dest="prompt_seconds", type=float, default=d.prompt_seconds, help=f"use the prompt's first seconds (default {d.prompt_seconds:g})")
    p.add_argument("--seed", type=int, default=d.seed, help="noise seed (default 0): the same seed gives the same audio")


def _prepare(args) -> None:
    from speechkit.models.tts.data import prepare_tts_data

    info = prepare_tts_data(args.data, args.codec, args.out_dir, args.nj)
    print(f"{args.out_dir}: {info['utterances']} utterances ({info['hours']} h, {info['frame_rate']:g} latents/s x "
          f"{info['latent_dim']}), {info['skipped']} skipped")


def _train(args) -> None:
    from speechkit.train.tts import load_tts_experiment, train_tts

    info = train_tts(load_tts_experiment(args.config), args.data, args.exp_dir, args.device)
    print(f"trained {info['steps']} steps in {info['minutes']} min ({info['params_m']} M parameters) -> {args.exp_dir}/model.pt")


def _export(args) -> None:
    from speechkit.export.tts import export_tts

    info = export_tts(args.exp_dir, args.out_dir, args.check_text, int8=args.int8, codec_dir=args.codec_dir)
    codec = "codec copied in" if info["codec"] == "codec" else f"codec referenced: {info['codec']}"
    print(f"exported {args.out_dir} ({info['size_mb']} MB; {info['total_mb']} MB with the {codec}): ONNX Runtime = PyTorch "
          f"for the prefix, {info['parity']['steps']} cached steps and the flow head (max |Δ| {info['parity']['max_abs_diff']:.1e})")


def _eval(args) -> None:
    from speechkit.bench import emit
    from speechkit.eval.tts_eval import evaluate_tts, summary_lines

    judges = [] if args.judges == "none" else [j.strip() for j in args.judges.split(",") if j.strip()]
    r = evaluate_tts(args.model, args.data, args.out_dir, _options(args), judges=judges, asr_model=args.asr_model,
                     max_utts=args.max_utts, device=args.device, threads=args.threads, reuse=args.reuse)
    emit(r, summary_lines(r), args)


def _synth(args) -> None:
    import soundfile as sf

    from speechkit.eval.tts_eval import load_synthesizer

    if not args.text.strip():
        raise SpeechkitError("--text is empty")
    synth = load_synthesizer(args.model, args.device, args.threads)
    opts = _options(args)
    t0 = time.perf_counter()
    if args.stream:
        first, chunks = None, []
        with sf.SoundFile(args.out, "w", synth.sample_rate, 1) as f:
            for c in synth.stream(args.text, args.prompt, opts):
                first = first if first is not None else time.perf_counter() - t0
                f.write(c)
                f.flush()
                chunks.append(len(c))
        n = sum(chunks)
        extra = f", {len(chunks)} chunks, first audio after {1000 * (first or 0):.0f} ms"
    else:
        audio = synth.synthesize(args.text, args.prompt, opts)
        sf.write(args.out, audio, synth.sample_rate)
        n, extra = len(audio), ""
    took = time.perf_counter() - t0
    sec = n / synth.sample_rate
    print(f"{args.out}: {sec:.2f} s of speech in {took:.2f} s (RTF {took / max(sec, 1e-9):.3f}{extra})")
    if n == 0:
        print("speechkit: warning: the model stopped at once; nothing was written but a header", file=sys.stderr)


def build_tts_parser(prog: str = "speechkit tts") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="CLEAR text-to-speech: an AR transformer over codec latents with a "
                                "rectified-flow head. `speechkit tts MODEL --text ... --prompt P.wav --out O.wav` is short "
                                "for `speechkit tts synth MODEL ...`.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("synth", help="speak --text in the voice of --prompt (zero-shot), whole or streamed")
    s.add_argument("model", help="exported dir (ar_step.onnx ..., run without torch) or an experiment dir (model.pt)")
    s.add_argument("--text", required=True, help="what to say (English; numbers are read out)")
    s.add_argument("--prompt", required=True, help="a few seconds of the target voice (wav/flac); its first --prompt-seconds are used")
    s.add_argument("--out", required=True, help="output wav")
    s.add_argument("--stream", action="store_true", help="write audio chunk by chunk as the latents come (reports the first-audio latency)")
    s.add_argument("--device", default=None, help=DEVICE_HELP)
    s.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    _add_synth_options(s)
    s.set_defaults(func=_synth)
    pr = sub.add_parser("prepare", help="a Kaldi data dir → phonemes + codec latents for training")
    pr.add_argument("data", help="Kaldi data dir (wav.scp, text, utt2spk)")
    pr.add_argument("codec", help="exported VAE codec dir (encoder.onnx, decoder.onnx), e.g. models/codec-vae-synth")
    pr.add_argument("out_dir")
    pr.add_argument("--nj", type=int, default=None, help="encoder processes (default: every core)")
    pr.set_defaults(func=_prepare)
    t = sub.add_parser("train", help="train CLEAR from a YAML config on prepared dirs (resumes from EXP_DIR/checkpoint.pt)")
    t.add_argument("--config", required=True)
    t.add_argument("--data", nargs="+", required=True, help="dirs made by `speechkit tts prepare`")
    t.add_argument("--exp-dir", required=True)
    t.add_argument("--device", default=None, help="cuda | cpu (default: cuda when there is one)")
    t.set_defaults(func=_train)
    e = sub.add_parser("export", help="the AR transformer (one graph: prefix and cached steps) and flow head to ONNX, with the codec, "
                       "checked against PyTorch")
    e.add_argument("exp_dir")
    e.add_argument("out_dir")
    e.add_argument("--check-text", default="the quick brown fox jumps over the lazy dog", help="sentence of the parity check")
    e.add_argument("--int8", nargs="?", const="weights", default=False, choices=["weights", "dynamic"],
                   help="int8 graphs, about a quarter of the size: 'weights' (the default with --int8: int8 weights, float "
                        "arithmetic) or 'dynamic' (ONNX Runtime's dynamic quantization: int8 arithmetic, faster on a CPU)")
    e.add_argument("--codec-dir", dest="codec_dir", default=None,
                   help="reference this exported codec (the one the model was trained on) instead of copying it into OUT_DIR/codec; "
                        "export.json records it relative to OUT_DIR, so keep the two side by side (e.g. under models/)")
    e.set_defaults(func=_export)
    v = sub.add_parser("eval", help="zero-shot synthesis of a test set: ASR and pocketsphinx WER, speaker similarity, DNSMOS, RTF, first-audio latency")
    v.add_argument("model", help="exported dir or experiment dir")
    v.add_argument("data", help="Kaldi data dir; every utterance is said with another utterance of its speaker as the prompt")
    v.add_argument("--out-dir", required=True, help="synthesised wavs (OUT/wav), synth.json (timing), pairs.jsonl")
    v.add_argument("--judges", default="asr,pocketsphinx,resemblyzer,dnsmos", help="comma-separated, or none (default: all four)")
    v.add_argument("--asr-model", default="models/asr-stream-synth", help="exported ASR model of the asr judge (default models/asr-stream-synth)")
    v.add_argument("--max-utts", type=int, default=None)
    v.add_argument("--reuse", action="store_true", help="keep wavs already in OUT/wav (judge a set synthesised elsewhere)")
    v.add_argument("--device", default=None, help=DEVICE_HELP)
    v.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    _add_synth_options(v)
    add_output_args(v)
    v.set_defaults(func=_eval)
    return p


def _tts(args) -> None:
    rest = list(args.rest)
    if rest and rest[0] not in ACTIONS and rest[0] not in ("-h", "--help"):
        rest.insert(0, "synth")
    inner = build_tts_parser().parse_args(rest)
    inner.func(inner)


def add_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tts", help="CLEAR text-to-speech: synth (speechkit tts MODEL --text ...), prepare, train, export, eval",
                       add_help=False, prefix_chars="\0")
    t.add_argument("rest", nargs=argparse.REMAINDER)
    t.set_defaults(func=_tts)
