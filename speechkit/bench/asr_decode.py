"""Decoding speed and accuracy of the two offline heads on the same utterances: the Paraformer
(one non-autoregressive decoder pass after CIF) against the attention baseline (greedy and beam
search, one decoder step per token). PyTorch on the torch device, each utterance alone and in
padded batches; then ONNX Runtime on one CPU thread, each utterance alone.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from speechkit.bench import add_output_args, emit
from speechkit.bench.asr_stream import machine
from speechkit.errors import AudioError, SpeechkitError

if TYPE_CHECKING:  # torch and the rest load with the benchmark, not with `speechkit --help`
    import torch
    from tqdm import tqdm

    from speechkit.audio.fbank import FbankConfig
    from speechkit.inference.asr import Recognizer

DECODERS = ("paraformer", "ar_greedy", "ar_beam")
MODES = ("torch_batch1", "torch_batched", "cpu_onnx")
WARMUP_CALLS = 3  # untimed calls per decoder and mode: CUDA context, kernels, ORT buffers


@dataclass
class BenchUtt:
    utt_id: str
    text: str
    seconds: float
    feats: dict[FbankConfig, np.ndarray]  # (T, F) fbank under each front end in use


def load_utterances(data_dir: str | Path, n: int, fronts: Sequence[FbankConfig],
                    usable: Callable[[int], bool]) -> tuple[list[BenchUtt], list[str]]:
    """The first ``n`` utterances by id whose audio reads and whose fbank is long enough for
    every model (``usable(frames)``), with their features; and why the others were skipped."""
    from speechkit.audio.fbank import compute_fbank
    from speechkit.audio.io import load_audio
    from speechkit.data.kaldi import load_data_dir

    utts, skipped = [], []
    for u in sorted(load_data_dir(data_dir), key=lambda u: u.utt_id):
        if len(utts) == n:
            break
        try:
            audio = {rate: load_audio(u.wav, rate)[0] for rate in {f.sample_rate for f in fronts}}
        except AudioError as e:
            skipped.append(str(e))
            continue
        feats = {f: compute_fbank(audio[f.sample_rate], f) for f in fronts}
        if not all(usable(len(x)) for x in feats.values()):
            skipped.append(f"{u.wav}: too short for the encoder")
            continue
        rate = fronts[0].sample_rate
        utts.append(BenchUtt(u.utt_id, u.text, len(audio[rate]) / rate, feats))
    if not utts:
        reason = f" ({skipped[0]})" if skipped else ""
        raise SpeechkitError(f"{data_dir}: no readable utterance{reason}")
    return utts, skipped


def _pad(feats: list[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    from speechkit.audio.fbank import pad_feats

    x, lens = pad_feats(feats)
    return torch.from_numpy(x).to(device), torch.from_numpy(lens).to(device)


def _no_sync() -> None:
    pass


def _timed(decode: Callable, inputs: list, repeats: int, sync: Callable[[], None], bar: tqdm) -> tuple[np.ndarray, list[list[int]]]:
    """Run ``decode`` on every input ``repeats`` times after untimed warm-up calls → ms per call
    (repeats, calls) and the token ids of the last repeat, in input order."""
    for inp in inputs[:WARMUP_CALLS]:
        decode(inp)
    ms = np.zeros((repeats, len(inputs)))
    ids: list[list[int]] = []
    for r in range(repeats):
        ids = []
        for j, inp in enumerate(inputs):
            sync()
            t0 = time.perf_counter()
            out = decode(inp)
            sync()
            ms[r, j] = 1000.0 * (time.perf_counter() - t0)
            ids += out
            bar.update(1)
    return ms, ids


def _summary(ms: np.ndarray, utts: int, audio_seconds: float, per_utt_calls: bool) -> dict:
    """Median over repeats of the total; with one utterance per call, also the median utterance."""
    total = float(np.median(ms.sum(axis=1)))
    out = {"total_ms": total, "ms_per_utt": total / utts, "calls": ms.shape[1], "rtf": total / 1000.0 / audio_seconds}
    if per_utt_calls:
        out["utt_ms_median"] = float(np.median(np.median(ms, axis=0)))
    return out


def _same(a: list[list[int]], b: list[list[int]]) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def _decoder(model, beam: int) -> Callable[[tuple[torch.Tensor, torch.Tensor]], list[list[int]]]:
    def decode(batch: tuple[torch.Tensor, torch.Tensor]) -> list[list[int]]:
        return model.recognize(batch[0], batch[1], beam)

    return decode


def _torch_runs(models: dict, beams: dict[str, int], feats: dict[str, list[np.ndarray]], batches: list[list[int]],
                dev: torch.device, repeats: int, seconds: float, bar: tqdm) -> tuple[dict, dict]:
    """Every decoder on the torch device, one utterance per call then in ``batches`` → timings
    and token ids (in utterance order) per mode and decoder."""
    import torch

    def sync() -> None:  # CUDA kernels run asynchronously: a call is done when its device is idle
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    n = len(feats["paraformer"])
    timings: dict[str, dict] = {"torch_batch1": {}, "torch_batched": {}}
    hyps: dict[str, dict[str, list[list[int]]]] = {"torch_batch1": {}, "torch_batched": {}}
    for d in DECODERS:
        decode = _decoder(models[d], beams[d])
        bar.set_description(f"{d} torch batch 1")
        ms, hyps["torch_batch1"][d] = _timed(decode, [_pad([f], dev) for f in feats[d]], repeats, sync, bar)
        timings["torch_batch1"][d] = _summary(ms, n, seconds, per_utt_calls=True)
        bar.set_description(f"{d} torch batch {len(batches[0])}")
        ms, ids = _timed(decode, [_pad([feats[d][i] for i in b], dev) for b in batches], repeats, sync, bar)
        timings["torch_batched"][d] = _summary(ms, n, seconds, per_utt_calls=len(batches) == n)
        in_order: list[list[int]] = [[] for _ in range(n)]
        for i, t in zip([i for b in batches for i in b], ids):
            in_order[i] = t
        hyps["torch_batched"][d] = in_order
    return timings, hyps


def _cpu_onnx_runs(paraformer, attention, beams: dict[str, int], para_feats: list[np.ndarray], ar_feats: list[np.ndarray],
                   repeats: int, seconds: float, bar: tqdm) -> tuple[dict, dict]:
    """One utterance per call through ONNX Runtime, torch (the AR search loop) on one thread too."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    timings, hyps = {}, {}
    try:
        bar.set_description("paraformer cpu onnx")
        ms, hyps["paraformer"] = _timed(lambda f: [paraformer._run([f])[0].token_ids], para_feats, repeats, _no_sync, bar)
        timings["paraformer"] = _summary(ms, len(para_feats), seconds, per_utt_calls=True)
        inputs = [_pad([f], torch.device("cpu")) for f in ar_feats]
        for d in ("ar_greedy", "ar_beam"):
            bar.set_description(f"{d} cpu onnx")
            ms, hyps[d] = _timed(_decoder(attention, beams[d]), inputs, repeats, _no_sync, bar)
            timings[d] = _summary(ms, len(ar_feats), seconds, per_utt_calls=True)
    finally:
        torch.set_num_threads(threads)
    return timings, hyps


