"""Feature dumps: fbank for a whole Kaldi data dir, with optional speed perturbation, and the
global CMVN statistics that the model folds into its front end.

A dump dir holds ``feats.bin`` (float16 frames, concatenated), ``feats.tsv`` (``utt offset
frames``, sorted), ``text``, ``stats.json`` (frame count, sum, sum of squares) and ``skipped.txt``
(one line per bad input file). Speed-perturbed copies get Kaldi's ``sp<factor>-`` id prefix.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from speechkit.audio.fbank import FbankConfig, compute_fbank
from speechkit.audio.io import load_audio, resample_audio
from speechkit.data.kaldi import Utterance, load_data_dir, read_table, write_table
from speechkit.errors import AudioError, DataDirError


def speed_perturb(samples: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """Kaldi/sox ``speed``: play ``factor`` times faster, so tempo and pitch both change."""
    if factor == 1.0:
        return samples
    return resample_audio(samples, int(round(sample_rate * factor)), sample_rate)


def _extract(args: tuple[Utterance, FbankConfig, tuple[float, ...]]):
    utt, cfg, factors = args
    try:
        samples, _ = load_audio(utt.wav, cfg.sample_rate)
    except AudioError as e:
        return utt, None, str(e)
    feats = []
    for f in factors:
        feats.append(compute_fbank(speed_perturb(samples, cfg.sample_rate, f), cfg).astype(np.float16))
    return utt, feats, None


def perturbed_id(utt_id: str, factor: float) -> str:
    return utt_id if factor == 1.0 else f"sp{factor:g}-{utt_id}"


def compute_dump(
    data_dir: str | Path,
    dump_dir: str | Path,
    cfg: FbankConfig = FbankConfig(),
    *,
    speed_factors: tuple[float, ...] = (1.0,),
    nj: int | None = None,
) -> int:
    """Extract features for every utterance; returns how many input files were skipped."""
    utts = load_data_dir(data_dir)
    dump_dir = Path(dump_dir)
    dump_dir.mkdir(parents=True, exist_ok=True)
    nj = nj or os.cpu_count() or 1
    index: dict[str, str] = {}
    text: dict[str, str] = {}
    skipped: list[str] = []
    total = np.zeros(cfg.num_mel_bins, dtype=np.float64)
    total_sq = np.zeros(cfg.num_mel_bins, dtype=np.float64)
    count = 0
    offset = 0
    work = [(u, cfg, tuple(speed_factors)) for u in utts]
    tmp_bin = dump_dir / "feats.bin.tmp"
    with open(tmp_bin, "wb") as out, mp.get_context("fork").Pool(nj) if nj > 1 else SerialPool() as pool:
        results = pool.imap(_extract, work, chunksize=16)
        for utt, feats, err in tqdm(results, total=len(work), desc=f"fbank {Path(data_dir).name}", unit="utt", file=sys.stderr):
            if err is not None:
                tqdm.write(f"skipped: {err}", file=sys.stderr)
                skipped.append(err)
                continue
            for factor, f in zip(speed_factors, feats):
                key = perturbed_id(utt.utt_id, factor)
                out.write(f.tobytes())
                index[key] = f"{offset} {len(f)}"
                text[key] = utt.text
                offset += len(f)
                f32 = f.astype(np.float64)
                total += f32.sum(0)
                total_sq += (f32**2).sum(0)
                count += len(f)
    tmp_bin.replace(dump_dir / "feats.bin")
    write_table(dump_dir / "feats.tsv", index)
    write_table(dump_dir / "text", text)
    (dump_dir / "skipped.txt").write_text("".join(s + "\n" for s in skipped))
    stats = {"frames": count, "sum": total.tolist(), "sum_sq": total_sq.tolist(), "fbank": cfg.as_dict(),
             "speed_factors": list(speed_factors)}
    (dump_dir / "stats.json").write_text(json.dumps(stats))
    return len(skipped)


class SerialPool:
    """A stand-in for ``multiprocessing.Pool`` with one job (no fork, easier to debug): the same
    optional per-worker ``initializer(*initargs)``, run once here."""

    def __init__(self, initializer=None, initargs: tuple = ()):
        if initializer is not None:
            initializer(*initargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, items, chunksize=1):
        return map(fn, items)


def cmvn_from_stats(stats_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Global mean and inverse standard deviation from a dump's ``stats.json``."""
    if not Path(stats_path).is_file():
        raise DataDirError(f"{stats_path}: missing; run the feature stage on the training set first")
    stats = json.loads(Path(stats_path).read_text())
    n = max(stats["frames"], 1)
    mean = np.asarray(stats["sum"]) / n
    var = np.maximum(np.asarray(stats["sum_sq"]) / n - mean**2, 1e-8)
    return mean.astype(np.float32), (1.0 / np.sqrt(var)).astype(np.float32)


@dataclass
class FeatureDump:
    """Random access into a dump dir; the frames are memory-mapped, not loaded."""

    utt_ids: list[str]
    offsets: np.ndarray
    lengths: np.ndarray
    texts: list[str]
    frames: np.ndarray  # (total_frames, dim) float16 memmap

    @classmethod
    def open(cls, dump_dir: str | Path, dim: int = 80) -> "FeatureDump":
        dump_dir = Path(dump_dir)
        if not (dump_dir / "feats.bin").is_file():
            raise DataDirError(f"{dump_dir}: no feats.bin; run the feature stage first")
        index = read_table(dump_dir / "feats.tsv")
        text = read_table(dump_dir / "text", allow_empty_value=True)
        ids = list(index)
        off_len = np.array([[int(v) for v in index[u].split()] for u in ids], dtype=np.int64).reshape(-1, 2)
        size = (dump_dir / "feats.bin").stat().st_size
        frames = np.memmap(dump_dir / "feats.bin", dtype=np.float16, mode="r", shape=(size // (2 * dim), dim)) if size else np.zeros((0, dim), np.float16)
        return cls(ids, off_len[:, 0], off_len[:, 1], [text.get(u, "") for u in ids], frames)

    def __len__(self) -> int:
        return len(self.utt_ids)

    def feats(self, i: int) -> np.ndarray:
        o, n = int(self.offsets[i]), int(self.lengths[i])
        return np.asarray(self.frames[o : o + n], dtype=np.float32)
