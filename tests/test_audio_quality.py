"""Codec quality metrics (`speechkit.eval.audio_quality`) on espeak-ng speech: identical signals
score perfectly, more noise scores worse on every metric, a few samples' length mismatch is
trimmed, the spectrogram PNG is small, and the shipped ASR model's WER rises under heavy noise."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soxr
from PIL import Image

from speechkit.data.synth.engines import Prosody, Voice, synthesize
from speechkit.eval.audio_quality import asr_wer, mel_cepstral_distortion, pesq_wb, spectrogram_comparison, stoi

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "asr-stream-synth"
RATE = 16000
TEXTS = ["the museum opened a new hall", "a quiet garden behind the old library"]


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    return [synthesize(Voice("espeak-ng", "en-us", "espeak-en-us"), t, Prosody()) for t in TEXTS]


def with_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)
    scale = np.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (x + scale * noise).astype(np.float32)


def test_identical_signals_score_perfectly(speech):
    x = speech[0]
    assert stoi(x, x, RATE) > 0.999
    assert pesq_wb(x, x) >= 4.4
    assert mel_cepstral_distortion(x, x, RATE) == pytest.approx(0.0, abs=1e-9)


def test_other_rates(speech):
    x = soxr.resample(speech[0], RATE, 22050)
    assert pesq_wb(x, x, 22050) >= 4.4  # resampled to 16 kHz for PESQ
    assert stoi(x, x, 22050) > 0.999
    assert mel_cepstral_distortion(x, with_noise(x, 10), 22050) > 1.0


def test_more_noise_scores_worse(speech):
    x = speech[0]
    light, heavy = with_noise(x, 30), with_noise(x, 10)
    assert stoi(x, heavy, RATE) < stoi(x, light, RATE) < 0.9999
    assert pesq_wb(x, heavy) < pesq_wb(x, light) < 4.0
    assert mel_cepstral_distortion(x, heavy, RATE) > mel_cepstral_distortion(x, light, RATE) > 1.0


def test_a_few_samples_more_or_fewer_are_trimmed(speech):
    x = speech[0]
    longer = np.concatenate([x, np.full(7, 0.01, dtype=np.float32)])
    shorter = x[:-5]
    for deg in (longer, shorter):
        assert stoi(x, deg, RATE) > 0.999
        assert pesq_wb(x, deg) >= 4.4
        assert mel_cepstral_distortion(x, deg, RATE) == pytest.approx(0.0, abs=1e-9)
    noisy = with_noise(x, 20)
    assert mel_cepstral_distortion(x, noisy[:-3], RATE) == mel_cepstral_distortion(x[:-3], noisy[:-3], RATE)


def test_nothing_to_score_gives_nan():
    too_short = np.random.default_rng(0).standard_normal(800).astype(np.float32) * 0.1  # 50 ms
    assert math.isnan(pesq_wb(too_short, too_short))
    silence = np.zeros(RATE, dtype=np.float32)
    assert math.isnan(mel_cepstral_distortion(silence, with_noise(np.ones(RATE, np.float32), 0), RATE))


def test_spectrogram_comparison_writes_a_small_png(speech, tmp_path):
    x = speech[0]
    items = [("original", x), ("light noise", with_noise(x, 30)), ("heavy noise", with_noise(x, 0)[:-40])]
    out = spectrogram_comparison(items, RATE, tmp_path / "sub" / "cmp.png", title="noise")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = Image.open(out).size
    assert 900 <= width <= 1100 and 300 <= height <= 800
    assert 10_000 < out.stat().st_size < 200_000


def test_asr_wer_rises_with_heavy_noise(speech):
    clean = asr_wer(speech, TEXTS, MODEL)
    assert clean["utterances"] == 2 and len(clean["hyps"]) == 2
    assert clean["wer"] < 50.0
    noisy = asr_wer([with_noise(x, 0) for x in speech], TEXTS, MODEL, batch_size=1)
    assert noisy["wer"] > clean["wer"] and noisy["cer"] > clean["cer"]


def test_asr_wer_needs_one_text_per_waveform(speech):
    with pytest.raises(ValueError, match="reference"):
        asr_wer(speech, TEXTS[:1], MODEL)
