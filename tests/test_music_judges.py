"""The music judges (`speechkit.eval.music_judges`, `music_classifier`) on audio rendered here with
tinysoundfont and the General-MIDI soundfont, independent of the music corpus builder: tempo of
click and drum tracks, key of piano chord progressions, MIREX's scores, the Fréchet distance
against its closed form, the instrument classifier learning three instruments and drums from a
few dozen clips, save/load, ``judge_clips`` end to end, and one-line errors for bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import tinysoundfont
import torch

from speechkit.audio.io import load_audio, save_audio
from speechkit.errors import SpeechkitError
from speechkit.eval.music_classifier import (ClassifierConfig, InstrumentExperiment, InstrumentJudge, InstrumentOptimConfig,
                                             InstrumentTrainConfig,
                                             average_precision, train_instrument_classifier)
from speechkit.eval.music_judges import (estimate_key, estimate_tempo, frechet_distance, frechet_distance_gaussians,
                                         judge_clips, key_name, key_score, parse_key, read_music_dir, tempo_accuracy,
                                         tempo_error)

RATE = 16000
SOUNDFONT = "/usr/share/sounds/sf2/TimGM6mb.sf2"
KICK, SNARE, HIHAT = 36, 38, 42
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: tiny models, more threads only add contention
NAMES = {0: "Acoustic Grand Piano", 56: "Trumpet", 73: "Flute"}

Note = tuple[float, float, int, int, int]  # start s, end s, channel, MIDI key, velocity


def render(notes: list[Note], seconds: float, programs: dict[int, int]) -> np.ndarray:
    """Play ``notes`` with the GM soundfont (channel 9 is the drum kit) → (seconds * RATE,) mono float32."""
    synth = tinysoundfont.Synth(samplerate=RATE, gain=-6.0)
    sfid = synth.sfload(SOUNDFONT)
    for chan, program in programs.items():
        synth.program_select(chan, sfid, 0, program)
    synth.program_select(9, sfid, 128, 0, True)
    events = sorted([(on, 1, c, k, v) for on, _, c, k, v in notes] + [(off, 0, c, k, 0) for _, off, c, k, _ in notes])
    total, done, parts = int(seconds * RATE), 0, []
    for t, is_on, chan, key, vel in events:
        at = min(total, int(round(t * RATE)))
        if at > done:
            parts.append(np.frombuffer(synth.generate(at - done), dtype=np.float32))
            done = at
        synth.noteon(chan, key, vel) if is_on else synth.noteoff(chan, key)
    if total > done:
        parts.append(np.frombuffer(synth.generate(total - done), dtype=np.float32))
    return np.concatenate(parts).reshape(-1, 2).mean(axis=1).astype(np.float32)


def click_track(bpm: float, seconds: float = 8.0) -> np.ndarray:
    """1 kHz clicks of 20 ms on every beat."""
    y = np.zeros(int(seconds * RATE), dtype=np.float32)
    n = np.arange(int(0.02 * RATE))
    click = 0.5 * np.sin(2 * np.pi * 1000 * n / RATE) * np.exp(-n / (0.004 * RATE))
    for t in np.arange(0.1, seconds - 0.05, 60.0 / bpm):
        y[int(t * RATE) : int(t * RATE) + len(n)] += click
    return y


def drum_track(bpm: float, seconds: float = 8.0) -> np.ndarray:
    """A rock beat: kick on 1 and 3, snare on 2 and 4, hi-hat on every eighth note."""
    beat, notes = 60.0 / bpm, []
    for i in range(int(seconds / beat * 2)):
        t = i * beat / 2
        notes.append((t, t + 0.1, 9, HIHAT, 70))
        if i % 2 == 0:
            notes.append((t, t + 0.1, 9, KICK if i % 4 == 0 else SNARE, 110))
    return render(notes, seconds, {})


def chord_progression(tonic: int, mode: str, seconds: float = 8.0) -> np.ndarray:
    """I-IV-V-I (major) or i-iv-V-i with the raised leading tone (minor), block chords on a piano
    with the root doubled in the bass, two seconds each."""
    scale = MAJOR if mode == "major" else MINOR
    notes = []
    for bar, degree in enumerate((0, 3, 4, 0)):
        t = bar * seconds / 4
        chord = [scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]
        if mode == "minor" and degree == 4:
            chord[1] += 1  # the dominant's third: the leading tone
        for k in [chord[0] - 12, *chord]:
            notes.append((t, t + seconds / 4 - 0.05, 0, 48 + tonic + k, 90))
    return render(notes, seconds, {0: 0})


# -- tempo ------------------------------------------------------------------------------------------
def test_tempo_of_click_and_drum_tracks():
    tempi = (80, 100, 128, 150)
    estimates = [estimate_tempo(make(bpm), RATE) for make in (click_track, drum_track) for bpm in tempi]
    scores = [tempo_accuracy(e, ref) for e, ref in zip(estimates, tempi * 2)]
    assert all(s["acc2"] for s in scores), estimates
    assert sum(s["acc1"] for s in scores) >= 7, estimates  # measured 8/8, largest error 0.7 %
    assert np.median([tempo_error(e, ref) for e, ref in zip(estimates, tempi * 2)]) < 0.02


def test_tempo_scores():
    assert tempo_error(105.0, 100.0) == pytest.approx(0.05)
    assert tempo_accuracy(103.9, 100.0) == {"acc1": True, "acc2": True}
    assert tempo_accuracy(104.5, 100.0) == {"acc1": False, "acc2": False}
    assert tempo_accuracy(201.0, 100.0) == {"acc1": False, "acc2": True}  # octave errors count for Acc2 only
    assert tempo_accuracy(49.0, 100.0) == {"acc1": False, "acc2": True}
    assert tempo_accuracy(150.0, 100.0) == {"acc1": False, "acc2": False}
    with pytest.raises(SpeechkitError):
        tempo_error(100.0, 0.0)


# -- key --------------------------------------------------------------------------------------------
KEYS = [(0, "major"), (9, "minor"), (7, "major"), (2, "minor"), (10, "major"), (6, "minor")]


def test_key_of_chord_progressions():
    found = [estimate_key(chord_progression(tonic, mode), RATE) for tonic, mode in KEYS]
    exact = sum((t, m) == key for (t, m, _), key in zip(found, KEYS))
    assert exact >= 5, [key_name(t, m) for t, m, _ in found]  # measured 6/6
    tonic, mode, scores = found[0]
    assert len(scores) == 24 and max(scores, key=scores.get) == key_name(tonic, mode)
    json.dumps(scores, allow_nan=False)


def test_key_scores_follow_mirex():
    c_major, a_minor = (0, "major"), (9, "minor")
    assert key_score(c_major, c_major) == {"exact": 1.0, "weighted": 1.0}
    assert key_score((7, "major"), c_major)["weighted"] == 0.5  # G major for C major: a fifth above
    assert key_score((5, "major"), c_major)["weighted"] == 0.0  # F major: a fifth below, not MIREX's
    assert key_score((5, "major"), c_major, descending_fifths=True)["weighted"] == 0.5
    assert key_score((4, "minor"), a_minor)["weighted"] == 0.5  # E minor for A minor
    assert key_score(a_minor, c_major) == {"exact": 0.0, "weighted": 0.3}  # relative minor
    assert key_score(c_major, a_minor)["weighted"] == 0.3  # relative major
    assert key_score((0, "minor"), c_major)["weighted"] == 0.2  # parallel
    assert key_score((9, "major"), a_minor)["weighted"] == 0.2
    assert key_score((2, "major"), c_major)["weighted"] == 0.0
    assert parse_key("A minor") == a_minor and parse_key("F# major") == parse_key("Gb major") == (6, "major")
    assert key_name(10, "minor") == "Bb minor"


# -- Fréchet distance -------------------------------------------------------------------------------
def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=4), rng.normal(size=4)
    var_a, var_b = rng.uniform(0.5, 2.0, 4), rng.uniform(0.5, 2.0, 4)
    closed = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)  # commuting covariances
    assert frechet_distance_gaussians(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(closed, rel=1e-10)
    # non-commuting covariances: the general formula with scipy's sqrtm
    m_a, m_b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    cov_a, cov_b = m_a @ m_a.T + 0.1 * np.eye(4), m_b @ m_b.T + 0.1 * np.eye(4)
    general = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance_gaussians(mu_a, cov_a, mu_b, cov_b) == pytest.approx(general, rel=1e-8)
    # samples of the two diagonal Gaussians
    a = mu_a + np.sqrt(var_a) * rng.standard_normal((20000, 4))
    b = mu_b + np.sqrt(var_b) * rng.standard_normal((20000, 4))
    assert frechet_distance(a, b) == pytest.approx(closed, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    low_rank = rng.normal(size=(5, 16))  # fewer clips than dimensions: singular covariances stay real
    assert frechet_distance(low_rank, low_rank) == pytest.approx(0.0, abs=1e-9)


# -- instrument classifier and judge_clips ----------------------------------------------------------
def random_clip(rng: np.random.Generator, seconds: float = 2.0) -> tuple[np.ndarray, list[int], bool]:
    """1-3 of piano, trumpet and flute playing random notes in one shared range (so only
    timbre tells them apart), drums half the time."""
    programs = [p for p in NAMES if rng.random() < 0.5] or [int(rng.choice(list(NAMES)))]
    drums = bool(rng.random() < 0.5)
    notes = []
    for chan, _ in enumerate(programs):
        t = float(rng.uniform(0, 0.2))
        while t < seconds - 0.2:
            length = float(rng.uniform(0.15, 0.5))
            notes.append((t, t + length, chan, int(rng.integers(55, 80)), int(rng.integers(70, 110))))
            t += length
    if drums:
        for t in np.arange(0.0, seconds - 0.1, 0.25):
            notes.append((t, t + 0.1, 9, int(rng.choice([KICK, SNARE, HIHAT])), 100))
    return render(notes, seconds, dict(enumerate(programs))), programs, drums


def write_music_dir(path: Path, n: int, seed: int) -> list[dict]:
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows, scp = [], []
    for i in range(n):
        y, programs, drums = random_clip(rng)
        utt = f"clip{seed}-{i:03d}"
        save_audio(path / f"{utt}.wav", y, RATE)
        scp.append(f"{utt} {path / f'{utt}.wav'}\n")
        rows.append({"utt": utt, "caption": "random notes", "seconds": 2.0, "tempo": 120.0, "key": "C major", "tonic": 0,
                     "mode": "major", "style": "test", "drums": drums,
                     "instruments": [{"program": p, "name": NAMES[p], "role": "melody"} for p in programs]})
    (path / "wav.scp").write_text("".join(scp))
    (path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


TINY = InstrumentExperiment(model_conf=ClassifierConfig(hop_length=320, channels=(8, 16, 32), embed_dim=32),
                            optim_conf=InstrumentOptimConfig(lr=3e-3, warmup_steps=20),
                            train_conf=InstrumentTrainConfig(batch_size=16, min_crop_seconds=1.0, max_crop_seconds=1.5,
                                                             log_interval=20, save_interval_steps=1000))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict, float]:
    root = tmp_path_factory.mktemp("music")
    write_music_dir(root / "train", 40, seed=1)
    write_music_dir(root / "test", 24, seed=2)
    threads = torch.get_num_threads()  # a module fixture runs before the tests' one_thread: the same here
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        report = train_instrument_classifier(root / "train", root / "test", root / "judge", steps=120, device="cpu",
                                             exp=TINY, progress=False)
    finally:
        torch.set_num_threads(threads)
    return root, report, time.perf_counter() - start


def test_classifier_learns_instruments(trained):
    root, report, seconds = trained
    print(f"instrument judge: {seconds:.1f} s, mAP {report['mean_ap']:.3f}, exact set {report['exact_set_accuracy']:.3f}, "
          f"instrument accuracy {report['instrument_accuracy']:.3f}, precision {report['instrument_precision']:.3f}")
    assert set(report["per_label"]) == {*NAMES.values(), "drums"}
    # measured mAP 0.94, exact set 0.62, accuracy 0.82, precision 0.87; untrained: 0.74, 0.04, 0.48, 0.50
    assert report["mean_ap"] > 0.9, report
    assert report["exact_set_accuracy"] >= 0.4, report
    assert report["instrument_accuracy"] > 0.7 and report["instrument_precision"] > 0.7, report
    saved = json.loads((root / "judge" / "report.json").read_text())
    assert saved["mean_ap"] == report["mean_ap"] and report["steps"] == 120


def test_classifier_save_load_round_trip(trained):
    root, _, _ = trained
    judge = InstrumentJudge.load(root / "judge")
    judge.save(root / "copy")
    again = InstrumentJudge.load(root / "copy")
    assert again.labels == judge.labels and again.conf == judge.conf and again.card == judge.card
    clip = read_music_dir(root / "test")[0]
    y, _ = load_audio(clip.wav)
    assert np.array_equal(judge.probabilities(y, RATE), again.probabilities(y, RATE))
    assert np.array_equal(judge.embed(y, RATE), again.embed(y, RATE))
    assert judge.embed(y, RATE).shape == (32,)
    assert judge.card["test"]["mean_ap"] == json.loads((root / "judge" / "report.json").read_text())["mean_ap"]
    with pytest.raises(SpeechkitError, match="model.json: missing"):
        InstrumentJudge.load(root / "train")


def test_judge_clips_end_to_end(trained):
    root, _, _ = trained
    judge = InstrumentJudge.load(root / "judge")
    train, test = read_music_dir(root / "train"), read_music_dir(root / "test")
    reference = np.stack([judge.embed(load_audio(c.wav)[0], RATE) for c in train])
    songs = [(100.0, 0, "major"), (140.0, 9, "minor")]
    clips = [np.concatenate([chord_progression(t, m, 4.0), chord_progression(t, m, 4.0)]) + drum_track(bpm)
             for bpm, t, m in songs]
    labels = [{"utt": f"song{i}", "tempo": bpm, "tonic": t, "mode": m, "drums": True,
               "instruments": [{"program": 0, "name": NAMES[0], "role": "chords"}]} for i, (bpm, t, m) in enumerate(songs)]
    clips.append(np.zeros(RATE, dtype=np.float32))  # a silent generation scores zero
    labels.append({**labels[0], "utt": "silent"})
    clips += [c.wav for c in test[:4]]
    labels += [{**c.labels, "tempo": 100.0} for c in test[:4]]
    rows, summary = judge_clips(clips, labels, classifier=judge, reference_embeddings=reference)
    json.dumps([rows, summary], allow_nan=False)
    assert [r["tempo_acc2"] for r in rows[:2]] == [True, True], rows[:2]
    assert [r["key_exact"] for r in rows[:2]] == [1.0, 1.0], rows[:2]
    assert rows[2]["silent"] and rows[2]["tempo_acc2"] is False and rows[2]["key_weighted"] == 0.0
    assert rows[2]["instruments_detected"] == 0 and summary["silent_clips"] == 1
    assert summary["clips"] == 7 and summary["tempo_acc2"] >= 2 / 7
    assert summary["fd"] > 0 and summary["fd_clips"] == [7, 40]
    assert summary["judges"]["instruments"]["train_clips"] == 40 and "key" in summary["judges"]
    assert 0.0 <= summary["instrument_accuracy"] <= 1.0
    # as many other held-out renders of the training distribution are closer to it than the judged set
    same = frechet_distance(np.stack([judge.embed(load_audio(c.wav)[0], RATE) for c in test[4:11]]), reference)
    assert same < summary["fd"]


# -- bad input --------------------------------------------------------------------------------------
def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert message and "\n" not in message
    return message


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(SpeechkitError) as e:
        estimate_tempo(np.zeros(0, dtype=np.float32), RATE)
    assert "empty audio" in one_line(e)
    with pytest.raises(SpeechkitError) as e:
        estimate_key(click_track(100, 1.0), 16000.0)
    assert "sample rate must be a positive integer" in one_line(e)
    with pytest.raises(SpeechkitError) as e:
        estimate_tempo(click_track(100, 1.0), "16000")
    assert "got str" in one_line(e)
    with pytest.raises(SpeechkitError) as e:
        estimate_tempo(np.zeros((2, RATE), dtype=np.float32), RATE)
    assert "mono" in one_line(e)
    with pytest.raises(SpeechkitError) as e:
        estimate_key(np.zeros(RATE, dtype=np.float32), RATE)
    assert "silent" in one_line(e)
    (tmp_path / "wav.scp").write_text(f"a {tmp_path / 'a.wav'}\n")
    with pytest.raises(SpeechkitError) as e:
        read_music_dir(tmp_path)
    assert one_line(e).endswith("labels.jsonl: missing")
    (tmp_path / "labels.jsonl").write_text('{"utt": "b"}\n')
    with pytest.raises(SpeechkitError) as e:
        read_music_dir(tmp_path)
    assert "'a' from wav.scp has no row" in one_line(e)
    with pytest.raises(SpeechkitError) as e:
        train_instrument_classifier(tmp_path / "nope", tmp_path, tmp_path / "out", steps=1, device="cpu")
    assert "not a directory" in one_line(e)
    with pytest.raises(SpeechkitError) as e:
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    assert "dimensions" in one_line(e)
    with pytest.raises(SpeechkitError) as e:
        judge_clips([click_track(100, 1.0)], [{"utt": "x", "tempo": 100.0, "mode": "major"}])
    assert "no 'tonic' and 'mode', nor 'key'" in one_line(e)
    with pytest.raises(SpeechkitError) as e:
        key_score((12, "major"), (0, "major"))
    one_line(e)


def test_average_precision():
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.9, 0.8]), np.array([0, 0])) is None
