"""The independent TTS judges (`speechkit.eval.tts_judges`) with their real bundled models on
espeak-ng speech: pocketsphinx understands a clear voice and hears nothing in noise, resemblyzer
tells a male from a female voice, DNSMOS prefers clean to noisy speech, other rates are resampled,
and a missing package is a one-line error."""

from __future__ import annotations

import sys

import jiwer
import numpy as np
import pytest
import soxr

from speechkit.data.synth.engines import Prosody, Voice, synthesize
from speechkit.errors import AudioError, SpeechkitError
from speechkit.eval.tts_judges import DnsmosJudge, PocketsphinxJudge, SpeakerJudge, hypothesis_words

RATE = 16000
TEXTS = ["we will meet again tomorrow after lunch", "the museum opened a new hall on monday morning",
         "she bought three apples at the market"]
CLEAR = Voice("espeak-ng", "en-us+f2", "espeak-en-us-f2")  # of espeak's voices, pocketsphinx's best
MALE = Voice("espeak-ng", "en-us+m3", "espeak-en-us-m3")
FEMALE = Voice("espeak-ng", "en-us+f4", "espeak-en-us-f4")


def speak(voice: Voice, text: str) -> np.ndarray:
    return synthesize(voice, text, Prosody())


def with_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)
    scale = np.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (x + scale * noise).astype(np.float32)


@pytest.fixture(scope="module")
def asr() -> PocketsphinxJudge:
    return PocketsphinxJudge()


@pytest.fixture(scope="module")
def speaker() -> SpeakerJudge:
    return SpeakerJudge()


@pytest.fixture(scope="module")
def dnsmos() -> DnsmosJudge:
    return DnsmosJudge()


def test_hypothesis_words():
    assert hypothesis_words("<s> The read(2) <sil> [NOISE] d.'s we'll </s>") == "the read d s we'll"
    assert hypothesis_words("") == ""


def test_pocketsphinx_understands_clear_speech(asr):
    hyps = [asr.transcribe(speak(CLEAR, t), RATE) for t in TEXTS]
    assert all(h == h.lower() and h.replace(" ", "").replace("'", "").isalpha() for h in hyps), hyps
    assert jiwer.wer(TEXTS, hyps) < 0.4, hyps  # measured 0.26


def test_pocketsphinx_hears_nothing_in_noise(asr):
    noise = 0.3 * np.random.default_rng(1).standard_normal(3 * RATE).astype(np.float32)
    assert len(asr.transcribe(noise, RATE).split()) <= 1


def test_pocketsphinx_resamples_and_is_independent_of_order(asr):
    x = speak(CLEAR, TEXTS[0])
    native = asr.transcribe(x, RATE)
    resampled = asr.transcribe(soxr.resample(x, RATE, 22050), 22050)
    assert jiwer.wer(native, resampled) < 0.3
    short = x[: RATE // 2]
    assert asr.transcribe_many([x, short, x], RATE, jobs=2) == [native, asr.transcribe(short, RATE), native]
    assert asr.transcribe(np.zeros(0, dtype=np.float32), RATE) == ""
    y = speak(MALE, TEXTS[2])
    asr.transcribe(with_noise(y, 0), RATE)  # what came before must not change the next result
    assert asr.transcribe(y, RATE) == PocketsphinxJudge().transcribe(y, RATE)


def test_same_voice_is_more_similar_than_another(speaker):
    male = [speaker.embed(speak(MALE, t), RATE) for t in TEXTS[:2]]
    female = [speaker.embed(speak(FEMALE, t), RATE) for t in TEXTS[:2]]
    assert male[0].shape == (256,) and np.linalg.norm(male[0]) == pytest.approx(1.0, abs=1e-5)
    same = [speaker.similarity(*male), speaker.similarity(*female)]
    cross = [speaker.similarity(male[0], female[1]), speaker.similarity(female[0], male[1])]
    assert min(same) > max(cross) + 0.1, (same, cross)  # measured about 0.85 against 0.56
    assert speaker.similarity(male[0], male[0]) == pytest.approx(1.0, abs=1e-6)


def test_speaker_judge_refuses_silence_and_resamples(speaker):
    with pytest.raises(AudioError, match="silent"):
        speaker.embed(np.zeros(RATE, dtype=np.float32), RATE)
    x = speak(MALE, TEXTS[0])
    assert speaker.similarity(speaker.embed(x, RATE), speaker.embed(soxr.resample(x, RATE, 24000), 24000)) > 0.95


def test_dnsmos_prefers_clean_speech(dnsmos):
    x = speak(MALE, TEXTS[1])
    clean, noisy = dnsmos.score(x, RATE), dnsmos.score(with_noise(x, 5), RATE)
    assert set(clean) == {"sig", "bak", "ovrl", "p808"} and all(1.0 <= v <= 5.0 for v in clean.values()), clean
    assert clean["ovrl"] > noisy["ovrl"] + 0.5, (clean, noisy)  # measured 2.9 against 1.7
    assert clean["bak"] > noisy["bak"] + 1.0, (clean, noisy)
    with pytest.raises(AudioError, match="empty"):
        dnsmos.score(np.zeros(0, dtype=np.float32), RATE)


def test_a_missing_package_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # makes `import pocketsphinx` fail
    needs = r"^the pocketsphinx judge needs the 'pocketsphinx' package.*tts-eval"
    with pytest.raises(SpeechkitError, match=needs) as e:
        PocketsphinxJudge()
    assert "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "speechmos.dnsmos", None)
    with pytest.raises(SpeechkitError, match="DNSMOS judge needs"):
        DnsmosJudge()
