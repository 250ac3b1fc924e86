"""``speechkit data prepare-librispeech``: Kaldi data dirs from a local copy of LibriSpeech.

The layout is the one LibriSpeech unpacks to: ``<corpus>/<subset>/<speaker>/<chapter>/`` holding
``<speaker>-<chapter>.trans.txt`` (one ``<utt-id> WORDS...`` line per utterance) and the
``<utt-id>.flac`` files, 16 kHz mono. ``wav.scp`` names the flac files directly (the audio reader
decodes flac), speakers are LibriSpeech's, and the upper-case transcripts are lower-cased to match
the rest of speechkit's text. Each subset becomes ``<out>/<subset with _>`` (``dev-clean`` →
``dev_clean``); ``combine`` writes unions such as ``train_960``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tqdm import tqdm

from speechkit.data.kaldi import Utterance, write_data_dir
from speechkit.errors import DataDirError, SpeechkitError

SUBSETS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean", "test-other")
LAYOUT = "<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt beside <speaker>-<chapter>-<utt>.flac files"
_UTT_ID = re.compile(r"(\d+)-(\d+)-(\d+)")
_WORDS = re.compile(r"[A-Z' ]+")


def data_dir_name(subset: str) -> str:
    """``train-clean-100`` → ``train_clean_100``, the Kaldi recipes' name for the subset's dir."""
    return subset.replace("-", "_")


def find_corpus_root(corpus_dir: str | Path, subsets: list[str], require_all: bool = True) -> Path:
    """The folder that holds the subsets: ``corpus_dir`` itself or its ``LibriSpeech/`` folder
    (where the downloaded archives unpack). One-line error naming the expected layout when none
    (or, with ``require_all``, not all) of ``subsets`` is there."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise SpeechkitError(f"{corpus_dir}: no such directory; expected a LibriSpeech download laid out as {LAYOUT}")
    for root in (corpus_dir, corpus_dir / "LibriSpeech"):
        if any((root / s).is_dir() for s in subsets):
            missing = [s for s in subsets if not (root / s).is_dir()]
            if missing and require_all:
                raise SpeechkitError(f"{root / missing[0]}: subset missing; expected {LAYOUT} (download it or leave it out of --subsets)")
            return root
    raise SpeechkitError(f"{corpus_dir}: none of the subsets {', '.join(subsets)} is there; expected {LAYOUT}")


def read_subset(subset_dir: Path) -> list[Utterance]:
    """Every utterance of one subset folder, checking each transcript line against its flac file."""
    speakers = sorted(p for p in subset_dir.iterdir() if p.is_dir())
    if not speakers:
        raise SpeechkitError(f"{subset_dir}: no speaker folders; expected {LAYOUT}")
    utts: list[Utterance] = []
    for spk_dir in tqdm(speakers, desc=subset_dir.name, unit="speaker", file=sys.stderr, leave=False):
        chapters = sorted(p for p in spk_dir.iterdir() if p.is_dir())
        if not chapters:
            raise SpeechkitError(f"{spk_dir}: no chapter folders; expected {LAYOUT}")
        for chap_dir in chapters:
            utts += _read_chapter(chap_dir, spk_dir.name)
    return utts


def _read_chapter(chap_dir: Path, speaker: str) -> list[Utterance]:
    trans = chap_dir / f"{speaker}-{chap_dir.name}.trans.txt"
    if not trans.is_file():
        raise SpeechkitError(f"{trans}: missing; expected {LAYOUT}")
    utts = []
    with open(trans, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            utt_id, _, words = line.strip().partition(" ")
            m = _UTT_ID.fullmatch(utt_id)
            if m is None or m.group(1) != speaker or m.group(2) != chap_dir.name:
                raise DataDirError(f"{trans}:{lineno}: '{utt_id}' is not an utterance id {speaker}-{chap_dir.name}-NNNN")
            if not _WORDS.fullmatch(words):
                raise DataDirError(f"{trans}:{lineno}: transcript is empty or not upper-case words")
            flac = chap_dir / f"{utt_id}.flac"
            if not flac.is_file():
                raise DataDirError(f"{trans}:{lineno}: {flac.name} is missing")
            utts.append(Utterance(utt_id, speaker, str(flac.resolve()), " ".join(words.lower().split())))
    listed = {u.utt_id for u in utts}
    extra = sorted(p.name for p in chap_dir.glob("*.flac") if p.stem not in listed)
    if extra:
        raise DataDirError(f"{chap_dir / extra[0]}: not in {trans.name}")
    return utts


def prepare_librispeech(
    corpus_dir: str | Path, out: str | Path, subsets: list[str] | None = None, combine: dict[str, list[str]] | None = None,
) -> dict[str, int]:
    """Write one data dir per subset (default: every subset found) and per ``combine`` entry
    (name → subsets) under ``out``; returns {data dir name: utterances}."""
    combine = combine or {}
    if subsets is None:  # every subset that is there
        root = find_corpus_root(corpus_dir, list(SUBSETS), require_all=False)
        subsets = [s for s in SUBSETS if (root / s).is_dir()]
    needed = list(dict.fromkeys([*subsets, *(s for parts in combine.values() for s in parts)]))
    unknown = [s for s in needed if s not in SUBSETS]
    if unknown:
        raise SpeechkitError(f"unknown LibriSpeech subset '{unknown[0]}'; choose from {', '.join(SUBSETS)}")
    root = find_corpus_root(corpus_dir, needed)
    out = Path(out)
    read = {s: read_subset(root / s) for s in needed}
    counts = {}
    for s in subsets:
        write_data_dir(out / data_dir_name(s), read[s])
        counts[data_dir_name(s)] = len(read[s])
    for name, parts in combine.items():
        utts = [u for s in parts for u in read[s]]
        write_data_dir(out / name, utts)
        counts[name] = len(utts)
    return counts


def parse_combine(specs: list[str]) -> dict[str, list[str]]:
    """``["train_960=train-clean-100,train-clean-360,train-other-500"]`` → {name: subsets}."""
    combine = {}
    for spec in specs:
        name, sep, parts = spec.partition("=")
        if not sep or not name or not parts:
            raise SpeechkitError(f"--combine '{spec}': expected NAME=SUBSET,SUBSET,...")
        combine[name] = [p for p in parts.split(",") if p]
    return combine
