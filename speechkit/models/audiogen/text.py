"""Captions for text-to-music: a word-level tokenizer built from the training captions and a small
transformer encoder trained with the music model (no pretrained text model exists offline).

Captions are lower-cased, punctuation dropped, and every digit is its own token ("124 bpm" →
"1 2 4 bpm"), so tempi and keys never seen whole still encode. The encoder prepends a learned
NULL token to every caption; the null condition of classifier-free guidance is an empty caption
(NULL alone), so it needs no separate code path and keeps the graph's shapes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from speechkit.errors import SpeechkitError
from speechkit.text.captions import caption_words
from speechkit.models.audiogen.config import TextEncoderConfig
from speechkit.nn.attention import sinusoidal_positions

PAD, UNK = 0, 1
SPECIALS = ("<pad>", "<unk>")


class CaptionTokenizer:
    """Word ids: 0 ``<pad>``, 1 ``<unk>``, then the vocabulary's words."""

    def __init__(self, words: Iterable[str]):
        self.words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.ids = {w: i for i, w in enumerate(self.words)}
        if len(self.ids) != len(self.words):
            raise SpeechkitError("caption vocabulary has repeated words")

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> CaptionTokenizer:
        """The words seen at least ``min_count`` times, most frequent first (ties alphabetical);
        the ten digits always."""
        counts = Counter(w for c in captions for w in caption_words(c))
        words = sorted((w for w, n in counts.items() if n >= min_count and not w.isdigit()), key=lambda w: (-counts[w], w))
        return cls([str(d) for d in range(10)] + words)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, caption: str, max_tokens: int | None = None) -> list[int]:
        ids = [self.ids.get(w, UNK) for w in caption_words(caption)]
        return ids[:max_tokens] if max_tokens else ids

    def batch(self, captions: list[str], max_tokens: int | None = None) -> Tensor:
        """Captions → ids [B, L] (int64, right-padded with PAD; L at least 1)."""
        rows = [self.encode(c, max_tokens) for c in captions]
        out = torch.full((len(rows), max(1, *map(len, rows)) if rows else 1), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"words": self.words}, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CaptionTokenizer:
        path = Path(path)
        try:
            words = json.loads(path.read_text(encoding="utf-8"))["words"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SpeechkitError(f"{path}: not a caption vocabulary ({type(e).__name__}: {e})".splitlines()[0]) from None
        if not isinstance(words, list) or list(words[: len(SPECIALS)]) != list(SPECIALS):
            raise SpeechkitError(f"{path}: a caption vocabulary starts with {', '.join(SPECIALS)}")
        return cls(words)


def null_captions(tokens: Tensor, drop: Tensor) -> Tensor:
    """Classifier-free guidance's condition dropout: the rows of ``tokens`` [B, L] where ``drop``
    [B] (bool) is set become the empty caption (all PAD)."""
    return tokens.masked_fill(drop[:, None], PAD)


class TextEncoder(nn.Module):
    """Caption ids → states for cross-attention. The first state is a learned NULL token that is
    always valid, so an empty caption (the null condition) still has one key to attend to."""

    def __init__(self, cfg: TextEncoderConfig, d_model: int, dropout: float = 0.1):
        super().__init__()
        if cfg.vocab_size < len(SPECIALS) + 1:
            raise SpeechkitError(f"text.vocab_size must be set from the caption vocabulary, got {cfg.vocab_size}")
        self.max_tokens = cfg.max_tokens
        self.embed = nn.Embedding(cfg.vocab_size, d_model, padding_idx=PAD)
        self.null = nn.Parameter(torch.randn(d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, cfg.heads, cfg.ff, dropout, activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """B: batch, L: caption tokens (PAD = 0 pads), D: d_model.

        tokens [B, L] int64 → states [B, 1 + L', D], mask [B, 1 + L'] bool (True on the NULL token
        and the caption's words), L' = min(L, max_tokens).
        """
        tokens = tokens[:, : self.max_tokens]
        b, n = tokens.shape
        x = self.embed(tokens) + sinusoidal_positions(n, self.embed.embedding_dim, tokens.device, self.embed.weight.dtype)
        x = torch.cat([self.null.to(x.dtype).expand(b, 1, -1), x], dim=1)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=tokens.device), tokens != PAD], dim=1)
        return self.norm(self.layers(x, src_key_padding_mask=~mask)), mask
