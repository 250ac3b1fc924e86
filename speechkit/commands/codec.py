"""`speechkit codec train|export|encode|decode|resynth|eval`. MODEL is an experiment dir (its
model.pt, run with torch) or an exported dir (encoder.onnx + decoder.onnx, run without torch).

encode, decode and resynth read their input a block at a time, encode it block by block, decode
through the decoder's streaming state and write audio as it comes, so memory does not grow with
the input's length (only the latents of ``encode``, 1/10 of the audio's size, are kept whole)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from speechkit.bench import add_output_args
from speechkit.errors import SpeechkitError

if TYPE_CHECKING:
    from tqdm import tqdm

READ_SECONDS = 1.0  # file blocks


class _Codec:
    """One interface over a torch experiment and an exported model: ``encode_blocks`` → (D|n_q, K)
    frames a block at a time, ``stream()`` → a decoder that carries its state across calls."""

    def __init__(self, path: str, device: str | None = "cpu", threads: int = 1):
        p = Path(path)
        if (p / "encoder.onnx").is_file():
            from speechkit.runtime.codec import CodecRuntime

            self.rt, self.model = CodecRuntime(p, threads, device or "cpu"), None
            self.sample_rate, self.hop, self.kind = self.rt.sample_rate, self.rt.hop, self.rt.kind
        else:
            from speechkit.models.codec.io import load_codec

            self.rt, self.model = None, load_codec(p, device)
            cfg = self.model.cfg
            self.sample_rate, self.hop, self.kind = cfg.sample_rate, cfg.hop, cfg.codec

    def encode_blocks(self, blocks: Iterable[np.ndarray], n_q: int | None = None) -> Iterator[np.ndarray]:
        """Consecutive blocks of one waveform → its (D|n_q, K) frames, a block at a time."""
        if self.rt is not None:
            if n_q and self.kind != "rvq":
                raise SpeechkitError("--n-q (a number of RVQ stages) does not apply to a VAE codec")
            return (z[:n_q] for z in self.rt.encode_blocks(blocks))
        from speechkit.models.codec.model import encode_samples
        from speechkit.runtime.codec import ENCODE_BLOCK_SECONDS, encode_blocks, receptive_frames

        def encode(x):
            return encode_samples(self.model, x, n_q)

        block_frames = int(ENCODE_BLOCK_SECONDS * self.sample_rate) // self.hop
        return encode_blocks(encode, blocks, self.hop, receptive_frames(encode, self.hop) + 2, block_frames)

    def stream(self):
        """A decoder stream: ``decode(frames (D|n_q, K)) → K × hop samples``, state carried."""
        return self.rt.stream() if self.rt is not None else _TorchDecoderStream(self.model)


class _TorchDecoderStream:
    """The torch codec's streaming decoder with the runtime's ``DecoderStream`` interface."""

    def __init__(self, model):
        self.model, self.device = model, next(model.parameters()).device
        self.state = model.decoder.init_state(1, self.device)

    def decode(self, frames: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            z = torch.from_numpy(np.ascontiguousarray(frames))[None].to(self.device)
            y, self.state = self.model.decode_chunk(z, self.state)
        return y[0, 0].float().cpu().numpy()


def _read(path: str, rate: int) -> np.ndarray:
    from speechkit.audio.io import load_audio

    return load_audio(path, rate, resample=True, downmix=True)[0]


def _blocks(path: str, rate: int, bar: tqdm | None = None) -> Iterator[np.ndarray]:
    """The file's samples at ``rate``, mono, a block at a time (counted on ``bar`` in seconds)."""
    from speechkit.audio.io import read_blocks

    for x, _ in read_blocks(path, READ_SECONDS, rate, resample=True, downmix=True):
        if bar is not None:  # resampled blocks may add up to a hair over the file's duration
            bar.update(min(len(x) / rate, bar.total - bar.n))
        yield x


def _seconds(path: str) -> float:
    from speechkit.audio.io import audio_duration

    return audio_duration(path)


@contextmanager
def _writer(path: str, rate: int):
    """A mono sound file written as blocks come, under a temporary name renamed at the end (a
    failed run leaves no truncated file under ``path``)."""
    import soundfile as sf

    out = Path(path)
    part = out.with_name(f"{out.stem}.part{out.suffix}")
    try:
        with sf.SoundFile(str(part), "w", rate, 1) as f:
            yield f
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)


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
    from tqdm import tqdm

    codec = _Codec(args.model, args.device, args.threads)
    with tqdm(total=_seconds(args.wav), unit="s", desc=f"encode {Path(args.wav).name}", file=sys.stderr) as bar:
        z = np.concatenate(list(codec.encode_blocks(_blocks(args.wav, codec.sample_rate, bar), args.n_q)), axis=1)
    np.save(args.out, z)
    print(f"{args.out}: {'codes' if codec.kind == 'rvq' else 'latents'} {z.shape} ({z.shape[1] * codec.hop / codec.sample_rate:.2f} s)")


