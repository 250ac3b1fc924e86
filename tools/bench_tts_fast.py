"""Time CLEAR synthesis the old way (``ClearTTS.generate``, ONNX codec on CPU threads) against the
fast way (static KV cache + CUDA graph per latent, PyTorch codec on the model's device), for N
utterances of a fixed number of latents (the stop head is ignored), through the same streaming
loop as ``speechkit tts eval``: phonemise, encode the prompt, prefill, generate, decode every
``chunk_frames`` latents. Prints and writes JSON: per-latent ms, RTF (a latent is 1 / frame_rate s
of audio) and the first-audio time with its parts.

    python tools/bench_tts_fast.py --random                    # the GPU config, random weights
    python tools/bench_tts_fast.py egs/synth/tts/exp/clear_gpu --utts 10 --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs into the forest before anyone sees it."


def random_model(config: Path, vocab_size: int, codec, device: torch.device):
    """A ClearTTS of ``config``'s model section with random weights (every zero-initialised layer
    of the flow head filled, so no computation is trivially zero)."""
    from speechkit.models.tts.clear import ClearTTS
    from speechkit.models.tts.train import load_tts_experiment

    cfg = dataclasses.replace(load_tts_experiment(config).model, vocab_size=vocab_size, latent_dim=codec.latent_dim,
                              frame_rate=codec.sample_rate / codec.hop)
    torch.manual_seed(0)
    model = ClearTTS(cfg).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    return model.to(device)


def padded_vocab(text: str, size: int):
    """The text's phoneme symbols plus fillers up to ``size`` symbols (the shape of a real vocabulary)."""
    from speechkit.text.phonemes import PhonemeVocab, text_to_phonemes

    vocab = PhonemeVocab.build(text_to_phonemes([text]))
    return PhonemeVocab(vocab.symbols + [f"filler{i}" for i in range(size - len(vocab))])


class Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def timed_prefill(model, clock: Clock, record: dict):
    """Wrap ``model.prefill`` (an instance attribute shadows the method) to time it, synced."""
    prefill = type(model).prefill.__get__(model)

    def wrapper(*args, **kwargs):
        t0 = clock()
        out = prefill(*args, **kwargs)
        record["prefill_s"] = clock() - t0
        return out

    model.prefill = wrapper


def one_utterance(path: dict, text: str, prompt: np.ndarray, opts, frames: int, decode: bool, clock: Clock) -> dict:
    """The eval's stream, timestamped: phonemise → prompt latents → generate (stop ignored) →
    decode every chunk_frames latents."""
    from speechkit.runtime.tts import phoneme_ids, prompt_latents

    t0 = clock()
    ids = torch.tensor(phoneme_ids(path["vocab"], text), dtype=torch.long)
    t_ph = time.perf_counter()
    prompt_z = torch.from_numpy(prompt_latents(path["codec"], prompt, opts.prompt_seconds))
    t_enc = time.perf_counter()
    g = torch.Generator(device=path["device"]).manual_seed(opts.seed)
    latents = path["generate"](ids, prompt_z, steps=opts.steps, cfg_scale=opts.cfg_scale, temperature=opts.temperature,
                               max_frames=frames, stop_threshold=2.0, generator=g)
    dec, buf, stamps, first_audio, first_decode = path["codec"].stream(), [], [], None, None
    for z in latents:
        buf.append(z.float().cpu().numpy())
        stamps.append(time.perf_counter())
        if len(buf) == opts.chunk_frames:
            if decode:
                t = time.perf_counter()
                dec.decode(np.stack(buf, axis=1))
                if first_audio is None:
                    first_audio, first_decode = time.perf_counter(), time.perf_counter() - t
            buf = []
    if decode and buf:
        dec.decode(np.stack(buf, axis=1))
    end = clock()
    n, k = len(stamps), opts.chunk_frames
    ms = lambda s: round(1000 * s, 2)  # noqa: E731
    rec = {"latents": n, "total_ms": ms(end - t0), "phonemise_ms": ms(t_ph - t0), "prompt_encode_ms": ms(t_enc - t_ph),
           "prefill_ms": ms(path["prefill"]["prefill_s"]),
           "to_first_latent_ms": ms(stamps[0] - t_enc), "first_chunk_latents_ms": ms(stamps[k - 1] - t_enc),
           "steady_ms_per_latent": ms((stamps[-1] - stamps[k]) / max(n - k - 1, 1))}
    rec["first_chunk_latents_ms"] = round(rec["first_chunk_latents_ms"] - rec["prefill_ms"], 2)  # after the prefill
    if decode:
        rec |= {"first_decode_ms": ms(first_decode), "first_audio_ms": ms(first_audio - t0)}
    rec["rtf"] = round((end - t0) / (n / path["frame_rate"]), 4)
    return rec


