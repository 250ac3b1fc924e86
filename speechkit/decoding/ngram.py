"""Word n-gram language models for shallow fusion in the CTC prefix beam search (plain Python,
no torch: the runtime uses it).

:func:`train_ngram` counts words of normalised sentences into an interpolated Kneser-Ney model,
optionally dropping rare n-grams of the highest order (their mass goes back to the lower orders);
:meth:`NgramLM.write_arpa` and :meth:`NgramLM.load` speak the ARPA format (log10), so a model
made by KenLM's ``lmplz`` or SRILM loads as well. :class:`WordFusion` scores a CTC hypothesis
made of tokenizer pieces with the model: a word is scored once the piece after it starts a new
word (``▁``), and a word in the making that no known word begins with pays the unknown-word cost
at once, so the search drops it early.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from speechkit.errors import SpeechkitError
from speechkit.text.tokenizer import SPACE  # the tokenizers' word-boundary mark

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LOG10 = math.log(10.0)
ARPA_NO_PROB = -99.0  # what ARPA files give <s>, which is never predicted


class NgramLM:
    """A backoff n-gram model. ``probs[n]`` maps n-gram tuples to natural-log probabilities,
    ``backoffs`` maps contexts (tuples of fewer than ``order`` words) to natural-log weights."""

    def __init__(self, order: int, probs: dict[int, dict[tuple[str, ...], float]], backoffs: dict[tuple[str, ...], float]):
        self.order, self.probs, self.backoffs = order, probs, backoffs
        unigrams = probs.get(1, {})
        if (UNK,) not in unigrams:
            raise SpeechkitError(f"the language model has no {UNK} unigram, so it cannot score unknown words")
        self.unk = unigrams[(UNK,)]
        self.vocab = {w for (w,) in unigrams if w not in (BOS, EOS, UNK)}
        self._prefixes: set[str] | None = None
        self._cache: dict[tuple[tuple[str, ...], str], float] = {}

    def logp(self, context: tuple[str, ...], word: str) -> float:
        """Natural-log P(word | context) with backoff; an unknown word scores as ``<unk>``."""
        key = (context, word)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if word not in self.vocab and word != EOS:
            word = UNK
        ctx = context[len(context) - min(len(context), self.order - 1):]
        bo = 0.0
        for k in range(len(ctx), -1, -1):
            c = ctx[len(ctx) - k:]
            p = self.probs[k + 1].get(c + (word,))
            if p is not None:
                break
            bo += self.backoffs.get(c, 0.0) if k else 0.0
        else:
            p = self.unk
        if len(self._cache) > 1_000_000:  # a long-running server keeps the cache bounded
            self._cache.clear()
        self._cache[key] = bo + p
        return bo + p

    def next_state(self, context: tuple[str, ...], word: str) -> tuple[str, ...]:
        if word not in self.vocab and word != EOS:
            word = UNK
        return (context + (word,))[-(self.order - 1):] if self.order > 1 else ()

    def sentence_logp(self, words: list[str]) -> float:
        """Natural-log probability of a whole sentence, ``</s>`` included."""
        state, total = (BOS,), 0.0
        for w in words + [EOS]:
            total += self.logp(state, w)
            state = self.next_state(state, w)
        return total

    def is_prefix(self, partial: str) -> bool:
        """Whether some known word starts with ``partial``."""
        if self._prefixes is None:
            self._prefixes = {w[:i] for w in self.vocab for i in range(1, len(w) + 1)}
        return partial in self._prefixes

    def write_arpa(self, path: str | Path) -> None:
        lines = ["", "\\data\\"] + [f"ngram {n}={len(self.probs[n])}" for n in range(1, self.order + 1)]
        for n in range(1, self.order + 1):
            lines += ["", f"\\{n}-grams:"]
            for gram in sorted(self.probs[n]):
                p = self.probs[n][gram] / LOG10 if gram != (BOS,) else ARPA_NO_PROB
                line = f"{p:.6f}\t{' '.join(gram)}"
                if n < self.order and gram in self.backoffs:
                    line += f"\t{self.backoffs[gram] / LOG10:.6f}"
                lines.append(line)
        lines += ["", "\\end\\", ""]
        Path(path).write_text("\n".join(lines), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "NgramLM":
        """Read an ARPA file; a missing or malformed one is a one-line error naming it."""
        path = Path(path)
        if not path.is_file():
            raise SpeechkitError(f"{path}: no such language model file (make one with 'speechkit lm train')")
        probs: dict[int, dict[tuple[str, ...], float]] = {}
        backoffs: dict[tuple[str, ...], float] = {}
        order, section = 0, None
        with path.open(encoding="utf-8") as f:
            for i, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                if line == "\\data\\":
                    section = "data"
                elif line.startswith("ngram ") and section == "data":
                    order = max(order, int(line.split()[1].split("=")[0]))
                elif line.endswith("-grams:") and line.startswith("\\"):
                    section = int(line[1:].split("-")[0])
                    probs.setdefault(section, {})
                elif line == "\\end\\":
                    break
                elif isinstance(section, int):
                    parts = line.split()
                    if len(parts) not in (section + 1, section + 2):
                        raise SpeechkitError(f"{path}:{i}: not an ARPA {section}-gram line: {line[:60]!r}")
                    gram = tuple(parts[1 : section + 1])
                    probs[section][gram] = float(parts[0]) * LOG10
                    if len(parts) == section + 2:
                        backoffs[gram] = float(parts[-1]) * LOG10
        if not order or any(n not in probs for n in range(1, order + 1)):
            raise SpeechkitError(f"{path}: not an ARPA language model (no \\data\\ header or a missing n-gram section)")
        return cls(order, probs, backoffs)


def train_ngram(sentences: Iterable[str], order: int = 3, min_count: int = 1) -> NgramLM:
    """Interpolated Kneser-Ney over normalised sentences (words split on spaces), written in
    backoff form. ``min_count`` > 1 drops n-grams of the highest order seen fewer times (order
    >= 2); each context's backoff weight is renormalised over what is kept."""
    if order < 1:
        raise SpeechkitError(f"order must be at least 1, not {order}")
    top: dict[tuple[str, ...], int] = defaultdict(int)
    n_sent = 0
    for s in sentences:
        words = s.split()
        if not words:
            continue
        n_sent += 1
        seq = [BOS] + words + [EOS]
        for i in range(1, len(seq)):
            top[tuple(seq[max(0, i - order + 1) : i + 1])] += 1
    if not n_sent:
        raise SpeechkitError("no sentences to train the language model on")
    # counts per order: the highest order's raw counts; lower orders count distinct left
    # extensions (continuation counts), except n-grams that start the sentence, which have none
    counts: dict[int, dict[tuple[str, ...], int]] = {order: {}}
    for g, c in top.items():
        if len(g) == order:
            counts[order][g] = c
        else:  # a short n-gram only at the sentence start (<s> w ... with fewer words than order)
            counts.setdefault(len(g), {})[g] = c
    for n in range(order - 1, 0, -1):
        cur = counts.setdefault(n, {})
        for g in counts[n + 1]:
            low = g[1:]
            if low[0] == BOS:
                continue
            cur[low] = cur.get(low, 0) + 1
    counts[1].pop((BOS,), None)
    discounts = {}
    for n in range(1, order + 1):
        n1 = sum(1 for c in counts[n].values() if c == 1)
        n2 = sum(1 for c in counts[n].values() if c == 2)
        discounts[n] = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
    probs: dict[int, dict[tuple[str, ...], float]] = {}
    # unigrams: discounted continuation counts, the discounted mass spread evenly over the
    # vocabulary and <unk>
    vocab = sorted(w for (w,) in counts[1])
    total = sum(counts[1].values())
    d = discounts[1]
    uniform = d * len(counts[1]) / total / (len(vocab) + 1)
    probs[1] = {(w,): math.log(max(counts[1][(w,)] - d, 0.0) / total + uniform) for w in vocab}
    probs[1][(UNK,)] = math.log(uniform)
    probs[1][(BOS,)] = ARPA_NO_PROB * LOG10
    backoffs: dict[tuple[str, ...], float] = {}
    for n in range(2, order + 1):
        lower = NgramLM(n - 1, probs, backoffs)  # the orders built so far: P(w | h') as the ARPA file will give it

        def p_low(g: tuple[str, ...]) -> float:
            return math.exp(lower.logp(g[1:-1], g[-1]))

        d = discounts[n]
        ctx_total: dict[tuple[str, ...], int] = defaultdict(int)
        ctx_types: dict[tuple[str, ...], int] = defaultdict(int)
        for g, c in counts[n].items():
            ctx_total[g[:-1]] += c
            ctx_types[g[:-1]] += 1
        pn = {g: max(c - d, 0.0) / ctx_total[g[:-1]] + d * ctx_types[g[:-1]] / ctx_total[g[:-1]] * p_low(g)
              for g, c in counts[n].items() if n < order or c >= min_count}
        kept_p: dict[tuple[str, ...], float] = defaultdict(float)
        kept_low: dict[tuple[str, ...], float] = defaultdict(float)
        for g, p in pn.items():
            kept_p[g[:-1]] += p
            kept_low[g[:-1]] += p_low(g)
        for h in ctx_total:  # the backoff weight that makes P(. | h) sum to one over what is kept
            left, low_left = 1.0 - kept_p.get(h, 0.0), 1.0 - kept_low.get(h, 0.0)
            if left > 1e-12 and low_left > 1e-12:
                backoffs[h] = math.log(left / low_left)
        probs[n] = {g: math.log(p) for g, p in pn.items()}
    return NgramLM(order, probs, backoffs)


