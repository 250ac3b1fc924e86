"""Objective judges of generated music against its caption's labels (issue 22): tempo (librosa's
onset-strength tempogram with its log-normal tempo prior, scored as MIREX Acc1/Acc2), key (the
chroma of the harmonic part correlated with the Krumhansl-Kessler profiles of the 24 keys, scored
exactly and with MIREX's weights), instruments (``music_classifier``'s judge, trained on the
corpus's own renders) and the Fréchet distance between two sets of clip embeddings (FAD, Kilgour
et al. 2019).

Torch-free: the instrument judge is passed in, anything with ``labels``, ``threshold``, ``card``,
``probabilities``, ``targets`` and ``embed`` (``music_classifier.InstrumentJudge``). Every output is
plain JSON (floats, ints, bools, strings, lists, dicts).
"""

from __future__ import annotations

import json
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from speechkit.audio.io import load_audio, resample_audio
from speechkit.data.kaldi import read_table
from speechkit.errors import AudioError, DataDirError, SpeechkitError

JUDGE_RATE = 16000  # the corpus's rate; other audio is resampled to it
LABELS_FILE = "labels.jsonl"

TEMPO_HOP = 128  # onset frames of 8 ms: neighbouring tempo bins are 2 % apart at 160 bpm, within Acc1's 4 %
TEMPO_PRIOR_BPM = 120.0  # librosa's log-normal prior, one octave wide: an octave error needs strong evidence
TEMPO_TOLERANCE = 0.04  # MIREX: an estimate within 4 % of the reference tempo is right
KEY_HOP = 512
KEY_FMIN = 440.0 * 2 ** ((36 - 69) / 12)  # C2, 65 Hz: below it the kick drum's pitch skews the chroma
KEY_OCTAVES = 5  # C2-B6: bass to melody
KEY_HPSS_KERNEL = 5  # librosa's median-filter harmonic/percussive split on the CQT: 5 frames (160 ms), 5 semitones
SILENCE_PEAK = 1e-5  # -100 dBFS: below it a clip is silent, and scores zero

PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_PITCH_ALIASES = {"Db": 1, "D#": 3, "Gb": 6, "G#": 8, "A#": 10, "Cb": 11, "B#": 0, "E#": 5, "Fb": 4}
MODES = ("major", "minor")
# Krumhansl & Kessler (1982), probe-tone ratings of each pitch class above the tonic
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# MIREX key weights: a fifth above in the same mode, the relative key, the parallel key
FIFTH_WEIGHT, RELATIVE_WEIGHT, PARALLEL_WEIGHT = 0.5, 0.3, 0.2

TEMPO_JUDGE = f"librosa {TEMPO_HOP}-sample onset tempogram, log-normal prior at {TEMPO_PRIOR_BPM:g} bpm"
KEY_JUDGE = ("librosa CQT C2-B6, harmonic part (median-filter HPSS), mean chroma; Pearson correlation with the "
             "Krumhansl-Kessler profiles of 24 keys")


class InstrumentJudgeLike(Protocol):
    """What ``judge_clips`` needs of an instrument judge (``music_classifier.InstrumentJudge``)."""

    labels: Sequence  # items with ``.name``
    threshold: float
    card: dict

    def probabilities(self, samples: np.ndarray, sample_rate: int) -> np.ndarray: ...

    def targets(self, row: dict) -> tuple[np.ndarray, int]: ...

    def embed(self, samples: np.ndarray, sample_rate: int) -> np.ndarray: ...


