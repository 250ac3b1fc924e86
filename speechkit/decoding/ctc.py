"""CTC decoding: greedy (argmax, collapse repeats, drop blanks) and prefix beam search, the
latter optionally fused with a word n-gram model (:class:`speechkit.decoding.ngram.WordFusion`).

Both work on numpy log-probabilities so the torch-free runtime can share them.
"""

from __future__ import annotations

import math

import numpy as np

from speechkit.decoding.ngram import FusionState, WordFusion

BLANK_ID = 0


def ctc_greedy(log_probs: np.ndarray) -> list[int]:
    """log_probs (T, V) → token ids."""
    best = log_probs.argmax(-1)
    out, prev = [], BLANK_ID
    for t in best.tolist():
        if t != prev and t != BLANK_ID:
            out.append(t)
        prev = t
    return out


def _logadd(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


class CtcPrefixBeamSearch:
    """Prefix beam search that takes log-probabilities a chunk at a time (streaming) and keeps,
    for each prefix, the frame where each of its tokens was first emitted (token times).

    Each prefix keeps two scores: ending in blank and ending in its last token, so a repeated
    token is only emitted twice when a blank separates the two. With ``fusion``, prefixes are
    ranked by that score plus the language model's (words scored as they are completed; the
    n-best and the best as finished sentences).
    """

    def __init__(self, beam: int = 10, token_prune: int | None = None, fusion: WordFusion | None = None):
        self.beam, self.token_prune, self.fusion = beam, token_prune or beam, fusion
        self.reset()

    def reset(self) -> None:
        self.frame = 0
        self.beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix → (p_blank, p_nonblank)
        self.times: dict[tuple[int, ...], tuple[int, ...]] = {(): ()}
        self.lm: dict[tuple[int, ...], FusionState] = {(): self.fusion.initial} if self.fusion else {}

    def _score(self, acoustic, state: FusionState | None, final: bool = False) -> float:
        """A prefix's rank: its acoustic (p_blank, p_nonblank) and, with fusion, its LM state's score."""
        total = _logadd(*acoustic)
        return total + self.fusion.score(state, final) if self.fusion else total

    def accept(self, log_probs: np.ndarray) -> None:
        """log_probs (T, V) for the next T frames."""
        neg = -math.inf
        for frame in log_probs:
            top = np.argpartition(-frame, min(self.token_prune, len(frame) - 1))[: self.token_prune]
            nxt: dict[tuple[int, ...], list[float]] = {}
            times = dict(self.times)
            lm = dict(self.lm)

            def add(prefix, pb, pnb):
                cur = nxt.setdefault(prefix, [neg, neg])
                cur[0] = _logadd(cur[0], pb)
                cur[1] = _logadd(cur[1], pnb)

            for prefix, (pb, pnb) in self.beams.items():
                total = _logadd(pb, pnb)
                for tok in top.tolist():
                    p = float(frame[tok])
                    if tok == BLANK_ID:
                        add(prefix, total + p, neg)
                        continue
                    last = prefix[-1] if prefix else None
                    extended = prefix + (tok,)
                    times.setdefault(extended, self.times[prefix] + (self.frame,))
                    if self.fusion and extended not in lm:
                        lm[extended] = self.fusion.extend(self.lm[prefix], tok)
                    if tok == last:
                        add(extended, neg, pb + p)  # a repeat needs a blank in between
                        add(prefix, neg, pnb + p)  # otherwise it collapses into the same token
                    else:
                        add(extended, neg, total + p)
            ranked = sorted(nxt.items(), key=lambda kv: self._score(kv[1], lm.get(kv[0])), reverse=True)[: self.beam]
            self.beams = {k: (v[0], v[1]) for k, v in ranked}
            self.times = {k: times[k] for k in self.beams}
            self.lm = {k: lm[k] for k in self.beams} if self.fusion else {}
            self.frame += 1

    def nbest(self) -> list[tuple[list[int], float]]:
        """[(token ids, score)], best first; with fusion the score includes the language model's,
        each prefix scored as a finished sentence."""
        scored = [(list(k), self._score(v, self.lm.get(k), final=True)) for k, v in self.beams.items()]
        return sorted(scored, key=lambda kv: kv[1], reverse=True)

    def best(self) -> tuple[list[int], list[int]]:
        """(token ids, frame of each token) of the best prefix."""
        ids = max(self.beams, key=lambda k: self._score(self.beams[k], self.lm.get(k), final=True))
        return list(ids), list(self.times[ids])


def ctc_prefix_beam_search(log_probs: np.ndarray, beam: int = 10, token_prune: int | None = None,
                           fusion: WordFusion | None = None) -> list[tuple[list[int], float]]:
    """log_probs (T, V) → the n-best [(token ids, log score)], best first."""
    search = CtcPrefixBeamSearch(beam, token_prune, fusion)
    search.accept(log_probs)
    return search.nbest()


def ctc_forced_align(log_probs: np.ndarray, tokens: list[int]) -> list[int]:
    """Viterbi CTC alignment of a known token sequence: log_probs (T, V), tokens (U,) → the frame
    of each token's first emission. Raises ValueError when T is too short for the sequence."""
    ext = [BLANK_ID]
    for t in tokens:
        ext += [t, BLANK_ID]
    s, t_len = len(ext), len(log_probs)
    neg = -np.inf
    score = np.full(s, neg)
    score[0] = log_probs[0, ext[0]]
    if s > 1:
        score[1] = log_probs[0, ext[1]]
    back = np.zeros((t_len, s), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    ext_arr = np.asarray(ext)
    skip_ok = np.zeros(s, dtype=bool)
    skip_ok[2:] = (ext_arr[2:] != BLANK_ID) & (ext_arr[2:] != ext_arr[:-2])
    for t in range(1, t_len):
        stay = score
        one = np.concatenate([[neg], score[:-1]])
        two = np.where(skip_ok, np.concatenate([[neg, neg], score[:-2]]), neg)
        stacked = np.stack([stay, one, two])
        back[t] = stacked.argmax(0)
        score = stacked.max(0) + log_probs[t, ext_arr]
    end = s - 1 if s == 1 or score[s - 1] >= score[s - 2] else s - 2
    if not np.isfinite(score[end]):
        raise ValueError(f"{t_len} frames cannot align {len(tokens)} tokens")
    path = np.zeros(t_len, dtype=np.int64)
    state = end
    for t in range(t_len - 1, -1, -1):
        path[t] = state
        state -= int(back[t, state])
    first = {}
    for t, st in enumerate(path.tolist()):
        if st % 2 == 1:
            first.setdefault(st // 2, t)
    return [first[u] for u in range(len(tokens))]
