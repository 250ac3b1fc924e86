"""`speechkit codec eval`: resynthesise every utterance of some data dirs through a codec and
report STOI, wideband PESQ, mel-cepstral distortion, the ASR model's WER on the resynthesised
speech against its WER on the originals, codebook usage on the data (RVQ), and the real-time
factors of encode and decode on the GPU and on one CPU thread."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from speechkit.audio.io import load_audio
from speechkit.data.kaldi import read_table
from speechkit.errors import SpeechkitError
from speechkit.eval.audio_quality import asr_wer, mel_cepstral_distortion, pesq_wb, spectrogram_comparison, stoi
from speechkit.eval.heldout import held_out
from speechkit.models.codec.model import RvqCodec, decode_frames, encode_samples
from speechkit.models.codec.io import load_codec


def _resynth(model, x: np.ndarray, n_q: int | None) -> tuple[np.ndarray, np.ndarray]:
    """→ (resynthesised samples trimmed to len(x), the codes or latents)."""
    z = encode_samples(model, x, n_q)
    return decode_frames(model, z)[: len(x)], z


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


def _rtf(model, wavs: list[np.ndarray], device) -> dict:
    """Encode and decode compute time / audio time, whole utterances one by one."""
    hop, rate = model.cfg.hop, model.cfg.sample_rate
    enc = dec = 0.0
    audio = sum(len(w) for w in wavs) / rate
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    with torch.no_grad():
        for rep in range(2):  # the first pass warms up (allocator, cuDNN choices)
            enc = dec = 0.0
            for x in wavs:
                n = len(x) // hop * hop
                w = torch.from_numpy(x[:n]).view(1, 1, n).to(device)
                sync()
                t = time.perf_counter()
                z = model.encode(w)
                sync()
                t1 = time.perf_counter()
                model.decode(z)
                sync()
                enc, dec = enc + t1 - t, dec + time.perf_counter() - t1
    return {"encode": round(enc / audio, 5), "decode": round(dec / audio, 5), "audio_seconds": round(audio, 1)}


def evaluate_codec(model_path: str | Path, data_dirs: list[str], *, asr_model: str | Path, device: str | None = None,
                   n_q_list: list[int] | None = None, samples_dir: str | Path | None = None, max_utts: int | None = None,
                   rtf_utts: int = 8, samples: int = 3) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_codec(model_path, device)
    cfg = model.cfg
    is_rvq = isinstance(model, RvqCodec)
    if is_rvq:
        n_q_list = n_q_list or sorted({cfg.rvq_conf.n_q, max(1, cfg.rvq_conf.n_q // 2)}, reverse=True)
    settings = n_q_list if is_rvq else [None]
    result = {"model": str(model_path), "codec": cfg.codec, "sample_rate": cfg.sample_rate, "hop": cfg.hop, "frame_rate": cfg.frame_rate,
              "latent_dim": cfg.encoder_conf.latent_dim, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
              "device": str(device), "splits": {}}
    if is_rvq:
        result["training_usage"] = {k: v for k, v in model.quantizer.usage().items() if k in ("mean_perplexity", "alive_fraction", "dead")}
    rtf_wavs = []
    for data in data_dirs:
        name = Path(data).name
        wav_scp, text = read_table(Path(data) / "wav.scp"), read_table(Path(data) / "text")
        keys = sorted(wav_scp)
        keep, heldout = held_out([text[k] for k in keys], asr_model)
        keys = [k for k, kept in zip(keys, keep) if kept][:max_utts]
        if not keys:
            raise SpeechkitError(f"{data}: every utterance is in the ASR judge's training text ({heldout['how']})")
        originals = [load_audio(wav_scp[k], cfg.sample_rate, resample=True, downmix=True)[0] for k in keys]
        refs = [text[k] for k in keys]
        rtf_wavs += originals[: max(0, rtf_utts - len(rtf_wavs))]
        split = {"judge_heldout": heldout, "utterances": len(keys), "seconds": round(sum(len(x) for x in originals) / cfg.sample_rate, 1),
                 "asr_original": {k: v for k, v in asr_wer(originals, refs, asr_model).items() if k != "hyps"}}
        for n_q in settings:
            label = f"n_q={n_q} ({model.bitrate(n_q) / 1000:g} kbps)" if is_rvq else "vae"
            outs, codes = [], []
            for x in tqdm(originals, desc=f"{name} {label}", unit="utt", mininterval=5):
                y, z = _resynth(model, x, n_q)
                outs.append(y)
                codes.append(z)
            scores = {"stoi": [stoi(x, y, cfg.sample_rate) for x, y in zip(originals, outs)],
                      "pesq_wb": [pesq_wb(x, y, cfg.sample_rate) for x, y in zip(originals, outs)],
                      "mcd_db": [mel_cepstral_distortion(x, y, cfg.sample_rate) for x, y in zip(originals, outs)]}
            row = {k: round(float(np.nanmean(v)), 4) for k, v in scores.items()}
            row["asr_resynth"] = {k: v for k, v in asr_wer(outs, refs, asr_model).items() if k != "hyps"}
            row["wer_delta"] = round(row["asr_resynth"]["wer"] - split["asr_original"]["wer"], 2)
            if is_rvq:
                row["bitrate_bps"] = model.bitrate(n_q)
                row["usage"] = _usage(codes, cfg.rvq_conf.codebook_size)
            split[label] = row
            if samples_dir is not None:
                _write_samples(Path(samples_dir), name, label, keys[:samples], originals[:samples], outs[:samples], cfg.sample_rate)
        result["splits"][name] = split
    result["rtf"] = {str(device): _rtf(model, rtf_wavs, device)}
    if torch.device(device).type != "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        result["rtf"]["cpu_1_thread"] = _rtf(model.cpu(), rtf_wavs[:4], "cpu")
        torch.set_num_threads(threads)
    else:
        result["rtf"]["cpu_threads"] = torch.get_num_threads()
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
    lines = [f"{r['codec']} codec: {r['params_m']} M parameters, hop {r['hop']} = {r['frame_rate']:g} frames/s, latent dim {r['latent_dim']}"]
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
    for where, v in r["rtf"].items():
        if isinstance(v, dict):
            lines.append(f"RTF {where}: encode {v['encode']:.4f}, decode {v['decode']:.4f}")
    if "training_usage" in r:
        u = r["training_usage"]
        lines.append(f"codebooks at the end of training: {u['dead']} dead entries, alive {u['alive_fraction']:.3f}, EMA perplexity {u['mean_perplexity']:.1f}")
    return lines
