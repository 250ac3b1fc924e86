"""Map-style dataset over a feature dump with tokenized transcripts, and its padding collate."""

from __future__ import annotations

import numpy as np
import torch

from speechkit.data.features import FeatureDump


class AsrDataset(torch.utils.data.Dataset):
    """Items are (fbank (T, F) float32, token ids); utterances with no tokens are kept (CTC allows it)."""

    def __init__(self, dump: FeatureDump, tokenizer):
        self.dump = dump
        self.tokens = [np.asarray(tokenizer.encode(t), dtype=np.int64) for t in dump.texts]

    def __len__(self) -> int:
        return len(self.dump)

    def __getitem__(self, i: int):
        return self.dump.feats(i), self.tokens[i]


def collate(items) -> dict[str, torch.Tensor]:
    """B: batch, T: longest fbank, U: longest token sequence; padding is 0 (masked by the lengths)."""
    feats, tokens = zip(*items)
    feat_lens = torch.tensor([len(f) for f in feats], dtype=torch.long)
    tok_lens = torch.tensor([len(t) for t in tokens], dtype=torch.long)
    x = torch.zeros(len(feats), int(feat_lens.max()), feats[0].shape[1])
    y = torch.zeros(len(tokens), max(int(tok_lens.max()), 1), dtype=torch.long)
    for i, (f, t) in enumerate(zip(feats, tokens)):
        x[i, : len(f)] = torch.from_numpy(f)
        y[i, : len(t)] = torch.from_numpy(t)
    return {"feats": x, "feat_lens": feat_lens, "tokens": y, "token_lens": tok_lens}
