"""`speechkit vc MODEL --source S.wav --reference R.wav --out O.wav [--steps 1] [--stream]`,
`speechkit vc MODEL --mic --reference R.wav` (live, microphone to speakers) and
`speechkit vc prepare|train|export|eval`. MODEL is an exported dir (ONNX, run without torch) or a
training experiment (its model.pt, run with torch)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from speechkit.bench import add_output_args
from speechkit.errors import SpeechkitError

ACTIONS = ("prepare", "train", "export", "eval", "convert")
SHIPPED_CODEC = "models/codec-vae-synth"
SHIPPED_ASR = "models/asr-stream-synth"
DEVICE_HELP = ("experiment dirs: cuda | cpu (default: cuda when there is one); "
               "exported dirs: ONNX Runtime on cpu (default), cuda[:N] or tensorrt[:N] (N: the GPU)")


def _prepare(args) -> None:
    from speechkit.train.vc_prepare import prepare_vc_dump

    try:
        left, right = (int(v) for v in args.att_context.split(","))
    except ValueError:
        raise SpeechkitError(f"--att-context {args.att_context}: expected LEFT,RIGHT (e.g. 64,4)") from None
    st = prepare_vc_dump(args.data, args.out_dir, args.codec, args.asr, args.speaker_model, layer=args.layer,
                         att_context=(left, right), nj=args.nj, max_utts=args.max_utts)
    print(f"{args.out_dir}: {st['utterances']} utterances ({st['hours']} h, {st['frames']} frames at {st['frame_rate']:g}/s: "
          f"latents x {st['latent_dim']}, content x {st['content_dim']} from block {st['content_layer']}, "
          f"speaker x {st['spk_dim']}), {st['skipped']} skipped")


def _train(args) -> None:
    from speechkit.train.vc import load_vc_experiment, train_vc

    info = train_vc(load_vc_experiment(args.config), args.dump, args.exp_dir, args.device)
    print(f"trained {info['steps']} steps in {info['minutes']} min ({info['params_m']} M parameters) -> {args.exp_dir}/model.pt")


def _export(args) -> None:
    import tempfile

    from speechkit.export.speaker import export_speaker
    from speechkit.export.vc import run_export
    from speechkit.models.vc.io import load_vc

    args.model, args.out = args.exp_dir, args.out_dir
    speaker = args.speaker_model or load_vc(args.exp_dir)[1].get("speaker_model")
    with tempfile.TemporaryDirectory(prefix="vc-speaker-") as tmp:
        if speaker and not (Path(speaker) / "speaker.onnx").is_file():  # a trained encoder: exported beside the model
            from speechkit.runtime.vc import resolve

            export_speaker(resolve(speaker, "speaker encoder", "--speaker-model"), tmp)
            speaker = tmp
        args.speaker_model = speaker
        run_export(args)


def _eval(args) -> None:
    from speechkit.bench import emit
    from speechkit.eval.vc_eval import evaluate_vc, parse_system, summary_lines

    judges = [] if args.judges == "none" else [j.strip() for j in args.judges.split(",") if j.strip()]
    systems = [parse_system(s) for s in args.system]
    if not systems:
        raise SpeechkitError("give at least one --system NAME=MODEL[:SAMPLER[:STEPS]]")
    if args.dump is None and not args.reuse:
        raise SpeechkitError("--dump and --data are needed to convert (or --reuse to judge OUT-DIR as it is)")
    r = evaluate_vc(systems, args.dump, args.data, args.out_dir, judges=judges, codec_dir=args.codec, asr_model=args.asr_model,
                    max_utts=args.max_utts, seed=args.seed, device=args.device, threads=args.threads, reuse=args.reuse)
    emit(r, summary_lines(r), args)


def _load_converter(args):
    model = Path(args.model)
    if (model / "model.pt").is_file() or model.suffix == ".pt":
        from speechkit.inference.vc import TorchVoiceConverter

        return TorchVoiceConverter(model, args.codec, args.asr, args.speaker_model, args.device, args.threads), "torch"
    if (model / "step.onnx").is_file():
        from speechkit.runtime.vc import VoiceConverter

        return VoiceConverter(model, codec_dir=args.codec, asr_dir=args.asr, num_threads=args.threads,
                              device=args.device or "cpu"), "onnx"
    raise SpeechkitError(f"{model}: neither an exported voice-conversion model (step.onnx) nor an experiment (model.pt)")


def _open_audio_devices(device):
    """sounddevice, once an input and an output device were found; one-line errors otherwise."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:  # OSError: the package is there but PortAudio is not
        raise SpeechkitError(f"--mic needs sounddevice and PortAudio (pip install 'speechkit[mic]'): {e}") from None
    for kind in ("input", "output"):
        try:
            sd.query_devices(device, kind=kind)
        except Exception as e:  # sounddevice raises PortAudioError / ValueError when nothing is there
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise SpeechkitError(f"no audio {kind} device ({why}); convert a file with --source S.wav --out O.wav") from None
    return sd


