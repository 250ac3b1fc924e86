#!/usr/bin/env python3
"""How hard is a codec's latent space for an autoregressive TTS? Probes on real recordings, to run
before spending GPU time on a CLEAR model of those latents (egs/synth/tts/RESULTS.md, "Why"):

- roughness: per-dimension std of the raw latents, lag-1 correlation of the normalised ones;
- predictability: error of a linear predictor from the previous two latents (AR(2), ridge,
  fitted on every other utterance, scored on the rest) — a CLEAR model that only continues the
  latent stream reaches about this;
- decoder tolerance, by the project ASR's WER of decoded latents: resynthesis; the latents plus
  isotropic noise of --noise std (normalised units); and the latents' least-squares projection on
  the log-mel spectrogram (5 frames of context, fitted likewise) — what a model that gets
  the spectral content right and averages the rest would produce. A TTS-friendly latent space
  decodes the projection intelligibly.

    python tools/codec_latent_probe.py CODEC_DIR DATA_DIR [--utts 40] [--noise 0.3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from speechkit.audio.io import load_audio
from speechkit.data.kaldi import read_table
from speechkit.runtime.codec import CodecRuntime


def log_mel_context(x: np.ndarray, sr: int, hop: int, frames: int, context: int = 2) -> np.ndarray:
    """[frames, 80 * (2 context + 1) + 1] log-mel features around each latent frame, and a bias."""
    import librosa

    mel = librosa.feature.melspectrogram(y=x.astype(np.float64), sr=sr, n_fft=2 * hop, hop_length=hop, n_mels=80)
    lm = np.log(mel + 1e-5).T
    lm = np.pad(lm, ((0, max(0, frames - len(lm))), (0, 0)), mode="edge")[:frames]
    return np.concatenate([np.roll(lm, s, 0) for s in range(-context, context + 1)] + [np.ones((frames, 1))], 1)


def ridge(x: np.ndarray, y: np.ndarray, lam: float = 1.0) -> np.ndarray:
    """Least squares with a small ridge (the fits use a few thousand frames)."""
    return np.linalg.solve(x.T @ x + lam * len(x) * 1e-3 * np.eye(x.shape[1]), x.T @ y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("codec", help="exported codec dir (encoder.onnx, decoder.onnx)")
    ap.add_argument("data", help="Kaldi data dir (wav.scp, text)")
    ap.add_argument("--utts", type=int, default=40, help="utterances: every other one fits the linear maps, the rest are scored (default 40)")
    ap.add_argument("--noise", type=float, default=0.3, help="isotropic noise std, normalised units (default 0.3)")
    ap.add_argument("--asr-model", default="models/asr-stream-synth", help="exported ASR model of the WER judge")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    from speechkit.eval.audio_quality import asr_wer

    codec = CodecRuntime(args.codec, num_threads=args.threads)
    wavs, texts = read_table(Path(args.data) / "wav.scp"), read_table(Path(args.data) / "text")
    utts = [u for u in sorted(wavs) if u in texts][: args.utts]
    if len(utts) < 4:
        raise SystemExit(f"{args.data}: need at least 4 utterances with text")
    audio = [load_audio(wavs[u], codec.sample_rate, resample=True, downmix=True)[0] for u in utts]
    z = [codec.encode(x).T.astype(np.float64) for x in audio]  # [F, D]
    cat = np.concatenate(z)
    mean, std = cat.mean(0), cat.std(0) + 1e-8
    zn = [(u - mean) / std for u in z]
    fit, score = range(0, len(utts), 2), range(1, len(utts), 2)  # interleaved: the same voices on both sides
    lag1 = [np.corrcoef(np.concatenate([zn[i][:-1, d] for i in range(len(zn))]), np.concatenate([zn[i][1:, d] for i in range(len(zn))]))[0, 1]
            for d in range(cat.shape[1])]

    def ar2(idx):
        x = np.concatenate([np.c_[zn[i][1:-1], zn[i][:-2], np.ones(len(zn[i]) - 2)] for i in idx])
        return x, np.concatenate([zn[i][2:] for i in idx])

    w = ridge(*ar2(fit))
    xs, ys = ar2(score)
    ar2_mse = float(((xs @ w - ys) ** 2).mean())
    feats = [log_mel_context(audio[i], codec.sample_rate, codec.hop, len(z[i])) for i in range(len(utts))]
    wm = ridge(np.concatenate([feats[i] for i in fit]), np.concatenate([zn[i] for i in fit]))
    proj = [feats[i] @ wm for i in score]
    r2 = 1 - float(np.mean([((p - zn[i]) ** 2).mean() for p, i in zip(proj, score)]))
    rng = np.random.default_rng(0)
    refs = [texts[utts[i]] for i in score]

    def wer(latents_n) -> float:
        dec = [codec.decode((u * std + mean).T.astype(np.float32)) for u in latents_n]
        return round(asr_wer(dec, refs, args.asr_model)["wer"], 2)

    result = {
        "codec": args.codec, "data": args.data, "utterances_fit": len(fit), "utterances_scored": len(score),
        "frame_rate": codec.sample_rate / codec.hop, "latent_dim": int(cat.shape[1]),
        "raw_std_min": round(float(std.min()), 3), "raw_std_max": round(float(std.max()), 3),
        "lag1_corr_mean": round(float(np.mean(lag1)), 3), "ar2_mse": round(ar2_mse, 3),
        "mel_projection_r2": round(r2, 3),
        "wer_real": round(asr_wer([audio[i] for i in score], refs, args.asr_model)["wer"], 2),
        "wer_resynthesis": wer([zn[i] for i in score]),
        f"wer_noise_{args.noise:g}": wer([zn[i] + args.noise * rng.standard_normal(zn[i].shape) for i in score]),
        "wer_mel_projection": wer(proj),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
