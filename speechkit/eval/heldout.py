"""Judges never score what they were trained on.

A project ASR model that judges TTS, codecs or another recogniser ships a ``card.json`` whose
``corpus`` names the synth corpus it learnt from (seed, train utterances and the sentence scheme,
``speechkit.text.sentences``), and a fine-tuned judge's ``corpus.pretraining`` the corpus it was
first trained on. Its training text (the train sentences of all of them) is rebuilt from that (a
few seconds) and every judged utterance whose sentence is in it is left out; the result says how
many and how. A judge without a card has unknown training text: nothing is dropped and the result
says so.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path


def judge_corpus(model_dir: str | Path) -> dict | None:
    """The ``corpus`` entry of a model's ``card.json``, or None when it has no card."""
    card = Path(model_dir) / "card.json"
    if not card.is_file():
        return None
    corpus = json.loads(card.read_text()).get("corpus")
    if not corpus or "seed" not in corpus or "train_utterances" not in corpus:
        return None
    return corpus


@functools.lru_cache(maxsize=4)
def _training_text(seed: int, train_utterances: int, scheme: str) -> frozenset[str]:
    from speechkit.text.sentences import training_sentences

    return frozenset(training_sentences(seed, train_utterances, scheme))


def corpora(corpus: dict) -> list[dict]:
    """The card's corpus and, for a fine-tuned judge, the one it was first trained on (and so on)."""
    chain = [corpus]
    while isinstance(chain[-1].get("pretraining"), dict):
        chain.append(chain[-1]["pretraining"])
    return chain


def _describe(corpus: dict) -> str:
    return f"synth corpus seed {corpus['seed']}, {corpus['train_utterances']} train sentences, scheme {corpus.get('sentences', 'v1')}"


def training_text(corpus: dict) -> frozenset[str]:
    """Every sentence of the train split of the synth corpus a card describes, and of the corpus
    it names as ``pretraining``."""
    return frozenset().union(*(_training_text(int(c["seed"]), int(c["train_utterances"]), c.get("sentences", "v1"))
                               for c in corpora(corpus)))


def held_out(texts: Sequence[str], model_dir: str | Path) -> tuple[list[bool], dict]:
    """Which of ``texts`` the judge in ``model_dir`` never trained on, and a record of the check
    for the result JSON: {"judge", "checked", "dropped", "how"}."""
    corpus = judge_corpus(model_dir)
    record = {"judge": str(model_dir), "checked": len(texts)}
    if corpus is None:
        return [True] * len(texts), {**record, "dropped": 0,
                                     "how": "the judge has no card.json naming its corpus: its training text is unknown"}
    seen = training_text(corpus)
    keep = [t not in seen for t in texts]
    return keep, {**record, "dropped": keep.count(False),
                  "how": f"left out the sentences of the judge's training text, rebuilt from its card "
                         f"({'; then '.join(_describe(c) for c in reversed(corpora(corpus)))})"}
