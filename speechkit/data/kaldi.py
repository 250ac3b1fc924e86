"""Kaldi data directories: read, write and validate ``wav.scp``, ``text``, ``utt2spk``,
``spk2utt``, ``utt2dur`` and ``utt2synth`` (what synthesised each utterance, ``key=value`` words).

Keys are sorted in C (byte) order and unique, as Kaldi's ``utils/validate_data_dir.sh``
requires; every problem is reported as one line naming the file and line.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

from speechkit.audio.io import load_audio
from speechkit.errors import AudioError, DataDirError

REQUIRED_FILES = ("wav.scp", "text", "utt2spk")


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    speaker: str
    wav: str  # a path; piped commands ("... |") are not supported
    text: str
    duration: float | None = None


def read_table(path: Path, *, allow_empty_value: bool = False) -> dict[str, str]:
    """Read a Kaldi ``key value...`` table, checking that keys are unique and sorted."""
    if not path.is_file():
        raise DataDirError(f"{path}: missing")
    table: dict[str, str] = {}
    prev = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                raise DataDirError(f"{path}:{lineno}: empty line")
            key, _, value = line.partition(" ")
            value = value.strip()
            if not value and not allow_empty_value:
                raise DataDirError(f"{path}:{lineno}: key '{key}' has no value")
            if key in table:
                raise DataDirError(f"{path}:{lineno}: duplicated key '{key}'")
            if prev is not None and key < prev:
                raise DataDirError(f"{path}:{lineno}: key '{key}' is not sorted (comes after '{prev}'); sort with LC_ALL=C")
            table[key] = value
            prev = key
    return table


def read_engines(data_dir: str | Path, keys: list[str]) -> list[str] | None:
    """The synthesis engine of each utterance of ``keys``, from the data dir's ``utt2synth`` (the
    synth corpus writes it); None without that file, "unknown" for an utterance it leaves out."""
    path = Path(data_dir) / "utt2synth"
    if not path.is_file():
        return None
    table = read_table(path)
    return [table[k].split()[0].removeprefix("engine=") if k in table else "unknown" for k in keys]


def indices_by_engine(engines: list[str]) -> dict[str, list[int]]:
    """``read_engines``' list → {engine: the positions of its utterances}, engines sorted."""
    out: dict[str, list[int]] = {}
    for i, e in enumerate(engines):
        out.setdefault(e, []).append(i)
    return dict(sorted(out.items()))