def summarise(rows: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def main() -> None:
    from speechkit.models.tts.options import SynthOptions, read_prompt

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("exp", nargs="?", help="a CLEAR experiment dir (model.pt); or --random")
    p.add_argument("--random", action="store_true", help="random weights in the model section of --config")
    p.add_argument("--config", type=Path, default=ROOT / "egs/synth/tts/conf/train_clear_gpu.yaml")
    p.add_argument("--vocab", type=int, default=80, help="--random: phoneme vocabulary size")
    p.add_argument("--codec", type=Path, help="codec dir (default: the experiment's, or models/codec-vae-synth)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--utts", type=int, default=5)
    p.add_argument("--frames", type=int, default=100, help="latents per utterance (the stop head is ignored)")
    p.add_argument("--text", default=TEXT)
    p.add_argument("--prompt", help="a prompt wav (default: 3 s of synthetic tones and noise)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--chunk-frames", type=int, default=4)
    p.add_argument("--prompt-seconds", type=float, default=3.0)
    p.add_argument("--old-codec-threads", type=int, default=1, help="ONNX codec threads on the old path (the eval's default: 1)")
    p.add_argument("--paths", default="old,fast")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if not args.random and not args.exp:
        p.error("give an experiment dir or --random")

    from speechkit.models.codec.torch_runtime import TorchCodec
    from speechkit.models.tts.fast import FastGenerator
    from speechkit.runtime.codec import CodecRuntime
    from speechkit.runtime.tts import phoneme_ids

    device = torch.device(args.device)
    torch.set_num_threads(1 if device.type == "cuda" else torch.get_num_threads())
    opts = SynthOptions(steps=args.steps, cfg_scale=args.cfg_scale, temperature=args.temperature,
                        chunk_frames=args.chunk_frames, prompt_seconds=args.prompt_seconds, seed=0)
    if args.random:
        codec_dir = args.codec or ROOT / "models/codec-vae-synth"
        onnx_codec = CodecRuntime(codec_dir, args.old_codec_threads)
        vocab = padded_vocab(args.text, args.vocab)
        model = random_model(args.config, len(vocab), onnx_codec, device)
    else:
        from speechkit.models.tts.synth import resolve_codec
        from speechkit.models.tts.train import load_tts
        from speechkit.text.phonemes import PhonemeVocab

        model, symbols, recorded = load_tts(args.exp, device)
        vocab = PhonemeVocab(symbols)
        codec_dir = args.codec or resolve_codec(Path(args.exp), recorded)
        onnx_codec = CodecRuntime(codec_dir, args.old_codec_threads)
    if args.prompt:
        prompt = read_prompt(args.prompt, onnx_codec.sample_rate)
    else:
        t = np.arange(int(args.prompt_seconds * onnx_codec.sample_rate)) / onnx_codec.sample_rate
        prompt = (0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
                  + 0.02 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    clock, record = Clock(device), {}
    timed_prefill(model, clock, record)
    frame_rate = model.cfg.frame_rate
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "model": "random " + str(args.config) if args.random else args.exp, "params_m": round(sum(q.numel() for q in model.parameters()) / 1e6, 2),
              "codec": str(codec_dir), "frames": args.frames, "utts": args.utts, "options": vars(opts), "text": args.text,
              "note": "prefill is timed with a device sync around it; latents are 1 / frame_rate s of audio each"}
    for name in args.paths.split(","):
        if name == "old":
            path = {"generate": model.generate, "codec": onnx_codec}
        elif name == "fast":
            t = time.perf_counter()
            fast = FastGenerator(model)
            torch_codec = TorchCodec(codec_dir, device)
            path = {"generate": fast.generate, "codec": torch_codec}
            fast.warmup(len(phoneme_ids(vocab, args.text)), int(args.prompt_seconds * frame_rate), steps=opts.steps,
                        cfg_scale=opts.cfg_scale, temperature=opts.temperature, max_frames=args.frames)
            result["fast_setup_ms"] = round(1000 * (clock() - t), 1)
        else:
            raise SystemExit(f"unknown path {name!r} (old, fast)")
        path |= {"vocab": vocab, "device": device, "prefill": record, "frame_rate": frame_rate}
        one_utterance(path, args.text, prompt, opts, args.frames, True, clock)  # warm-up: not timed
        streamed = [one_utterance(path, args.text, prompt, opts, args.frames, True, clock) for _ in range(args.utts)]
        gen_only = [one_utterance(path, args.text, prompt, opts, args.frames, False, clock) for _ in range(args.utts)]
        result[name] = {"stream": summarise(streamed), "generation_only": summarise(gen_only), "per_utt": streamed}
        s = result[name]["stream"]
        print(f"{name:5s} {result['device']}: {s['steady_ms_per_latent']:.2f} ms/latent, RTF {s['rtf']:.3f}, first audio "
              f"{s['first_audio_ms']:.1f} ms (phonemise {s['phonemise_ms']:.1f}, prompt encode {s['prompt_encode_ms']:.1f}, "
              f"prefill {s['prefill_ms']:.1f}, first {opts.chunk_frames} latents {s['first_chunk_latents_ms']:.1f}, "
              f"first decode {s['first_decode_ms']:.1f}); generation only {result[name]['generation_only']['steady_ms_per_latent']:.2f} ms/latent",
              flush=True)
    print(json.dumps({k: v for k, v in result.items() if k not in ("old", "fast")} |
                     {k: {"stream": v["stream"], "generation_only": v["generation_only"]} for k, v in result.items() if k in ("old", "fast")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
