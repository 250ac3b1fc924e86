"""The text-to-music token dump (built by ``speechkit audiogen prepare``, see
``speechkit.train.audiogen_prepare``): every clip of a music data dir as the first K codebooks of
an RVQ codec's token streams, with its caption and labels.

A dump dir holds
  ``codes.npy``      int16 [K, frames]: every clip's codes, clips one after another (memory-mapped)
  ``offsets.npy``    int64 (N + 1,): clip i is ``codes[:, offsets[i]:offsets[i + 1]]``
  ``utts.txt``       one utterance id per line (data dir order)
  ``captions.txt``   one caption per line, same order
  ``labels.jsonl``   the data dir's label rows of the kept clips, same order (when it had them)
  ``stats.json``     the codec (path and sha256 of its model file), codebooks K, card, frame and
                     sample rates, clips, frames, hours, clips skipped
  ``skipped.txt``    one line per clip left out, with the reason
and is written into ``DIR.tmp`` then renamed, so a dump that exists is complete. numpy only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkit.errors import SpeechkitError

STATS, CODES, OFFSETS, UTTS, CAPTIONS, LABELS, SKIPPED = (
    "stats.json", "codes.npy", "offsets.npy", "utts.txt", "captions.txt", "labels.jsonl", "skipped.txt")
CODE_DTYPE = np.int16  # codebooks of up to 32 768 entries
COPY_FRAMES = 1 << 20  # frames per slice when the raw rows are gathered into codes.npy: memory stays flat


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_file(path: str | Path) -> Path:
    """An experiment dir (its ``model.pt``) or a model file → the file."""
    path = Path(path)
    return path / "model.pt" if path.is_dir() else path


@dataclass
class AudiogenDump:
    utts: list[str]
    captions: list[str]
    offsets: np.ndarray  # int64 (N + 1,)
    codes: np.ndarray  # int16 [K, frames], memory-mapped
    stats: dict

    @classmethod
    def open(cls, dump_dir: str | Path) -> AudiogenDump:
        d = Path(dump_dir)
        if not (d / STATS).is_file():
            raise SpeechkitError(f"{d}: not a text-to-music token dump (make one with `speechkit audiogen prepare DATA {d} --codec C`)")
        try:
            dump = cls(utts=(d / UTTS).read_text(encoding="utf-8").splitlines(),
                       captions=(d / CAPTIONS).read_text(encoding="utf-8").splitlines(),
                       offsets=np.load(d / OFFSETS), codes=np.load(d / CODES, mmap_mode="r"),
                       stats=json.loads((d / STATS).read_text()))
        except (OSError, ValueError) as e:
            raise SpeechkitError(f"{d}: a broken token dump ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        n = len(dump.utts)
        if len(dump.captions) != n or dump.offsets.shape != (n + 1,) or dump.codes.ndim != 2 \
                or dump.codes.shape[1] != int(dump.offsets[-1]) or dump.codes.shape[0] != int(dump.stats.get("codebooks", -1)):
            raise SpeechkitError(f"{d}: a broken token dump ({n} utts, {len(dump.captions)} captions, "
                                 f"{len(dump.offsets)} offsets, codes {list(dump.codes.shape)})")
        return dump

    def __len__(self) -> int:
        return len(self.utts)

    @property
    def codebooks(self) -> int:
        return int(self.codes.shape[0])

    def frames(self) -> np.ndarray:
        """Frames of every clip, (N,) int64."""
        return np.diff(self.offsets)

    def clip(self, i: int) -> np.ndarray:
        """Clip ``i`` → its codes [K, F] (an int16 view of the memory map)."""
        return self.codes[:, int(self.offsets[i]) : int(self.offsets[i + 1])]


class AudiogenDumpWriter:
    """Writes a dump clip by clip: each codebook's codes go to its own raw file as they come, and
    ``finish`` gathers them into ``codes.npy`` in slices, so memory does not grow with the corpus."""

    def __init__(self, out_dir: str | Path, codebooks: int):
        self.out = Path(out_dir)
        self.tmp = self.out.with_name(self.out.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.k = codebooks
        self.rows = [open(self.tmp / f"codes_q{q}.bin", "wb") for q in range(codebooks)]
        self.utts: list[str] = []
        self.captions: list[str] = []
        self.offsets = [0]
        self.skipped: list[str] = []

    def add(self, utt: str, caption: str, codes: np.ndarray) -> None:
        """One clip's codes [K, F] (any integer type, values within int16)."""
        if codes.ndim != 2 or codes.shape[0] != self.k:
            raise SpeechkitError(f"{utt}: codes must be [{self.k}, F], got {list(codes.shape)}")
        for q in range(self.k):
            self.rows[q].write(np.ascontiguousarray(codes[q], dtype=CODE_DTYPE).tobytes())
        self.utts.append(utt)
        self.captions.append(" ".join(caption.split()))  # one line each
        self.offsets.append(self.offsets[-1] + codes.shape[1])

    def skip(self, utt: str, why: str) -> None:
        self.skipped.append(f"{utt} {why}")

    def finish(self, stats: dict, labels: Path | None = None) -> dict:
        """Write the tables, ``stats.json`` (``stats`` plus the counts) and, when ``labels`` (a
        labels.jsonl) is given, the rows of the kept clips; then rename into place. Returns the stats."""
        for f in self.rows:
            f.close()
        if not self.utts:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise SpeechkitError("every clip was skipped (see the messages above)")
        total = self.offsets[-1]
        codes = np.lib.format.open_memmap(self.tmp / CODES, mode="w+", dtype=CODE_DTYPE, shape=(self.k, total))
        for q in range(self.k):
            raw = np.memmap(self.tmp / f"codes_q{q}.bin", dtype=CODE_DTYPE, mode="r", shape=(total,))
            for at in range(0, total, COPY_FRAMES):
                codes[q, at : at + COPY_FRAMES] = raw[at : at + COPY_FRAMES]
            del raw
            (self.tmp / f"codes_q{q}.bin").unlink()
        codes.flush()
        del codes
        np.save(self.tmp / OFFSETS, np.asarray(self.offsets, dtype=np.int64))
        (self.tmp / UTTS).write_text("".join(u + "\n" for u in self.utts), encoding="utf-8")
        (self.tmp / CAPTIONS).write_text("".join(c + "\n" for c in self.captions), encoding="utf-8")
        (self.tmp / SKIPPED).write_text("".join(s + "\n" for s in self.skipped), encoding="utf-8")
        if labels is not None and Path(labels).is_file():
            _copy_labels(Path(labels), self.utts, self.tmp / LABELS)
        frame_rate = float(stats["frame_rate"])
        stats = {**stats, "codebooks": self.k, "clips": len(self.utts), "frames": int(total),
                 "hours": round(total / frame_rate / 3600, 4), "skipped": len(self.skipped)}
        (self.tmp / STATS).write_text(json.dumps(stats, indent=1) + "\n")
        shutil.rmtree(self.out, ignore_errors=True)
        self.tmp.rename(self.out)
        return stats


def _copy_labels(src: Path, utts: list[str], dst: Path) -> None:
    """The rows of ``src`` (labels.jsonl) for ``utts``, in their order; rows stay as written."""
    rows: dict[str, str] = {}
    with open(src, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows[json.loads(line)["utt"]] = line.rstrip("\n")
            except (ValueError, KeyError, TypeError):
                raise SpeechkitError(f"{src}:{lineno}: not a JSON object with an 'utt'") from None
    dst.write_text("".join(rows[u] + "\n" for u in utts if u in rows), encoding="utf-8")