def _decode(args) -> None:
    from tqdm import tqdm

    from speechkit.runtime.codec import decode_blocks

    codec = _Codec(args.model, args.device, args.threads)
    try:
        z = np.load(args.npy, mmap_mode="r")  # frames are read as they are decoded
    except ValueError as e:
        raise SpeechkitError(f"{args.npy}: not a .npy array ({e})") from None
    if z.ndim != 2:
        raise SpeechkitError(f"{args.npy}: expected a 2-D array (D, F) or (n_q, F), got shape {z.shape}")
    with _writer(args.out, codec.sample_rate) as f, tqdm(total=z.shape[1], unit="frame", desc="decode", file=sys.stderr) as bar:
        for y in decode_blocks(codec.stream(), [z]):
            f.write(y)
            bar.update(len(y) // codec.hop)
    print(f"{args.out}: {z.shape[1] * codec.hop / codec.sample_rate:.2f} s")


def _resynth(args) -> None:
    from tqdm import tqdm

    from speechkit.runtime.codec import decode_blocks

    codec = _Codec(args.model, args.device, args.threads)
    read = written = 0

    def counted(blocks):
        nonlocal read
        for x in blocks:
            read += len(x)
            yield x

    with tqdm(total=_seconds(args.wav), unit="s", desc=f"resynth {Path(args.wav).name}", file=sys.stderr) as bar, \
            _writer(args.out, codec.sample_rate) as f:
        frames = codec.encode_blocks(counted(_blocks(args.wav, codec.sample_rate, bar)), args.n_q)
        for y in decode_blocks(codec.stream(), frames):
            y = y[: read - written]  # the encoder padded the end to a whole frame
            f.write(y)
            written += len(y)
    print(f"{args.out}: {written / codec.sample_rate:.2f} s resynthesised")


def _eval(args) -> None:
    from speechkit.bench import emit
    from speechkit.eval.codec_eval import evaluate_codec, summary_lines

    n_q = [int(v) for v in args.n_q.split(",")] if args.n_q else None
    result = evaluate_codec(args.model, args.data, asr_model=args.asr_model, device=args.device, n_q_list=n_q,
                            samples_dir=args.samples_dir, max_utts=args.max_utts, rtf_utts=args.rtf_utts, threads=args.threads)
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
        c.add_argument("--device", default="cpu", help="experiment dirs: cuda | cpu (default cpu); "
                       "exported dirs: ONNX Runtime on cpu (default), cuda[:N] or tensorrt[:N] (N: the GPU)")
        c.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for an exported codec (default 1)")
        if name != "decode":
            c.add_argument("--n-q", type=int, default=None, help="RVQ: stages to keep (a lower bitrate)")
        c.set_defaults(func={"encode": _encode, "decode": _decode, "resynth": _resynth}[name])
    v = codec.add_parser("eval", help="STOI, wideband PESQ, MCD, ASR WER of resynthesised vs original speech, codebook usage, RTF")
    v.add_argument("model", help="experiment dir (model.pt, run in PyTorch) or exported dir (encoder.onnx, decoder.onnx, "
                   "run by ONNX Runtime)")
    v.add_argument("data", nargs="+", help="Kaldi data dirs (wav.scp + text)")
    v.add_argument("--asr-model", default="models/asr-stream-synth", help="exported ASR model for the WER (default models/asr-stream-synth)")
    v.add_argument("--device", default=None, help="experiment dirs: cuda | cpu (default: cuda when there is one); "
                   "exported dirs: ONNX Runtime on cpu (default), cuda[:N] or tensorrt[:N] (N: the GPU)")
    v.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for an exported codec (default 1)")
    v.add_argument("--n-q", default=None, help="RVQ: comma-separated stage counts to evaluate (default: all stages, and half)")
    v.add_argument("--max-utts", type=int, default=None, help="at most this many utterances per data dir")
    v.add_argument("--rtf-utts", type=int, default=8, help="utterances timed for the real-time factors (default 8)")
    v.add_argument("--samples-dir", default=None, help="write a few original/resynthesised pairs and a spectrogram image here")
    add_output_args(v)
    v.set_defaults(func=_eval)