def write_table(path: Path, table: dict[str, str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for key in sorted(table):
            f.write(f"{key} {table[key]}\n")
    tmp.replace(path)


def write_data_dir(data_dir: str | Path, utts: list[Utterance]) -> None:
    """Write a complete data dir (``spk2utt`` and, when known, ``utt2dur`` derived)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for u in utts:
        if not u.utt_id.startswith(u.speaker):
            # Kaldi needs speaker-prefixed utterance ids so utt2spk and spk2utt sort alike.
            raise DataDirError(f"{data_dir}: utterance '{u.utt_id}' does not start with its speaker '{u.speaker}'")
    write_table(data_dir / "wav.scp", {u.utt_id: u.wav for u in utts})
    write_table(data_dir / "text", {u.utt_id: u.text for u in utts})
    write_table(data_dir / "utt2spk", {u.utt_id: u.speaker for u in utts})
    spk2utt: dict[str, list[str]] = {}
    for u in sorted(utts, key=lambda u: u.utt_id):
        spk2utt.setdefault(u.speaker, []).append(u.utt_id)
    write_table(data_dir / "spk2utt", {s: " ".join(v) for s, v in spk2utt.items()})
    if all(u.duration is not None for u in utts):
        write_table(data_dir / "utt2dur", {u.utt_id: f"{u.duration:.3f}" for u in utts})


def load_data_dir(data_dir: str | Path) -> list[Utterance]:
    """Read a data dir, checking its tables agree; audio is not opened (see ``validate_data_dir``)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataDirError(f"{data_dir}: not a directory")
    wav = read_table(data_dir / "wav.scp")
    text = read_table(data_dir / "text", allow_empty_value=True)
    utt2spk = read_table(data_dir / "utt2spk")
    for name, table in (("text", text), ("utt2spk", utt2spk)):
        _same_keys(data_dir / "wav.scp", wav, data_dir / name, table)
    if (data_dir / "spk2utt").is_file():
        spk2utt = read_table(data_dir / "spk2utt")
        derived: dict[str, list[str]] = {}
        for utt, spk in utt2spk.items():
            derived.setdefault(spk, []).append(utt)
        for spk, utt_list in spk2utt.items():
            if derived.get(spk) != utt_list.split():
                raise DataDirError(f"{data_dir / 'spk2utt'}: speaker '{spk}' disagrees with utt2spk")
        missing = set(derived) - set(spk2utt)
        if missing:
            raise DataDirError(f"{data_dir / 'spk2utt'}: speaker '{sorted(missing)[0]}' from utt2spk is missing")
    if (data_dir / "utt2synth").is_file():
        _check_synth(data_dir / "utt2synth", wav)
    durations: dict[str, str] = {}
    if (data_dir / "utt2dur").is_file():
        durations = read_table(data_dir / "utt2dur")
        _same_keys(data_dir / "wav.scp", wav, data_dir / "utt2dur", durations)
    utts = []
    for utt, path in wav.items():
        if path.endswith("|"):
            raise DataDirError(f"{data_dir / 'wav.scp'}: '{utt}' is a piped command; only file paths are supported")
        if not utt.startswith(utt2spk[utt]):
            raise DataDirError(f"{data_dir / 'utt2spk'}: utterance '{utt}' does not start with its speaker '{utt2spk[utt]}'")
        dur = durations.get(utt)
        try:
            dur_f = float(dur) if dur is not None else None
        except ValueError:
            raise DataDirError(f"{data_dir / 'utt2dur'}: '{utt}' has a non-numeric duration '{dur}'") from None
        utts.append(Utterance(utt, utt2spk[utt], _resolve(data_dir, path), text[utt], dur_f))
    if not utts:
        raise DataDirError(f"{data_dir / 'wav.scp'}: no utterances")
    return utts


def _check_synth(path: Path, wav: dict[str, str]) -> None:
    """``utt2synth``: one line per utterance of wav.scp, ``key=value`` words starting with ``engine=``."""
    table = read_table(path)
    _same_keys(path.with_name("wav.scp"), wav, path, table)
    for utt, settings in table.items():
        words = settings.split()
        if not words[0].startswith("engine=") or not all("=" in w.strip("=") for w in words):
            raise DataDirError(f"{path}: '{utt}' is not 'engine=NAME key=value ...': '{settings}'")


def _resolve(data_dir: Path, path: str) -> str:
    # Relative paths in wav.scp are taken from the current directory, as Kaldi does; fall back to
    # the data dir so a moved corpus still loads.
    p = Path(path)
    if p.is_absolute() or p.exists():
        return path
    alt = data_dir / p
    return str(alt) if alt.exists() else path


def _same_keys(ref_path: Path, ref: dict, path: Path, table: dict) -> None:
    for key in ref:
        if key not in table:
            raise DataDirError(f"{path}: utterance '{key}' from {ref_path.name} is missing")
    for key in table:
        if key not in ref:
            raise DataDirError(f"{path}: utterance '{key}' is not in {ref_path.name}")


@dataclass
class ValidationReport:
    num_utts: int
    num_speakers: int
    hours: float
    bad_audio: list[str]


def _check_audio(args: tuple[Utterance, int, float]) -> tuple[float, str | None]:
    u, sample_rate, tolerance = args
    try:
        samples, sr = load_audio(u.wav, sample_rate)
    except AudioError as e:
        return 0.0, str(e)
    dur = len(samples) / sr
    if u.duration is not None and abs(dur - u.duration) > tolerance:
        return dur, f"{u.wav}: duration {dur:.3f}s disagrees with utt2dur ({u.duration:.3f}s)"
    return dur, None


def validate_data_dir(
    data_dir: str | Path, *, sample_rate: int = 16000, check_audio: bool = True, duration_tolerance: float = 0.05,
    nj: int = 1,
) -> ValidationReport:
    """Check structure (always) and every audio file (``check_audio``, ``nj`` processes).

    Structural problems raise ``DataDirError``; bad audio files are collected in the report so a
    caller can list them all at once.
    """
    utts = load_data_dir(data_dir)
    if not check_audio:
        hours = sum(u.duration or 0.0 for u in utts) / 3600.0
        return ValidationReport(len(utts), len({u.speaker for u in utts}), hours, [])
    work = [(u, sample_rate, duration_tolerance) for u in utts]
    if nj > 1:
        with mp.get_context("fork").Pool(nj) as pool:
            results = pool.map(_check_audio, work, chunksize=64)
    else:
        results = [_check_audio(w) for w in work]
    bad = [err for _, err in results if err]
    return ValidationReport(len(utts), len({u.speaker for u in utts}), sum(d for d, _ in results) / 3600.0, bad)
