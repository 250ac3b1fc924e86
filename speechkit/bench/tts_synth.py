"""Benchmark of CLEAR synthesis speed: where the time of one streamed utterance goes.

Every run synthesises the same fixed-length utterance (``--frames`` latents, the stop head
switched off) from ``--text`` (phonemised with espeak-ng in every run, as synthesis does) and a 3 s
prompt, so configurations are compared on equal work; the speed of a model does not depend on its weights, so a training config (random
weights of its architecture) measures the same as the trained experiment. For each
(flow steps, latents per audio chunk) it reports, as medians over ``--repeats``:

- end to end, as ``speechkit tts --stream`` runs it (phonemise, prompt encode, prefix, the latent
  loop, the codec's streaming decode): RTF, first-audio latency, and the time to the first latent
  (phonemise, prompt encode and prefix: the part of the first-audio latency no chunk size changes);
- the latent loop alone (transformer step, stop check, guided flow head): ms per latent;
- that loop's parts, timed apart on the eager model: the flow head (all its steps) and the
  transformer step with the stop head, ms per latent each;
- the codec's streaming decode alone at that chunk size: ms per latent.

and once per utterance, whatever the configuration: phonemisation (the resident phonemiser; apart,
its first call in the process, which starts it), prompt encoding (the codec's encoder over the 3 s
prompt) and the prefix (the transformer over phonemes and prompt latents).

On CUDA the loop is the graphed :class:`~speechkit.models.tts.fast.FastGenerator` and the codec
runs in PyTorch on the GPU, as in :class:`~speechkit.inference.tts.TorchSynthesizer`; on the CPU,
or on CUDA with ``--eager`` (the path before the fast one, for comparison), ``ClearTTS.generate``
and the ONNX codec on ``--threads`` CPU threads (torch and ONNX Runtime alike; default one, the
laptop-core figure).

An exported model (``speechkit tts export``), or any model with ``--onnx`` (exported first to a
temporary folder, ``--int8`` for int8 weights), is timed through the torch-free runtime that
``speechkit tts`` and the server run: the same figures, with the flow head and the transformer
step timed apart through their ONNX sessions, and a new prompt in every utterance (the runtime
caches a prompt's latents; a new voice pays its encoding).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from speechkit.bench import add_output_args, comma_list, emit
from speechkit.errors import SpeechkitError

PROMPT_SECONDS = 3.0
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs into the forest before anyone sees it."


def add_parser(bench_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``tts`` to the ``bench`` subcommands."""
    p = bench_sub.add_parser("tts", help="CLEAR synthesis speed: RTF, first audio, flow head / transformer step / codec per latent, "
                                        "phonemise, prompt encode and prefix per utterance",
                             description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="experiment dir or model.pt of a trained CLEAR, a training config YAML "
                                 "(random weights of its architecture: the same speed), or an exported dir (the ONNX runtime)")
    p.add_argument("--codec", default=None, metavar="DIR",
                   help="exported codec (default: the one the experiment was trained on; models/codec-vae-synth for a config)")
    p.add_argument("--frames", type=int, default=100, help="latents per utterance (default 100: 4 s at 25/s)")
    p.add_argument("--text", default=TEXT, help="what is said (default: a sentence of ~90 phoneme symbols)")
    p.add_argument("--steps", type=comma_list(int, positive=True), default=[4, 10], help="flow steps, comma-separated (default 4,10)")
    p.add_argument("--chunk-frames", type=comma_list(int, positive=True), default=[4, 8], help="latents per audio chunk, comma-separated (default 4,8)")
    p.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance (default 1.5, as synthesis)")
    p.add_argument("--repeats", type=int, default=5, help="timed utterances per configuration; medians reported (default 5)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="torch device (default: cuda if available)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch and ONNX Runtime; default 1)")
    p.add_argument("--eager", action="store_true", help="on CUDA too: the eager loop and the ONNX codec on the CPU (no graphs)")
    p.add_argument("--onnx", action="store_true",
                   help="export the model first (a temporary folder) and time the ONNX runtime, as `speechkit tts` runs it")
    p.add_argument("--int8", nargs="?", const="weights", default=False, choices=["weights", "dynamic"],
                   help="--onnx: int8 graphs (speechkit tts export --int8 [weights|dynamic]; default weights)")
    add_output_args(p)
    p.set_defaults(func=main)
    return p