# -- input ------------------------------------------------------------------------------------------
def check_audio(samples: np.ndarray, sample_rate: int, what: str = "audio") -> np.ndarray:
    """(N,) mono float samples at ``sample_rate`` → (M,) float32 at ``JUDGE_RATE``; empty, NaN,
    multichannel audio or a rate that is not a positive integer is a one-line error."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise SpeechkitError(f"{what}: sample rate must be a positive integer in Hz, "
                             f"got {type(sample_rate).__name__} {sample_rate!r}")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise AudioError(f"{what}: expected mono samples of shape (N,), got shape {x.shape}")
    if len(x) == 0:
        raise AudioError(f"{what}: empty audio (0 samples)")
    if not np.isfinite(x).all():
        raise AudioError(f"{what}: contains NaN or infinite samples")
    return resample_audio(x, int(sample_rate), JUDGE_RATE)


def _check_sound(x: np.ndarray, what: str) -> None:
    if float(np.max(np.abs(x))) < SILENCE_PEAK:
        raise AudioError(f"{what}: silent audio (peak below -100 dBFS)")


# -- tempo ------------------------------------------------------------------------------------------
def estimate_tempo(samples: np.ndarray, sample_rate: int) -> float:
    """(N,) mono samples → the global tempo in bpm: the peak of the onset-strength autocorrelation
    tempogram, weighted by a log-normal prior centred on 120 bpm. Silent audio is an ``AudioError``."""
    import librosa  # imported here: loading it (scipy.signal, numba) takes seconds

    x = check_audio(samples, sample_rate, "tempo judge")
    _check_sound(x, "tempo judge")
    onsets = librosa.onset.onset_strength(y=x, sr=JUDGE_RATE, hop_length=TEMPO_HOP)
    tempo = librosa.feature.tempo(onset_envelope=onsets, sr=JUDGE_RATE, hop_length=TEMPO_HOP, start_bpm=TEMPO_PRIOR_BPM)
    return float(np.atleast_1d(tempo)[0])


def tempo_error(estimate: float, reference: float) -> float:
    """Relative error |estimate - reference| / reference (0.04 is MIREX's Acc1 tolerance)."""
    if not reference > 0:
        raise SpeechkitError(f"reference tempo must be positive, got {reference!r}")
    return abs(float(estimate) - float(reference)) / float(reference)


def tempo_accuracy(estimate: float, reference: float, tolerance: float = TEMPO_TOLERANCE) -> dict[str, bool]:
    """MIREX's tempo accuracies: ``acc1`` within ``tolerance`` of the reference, ``acc2`` also
    counting an estimate within it of twice or half the reference (octave errors)."""
    acc1 = tempo_error(estimate, reference) <= tolerance
    acc2 = any(tempo_error(estimate, reference * k) <= tolerance for k in (1.0, 2.0, 0.5))
    return {"acc1": bool(acc1), "acc2": bool(acc2)}


# -- key --------------------------------------------------------------------------------------------
def key_name(tonic: int, mode: str) -> str:
    """(9, "minor") → "A minor"."""
    _check_key((tonic, mode))
    return f"{PITCH_CLASSES[tonic]} {mode}"


def parse_key(name: str) -> tuple[int, str]:
    """"A minor", "F# major", "Bb minor" → (pitch class with C = 0, mode)."""
    parts = str(name).split()
    if len(parts) != 2 or parts[1] not in MODES:
        raise SpeechkitError(f"key '{name}' is not '<pitch> major' or '<pitch> minor'")
    pitch = parts[0].replace("♯", "#").replace("♭", "b")
    pitch = pitch[0].upper() + pitch[1:]
    if pitch in PITCH_CLASSES:
        return PITCH_CLASSES.index(pitch), parts[1]
    if pitch in _PITCH_ALIASES:
        return _PITCH_ALIASES[pitch], parts[1]
    raise SpeechkitError(f"key '{name}': unknown pitch '{parts[0]}'")


def _check_key(key: tuple[int, str]) -> None:
    try:
        tonic, mode = key
    except (TypeError, ValueError):
        raise SpeechkitError(f"a key is (tonic 0-11, 'major' or 'minor'), got {key!r}") from None
    if isinstance(tonic, bool) or not isinstance(tonic, (int, np.integer)) or not 0 <= tonic < 12 or mode not in MODES:
        raise SpeechkitError(f"a key is (tonic 0-11, 'major' or 'minor'), got {key!r}")


def estimate_key(samples: np.ndarray, sample_rate: int) -> tuple[int, str, dict[str, float]]:
    """(N,) mono samples → (tonic 0-11 with C = 0, "major" | "minor", {key name: score} for all
    24 keys): the mean chroma of the clip's harmonic part correlated with each rotated
    Krumhansl-Kessler profile; the best correlation wins. Silent audio is an ``AudioError``.

    The percussive part is removed from the constant-Q spectrogram first (median filters across
    time and frequency). Measured on renders made for the purpose: piano chord progressions in 20
    keys over a loud rock beat, 19 right (librosa's plain ``chroma_cqt``: 9); 48 clips of melody,
    chords and bass in 24 keys, half with drums, 46 right (plain: 48)."""
    import librosa

    x = check_audio(samples, sample_rate, "key judge")
    _check_sound(x, "key judge")
    with warnings.catch_warnings():  # a clip of a few seconds is short for the lowest octave's FFT
        warnings.filterwarnings("ignore", message="n_fft=.* is too large")
        cqt = np.abs(librosa.cqt(x, sr=JUDGE_RATE, hop_length=KEY_HOP, fmin=KEY_FMIN, n_bins=12 * KEY_OCTAVES,
                                 bins_per_octave=12))
    harmonic, _ = librosa.decompose.hpss(cqt, kernel_size=KEY_HPSS_KERNEL)
    chroma = librosa.feature.chroma_cqt(C=harmonic, sr=JUDGE_RATE, hop_length=KEY_HOP, fmin=KEY_FMIN, bins_per_octave=12)
    chroma = chroma.mean(axis=1)
    if np.ptp(chroma) == 0:  # no pitch at all (e.g. a pure noise burst that CQT spreads evenly)
        raise AudioError("key judge: no pitched content (flat chroma)")
    scores = {}
    for mode, profile in zip(MODES, (KK_MAJOR, KK_MINOR)):
        for tonic in range(12):
            scores[key_name(tonic, mode)] = float(np.corrcoef(chroma, np.roll(profile, tonic))[0, 1])
    tonic, mode = parse_key(max(scores, key=scores.__getitem__))
    return tonic, mode, scores


def key_score(estimate: tuple[int, str], reference: tuple[int, str], descending_fifths: bool = False) -> dict[str, float]:
    """MIREX key scores of an (tonic, mode) estimate: ``exact`` 1 or 0; ``weighted`` 1 for the
    same key, 0.5 for the key a fifth above in the same mode (and below with
    ``descending_fifths``; MIREX counts only the fifth above), 0.3 for the relative key, 0.2 for
    the parallel key, else 0."""
    _check_key(estimate)
    _check_key(reference)
    (et, em), (rt, rm) = (int(estimate[0]), estimate[1]), (int(reference[0]), reference[1])
    up = (et - rt) % 12
    if (et, em) == (rt, rm):
        weighted = 1.0
    elif em == rm and (up == 7 or (descending_fifths and up == 5)):
        weighted = FIFTH_WEIGHT
    elif em != rm and up == (9 if rm == "major" else 3):  # A minor is C major's relative, C major A minor's
        weighted = RELATIVE_WEIGHT
    elif em != rm and up == 0:
        weighted = PARALLEL_WEIGHT
    else:
        weighted = 0.0
    return {"exact": float(weighted == 1.0), "weighted": weighted}


# -- Fréchet distance -------------------------------------------------------------------------------
def frechet_distance(emb_a: np.ndarray, emb_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets (N_a, D) and (N_b, D):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2). Biased upwards for small N: compare
    distances only between sets of the same sizes."""
    a, b = _embeddings(emb_a, "first"), _embeddings(emb_b, "second")
    if a.shape[1] != b.shape[1]:
        raise SpeechkitError(f"Fréchet distance: embeddings of {a.shape[1]} and {b.shape[1]} dimensions")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    return frechet_distance_gaussians(mu_a, np.atleast_2d(cov_a), mu_b, np.atleast_2d(cov_b))


def frechet_distance_gaussians(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """The Fréchet (2-Wasserstein squared) distance of N(mu_a, cov_a) and N(mu_b, cov_b).

    tr((S_a S_b)^1/2) is taken as tr((A S_b A)^1/2) with A = S_a^1/2: the same eigenvalues, but of
    a symmetric matrix, so symmetric eigendecompositions give it real and non-negative even when
    S_a S_b is singular or badly conditioned (where a general ``sqrtm`` returns complex noise)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    cross = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    d = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)
    return max(d, 0.0)  # rounding can leave -1e-12 for identical sets


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _embeddings(e: np.ndarray, which: str) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 2 or e.shape[1] < 1:
        raise SpeechkitError(f"Fréchet distance: the {which} set must be (N >= 2, D) embeddings, got shape {e.shape}")
    if not np.isfinite(e).all():
        raise SpeechkitError(f"Fréchet distance: the {which} set has NaN or infinite values")
    return e


