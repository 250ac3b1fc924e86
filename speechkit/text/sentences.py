"""An endless, reproducible stream of natural English sentences for the synthetic corpus.

Sentences are random walks over the word-trigram Markov chain that the ``essential-generators``
package ships (built from Wikipedia text): each walk starts after a sentence end in that text and
stops at the next one. Walks are normalised (``speechkit.text.normalize``) into exactly the words
an engine will say; rejected, too short, too long and repeated ones are skipped.

Two disjoint parts of every seed's sentences, so that no test sentence is ever trained on, by any
corpus of any size (``SENTENCE_SCHEME`` "v2"): a sentence belongs to the *eval* part when a hash of
its text says so (about 1 in ``EVAL_ONE_IN``), whichever stream produced it. The *train* part is the
seed's stream without eval sentences; the eval part comes from a second stream of the seed and
keeps only eval sentences. A corpus fills ``train`` from the train part and its dev and test splits
from the eval part. Corpora made before the split ("v1") took every split from one stream, in
order: ``training_sentences`` rebuilds either scheme's training text from a model card.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import itertools
import json
import random
from collections.abc import Iterator

from speechkit.text.normalize import normalize_text

MIN_WORDS = 5
EVAL_ONE_IN = 8
SENTENCE_SCHEME = "v2"
PARTS = ("all", "train", "eval")
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


def is_eval_sentence(text: str) -> bool:
    """Whether a normalised sentence belongs to the eval part (a fixed hash of its text)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()[0] % EVAL_ONE_IN == 0


def iter_sentences(seed: int, part: str = "all") -> Iterator[str]:
    """Distinct normalised sentences of MIN_WORDS to MAX_WORDS words; the same seed and part give
    the same sequence. ``part``: "all" (one stream, every sentence: scheme v1), "train" (that
    stream without eval sentences) or "eval" (eval sentences of a second stream of the seed)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    chain, starts = markov_chain()
    rng = random.Random(f"eval-{seed}" if part == "eval" else seed)
    seen: set[str] = set()
    while True:
        raw = _walk(chain, starts, rng)
        text = normalize_text(raw) if raw is not None else None
        if text is None or text in seen or not MIN_WORDS <= text.count(" ") + 1 <= MAX_WORDS:
            continue
        seen.add(text)
        if part == "all" or is_eval_sentence(text) == (part == "eval"):
            yield text


def training_sentences(seed: int, train_utterances: int, scheme: str = "v1") -> Iterator[str]:
    """The text of a synth corpus's train split, in order: the first ``train_utterances`` sentences
    of the seed's stream ("v1") or of its train part ("v2"); ``plan_corpus`` fills train first."""
    if scheme not in ("v1", "v2"):
        raise ValueError(f"unknown sentence scheme {scheme!r} (v1 or v2)")
    return itertools.islice(iter_sentences(seed, "all" if scheme == "v1" else "train"), train_utterances)