def load_model(spec: str, codec_dir: str | None, device, text: str = TEXT):
    """(ClearTTS in eval mode on device, its PhonemeVocab, codec dir, what was loaded). A config's
    random model gets the text's own phoneme symbols, padded to its vocabulary size."""
    import torch

    from speechkit.models.tts.clear import ClearTTS
    from speechkit.models.tts.io import load_tts
    from speechkit.inference.tts import resolve_codec
    from speechkit.runtime.codec import CodecRuntime
    from speechkit.text.phonemes import PhonemeVocab, text_to_phonemes
    from speechkit.train.tts import load_tts_experiment

    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise SpeechkitError(f"{path}: no such config")
        codec_dir = codec_dir or "models/codec-vae-synth"
        meta = CodecRuntime(codec_dir)
        cfg = load_tts_experiment(path).model
        vocab = PhonemeVocab.build(text_to_phonemes([text]))
        size = max(cfg.vocab_size if cfg.vocab_size > 0 else 71, len(vocab))  # 71: the synth corpus's IPA symbols
        vocab = PhonemeVocab(vocab.symbols + [f"filler{i}" for i in range(size - len(vocab))])
        cfg = dataclasses.replace(cfg, vocab_size=size, latent_dim=meta.latent_dim, frame_rate=meta.sample_rate / meta.hop)
        torch.manual_seed(0)
        model = ClearTTS(cfg).eval()
        with torch.no_grad():  # the flow head's zero-initialised layers: weights, so its output is not trivially zero
            for p in model.head.parameters():
                if not p.any():
                    p.normal_(0.0, 0.02)
        return model.to(device), vocab, Path(codec_dir), f"{path} (random weights)"
    if not (path / "model.pt").is_file() and not path.is_file():
        raise SpeechkitError(f"{path}: neither an experiment dir (model.pt), a model.pt nor a config YAML")
    model, symbols, recorded = load_tts(path, device)
    exp_dir = path if path.is_dir() else path.parent
    return model, PhonemeVocab(symbols), Path(codec_dir) if codec_dir else resolve_codec(exp_dir, recorded), str(path)


def _exported(path: str) -> bool:
    return (Path(path) / "ar_step.onnx").is_file() and (Path(path) / "export.json").is_file()


def main(args: argparse.Namespace) -> None:
    if args.int8 and not (args.onnx or _exported(args.model)):
        raise SpeechkitError("--int8 is an export option: add --onnx")
    if _exported(args.model):
        return runtime_main(args, args.model, args.model)
    if args.onnx:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bench-tts-") as tmp:
            int8 = f" int8 ({args.int8})" if args.int8 else ""
            return runtime_main(args, _export_for_bench(args, Path(tmp)), f"{args.model} exported{int8}")
    return torch_main(args)


def _export_for_bench(args: argparse.Namespace, tmp: Path) -> Path:
    """The model (a config's random weights, too) saved as an experiment and exported into ``tmp``."""
    import torch

    from speechkit.export.tts import export_tts
    from speechkit.models.tts.io import save_tts

    model, vocab, codec_dir, _ = load_model(args.model, args.codec, torch.device("cpu"), args.text)
    exp = tmp / "exp"
    exp.mkdir()
    vocab.save(exp / "phones.txt")
    save_tts(model, vocab.symbols, str(Path(codec_dir).resolve()), exp / "model.pt")
    export_tts(exp, tmp / "onnx", args.text, int8=args.int8, codec_dir=str(Path(codec_dir).resolve()))
    return tmp / "onnx"


