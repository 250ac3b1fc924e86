"""`speechkit codec train|export|encode|decode|resynth|eval`. MODEL is an experiment dir (its
model.pt, run with torch) or an exported dir (encoder.onnx + decoder.onnx, run without torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from speechkit.bench import add_output_args
from speechkit.errors import SpeechkitError


class _Codec:
    """One interface over a torch experiment and an exported model: encode → (D|n_q, F) array,
    decode → samples."""

    def __init__(self, path: str, device: str = "cpu"):
        p = Path(path)
        if (p / "encoder.onnx").is_file():
            from speechkit.runtime.codec import CodecRuntime

            self.rt, self.model = CodecRuntime(p), None
            self.sample_rate, self.hop, self.kind = self.rt.sample_rate, self.rt.hop, self.rt.kind
        else:
            from speechkit.models.codec.io import load_codec

            self.rt, self.model = None, load_codec(p, device)
            cfg = self.model.cfg
            self.sample_rate, self.hop, self.kind = cfg.sample_rate, cfg.hop, cfg.codec

    def encode(self, x: np.ndarray, n_q: int | None = None) -> np.ndarray:
        if self.rt is None:
            from speechkit.models.codec.model import encode_samples

            return encode_samples(self.model, x, n_q)
        if n_q and self.kind != "rvq":
            raise SpeechkitError("--n-q (a number of RVQ stages) does not apply to a VAE codec")
        return self.rt.encode(x)[:n_q]

    def decode(self, z: np.ndarray) -> np.ndarray:
        if self.rt is not None:
            return self.rt.decode(z)
        from speechkit.models.codec.model import decode_frames

        return decode_frames(self.model, z)


def _read(path: str, rate: int) -> np.ndarray:
    from speechkit.audio.io import load_audio

    return load_audio(path, rate, resample=True, downmix=True)[0]


def _train(args) -> None:
    from speechkit.train.codec import load_codec_experiment, train_codec

    exp = load_codec_experiment(args.config)
    info = train_codec(exp, args.data, args.exp_dir, args.device)
    print(f"trained {info['steps']} steps in {info['minutes']} min -> {args.exp_dir}/model.pt")


def _export(args) -> None:
    from speechkit.data.kaldi import read_table
    from speechkit.export.codec import export_codec
    from speechkit.models.codec.io import load_codec

    model = load_codec(args.exp_dir)
    paths = list(read_table(Path(args.check_data) / "wav.scp").values())[: args.check_utts]
    info = export_codec(model, args.out_dir, [_read(p, model.cfg.sample_rate) for p in paths], args.chunk_frames)
    worst = max(r["decoder_max_abs_diff"] for r in info["parity"])
    print(f"exported {args.out_dir}/encoder.onnx + decoder.onnx ({info['size_mb']} MB); ONNX Runtime = PyTorch on "
          f"{len(info['parity'])} utterances (encoder, and the decoder over chained {args.chunk_frames}-frame chunks: max |Δ| {worst:.1e})")


def _encode(args) -> None:
    codec = _Codec(args.model, args.device)
    z = codec.encode(_read(args.wav, codec.sample_rate), args.n_q)
    np.save(args.out, z)
    print(f"{args.out}: {'codes' if codec.kind == 'rvq' else 'latents'} {z.shape} ({z.shape[1] * codec.hop / codec.sample_rate:.2f} s)")


def _decode(args) -> None:
    codec = _Codec(args.model, args.device)
    z = np.load(args.npy)
    if z.ndim != 2:
        raise SpeechkitError(f"{args.npy}: expected a 2-D array (D, F) or (n_q, F), got shape {z.shape}")
    sf.write(args.out, codec.decode(z), codec.sample_rate)
    print(f"{args.out}: {z.shape[1] * codec.hop / codec.sample_rate:.2f} s")


def _resynth(args) -> None:
    codec = _Codec(args.model, args.device)
    x = _read(args.wav, codec.sample_rate)
    y = codec.decode(codec.encode(x, args.n_q))[: len(x)]
    sf.write(args.out, y, codec.sample_rate)
    print(f"{args.out}: {len(y) / codec.sample_rate:.2f} s resynthesised")


def _eval(args) -> None:
    from speechkit.bench import emit
    from speechkit.eval.codec_eval import evaluate_codec, summary_lines

    n_q = [int(v) for v in args.n_q.split(",")] if args.n_q else None
    result = evaluate_codec(args.model, args.data, asr_model=args.asr_model, device=args.device, n_q_list=n_q,
                            samples_dir=args.samples_dir, max_utts=args.max_utts, rtf_utts=args.rtf_utts)
    emit(result, summary_lines(result), args)


def add_parser(sub: argparse._SubParsersAction) -> None:
    codec = sub.add_parser("codec", help="neural audio codecs (waveform VAE, RVQ): train, export, encode, decode, resynth, eval"
                           ).add_subparsers(dest="codec", metavar="ACTION", required=True)
    t = codec.add_parser("train", help="train a codec from a YAML config on Kaldi data dirs (resumes from EXP_DIR/checkpoint.pt)")
    t.add_argument("--config", required=True)
    t.add_argument("--data", nargs="+", required=True, help="Kaldi data dirs whose wavs are cut into training crops")
    t.add_argument("--exp-dir", required=True)
    t.add_argument("--device", default=None, help="cuda | cpu (default: cuda when there is one)")
    t.set_defaults(func=_train)
    e = codec.add_parser("export", help="encoder + streaming decoder to ONNX, checked against PyTorch over chained chunks")
    e.add_argument("exp_dir")
    e.add_argument("out_dir")
    e.add_argument("--check-data", required=True, help="Kaldi data dir for the parity check")
    e.add_argument("--check-utts", type=int, default=3)
    e.add_argument("--chunk-frames", type=int, default=1, help="latent frames per decoder call in the parity check (default 1)")
    e.set_defaults(func=_export)
    for name, helptext in (("encode", "a wav → latents (VAE) or codes (RVQ) as .npy"), ("decode", "a .npy of latents or codes → a wav"),
                           ("resynth", "a wav → encode → decode → a wav")):
        c = codec.add_parser(name, help=helptext)
        c.add_argument("model", help="experiment dir (model.pt) or exported dir (encoder.onnx, decoder.onnx)")
        c.add_argument("npy" if name == "decode" else "wav")
        c.add_argument("out")
        c.add_argument("--device", default="cpu")
        if name != "decode":
            c.add_argument("--n-q", type=int, default=None, help="RVQ: stages to keep (a lower bitrate)")
        c.set_defaults(func={"encode": _encode, "decode": _decode, "resynth": _resynth}[name])
    v = codec.add_parser("eval", help="STOI, wideband PESQ, MCD, ASR WER of resynthesised vs original speech, codebook usage, RTF")
    v.add_argument("model", help="experiment dir (model.pt)")
    v.add_argument("data", nargs="+", help="Kaldi data dirs (wav.scp + text)")
    v.add_argument("--asr-model", default="models/asr-stream-synth", help="exported ASR model for the WER (default models/asr-stream-synth)")
    v.add_argument("--device", default=None, help="cuda | cpu (default: cuda when there is one)")
    v.add_argument("--n-q", default=None, help="RVQ: comma-separated stage counts to evaluate (default: all stages, and half)")
    v.add_argument("--max-utts", type=int, default=None, help="at most this many utterances per data dir")
    v.add_argument("--rtf-utts", type=int, default=8, help="utterances timed for the real-time factors (default 8)")
    v.add_argument("--samples-dir", default=None, help="write a few original/resynthesised pairs and a spectrogram image here")
    add_output_args(v)
    v.set_defaults(func=_eval)
