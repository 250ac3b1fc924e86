"""`speechkit codec eval`: resynthesise every utterance of some data dirs through a codec and
report STOI, wideband PESQ, mel-cepstral distortion, the ASR model's WER on the resynthesised
speech against its WER on the originals (overall and per synthesis engine), codebook usage on the
data (RVQ), and the real-time factors of encode and decode.

The codec is an experiment dir (``model.pt``, run in PyTorch on the GPU and on one CPU thread) or
an exported folder (``encoder.onnx`` + ``decoder.onnx``, run on the CPU by the torch-free
:class:`speechkit.runtime.codec.CodecRuntime`, as users run it); both give the same JSON."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from speechkit.audio.io import load_audio
from speechkit.data.kaldi import indices_by_engine, read_engines, read_table
from speechkit.errors import SpeechkitError
from speechkit.eval.audio_quality import asr_wer, mel_cepstral_distortion, pesq_wb, spectrogram_comparison, stoi
from speechkit.eval.heldout import held_out
from speechkit.eval.wer import score_texts


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` is an exported codec folder rather than an experiment dir."""
    return (Path(path) / "encoder.onnx").is_file()


class _TorchCodec:
    """A codec experiment (``model.pt``) in PyTorch."""

    def __init__(self, path: str | Path, device: str | None):
        import torch

        from speechkit.models.codec.io import load_codec
        from speechkit.models.codec.model import RvqCodec

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_codec(path, self.device)
        cfg = self.model.cfg
        self.kind, self.sample_rate, self.hop, self.frame_rate = cfg.codec, cfg.sample_rate, cfg.hop, cfg.frame_rate
        self.latent_dim = cfg.encoder_conf.latent_dim
        self.params_m = round(sum(p.numel() for p in self.model.parameters()) / 1e6, 2)
        self.runtime = "torch"
        self.n_q = cfg.rvq_conf.n_q if isinstance(self.model, RvqCodec) else None
        self.codebook_size = cfg.rvq_conf.codebook_size if self.n_q else None

    def resynth(self, x: np.ndarray, n_q: int | None) -> tuple[np.ndarray, np.ndarray]:
        """→ (resynthesised samples trimmed to len(x), the codes or latents)."""
        from speechkit.models.codec.model import decode_frames, encode_samples

        z = encode_samples(self.model, x, n_q)
        return decode_frames(self.model, z)[: len(x)], z

    def training_usage(self) -> dict | None:
        if not self.n_q:
            return None
        return {k: v for k, v in self.model.quantizer.usage().items() if k in ("mean_perplexity", "alive_fraction", "dead")}

    def rtf(self, wavs: list[np.ndarray]) -> dict:
        import torch

        out = {str(self.device): self._rtf(self.model, wavs, self.device)}
        if torch.device(self.device).type != "cpu":
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            out["cpu_1_thread"] = self._rtf(self.model.cpu(), wavs[:4], "cpu")
            torch.set_num_threads(threads)
        else:
            out["cpu_threads"] = torch.get_num_threads()
        return out

    def _rtf(self, model, wavs: list[np.ndarray], device) -> dict:
        """Encode and decode compute time / audio time, whole utterances one by one."""
        import torch

        sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
        with torch.no_grad():
            for _ in range(2):  # the first pass warms up (allocator, cuDNN choices)
                enc = dec = 0.0
                for x in wavs:
                    n = len(x) // self.hop * self.hop
                    w = torch.from_numpy(x[:n]).view(1, 1, n).to(device)
                    sync()
                    t = time.perf_counter()
                    z = model.encode(w)
                    sync()
                    t1 = time.perf_counter()
                    model.decode(z)
                    sync()
                    enc, dec = enc + t1 - t, dec + time.perf_counter() - t1
        return _rtf_row(enc, dec, wavs, self.sample_rate)


