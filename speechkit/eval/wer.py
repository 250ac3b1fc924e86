"""Word and character error rates of a Kaldi ``hyp`` against a Kaldi ``text`` (jiwer), of two text
lists, and the ``wer`` read back from the wer.json that ``speechkit score --out`` writes; per
utterance errors and a paired bootstrap for comparing two systems on the same utterances."""

from __future__ import annotations

import json
from pathlib import Path

import jiwer
import numpy as np

from speechkit.data.kaldi import read_table
from speechkit.errors import SpeechkitError


def score(ref_path: str | Path, hyp_path: str | Path) -> dict:
    """Utterances missing from the hypothesis count as deleted entirely (and are counted)."""
    ref = read_table(Path(ref_path), allow_empty_value=True)
    hyp = read_table(Path(hyp_path), allow_empty_value=True)
    keys = sorted(ref)
    result = score_texts([ref[k] for k in keys], [hyp.get(k, "") for k in keys])
    result["missing"] = sum(k not in hyp for k in keys)
    return result


def score_texts(refs: list[str], hyps: list[str]) -> dict:
    """WER/CER (%) of parallel lists of lower-case word strings; empty references are left out."""
    n_utts = len(refs)
    refs, hyps = _scored(refs, hyps)
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    n_words = sum(len(r.split()) for r in refs)
    return {
        "wer": 100.0 * words.wer, "cer": 100.0 * chars.cer,
        "substitutions": words.substitutions, "deletions": words.deletions, "insertions": words.insertions,
        "ref_words": n_words, "utterances": n_utts, "missing": 0,
        "sentence_errors": sum(r != h for r, h in zip(refs, hyps)),
    }


def wer_percent(refs: list[str], hyps: list[str], digits: int | None = None) -> float | None:
    """WER (%) of parallel lists as :func:`score_texts` counts it, rounded to ``digits`` when given;
    None when no reference is non-empty."""
    refs, hyps = _scored(refs, hyps)
    if not refs:
        return None
    wer = 100.0 * jiwer.process_words(refs, hyps).wer
    return wer if digits is None else round(wer, digits)


def _scored(refs: list[str], hyps: list[str]) -> tuple[list[str], list[str]]:
    """The pairs with a non-empty reference, runs of whitespace made one space."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    pairs = [(" ".join(r.split()), " ".join(h.split())) for r, h in zip(refs, hyps) if r.strip()]
    return [r for r, _ in pairs], [h for _, h in pairs]


def utterance_errors(refs: list[str], hyps: list[str], unit: str = "word") -> list[int]:
    """Edit operations (substitutions + deletions + insertions) of each pair, in words or characters
    (``unit`` "char", spaces included as jiwer's CER counts them); pairs with an empty reference are
    left out, as :func:`score_texts` leaves them out."""
    if unit not in ("word", "char"):
        raise ValueError(f"unit {unit!r}: word or char")
    process = jiwer.process_words if unit == "word" else jiwer.process_characters
    out = []
    for r, h in zip(*_scored(refs, hyps)):
        o = process(r, h)
        out.append(o.substitutions + o.deletions + o.insertions)
    return out


def paired_bootstrap(new: list[int], old: list[int], draws: int = 10_000, seed: int = 0) -> float:
    """The share of bootstrap resamples of the utterances (with replacement, ``draws`` of them) in
    which ``new`` makes strictly fewer errors in total than ``old`` on the same utterances."""
    a, b = np.asarray(new, dtype=np.int64), np.asarray(old, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"two equal non-empty lists of per-utterance errors, got {a.shape} and {b.shape}")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(draws, len(a)))
    return float(((a - b)[idx].sum(axis=1) < 0).mean())


def read_wer_json(path: str | Path, missing_ok: bool = False) -> float | None:
    """The ``wer`` of a ``speechkit score --out`` wer.json; None for a missing file when
    ``missing_ok``. A missing file otherwise, or a malformed one, is a SpeechkitError naming it."""
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return None
        raise SpeechkitError(f"{path}: missing (a wer.json from `speechkit score --out`)")
    try:
        return float(json.loads(path.read_text())["wer"])
    except (ValueError, KeyError, TypeError) as e:
        raise SpeechkitError(f"{path}: not a wer.json with a numeric 'wer' ({type(e).__name__}: {e})") from None


def score_to_file(ref_path, hyp_path, out_json) -> dict:
    result = score(ref_path, hyp_path)
    Path(out_json).write_text(json.dumps(result, indent=1))
    return result
