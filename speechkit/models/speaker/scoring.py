"""Speaker verification on a Kaldi data dir: embed its utterances, score pairs by cosine, and
report the equal error rate (EER) of same-speaker against different-speaker pairs.

Trials are all pairs of segments (every same-speaker pair, different-speaker pairs subsampled
beyond ``max_trials``). A segment is a whole utterance, or, where a data dir has too few
same-speaker pairs of utterances (the synthetic corpus's held-out split has one utterance per
voice), each utterance cut into equal parts: its parts are then same-speaker pairs with other
words but the same recording, which is easier than two recordings apart; the result says which.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from speechkit.audio.io import load_audio
from speechkit.data.kaldi import load_data_dir
from speechkit.errors import AudioError, SpeechkitError
from speechkit.models.speaker.ecapa import EcapaTdnn
from speechkit.models.speaker.embed import MIN_SECONDS, SAMPLE_RATE, embed_samples

MIN_TARGET_PAIRS = 20  # fewer same-speaker pairs of utterances than this: "auto" cuts utterances in two


def equal_error_rate(scores: np.ndarray, targets: np.ndarray) -> float:
    """scores (N,), targets (N,) bool → the rate at which false acceptances equal false rejections,
    interpolated between the two nearest thresholds."""
    targets = np.asarray(targets, dtype=bool)
    n_t, n_n = int(targets.sum()), int((~targets).sum())
    if n_t == 0 or n_n == 0:
        raise SpeechkitError(f"EER needs same- and different-speaker trials (got {n_t} and {n_n})")
    ranked = targets[np.argsort(-np.asarray(scores), kind="stable")]
    false_accept = np.concatenate([[0.0], np.cumsum(~ranked) / n_n])  # accepting the top k trials
    false_reject = np.concatenate([[1.0], 1.0 - np.cumsum(ranked) / n_t])
    gap = false_reject - false_accept  # falls from 1 to -1
    i = int(np.argmax(gap <= 0))
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(false_accept[i - 1] + t * (false_accept[i] - false_accept[i - 1]))


def same_speaker_pairs(speakers: list[str]) -> int:
    _, counts = np.unique(speakers, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def embed_data_dir(model: EcapaTdnn, data_dir: str | Path, parts: int, max_utts: int | None = None
                   ) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """(embeddings (N, D), their speakers, their utterance ids, skipped files): each utterance
    cut into ``parts`` equal segments; a bad file or a segment under ``MIN_SECONDS`` is left out."""
    utts = load_data_dir(data_dir)[:max_utts]
    embs, speakers, ids, skipped = [], [], [], []
    for u in utts:
        try:
            x, _ = load_audio(u.wav, SAMPLE_RATE, resample=True, downmix=True)
        except AudioError as e:
            print(f"speechkit: skipped: {e}", file=sys.stderr)
            skipped.append(str(e))
            continue
        for piece in np.array_split(x, parts):
            if len(piece) >= MIN_SECONDS * SAMPLE_RATE:
                embs.append(embed_samples(model, piece))
                speakers.append(u.speaker)
                ids.append(u.utt_id)
    if not embs:
        raise SpeechkitError(f"{data_dir}: no utterance of at least {MIN_SECONDS * parts:g} s to embed")
    return np.stack(embs), speakers, ids, skipped


def evaluate_data_dir(model: EcapaTdnn, data_dir: str | Path, parts: int = 0, max_trials: int = 1_000_000,
                      max_utts: int | None = None, seed: int = 0) -> dict:
    """EER and trial counts on one data dir. ``parts``: segments per utterance (0: 1 when the dir
    has at least ``MIN_TARGET_PAIRS`` same-speaker pairs of utterances, else 2)."""
    if parts <= 0:
        spk = [u.speaker for u in load_data_dir(data_dir)[:max_utts]]
        parts = 1 if same_speaker_pairs(spk) >= MIN_TARGET_PAIRS else 2
    was_training = model.training
    model.eval()
    emb, speakers, ids, skipped = embed_data_dir(model, data_dir, parts, max_utts)
    model.train(was_training)
    i, j = np.triu_indices(len(emb), k=1)
    spk = np.asarray(speakers)
    target = spk[i] == spk[j]
    nontarget = np.flatnonzero(~target)
    if len(nontarget) > max_trials:  # every same-speaker pair, a random share of the others
        keep = np.sort(np.random.default_rng(seed).choice(nontarget, max_trials, replace=False))
        sel = np.concatenate([np.flatnonzero(target), keep])
        i, j, target = i[sel], j[sel], target[sel]
    scores = np.einsum("nd,nd->n", emb[i], emb[j])
    utt = np.asarray(ids)
    same_utt = utt[i] == utt[j]
    return {"data": str(data_dir), "utterances": len(set(ids)), "speakers": len(set(speakers)), "segments": len(emb),
            "segments_per_utt": parts, "target_trials": int(target.sum()), "target_trials_same_utt": int((target & same_utt).sum()),
            "nontarget_trials": int((~target).sum()), "eer": round(equal_error_rate(scores, target), 4),
            "target_score_mean": round(float(scores[target].mean()), 4) if target.any() else None,
            "nontarget_score_mean": round(float(scores[~target].mean()), 4), "skipped": skipped}
