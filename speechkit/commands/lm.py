"""`speechkit lm train|eval`: word n-gram language models (interpolated Kneser-Ney, ARPA files)
for shallow fusion in the CTC beam search (`decode-stream`, `transcribe`, `stream`: `--lm`).

By default the text is the synthetic corpora's own sentence stream, its *train* part only (no
test sentence of any corpus is in it); `--text` and `--data` add or replace it, and `--exclude`
takes out every sentence of the data dirs given (the sets you will score on)."""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

from tqdm import tqdm

from speechkit.errors import SpeechkitError


def _data_text(data_dir: str) -> list[str]:
    """The normalised sentences of a data dir's ``text`` (its utterance ids dropped)."""
    from speechkit.data.kaldi import read_table
    from speechkit.text.normalize import normalize_text

    return [t for t in map(normalize_text, read_table(Path(data_dir) / "text").values()) if t]


def _text_file(path: str) -> list[str]:
    from speechkit.text.normalize import normalize_text

    p = Path(path)
    if not p.is_file():
        raise SpeechkitError(f"{path}: no such text file")
    return [t for t in (normalize_text(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()) if t]


def evaluate(lm, sentences: list[str]) -> dict:
    """Perplexity (per word, ``</s>`` counted) and the out-of-vocabulary rate."""
    words = oov = 0
    total = 0.0
    for s in sentences:
        w = s.split()
        words += len(w)
        oov += sum(1 for x in w if x not in lm.vocab)
        total += lm.sentence_logp(w)
    n = words + len(sentences)
    return {"sentences": len(sentences), "words": words, "oov_rate": round(100.0 * oov / max(words, 1), 2),
            "perplexity": round(math.exp(-total / max(n, 1)), 1)}


def _train(args) -> None:
    from speechkit.decoding.ngram import train_ngram

    texts: list[str] = []
    for f in args.text or ():
        texts += _text_file(f)
    for d in args.data or ():
        texts += _data_text(d)
    if args.sentences is None:
        args.sentences = 0 if texts else 200_000
    if args.sentences:
        from speechkit.text.sentences import iter_sentences

        stream = itertools.islice(iter_sentences(args.seed, "train"), args.sentences)
        texts += list(tqdm(stream, total=args.sentences, desc="corpus sentences (train part)", unit="sent"))
    excluded = set()
    for d in args.exclude or ():
        excluded |= set(_data_text(d))
    kept = [t for t in texts if t not in excluded]
    lm = train_ngram(tqdm(kept, desc=f"counting {args.order}-grams", unit="sent"), args.order, args.min_count)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lm.write_arpa(out)
    info = {"sentences": len(kept), "excluded": len(texts) - len(kept), "words": sum(t.count(" ") + 1 for t in kept),
            "vocab": len(lm.vocab), "ngrams": {str(n): len(p) for n, p in lm.probs.items()}, "order": args.order,
            "min_count": args.min_count, "size_mb": round(out.stat().st_size / 1e6, 1)}
    info["eval"] = {d: evaluate(lm, _data_text(d)) for d in args.eval or ()}
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    grams = ", ".join(f"{n}-grams {c}" for n, c in info["ngrams"].items())
    print(f"{out}: {args.order}-gram LM from {info['sentences']} sentences ({info['words']} words, {info['excluded']} excluded), "
          f"vocabulary {info['vocab']}, {grams}, {info['size_mb']} MB")
    for d, r in info["eval"].items():
        print(f"  {d}: perplexity {r['perplexity']}, OOV {r['oov_rate']} % of {r['words']} words")


def _eval(args) -> None:
    from speechkit.decoding.ngram import NgramLM

    lm = NgramLM.load(args.lm)
    for d in args.data:
        r = evaluate(lm, _data_text(d))
        print(f"{d}: perplexity {r['perplexity']}, OOV {r['oov_rate']} % of {r['words']} words ({r['sentences']} sentences)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    lm = sub.add_parser("lm", help="word n-gram language models for the CTC beam search (--lm): train, eval"
                        ).add_subparsers(dest="lm", metavar="ACTION", required=True)
    t = lm.add_parser("train", help="an interpolated Kneser-Ney n-gram model written as an ARPA file (and OUT.json with "
                      "its sizes and --eval figures)")
    t.add_argument("out", metavar="OUT.arpa")
    t.add_argument("--text", nargs="+", default=None, metavar="FILE", help="plain text files, one sentence per line")
    t.add_argument("--data", nargs="+", default=None, metavar="DIR", help="data dirs whose text files are used")
    t.add_argument("--sentences", type=int, default=None,
                   help="sentences from the synthetic corpora's stream, train part (default 200000 when no --text/--data, else 0)")
    t.add_argument("--seed", type=int, default=0, help="the sentence stream's seed (default 0, the corpora's)")
    t.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    t.add_argument("--min-count", type=int, default=2,
                   help="drop highest-order n-grams seen fewer times (default 2: singletons go; 1 keeps all)")
    t.add_argument("--exclude", nargs="+", default=None, metavar="DIR",
                   help="leave out every sentence of these data dirs (the sets you will score on)")
    t.add_argument("--eval", nargs="+", default=None, metavar="DIR", help="print perplexity and OOV rate on these data dirs")
    t.set_defaults(func=_train)
    e = lm.add_parser("eval", help="perplexity and out-of-vocabulary rate of an ARPA model on data dirs' text")
    e.add_argument("lm", metavar="LM.arpa")
    e.add_argument("data", nargs="+", metavar="DIR")
    e.set_defaults(func=_eval)
