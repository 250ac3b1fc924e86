"""Tokenizers for CTC-style heads: characters or a sentencepiece BPE model.

Both reserve id 0 for the CTC blank (``<blk>``) and id 1 for ``<unk>``, so a head never needs
to know which tokenizer it was trained with.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from speechkit.errors import SpeechkitError

BLANK = "<blk>"
UNK = "<unk>"
SPACE = "\u2581"  # sentencepiece's word-boundary mark, reused by the char tokenizer


class CharTokenizer:
    kind = "char"

    def __init__(self, tokens: list[str]):
        if tokens[:2] != [BLANK, UNK]:
            raise SpeechkitError(f"char token list must start with {BLANK} {UNK}")
        self.tokens = tokens
        self._ids = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def train(cls, texts: list[str], out_dir: Path) -> "CharTokenizer":
        chars = sorted({c for t in texts for c in t.replace(" ", SPACE)})
        tok = cls([BLANK, UNK] + chars)
        (Path(out_dir) / "tokens.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(tok.tokens)), encoding="utf-8")
        return tok

    @classmethod
    def load(cls, path: Path) -> "CharTokenizer":
        return cls([line.split(" ")[0] for line in path.read_text(encoding="utf-8").splitlines()])

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(c, 1) for c in text.replace(" ", SPACE)]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.tokens[i] for i in ids if i > 1).replace(SPACE, " ").strip()

    def id_to_piece(self, i: int) -> str:
        return self.tokens[i]


class BpeTokenizer:
    kind = "bpe"

    def __init__(self, model_path: Path):
        self.model_path = Path(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=str(model_path))

    @classmethod
    def train(cls, texts: list[str], out_dir: Path, vocab_size: int) -> "BpeTokenizer":
        out_dir = Path(out_dir)
        corpus = out_dir / "bpe_train.txt"
        corpus.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(out_dir / "bpe"), vocab_size=vocab_size, model_type="bpe",
            character_coverage=1.0, pad_id=0, pad_piece=BLANK, unk_id=1, bos_id=-1, eos_id=-1,
            input_sentence_size=2_000_000, shuffle_input_sentence=True, minloglevel=2, num_threads=1,
        )
        corpus.unlink()
        return cls(out_dir / "bpe.model")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([i for i in ids if i > 1])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(i)


Tokenizer = CharTokenizer | BpeTokenizer


def load_tokenizer(exp_dir: str | Path) -> Tokenizer:
    """The tokenizer saved beside a model: ``bpe.model`` or ``tokens.txt``."""
    exp_dir = Path(exp_dir)
    if (exp_dir / "bpe.model").is_file():
        return BpeTokenizer(exp_dir / "bpe.model")
    if (exp_dir / "tokens.txt").is_file():
        return CharTokenizer.load(exp_dir / "tokens.txt")
    raise SpeechkitError(f"{exp_dir}: no tokenizer (bpe.model or tokens.txt)")


def train_tokenizer(kind: str, texts: list[str], out_dir: str | Path, vocab_size: int = 256) -> Tokenizer:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "char":
        return CharTokenizer.train(texts, out_dir)
    if kind == "bpe":
        return BpeTokenizer.train(texts, out_dir, vocab_size)
    raise SpeechkitError(f"unknown tokenizer '{kind}' (choose char or bpe)")
