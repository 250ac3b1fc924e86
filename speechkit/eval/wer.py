"""Word and character error rates of a Kaldi ``hyp`` against a Kaldi ``text`` (jiwer)."""

from __future__ import annotations

import json
from pathlib import Path

import jiwer

from speechkit.data.kaldi import read_table


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
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    n_utts = len(refs)
    nonempty = [(" ".join(r.split()), " ".join(h.split())) for r, h in zip(refs, hyps) if r.strip()]
    refs, hyps = [r for r, _ in nonempty], [h for _, h in nonempty]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    n_words = sum(len(r.split()) for r in refs)
    return {
        "wer": 100.0 * words.wer, "cer": 100.0 * chars.cer,
        "substitutions": words.substitutions, "deletions": words.deletions, "insertions": words.insertions,
        "ref_words": n_words, "utterances": n_utts, "missing": 0,
        "sentence_errors": sum(r != h for r, h in zip(refs, hyps)),
    }


def score_to_file(ref_path, hyp_path, out_json) -> dict:
    result = score(ref_path, hyp_path)
    Path(out_json).write_text(json.dumps(result, indent=1))
    return result