def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpeechkitError("--device cuda: no CUDA device is available to PyTorch")
    return torch.device(name)


def _load(exp_dir: str | Path, checkpoint: str, device: torch.device, head: str) -> Recognizer:
    from speechkit.inference.asr import Recognizer

    rec = Recognizer.from_exp_dir(exp_dir, checkpoint, device=str(device))
    if rec.model.cfg.head != head:
        raise SpeechkitError(f"--{head} {exp_dir}: that experiment's head is '{rec.model.cfg.head}', not '{head}'")
    return rec


def _paraformer_onnx_dir(rec: Recognizer, exp_dir: Path, out_dir: Path) -> Path:
    from speechkit.export.paraformer import export_paraformer, metadata

    out_dir.mkdir(parents=True, exist_ok=True)
    export_paraformer(copy.deepcopy(rec.model).cpu(), out_dir / "model.onnx", metadata(rec.model, rec.tokenizer))
    for name in ("tokens.txt", "bpe.model"):  # OfflineRecognizer loads the tokenizer beside the model
        if (exp_dir / name).is_file():
            shutil.copy(exp_dir / name, out_dir / name)
    return out_dir


def bench_asr_decode(paraformer_exp: str | Path, attention_exp: str | Path, data_dir: str | Path, *,
                     onnx_dir: str | Path | None = None, utts: int = 64, cpu_utts: int = 16, beam: int = 10,
                     batch: int = 32, device: str = "auto", repeats: int = 3, checkpoint: str = "model_avg.pt",
                     progress: bool = True) -> dict:
    """Decode the first ``utts`` utterances of ``data_dir`` (by id) with each decoder and time it.

    Features are computed first and not timed. Timings are in ms, the median over ``repeats`` of
    the total over all utterances, after untimed warm-up calls; on CUDA every call is bracketed
    by ``torch.cuda.synchronize()``. Modes:

    - ``torch_batch1``: ``model.recognize`` on the torch device, fp32, one utterance per call.
    - ``torch_batched``: the same utterances sorted by length, padded batches of ``batch``.
    - ``cpu_onnx``: the first ``cpu_utts`` utterances, one per call, ONNX Runtime with one intra-op
      thread (torch also on one thread): the Paraformer graph of ``onnx_dir`` (else exported now)
      through ``OfflineRecognizer._run``; the attention model exported now, its encoder and
      decoder step in ONNX Runtime, driven by the PyTorch greedy / beam search code.

    WER (percent) is of the ``torch_batch1`` output over ``utts`` (``wer``) and of the ONNX output
    over ``cpu_utts`` (``wer_cpu_onnx``). ``speedup_ar_*_over_paraformer`` is the AR decoder's
    total time / the Paraformer's, per mode: how many times faster the Paraformer is.
    """
    for name, value, least in (("utts", utts, 1), ("cpu_utts", cpu_utts, 0), ("beam", beam, 1), ("batch", batch, 1),
                               ("repeats", repeats, 1)):
        if value < least:
            raise SpeechkitError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    import onnxruntime as ort
    import torch
    from tqdm import tqdm

    from speechkit.eval.wer import wer_percent
    from speechkit.export.attention import OnnxAttentionModel, export_attention
    from speechkit.runtime.paraformer import OfflineRecognizer

    wall = time.perf_counter()
    dev = _device(device)
    para = _load(paraformer_exp, checkpoint, dev, "paraformer")
    att = _load(attention_exp, checkpoint, dev, "attention")
    models = {"paraformer": para.model, "ar_greedy": att.model, "ar_beam": att.model}
    tokenizers = {"paraformer": para.tokenizer, "ar_greedy": att.tokenizer, "ar_beam": att.tokenizer}
    beams = {"paraformer": 1, "ar_greedy": 1, "ar_beam": beam}

    with tempfile.TemporaryDirectory(prefix="speechkit-bench-") as tmp:
        ort_para = None
        if cpu_utts:
            if onnx_dir is None:
                onnx_dir_used = _paraformer_onnx_dir(para, Path(paraformer_exp), Path(tmp) / "paraformer")
            else:
                onnx_dir_used = Path(onnx_dir)
            ort_para = OfflineRecognizer(onnx_dir_used, num_threads=1)
            ort_att = OnnxAttentionModel(export_attention(copy.deepcopy(att.model).cpu(), Path(tmp) / "attention"), num_threads=1)

        fronts = list(dict.fromkeys([para.model.cfg.frontend_conf, att.model.cfg.frontend_conf]
                                    + ([ort_para.fbank_cfg] if ort_para else [])))

        def usable(frames: int) -> bool:  # at least one encoder frame from each model
            return all(int(m.encoder.embed.output_lengths(torch.tensor(frames))) >= 1 for m in (para.model, att.model))

        chosen, skipped = load_utterances(data_dir, utts, fronts, usable)
        n, n_cpu = len(chosen), min(cpu_utts, len(chosen))
        seconds = sum(u.seconds for u in chosen)
        cpu_seconds = sum(u.seconds for u in chosen[:n_cpu])
        feats = {d: [u.feats[models[d].cfg.frontend_conf] for u in chosen] for d in DECODERS}

        by_length = sorted(range(n), key=lambda i: -len(feats["paraformer"][i]))
        batches = [by_length[i : i + batch] for i in range(0, n, batch)]
        total_calls = repeats * len(DECODERS) * (n + len(batches) + n_cpu)
        with torch.no_grad(), tqdm(total=total_calls, desc="decode", unit="call", disable=not progress, file=sys.stderr,
                                   leave=False) as bar:
            timings, hyps = _torch_runs(models, beams, feats, batches, dev, repeats, seconds, bar)
            if n_cpu:
                para_feats = [u.feats[ort_para.fbank_cfg] for u in chosen[:n_cpu]]
                ar_feats = [u.feats[att.model.cfg.frontend_conf] for u in chosen[:n_cpu]]
                timings["cpu_onnx"], hyps["cpu_onnx"] = _cpu_onnx_runs(ort_para, ort_att, beams, para_feats, ar_feats,
                                                                       repeats, cpu_seconds, bar)

    refs = [u.text for u in chosen]

    def tokenizer(mode: str, d: str):  # an --onnx dir carries its own tokenizer
        return ort_para.tokenizer if mode == "cpu_onnx" and d == "paraformer" else tokenizers[d]

    hyps.setdefault("cpu_onnx", {})
    texts = {m: {d: [tokenizer(m, d).decode(list(ids)) for ids in h] for d, h in hyps[m].items()} for m in MODES}
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else machine()["cpu"],
        "torch_device": dev.type,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "torch_threads": torch.get_num_threads(),
        "paraformer_exp": str(paraformer_exp), "attention_exp": str(attention_exp), "checkpoint": checkpoint,
        "data_dir": str(data_dir), "onnx_dir": None if onnx_dir is None else str(onnx_dir),
        "utts": n, "cpu_utts": n_cpu, "audio_seconds": round(seconds, 3), "cpu_audio_seconds": round(cpu_seconds, 3),
        "skipped": skipped, "beam": beam, "batch": batch, "repeats": repeats,
        "timings": timings,
        "wer": {d: wer_percent(refs, texts["torch_batch1"][d]) for d in DECODERS},
        "wer_cpu_onnx": {d: wer_percent(refs[:n_cpu], t) for d, t in texts["cpu_onnx"].items()},
        # agreement with torch_batch1's tokens: batching pads, ONNX and the CPU round differently
        "batched_same_tokens": {d: _same(hyps["torch_batched"][d], hyps["torch_batch1"][d]) for d in DECODERS},
        "onnx_same_tokens": {d: _same(h, hyps["torch_batch1"][d][:n_cpu]) for d, h in hyps["cpu_onnx"].items()},
    }
    for d in ("ar_beam", "ar_greedy"):
        result[f"speedup_{d}_over_paraformer"] = {
            m: t[d]["total_ms"] / t["paraformer"]["total_ms"] for m, t in result["timings"].items()}
    result["machine"] = machine()
    result["wall_seconds"] = round(time.perf_counter() - wall, 2)
    return result


