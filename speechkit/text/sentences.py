"""An endless, reproducible stream of natural English sentences for the synthetic corpus.

Sentences are random walks over the word-trigram Markov chain that the ``essential-generators``
package ships (built from Wikipedia text): each walk starts after a sentence end in that text and
stops at the next one. Walks are normalised (``speechkit.text.normalize``) into exactly the words
an engine will say; rejected, too short, too long and repeated ones are skipped.
"""

from __future__ import annotations

import functools
import importlib.resources
import itertools
import json
import random
from collections.abc import Iterator

from speechkit.text.normalize import normalize_text

MIN_WORDS = 5
MAX_WORDS = 20
_MAX_WALK = 40  # raw tokens; longer walks rarely normalise to MAX_WORDS or fewer

Chain = dict[str, tuple[tuple[str, ...], tuple[float, ...]]]


def _ends_sentence(token: str) -> bool:
    return token.rstrip("\"')]")[-1:] in (".", "!", "?")


@functools.lru_cache(maxsize=1)
def markov_chain() -> tuple[Chain, tuple[str, ...]]:
    """The chain as ``"w1 w2" -> (next words, cumulative weights)`` and the sorted start bigrams:
    those whose first word is capitalised and follows a sentence end. Loaded once per process
    (the JSON is 46 MB)."""
    source = importlib.resources.files("essential_generators") / "markov_textgen.json"
    with source.open(encoding="utf-8") as f:
        raw = json.load(f)
    chain: Chain = {
        key: (tuple(entry["transitions"]), tuple(itertools.accumulate(entry["weights"])))
        for key, entry in raw.items()
        if entry["transitions"]
    }
    del raw
    starts = set()
    for key, (nexts, _) in chain.items():
        prev, _, first = key.partition(" ")
        if _ends_sentence(prev) and first[:1].isupper():
            starts.update(f"{first} {w}" for w in nexts if f"{first} {w}" in chain)
    return chain, tuple(sorted(starts))


def _walk(chain: Chain, starts: tuple[str, ...], rng: random.Random) -> str | None:
    words = rng.choice(starts).split(" ")
    while not _ends_sentence(words[-1]):
        step = chain.get(f"{words[-2]} {words[-1]}")
        if step is None or len(words) >= _MAX_WALK:
            return None
        nexts, cum_weights = step
        words.append(nexts[0] if len(nexts) == 1 else rng.choices(nexts, cum_weights=cum_weights)[0])
    return " ".join(words)


def iter_sentences(seed: int) -> Iterator[str]:
    """Distinct normalised sentences of MIN_WORDS to MAX_WORDS words; the same seed gives the
    same sequence."""
    chain, starts = markov_chain()
    rng = random.Random(seed)
    seen: set[str] = set()
    while True:
        raw = _walk(chain, starts, rng)
        text = normalize_text(raw) if raw is not None else None
        if text is None or text in seen or not MIN_WORDS <= text.count(" ") + 1 <= MAX_WORDS:
            continue
        seen.add(text)
        yield text