def runtime_main(args: argparse.Namespace, model_dir, what: str) -> None:
    """The figures of :func:`torch_main` through the ONNX runtime (``Synthesizer``), the stop
    head switched off so every utterance is ``--frames`` latents."""
    import itertools

    import onnxruntime

    from speechkit.decoding.tts_options import SynthOptions, max_frames
    from speechkit.runtime.tts import Synthesizer, phoneme_ids
    from speechkit.text.phonemes import RESIDENT, text_to_phonemes

    if args.frames < 1 or args.repeats < 1:
        raise SpeechkitError("--frames and --repeats must be positive")
    if args.device == "cuda":
        raise SpeechkitError("the runtime path is timed on the CPU here (--device cpu or auto)")
    t0 = time.perf_counter()
    text_to_phonemes([args.text])  # starts the resident phonemiser
    phonemiser_start_ms = 1000.0 * (time.perf_counter() - t0)
    synth = Synthesizer(model_dir, num_threads=args.threads, codec_dir=args.codec)  # --codec: in place of the export's
    synth.stop_logit = float("inf")  # never stops: every utterance is --frames latents
    n_phones = len(phoneme_ids(synth.vocab, args.text))
    if args.frames > max_frames(n_phones, synth.frame_rate):
        raise SpeechkitError(f"--frames {args.frames}: the runtime stops a {n_phones}-symbol text at "
                             f"{max_frames(n_phones, synth.frame_rate)} latents; give a longer --text or fewer frames")
    seconds = args.frames / synth.frame_rate
    rng = np.random.default_rng(0)

    def new_prompt() -> np.ndarray:  # a voice the runtime has not cached
        return (0.1 * rng.standard_normal(int(PROMPT_SECONDS * synth.sample_rate))).astype(np.float32)

    def stages() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        ids = phoneme_ids(synth.vocab, args.text)
        t1 = time.perf_counter()
        z = (synth.prompt_latents(new_prompt(), PROMPT_SECONDS) - synth.mean) / synth.std
        t2 = time.perf_counter()
        synth.ar.prefix(synth.prefix_inputs(ids, z.astype(np.float32)))
        t3 = time.perf_counter()
        return 1000.0 * (t1 - t0), 1000.0 * (t2 - t1), 1000.0 * (t3 - t2)

    def opts(steps: int, chunk: int, seed: int) -> SynthOptions:
        return SynthOptions(steps=steps, cfg_scale=args.cfg_scale, chunk_frames=chunk, seed=seed)

    def latents(steps: int, seed: int):
        return itertools.islice(synth.latents(args.text, new_prompt(), opts(steps, 4, seed)), args.frames)

    def end_to_end(steps: int, chunk: int, seed: int) -> tuple[float, float, float]:
        return _end_to_end(latents(steps, seed), synth.codec, chunk, seconds)

    def loop_only(steps: int, seed: int) -> tuple[float, list[np.ndarray]]:
        return _loop_only(latents(steps, seed))

    def latent_parts(steps: int, seed: int) -> tuple[float, float]:
        g = np.random.default_rng(seed)
        ids = phoneme_ids(synth.vocab, args.text)
        z = (synth.prompt_latents(new_prompt(), PROMPT_SECONDS) - synth.mean) / synth.std
        h, _, cache = synth.ar.prefix(synth.prefix_inputs(ids, z.astype(np.float32)))
        flow = step = 0.0
        for _ in range(args.frames):
            t0 = time.perf_counter()
            x = synth.sample(h, g.standard_normal((1, synth.latent_dim), dtype=np.float32), opts(steps, 4, seed))
            t1 = time.perf_counter()
            h, _, cache = synth.ar.step(x, cache)
            t2 = time.perf_counter()
            flow, step = flow + t1 - t0, step + t2 - t1
        return 1000.0 * flow / args.frames, 1000.0 * step / args.frames

    def codec_only(zs: list[np.ndarray], chunk: int) -> float:
        return _codec_only(synth.codec, zs, chunk)

    rows, (phonemise, encode, prefix_only) = _measure(args, "bench tts (onnx)", stages, latents, loop_only, latent_parts,
                                                      end_to_end, codec_only)
    device_name = f"cpu ({platform.processor() or platform.machine()}), {args.threads} thread(s), onnxruntime {onnxruntime.__version__}"
    _report(args, rows, what, device_name, "onnx runtime", str(Path(synth.codec_dir).resolve()),
            seconds, n_phones, phonemise, encode, prefix_only, phonemiser_start_ms, RESIDENT, extra={"flow_objective": synth.objective})