def _cell(t: dict | None) -> str:
    return "-" if t is None else f"{t['total_ms']:.1f} ({t['ms_per_utt']:.2f}/utt)"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def report_lines(r: dict) -> list[str]:
    """The human-readable figures: one table of total ms (ms per utterance), WER, the ratios."""
    t = r["timings"]
    labels = {"torch_batch1": f"torch {r['torch_device']} batch 1", "torch_batched": f"torch {r['torch_device']} batch {r['batch']}",
              "cpu_onnx": "cpu onnx 1 thread"}
    width = 24
    head = f"{'total ms (per utt)':<{width}}" + "".join(f"{d:>26}" for d in DECODERS)
    lines = [
        f"device: {r['device']} (torch {r['torch']}, onnxruntime {r['onnxruntime']})",
        f"utterances: {r['utts']} ({r['audio_seconds']:.1f} s) on torch, {r['cpu_utts']} ({r['cpu_audio_seconds']:.1f} s) "
        f"on cpu onnx; beam {r['beam']}, median of {r['repeats']} repeats" + (f"; {len(r['skipped'])} skipped" if r["skipped"] else ""),
        head,
    ]
    for m, label in labels.items():
        if m in t:
            lines.append(f"{label:<{width}}" + "".join(f"{_cell(t[m].get(d)):>26}" for d in DECODERS))
    lines.append(f"{'WER % torch batch 1':<{width}}" + "".join(f"{_pct(r['wer'][d]):>26}" for d in DECODERS))
    if r["wer_cpu_onnx"]:
        lines.append(f"{'WER % cpu onnx':<{width}}" + "".join(f"{_pct(r['wer_cpu_onnx'].get(d)):>26}" for d in DECODERS))
        lines.append(f"{'same tokens onnx/torch':<{width}}" + "".join(f"{r['onnx_same_tokens'][d]:>26.2f}" for d in DECODERS))
    for d in ("ar_beam", "ar_greedy"):
        ratios = ", ".join(f"{labels[m]} {v:.2f}x" for m, v in r[f"speedup_{d}_over_paraformer"].items())
        lines.append(f"{d} time / paraformer time: {ratios}")
    return lines