def _mic(args) -> None:
    """The microphone converted into the voice of --reference and played as it comes, a chunk at
    a time (one chunk of silence first, so a late chunk does not break the output); Ctrl-C plays
    the rest and stops."""
    import sys

    from speechkit.audio.io import load_audio

    device = int(args.audio_device) if args.audio_device and args.audio_device.isdigit() else args.audio_device
    if not (Path(args.model) / "step.onnx").is_file():
        raise SpeechkitError(f"{args.model}: --mic needs an exported voice-conversion model (step.onnx; "
                             f"export an experiment with `speechkit vc export EXP_DIR OUT_DIR`)")
    sd = _open_audio_devices(device)
    conv, _ = _load_converter(args)
    rate = conv.sample_rate
    stream = conv.stream(conv.target(load_audio(args.reference, rate, resample=True, downmix=True)[0], rate), seed=args.seed)
    block = int(round(rate * conv.chunk / conv.content.frame_rate))
    print(f"converting the microphone into the voice of {args.reference} at {rate} Hz "
          f"(latency {conv.latency_ms:.0f} ms + compute); Ctrl-C to stop", file=sys.stderr)
    try:
        played = _live(sd.Stream(device=device, channels=1, samplerate=rate, dtype="float32", blocksize=block), stream, block)
    except sd.PortAudioError as e:
        raise SpeechkitError(f"the audio device failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    print(f"converted {played / rate:.1f} s", file=sys.stderr)


def _live(duplex, stream, block: int) -> int:
    """Read ``block`` samples, play what they complete, until Ctrl-C; then play the rest → samples played."""
    import numpy as np

    played = 0
    with duplex:
        duplex.write(np.zeros((block, 1), np.float32))
        try:
            while True:
                played += _play(duplex, stream.accept(duplex.read(block)[0][:, 0]))
        except KeyboardInterrupt:
            played += _play(duplex, stream.finish())
    return played


def _play(duplex, audio) -> int:
    if len(audio):
        duplex.write(audio[:, None])
    return len(audio)


def _convert(args) -> None:
    import numpy as np
    import soundfile as sf

    from speechkit.audio.io import load_audio

    if bool(args.source) == bool(args.mic):
        raise SpeechkitError("give one of --source FILE (with --out) or --mic")
    if args.mic:
        if args.out:
            raise SpeechkitError("--out is for --source; --mic plays the converted voice")
        return _mic(args)
    if not args.out:
        raise SpeechkitError("--source needs --out O.wav")
    conv, kind = _load_converter(args)
    rate = conv.sample_rate if hasattr(conv, "sample_rate") else 16000
    ref, _ = load_audio(args.reference, rate, resample=True, downmix=True)
    src, _ = load_audio(args.source, rate, resample=True, downmix=True)
    target = conv.target(ref, rate)
    t0 = time.perf_counter()
    if args.stream and kind == "onnx":
        stream = conv.stream(target, seed=args.seed)
        block = rate // 10  # 100 ms blocks, as a microphone would deliver them
        parts, first = [], None
        for at in range(0, len(src), block):
            y = stream.accept(src[at : at + block])
            if len(y) and first is None:
                first = (at + block) / rate
            parts.append(y)
        parts.append(stream.finish())
        audio = np.concatenate(parts)
        extra = f", streamed in 100 ms blocks; first audio after {1000 * (first or 0):.0f} ms of input, latency {conv.latency_ms:.0f} ms"
    else:
        if args.stream:
            extra = " (an experiment converts chunk by chunk in torch; --stream needs an exported model)"
        else:
            extra = ""
        audio = (conv.convert(src, target, rate, steps=args.steps, seed=args.seed) if kind == "torch"
                 else conv.convert(src, target, rate, seed=args.seed))
    took = time.perf_counter() - t0
    sf.write(args.out, audio, rate)
    sec = len(audio) / rate
    print(f"{args.out}: {sec:.2f} s converted in {took:.2f} s (RTF {took / max(sec, 1e-9):.3f}{extra})")


def build_vc_parser(prog: str = "speechkit vc") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="MeanVC-style zero-shot voice conversion: a chunk-wise DiT trained "
                                "with mean flow over codec latents. `speechkit vc MODEL --source S.wav --reference R.wav "
                                "--out O.wav` is short for `speechkit vc convert MODEL ...`.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser("convert", help="say what --source says in the voice of --reference (zero-shot)")
    c.add_argument("model", help="exported dir (step.onnx ..., run without torch) or an experiment dir (model.pt)")
    c.add_argument("--source", default=None, help="the speech to convert (any rate, mono or stereo)")
    c.add_argument("--mic", action="store_true", help="instead of --source: the microphone, converted and played live "
                   "on the speakers (exported models; needs the [mic] extra); Ctrl-C stops")
    c.add_argument("--reference", required=True, help="a few seconds (at least 1) of the target voice")
    c.add_argument("--out", default=None, help="output wav (with --source)")
    c.add_argument("--audio-device", default=None,
                   help="--mic: sounddevice device name or index, for both input and output (default: the system's)")
    c.add_argument("--steps", type=int, default=1, help="mean-flow steps per chunk for an experiment dir (default 1; an export fixes its own)")
    c.add_argument("--stream", action="store_true", help="feed the source in 100 ms blocks as a microphone would (exported models)")
    c.add_argument("--seed", type=int, default=0, help="noise seed (default 0): the same seed gives the same audio")
    c.add_argument("--codec", default=None, help="VAE codec dir (default: the one the model was trained with)")
    c.add_argument("--asr", default=None, help="streaming ASR model giving the content (default: the model's own)")
    c.add_argument("--speaker-model", default=None, help="speaker encoder for an experiment dir (default: the model's own)")
    c.add_argument("--device", default=None, help=DEVICE_HELP)
    c.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    c.set_defaults(func=_convert)
    pr = sub.add_parser("prepare", help="a Kaldi data dir → content features, codec latents and speaker embeddings for training")
    pr.add_argument("data", help="Kaldi data dir (wav.scp, text, utt2spk)")
    pr.add_argument("out_dir")
    pr.add_argument("--codec", default=SHIPPED_CODEC, help=f"exported VAE codec dir (default {SHIPPED_CODEC})")
    pr.add_argument("--asr", default=SHIPPED_ASR, help=f"exported streaming ASR model giving the content (default {SHIPPED_ASR})")
    pr.add_argument("--speaker-model", required=True, help="a trained speaker encoder (`speechkit speaker train` experiment dir or model.pt)")
    pr.add_argument("--layer", type=int, default=12, help="conformer block whose output is the content (default 12: the last, "
                    "which the CTC head reads and which carries the least speaker information)")
    pr.add_argument("--att-context", default="64,4", help="the ASR model's trained (left,right) context (default 64,4: 200 ms chunks)")
    pr.add_argument("--nj", type=int, default=0, help="worker processes (default: every core)")
    pr.add_argument("--max-utts", type=int, default=None, help="only the first N utterances")
    pr.set_defaults(func=_prepare)
    t = sub.add_parser("train", help="train the converter from a YAML config on a prepared dump (resumes from EXP_DIR/checkpoint.pt)")
    t.add_argument("--config", required=True)
    t.add_argument("--dump", required=True, help="a dir made by `speechkit vc prepare`")
    t.add_argument("--exp-dir", required=True)
    t.add_argument("--device", default=None, help="cuda | cpu (default: cuda when there is one)")
    t.set_defaults(func=_train)
    e = sub.add_parser("export", help="reference and DiT step (KV cache, sampling and commit) to ONNX, checked against PyTorch")
    e.add_argument("exp_dir")
    e.add_argument("out_dir")
    e.add_argument("--steps", type=int, default=1, help="mean-flow steps per chunk baked into the step graph (default 1)")
    e.add_argument("--fp32", action="store_true", help="float32 weights (default: float16 weights where parity holds)")
    e.add_argument("--speaker-model", default=None, help="speaker encoder shipped beside the model as OUT/speaker: a trained "
                   "experiment (exported here) or an exported folder (default: the one the model was trained with)")
    e.set_defaults(func=_export)
    v = sub.add_parser("eval", help="zero-shot conversion of a test set into other voices: similarity, WER, log-F0, DNSMOS, RTF")
    v.add_argument("--system", action="append", default=[], metavar="NAME=MODEL[:SAMPLER[:STEPS]]",
                   help="a model and how to sample it (meanflow or euler, steps); repeat to compare side by side")
    v.add_argument("--dump", default=None, help="`speechkit vc prepare` dump of the test set (voices never seen in training)")
    v.add_argument("--data", default=None, help="the Kaldi data dir of that dump (transcripts and audio)")
    v.add_argument("--out-dir", required=True, help="converted wavs (OUT/wav/NAME), the pairs' audio, pairs.jsonl")
    v.add_argument("--judges", default="asr,pocketsphinx,resemblyzer,dnsmos", help="comma-separated, or none (default: all four)")
    v.add_argument("--asr-model", default=SHIPPED_ASR, help=f"exported ASR model of the asr judge (default {SHIPPED_ASR})")
    v.add_argument("--codec", default=None, help="VAE codec dir (default: the dump's)")
    v.add_argument("--max-utts", type=int, default=None)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--reuse", action="store_true", help="keep conversions already in OUT (judge a set converted elsewhere)")
    v.add_argument("--device", default=None, help="cuda | cpu (default: cuda when there is one)")
    v.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    add_output_args(v)
    v.set_defaults(func=_eval)
    return p


def _vc(args) -> None:
    rest = list(args.rest)
    if rest and rest[0] not in ACTIONS and rest[0] not in ("-h", "--help"):
        rest.insert(0, "convert")
    inner = build_vc_parser().parse_args(rest)
    inner.func(inner)


def add_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("vc", help="voice conversion: convert (speechkit vc MODEL --source ... --reference ...), prepare, train, export, eval",
                       add_help=False, prefix_chars="\0")
    t.add_argument("rest", nargs=argparse.REMAINDER)
    t.set_defaults(func=_vc)