# -- a corpus's labels ------------------------------------------------------------------------------
@dataclass(frozen=True)
class MusicClip:
    utt: str
    wav: str
    labels: dict  # the clip's row of labels.jsonl


def read_labels(path: str | Path) -> dict[str, dict]:
    """``labels.jsonl`` (one JSON object with an ``utt`` key per line) → {utt: row}."""
    path = Path(path)
    if not path.is_file():
        raise DataDirError(f"{path}: missing")
    rows: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataDirError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("utt"), str):
                raise DataDirError(f"{path}:{lineno}: not a JSON object with an 'utt' string")
            if row["utt"] in rows:
                raise DataDirError(f"{path}:{lineno}: duplicated utt '{row['utt']}'")
            rows[row["utt"]] = row
    if not rows:
        raise DataDirError(f"{path}: no rows")
    return rows


def read_music_dir(data_dir: str | Path) -> list[MusicClip]:
    """A music data dir (``wav.scp`` and ``labels.jsonl``) → its clips in ``wav.scp``'s order;
    every clip of ``wav.scp`` needs a row. Relative paths are taken from the current directory,
    then from the data dir. Audio is not opened."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataDirError(f"{data_dir}: not a directory")
    wav = read_table(data_dir / "wav.scp")
    labels = read_labels(data_dir / LABELS_FILE)
    clips = []
    for utt, path in wav.items():
        if utt not in labels:
            raise DataDirError(f"{data_dir / LABELS_FILE}: utt '{utt}' from wav.scp has no row")
        p = Path(path)
        if not p.is_absolute() and not p.exists() and (data_dir / p).exists():
            p = data_dir / p
        clips.append(MusicClip(utt, str(p), labels[utt]))
    return clips


# -- judging a set of clips -------------------------------------------------------------------------
def judge_clips(
    clips: Sequence[str | Path | np.ndarray],
    labels: Sequence[dict],
    classifier: InstrumentJudgeLike | None = None,
    reference_embeddings: np.ndarray | None = None,
    sample_rate: int = JUDGE_RATE,
) -> tuple[list[dict], dict]:
    """Score generated clips against the labels of the captions they were made from.

    clips: audio file paths, or (N,) mono float arrays at ``sample_rate``; labels: one
    ``labels.jsonl`` row per clip (``tempo``; ``tonic`` and ``mode``, or ``key``; ``instruments``
    and ``drums`` when a classifier is given). reference_embeddings: (N_ref, D) ``classifier.embed`` of real
    renders, for the Fréchet distance. A silent clip scores zero on every measure.
    Returns (one row per clip, summary): tempo Acc1/Acc2 and median relative error, key exact and
    weighted accuracy; with a classifier the instrument accuracy (labelled instruments detected)
    and precision; with reference embeddings the Fréchet distance; ``judges`` names each judge.
    """
    if len(clips) != len(labels):
        raise SpeechkitError(f"judge_clips: {len(clips)} clips but {len(labels)} label rows")
    if not clips:
        raise SpeechkitError("judge_clips: no clips")
    if reference_embeddings is not None and classifier is None:
        raise SpeechkitError("judge_clips: the Fréchet distance needs the classifier whose embeddings the reference holds")
    rows, embeddings = [], []
    for i, (clip, row) in enumerate(zip(clips, labels)):
        name = str(row.get("utt", f"clip {i}"))
        x = _clip_audio(clip, sample_rate, name)
        silent = bool(np.max(np.abs(x)) < SILENCE_PEAK)
        out: dict = {"utt": name, "silent": silent}
        out.update(_judge_tempo(x, _label(row, "tempo", name), silent))
        out.update(_judge_key(x, _reference_key(row, name), silent))
        if classifier is not None:
            out.update(_judge_instruments(classifier, x, row, name, silent))
            embeddings.append(np.asarray(classifier.embed(x, JUDGE_RATE), dtype=np.float64))
        rows.append(out)
    summary = _summary(rows, classifier)
    if reference_embeddings is not None:
        summary["fd"] = frechet_distance(np.stack(embeddings), reference_embeddings)
        summary["fd_clips"] = [len(embeddings), int(np.asarray(reference_embeddings).shape[0])]
    return rows, summary


def _clip_audio(clip: str | Path | np.ndarray, sample_rate: int, name: str) -> np.ndarray:
    if isinstance(clip, (str, Path)):
        x, _ = load_audio(clip, JUDGE_RATE, resample=True, downmix=True)
        return x
    return check_audio(clip, sample_rate, name)


def _label(row: dict, key: str, name: str):
    if key not in row:
        raise SpeechkitError(f"labels of '{name}': no '{key}'")
    return row[key]


def _reference_key(row: dict, name: str) -> tuple[int, str]:
    if "tonic" in row and "mode" in row:
        return row["tonic"], row["mode"]
    if "key" in row:
        return parse_key(row["key"])
    raise SpeechkitError(f"labels of '{name}': no 'tonic' and 'mode', nor 'key'")


def _judge_tempo(x: np.ndarray, reference: float, silent: bool) -> dict:
    est = 0.0 if silent else estimate_tempo(x, JUDGE_RATE)
    return {"tempo_ref": float(reference), "tempo_est": round(est, 2), "tempo_rel_error": tempo_error(est, reference),
            **{f"tempo_{k}": v for k, v in tempo_accuracy(est, reference).items()}}


def _judge_key(x: np.ndarray, reference: tuple[int, str], silent: bool) -> dict:
    _check_key(reference)
    out = {"key_ref": key_name(*reference), "key_est": None, "key_exact": 0.0, "key_weighted": 0.0}
    if silent:
        return out
    try:
        tonic, mode, _ = estimate_key(x, JUDGE_RATE)
    except AudioError:  # no pitch: scores zero, like silence
        return out
    return {**out, "key_est": key_name(tonic, mode), **{f"key_{k}": v for k, v in key_score((tonic, mode), reference).items()}}


def _judge_instruments(classifier: InstrumentJudgeLike, x: np.ndarray, row: dict, name: str, silent: bool) -> dict:
    if "instruments" not in row or "drums" not in row:
        raise SpeechkitError(f"labels of '{name}': the instrument judge needs 'instruments' and 'drums'")
    target, unknown = classifier.targets(row)
    detected = np.zeros_like(target)
    if not silent:
        detected = (classifier.probabilities(x, JUDGE_RATE) >= classifier.threshold).astype(np.float32)
    names = [label.name for label in classifier.labels]
    hits = int(np.sum(detected * target))
    return {"instruments_ref": [n for n, t in zip(names, target) if t],
            "instruments_est": [n for n, d in zip(names, detected) if d], "instruments_hit": hits, "instruments_labelled": int(target.sum()), "instruments_detected": int(detected.sum()),
            "instruments_out_of_vocab": unknown}


def _summary(rows: list[dict], classifier: InstrumentJudgeLike | None) -> dict:
    n = len(rows)
    summary: dict = {
        "clips": n,
        "tempo_acc1": sum(r["tempo_acc1"] for r in rows) / n,
        "tempo_acc2": sum(r["tempo_acc2"] for r in rows) / n,
        "tempo_median_rel_error": statistics.median(r["tempo_rel_error"] for r in rows),
        "key_exact": sum(r["key_exact"] for r in rows) / n,
        "key_weighted": sum(r["key_weighted"] for r in rows) / n,
        "silent_clips": sum(r["silent"] for r in rows),
        "judges": {"tempo": TEMPO_JUDGE, "key": KEY_JUDGE},
    }
    if classifier is not None:
        labelled = sum(r["instruments_labelled"] for r in rows)
        detected = sum(r["instruments_detected"] for r in rows)
        hits = sum(r["instruments_hit"] for r in rows)
        summary["instrument_accuracy"] = hits / labelled if labelled else None
        summary["instrument_precision"] = hits / detected if detected else None
        summary["instruments_out_of_vocab"] = sum(r["instruments_out_of_vocab"] for r in rows)
        summary["judges"]["instruments"] = classifier.card
    return summary