def main(args: argparse.Namespace) -> None:
    result = bench_asr_decode(args.paraformer, args.attention, args.data, onnx_dir=args.onnx, utts=args.utts,
                              cpu_utts=args.cpu_utts, beam=args.beam, batch=args.batch, device=args.device,
                              repeats=args.repeats, checkpoint=args.checkpoint, progress=sys.stderr.isatty())
    emit(result, report_lines(result), args)


def add_parser(bench_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``asr-decode`` to the ``bench`` subcommands."""
    p = bench_sub.add_parser("asr-decode", help="decoding time and WER: Paraformer vs attention greedy / beam, torch and CPU ONNX")
    p.add_argument("--paraformer", required=True, metavar="EXP", help="experiment dir of a paraformer-head model")
    p.add_argument("--attention", required=True, metavar="EXP", help="experiment dir of an attention-head model")
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="Kaldi data dir; its first utterances by id are decoded")
    p.add_argument("--onnx", default=None, metavar="DIR", help="exported Paraformer for the CPU run (default: export one now)")
    p.add_argument("--checkpoint", default="model_avg.pt", help="checkpoint file in each experiment dir (default model_avg.pt)")
    p.add_argument("--utts", type=int, default=64, help="utterances decoded on the torch device (default 64)")
    p.add_argument("--cpu-utts", type=int, default=16, help="of those, how many the CPU ONNX run decodes; 0 skips it (default 16)")
    p.add_argument("--beam", type=int, default=10, help="beam of the attention model's beam search (default 10)")
    p.add_argument("--batch", type=int, default=32, help="utterances per padded batch in the batched torch run (default 32)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="torch device (default: cuda if available)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the median total is reported (default 3)")
    add_output_args(p)
    p.set_defaults(func=main)
    return p