def torch_main(args: argparse.Namespace) -> None:
    import torch

    from speechkit.runtime.tts import phoneme_ids, prompt_latents
    from speechkit.text.phonemes import RESIDENT, text_to_phonemes

    if args.frames < 1 or args.repeats < 1:
        raise SpeechkitError("--frames and --repeats must be positive")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise SpeechkitError("--device cuda but torch sees no GPU")
    device = torch.device("cuda" if cuda else "cpu")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    text_to_phonemes([args.text])  # the process's first: starts the resident phonemiser (espeak-ng's library or process)
    phonemiser_start_ms = 1000.0 * (time.perf_counter() - t0)
    model, vocab, codec_dir, what = load_model(args.model, args.codec, device, args.text)
    if cuda and not args.eager:
        from speechkit.inference.codec import TorchCodec
        from speechkit.models.tts.fast import FastGenerator

        codec = TorchCodec(codec_dir, device)
        generate = FastGenerator(model).generate
        device_name = torch.cuda.get_device_name(device)
    else:
        from speechkit.runtime.codec import CodecRuntime

        codec = CodecRuntime(codec_dir, args.threads)
        generate = model.generate
        cpu = f"cpu ({platform.processor() or platform.machine()}), {args.threads} thread(s)"
        device_name = f"{torch.cuda.get_device_name(device)}, eager, codec on {cpu}" if cuda else cpu
    n_phones = len(phoneme_ids(vocab, args.text))
    rng = np.random.default_rng(0)
    prompt = (0.1 * rng.standard_normal(int(PROMPT_SECONDS * codec.sample_rate))).astype(np.float32)
    seconds = args.frames / model.cfg.frame_rate

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def prefill(ids, z):
        """``ClearTTS.generate``'s first step: the prefix through the transformer → (h, cache)."""
        return model.prefill(ids, model.normalize(z.to(model.latent_mean.device).float()))

    def stages() -> tuple[float, float, float]:
        """ms of one utterance's phonemisation, prompt encoding and prefix."""
        t0 = time.perf_counter()
        ids = torch.tensor(phoneme_ids(vocab, args.text), dtype=torch.long)
        t1 = time.perf_counter()
        z = torch.from_numpy(prompt_latents(codec, prompt, PROMPT_SECONDS))
        t2 = time.perf_counter()
        with torch.no_grad():
            prefill(ids, z)
            sync()
        t3 = time.perf_counter()
        return 1000.0 * (t1 - t0), 1000.0 * (t2 - t1), 1000.0 * (t3 - t2)

    def latent_parts(steps: int, seed: int) -> tuple[float, float]:
        """ms per latent of the flow head (``steps`` guided steps) and of the transformer step with
        the stop head, timed apart over ``--frames`` latents of the eager model."""
        g = torch.Generator(device=device).manual_seed(seed)
        ids = torch.tensor(phoneme_ids(vocab, args.text), dtype=torch.long)
        flow = step = 0.0
        with torch.no_grad():
            h, cache = prefill(ids, torch.from_numpy(prompt_latents(codec, prompt, PROMPT_SECONDS)))
            for _ in range(args.frames):
                t0 = time.perf_counter()
                noise = torch.randn(1, model.cfg.latent_dim, generator=g, device=device)
                z = model.head.sample(h, steps, args.cfg_scale, 0.8, noise)
                sync()
                t1 = time.perf_counter()
                h, cache = model.step(z, cache)
                torch.sigmoid(model.stop(h).float()).item()
                t2 = time.perf_counter()
                flow, step = flow + t1 - t0, step + t2 - t1
        return 1000.0 * flow / args.frames, 1000.0 * step / args.frames

    def latents(steps: int, seed: int):
        g = torch.Generator(device=device).manual_seed(seed)
        ids = torch.tensor(phoneme_ids(vocab, args.text), dtype=torch.long)
        z = torch.from_numpy(prompt_latents(codec, prompt, PROMPT_SECONDS))
        for x in generate(ids, z, steps=steps, cfg_scale=args.cfg_scale, temperature=0.8, max_frames=args.frames,
                          stop_threshold=2.0, generator=g):
            yield x.float().cpu().numpy()

    def end_to_end(steps: int, chunk: int, seed: int) -> tuple[float, float, float]:
        return _end_to_end(latents(steps, seed), codec, chunk, seconds)

    def loop_only(steps: int, seed: int) -> tuple[float, list[np.ndarray]]:
        return _loop_only(latents(steps, seed))

    def codec_only(zs: list[np.ndarray], chunk: int) -> float:
        return _codec_only(codec, zs, chunk)

    rows, (phonemise, encode, prefix_only) = _measure(args, "bench tts", stages, latents, loop_only, latent_parts,
                                                      end_to_end, codec_only)
    _report(args, rows, what, device_name, "eager" if args.eager or not cuda else "graphed", str(codec_dir), seconds, n_phones,
            phonemise, encode, prefix_only, phonemiser_start_ms, RESIDENT, extra={"torch": torch.__version__})