@dataclass(frozen=True)
class FusionState:
    """A hypothesis's language-model side: the last words, their summed log-probability, how many
    words are scored and the word still being spelt."""

    context: tuple[str, ...]
    logp: float = 0.0
    words: int = 0
    partial: str = ""


class WordFusion:
    """Shallow fusion of a word n-gram model into a search over tokenizer pieces: the search ranks
    by its own score plus ``weight`` x the words' log-probability plus ``bonus`` per word."""

    def __init__(self, lm: NgramLM, pieces: list[str], weight: float = 0.5, bonus: float = 1.0):
        self.lm, self.pieces, self.weight, self.bonus = lm, pieces, weight, bonus
        self.initial = FusionState((BOS,))

    def extend(self, state: FusionState, token: int) -> FusionState:
        piece = self.pieces[token]
        if not piece.startswith(SPACE):
            return FusionState(state.context, state.logp, state.words, state.partial + piece)
        if not state.partial:  # a boundary with no word before it (the start, or two in a row)
            return FusionState(state.context, state.logp, state.words, piece[1:])
        word = state.partial
        return FusionState(self.lm.next_state(state.context, word), state.logp + self.lm.logp(state.context, word),
                           state.words + 1, piece[1:])

    def score(self, state: FusionState, final: bool = False) -> float:
        """What the language model adds to a hypothesis's score; ``final``: as a finished
        sentence (the word being spelt scored, then ``</s>``)."""
        logp, words = state.logp, state.words
        if final:
            ctx = state.context
            if state.partial:
                logp += self.lm.logp(ctx, state.partial)
                ctx = self.lm.next_state(ctx, state.partial)
                words += 1
            logp += self.lm.logp(ctx, EOS)
        elif state.partial and not self.lm.is_prefix(state.partial):
            logp += self.lm.unk  # no known word starts like this: pay for the unknown word now
        return self.weight * logp + self.bonus * words


def require_beam(beam: int) -> None:
    """A language model is fused into a beam search: the one-line error for a greedy search."""
    if beam <= 1:
        raise SpeechkitError("a language model (--lm) works inside the beam search: give --beam > 1 (e.g. 16)")


@dataclass(frozen=True)
class LmConfig:
    """Which ARPA model to fuse into a CTC beam search, and how strongly."""

    path: str
    weight: float = 0.5
    bonus: float = 1.0

    def fusion(self, tokenizer) -> WordFusion:
        """The fusion for a search over ``tokenizer``'s pieces (the model loaded once per process)."""
        pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
        return WordFusion(load_lm(self.path), pieces, self.weight, self.bonus)


_LOADED: dict[str, NgramLM] = {}


def load_lm(path: str | Path) -> NgramLM:
    """:meth:`NgramLM.load`, once per file and process (many streams share one model)."""
    key = str(Path(path).resolve())
    if key not in _LOADED:
        _LOADED[key] = NgramLM.load(path)
    return _LOADED[key]