class _ExportedCodec:
    """An exported codec folder run by ONNX Runtime (no torch) on the CPU (``device`` None or cpu)
    or a CUDA GPU."""

    def __init__(self, path: str | Path, device: str | None, threads: int):
        from speechkit.runtime.codec import CodecRuntime
        from speechkit.devices import parse_device

        self.device = device or "cpu"
        self.rt, self.threads = CodecRuntime(path, threads, self.device), threads
        self.kind, self.sample_rate, self.hop = self.rt.kind, self.rt.sample_rate, self.rt.hop
        self.frame_rate, self.latent_dim = self.sample_rate / self.hop, self.rt.latent_dim
        self.params_m = _graph_params_m(Path(path))
        self.on_gpu = parse_device(self.device)[0] != "cpu"
        self.runtime = f"onnxruntime, {self.device}" if self.on_gpu else f"onnxruntime, {threads} thread{'s' if threads > 1 else ''}"
        self.n_q = self.rt.codebooks.shape[0] if self.rt.codebooks is not None else None
        self.codebook_size = self.rt.codebooks.shape[1] if self.n_q else None

    def resynth(self, x: np.ndarray, n_q: int | None) -> tuple[np.ndarray, np.ndarray]:
        """→ (resynthesised samples trimmed to len(x), the codes or latents). RVQ codes of the first
        n_q stages are those of an n_q-stage encode (each stage codes the residual of the ones before)."""
        z = self.rt.encode(x)[:n_q]
        return self.rt.decode(z)[: len(x)], z

    def training_usage(self) -> None:
        return None  # the quantizer's EMA statistics are not exported

    def rtf(self, wavs: list[np.ndarray]) -> dict:
        for _ in range(2):  # the first pass warms up (ONNX Runtime's allocations)
            enc = dec = 0.0
            for x in wavs:
                x = x[: len(x) // self.hop * self.hop]
                t = time.perf_counter()
                z = self.rt.encode(x)
                t1 = time.perf_counter()
                self.rt.decode(z)
                enc, dec = enc + t1 - t, dec + time.perf_counter() - t1
        row = _rtf_row(enc, dec, wavs, self.sample_rate)
        return {"cuda": row} if self.on_gpu else {"cpu": row, "cpu_threads": self.threads}


def _graph_params_m(folder: Path) -> float | None:
    """Millions of weights in the two graphs (weight norm folded: as many as the PyTorch model's
    parameters for a VAE); None without the ``onnx`` package."""
    try:
        import onnx
    except ImportError:
        return None
    n = sum(math.prod(t.dims) for name in ("encoder.onnx", "decoder.onnx") for t in onnx.load(folder / name).graph.initializer)
    return round(n / 1e6, 2)


def _rtf_row(enc: float, dec: float, wavs: list[np.ndarray], rate: int) -> dict:
    audio = sum(len(w) for w in wavs) / rate
    return {"encode": round(enc / audio, 5), "decode": round(dec / audio, 5), "audio_seconds": round(audio, 1)}


def load_eval_codec(model_path: str | Path, device: str | None = None, threads: int = 1) -> _TorchCodec | _ExportedCodec:
    """An experiment dir (model.pt) or an exported folder, behind one interface."""
    return _ExportedCodec(model_path, device, threads) if is_exported(model_path) else _TorchCodec(model_path, device)


def _usage(codes: list[np.ndarray], codebook_size: int) -> dict:
    """Per stage over the data: perplexity of the code histogram and the fraction of entries hit."""
    stacked = np.concatenate(codes, axis=1)  # (n_q, frames)
    perplexity, used = [], []
    for row in stacked:
        p = np.bincount(row, minlength=codebook_size) / row.size
        nz = p[p > 0]
        perplexity.append(float(np.exp(-(nz * np.log(nz)).sum())))
        used.append(float((p > 0).mean()))
    return {"frames": int(stacked.shape[1]), "perplexity": [round(v, 1) for v in perplexity], "used": [round(v, 4) for v in used],
            "mean_perplexity": round(float(np.mean(perplexity)), 1), "mean_used": round(float(np.mean(used)), 4)}


def _by_engine(engines: list[str], scores: dict[str, list[float]], refs: list[str], hyps_original: list[str],
               hyps_resynth: list[str]) -> dict:
    """The row's scores and both WERs over each engine's utterances."""
    out = {}
    for engine, idx in indices_by_engine(engines).items():
        row = {"utterances": len(idx), **{k: round(float(np.nanmean([v[i] for i in idx])), 4) for k, v in scores.items()}}
        engine_refs = [refs[i] for i in idx]
        original = score_texts(engine_refs, [hyps_original[i] for i in idx])
        row["wer_original"] = round(original["wer"], 2)
        row["wer_resynth"] = round(score_texts(engine_refs, [hyps_resynth[i] for i in idx])["wer"], 2)
        row["ref_words"] = original["ref_words"]  # to pool engines' WERs
        out[engine] = row
    return out


def evaluate_codec(model_path: str | Path, data_dirs: list[str], *, asr_model: str | Path, device: str | None = None,
                   n_q_list: list[int] | None = None, samples_dir: str | Path | None = None, max_utts: int | None = None,
                   rtf_utts: int = 8, samples: int = 3, threads: int = 1) -> dict:
    """Scores of the codec at ``model_path`` (an experiment dir or an exported folder; ``threads``:
    ONNX Runtime threads of an exported one) on ``data_dirs``, judged by the ASR model ``asr_model``
    on the utterances whose sentences it never trained on."""
    codec = load_eval_codec(model_path, device, threads)
    rate = codec.sample_rate
    if codec.n_q:
        n_q_list = n_q_list or sorted({codec.n_q, max(1, codec.n_q // 2)}, reverse=True)
    settings = n_q_list if codec.n_q else [None]
    result = {"model": str(model_path), "codec": codec.kind, "sample_rate": rate, "hop": codec.hop, "frame_rate": codec.frame_rate,
              "latent_dim": codec.latent_dim, "params_m": codec.params_m, "device": str(codec.device), "runtime": codec.runtime,
              "splits": {}}
    usage = codec.training_usage()
    if usage is not None:
        result["training_usage"] = usage
    rtf_wavs = []
    for data in data_dirs:
        name = Path(data).name
        wav_scp, text = read_table(Path(data) / "wav.scp"), read_table(Path(data) / "text")
        keys = sorted(wav_scp)
        keep, heldout = held_out([text[k] for k in keys], asr_model)
        keys = [k for k, kept in zip(keys, keep) if kept][:max_utts]
        if not keys:
            raise SpeechkitError(f"{data}: every utterance is in the ASR judge's training text ({heldout['how']})")
        originals = [load_audio(wav_scp[k], rate, resample=True, downmix=True)[0] for k in keys]
        refs = [text[k] for k in keys]
        engines = read_engines(Path(data), keys)
        rtf_wavs += originals[: max(0, rtf_utts - len(rtf_wavs))]
        asr_original = asr_wer(originals, refs, asr_model)
        split = {"judge_heldout": heldout, "utterances": len(keys), "seconds": round(sum(len(x) for x in originals) / rate, 1),
                 "asr_original": {k: v for k, v in asr_original.items() if k != "hyps"}}
        for n_q in settings:
            # ResidualVectorQuantizer.bitrate's formula, written out so an exported codec needs no torch
            bitrate = codec.frame_rate * n_q * math.log2(codec.codebook_size) if n_q else None
            label = f"n_q={n_q} ({bitrate / 1000:g} kbps)" if n_q else "vae"
            outs, codes = [], []
            for x in tqdm(originals, desc=f"{name} {label}", unit="utt", mininterval=5):
                y, z = codec.resynth(x, n_q)
                outs.append(y)
                codes.append(z)
            scores = {"stoi": [stoi(x, y, rate) for x, y in zip(originals, outs)],
                      "pesq_wb": [pesq_wb(x, y, rate) for x, y in zip(originals, outs)],
                      "mcd_db": [mel_cepstral_distortion(x, y, rate) for x, y in zip(originals, outs)]}
            row = {k: round(float(np.nanmean(v)), 4) for k, v in scores.items()}
            asr_resynth = asr_wer(outs, refs, asr_model)
            row["asr_resynth"] = {k: v for k, v in asr_resynth.items() if k != "hyps"}
            row["wer_delta"] = round(row["asr_resynth"]["wer"] - split["asr_original"]["wer"], 2)
            if engines is not None:
                row["by_engine"] = _by_engine(engines, scores, refs, asr_original["hyps"], asr_resynth["hyps"])
            if n_q:
                row["bitrate_bps"] = bitrate
                row["usage"] = _usage(codes, codec.codebook_size)
            split[label] = row
            if samples_dir is not None:
                _write_samples(Path(samples_dir), name, label, keys[:samples], originals[:samples], outs[:samples], rate)
        result["splits"][name] = split
    result["rtf"] = codec.rtf(rtf_wavs)
    return result


def _write_samples(out: Path, split: str, label: str, keys, originals, outs, rate: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tag = label.split(" ")[0].replace("=", "")
    for k, x, y in zip(keys, originals, outs):
        orig = out / f"{split}_{k}_original.flac"
        if not orig.exists():
            sf.write(orig, x, rate)
        sf.write(out / f"{split}_{k}_{tag}.flac", y, rate)
    png = out / f"{split}_{keys[0]}_{tag}_spectrogram.png"
    try:
        spectrogram_comparison([("original", originals[0]), (label, outs[0])], rate, png, title=f"{split}: {keys[0]}")
    except ImportError as e:  # matplotlib is an extra; the audio pairs are written anyway
        print(f"speechkit: no spectrogram image ({e})", file=sys.stderr)


def summary_lines(r: dict) -> list[str]:
    params = f"{r['params_m']} M parameters" if r.get("params_m") is not None else "parameters unknown"
    lines = [f"{r['codec']} codec: {params}, hop {r['hop']} = {r['frame_rate']:g} frames/s, latent dim {r['latent_dim']}"
             f" ({r.get('runtime', 'torch')})"]
    for name, split in r["splits"].items():
        dropped = split.get("judge_heldout", {}).get("dropped", 0)
        left_out = f", {dropped} left out as in the ASR judge's training text" if dropped else ""
        lines.append(f"{name} ({split['utterances']} utts, {split['seconds']} s{left_out}): "
                     f"ASR WER on the originals {split['asr_original']['wer']:.2f}")
        for label, row in split.items():
            if not isinstance(row, dict) or "stoi" not in row:
                continue
            extra = f", codes used {row['usage']['mean_used']:.3f}, perplexity {row['usage']['mean_perplexity']:g}" if "usage" in row else ""
            lines.append(f"  {label}: STOI {row['stoi']:.3f}, PESQ {row['pesq_wb']:.2f}, MCD {row['mcd_db']:.2f} dB, "
                         f"WER {row['asr_resynth']['wer']:.2f} ({row['wer_delta']:+.2f}){extra}")
            by_engine = row.get("by_engine", {})
            if len(by_engine) > 1:
                for engine, e in by_engine.items():
                    lines.append(f"    {engine} ({e['utterances']} utts): STOI {e['stoi']:.3f}, PESQ {e['pesq_wb']:.2f}, "
                                 f"MCD {e['mcd_db']:.2f} dB, WER {e['wer_original']:.2f} → {e['wer_resynth']:.2f}")
    for where, v in r["rtf"].items():
        if isinstance(v, dict):
            lines.append(f"RTF {where}: encode {v['encode']:.4f}, decode {v['decode']:.4f}")
    if "training_usage" in r:
        u = r["training_usage"]
        lines.append(f"codebooks at the end of training: {u['dead']} dead entries, alive {u['alive_fraction']:.3f}, EMA perplexity {u['mean_perplexity']:.1f}")
    return lines