def _end_to_end(latents, codec, chunk: int, seconds: float) -> tuple[float, float, float]:
    """As ``LatentSynthesizer.stream``: ``latents`` (an iterator, started here) through
    ``decode_chunks`` → (RTF, ms to the first chunk, ms to the first latent)."""
    from speechkit.runtime.tts import decode_chunks

    t0 = time.perf_counter()
    stamps: list[float] = []

    def stamped():
        for z in latents:
            stamps.append(time.perf_counter() - t0)
            yield z

    first = None
    for _ in decode_chunks(codec, stamped(), chunk):
        first = first if first is not None else time.perf_counter() - t0
    return (time.perf_counter() - t0) / seconds, 1000.0 * first, 1000.0 * stamps[0]


def _loop_only(latents) -> tuple[float, list[np.ndarray]]:
    """ms per latent of ``latents`` after its first (phonemise, prompt encode and prefix are not the loop)."""
    out = [next(latents)]
    t0 = time.perf_counter()
    out.extend(latents)
    return 1000.0 * (time.perf_counter() - t0) / max(len(out) - 1, 1), out


def _codec_only(codec, zs: list[np.ndarray], chunk: int) -> float:
    """ms per latent of the codec's streaming decode of ``zs`` alone."""
    from speechkit.runtime.tts import decode_chunks

    t0 = time.perf_counter()
    for _ in decode_chunks(codec, zs, chunk):
        pass
    return 1000.0 * (time.perf_counter() - t0) / len(zs)


def _measure(args, desc: str, stages, latents, loop_only, latent_parts, end_to_end, codec_only):
    """Either path's timings, as medians over ``--repeats``: (rows per (steps, chunk), (phonemise,
    prompt encode, prefix) ms per utterance). The callables are the path's own."""
    from tqdm import tqdm

    rows = []
    bar = tqdm(total=(1 + len(args.steps) * (2 + len(args.chunk_frames))) * args.repeats, desc=desc, unit="utt")
    stage_ms = []
    for _ in range(args.repeats):
        stage_ms.append(stages())
        bar.update()
    per_utterance = tuple(round(statistics.median(ms), 2) for ms in zip(*stage_ms))
    for steps in args.steps:
        for _ in latents(steps, 0):  # graph capture, lazy CUDA and ONNX Runtime set-up
            pass
        loops, zs, flows, step_parts = [], [], [], []
        for r in range(args.repeats):
            ms, zs = loop_only(steps, r)
            loops.append(ms)
            bar.update()
        for r in range(args.repeats):
            flow_ms, step_ms = latent_parts(steps, r)
            flows.append(flow_ms)
            step_parts.append(step_ms)
            bar.update()
        for chunk in args.chunk_frames:
            codec_only(zs, chunk)
            rtf, first, prefix, codec_ms = [], [], [], []
            for r in range(args.repeats):
                a, b, c = end_to_end(steps, chunk, r)
                rtf.append(a)
                first.append(b)
                prefix.append(c)
                codec_ms.append(codec_only(zs, chunk))
                bar.update()
            rows.append({"steps": steps, "chunk_frames": chunk, "rtf": round(statistics.median(rtf), 4),
                         "first_audio_ms": round(statistics.median(first), 1),
                         "first_latent_ms": round(statistics.median(prefix), 1),
                         "loop_ms_per_latent": round(statistics.median(loops), 3),
                         "flow_ms_per_latent": round(statistics.median(flows), 3),
                         "step_ms_per_latent": round(statistics.median(step_parts), 3),
                         "codec_ms_per_latent": round(statistics.median(codec_ms), 3)})
    bar.close()
    return rows, per_utterance


def _report(args, rows: list[dict], what: str, device_name: str, path: str, codec_dir: str, seconds: float, n_phones: int,
            phonemise: float, encode: float, prefix_only: float, phonemiser_start_ms: float, resident, extra: dict) -> None:
    """Print the table and emit the JSON of either path."""
    phonemiser = "espeak-ng per call" if resident is None else f"resident espeak-ng ({resident.backend})"
    utterance = {"phonemiser": phonemiser, "phonemiser_start_ms": round(phonemiser_start_ms, 2), "phonemise_ms": phonemise,
                 "prompt_seconds": PROMPT_SECONDS, "prompt_encode_ms": encode, "prefix_ms": prefix_only}
    result = {"bench": "tts", "model": what, "path": path, "codec": codec_dir, "device": device_name, **extra,
              "threads": args.threads, "frames": args.frames, "audio_seconds": seconds, "text": args.text, "phonemes": n_phones,
              "cfg_scale": args.cfg_scale, "repeats": args.repeats, "utterance": utterance, "rows": rows}
    lines = [f"CLEAR synthesis speed: {what} on {device_name}; {args.frames} latents ({seconds:g} s), "
             f"{n_phones} phoneme symbols, guidance {args.cfg_scale}, medians of {args.repeats}",
             f"{'steps':>5} {'chunk':>5} {'RTF':>7} {'first audio':>12} {'first latent':>13} {'loop/latent':>12} "
             f"{'flow/latent':>12} {'step/latent':>12} {'codec/latent':>13}"]
    for r in rows:
        lines.append(f"{r['steps']:>5} {r['chunk_frames']:>5} {r['rtf']:>7.4f} {r['first_audio_ms']:>9.1f} ms "
                     f"{r['first_latent_ms']:>10.1f} ms "
                     f"{r['loop_ms_per_latent']:>9.3f} ms {r['flow_ms_per_latent']:>9.3f} ms {r['step_ms_per_latent']:>9.3f} ms "
                     f"{r['codec_ms_per_latent']:>10.3f} ms")
    lines.append(f"per utterance: phonemise {phonemise:.2f} ms ({phonemiser}; first call {phonemiser_start_ms:.1f} ms), "
                 f"prompt encode {encode:.1f} ms ({PROMPT_SECONDS:g} s), prefix {prefix_only:.1f} ms")
    emit(result, lines, args)
