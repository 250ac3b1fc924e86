#!/usr/bin/env python3
"""Does a CLEAR model read its text? Two checks on held-out prepared data (`speechkit tts prepare`):

1. the teacher-forced flow loss with each utterance's own transcript against another utterance's
   (a model that ignores the text scores both alike: the gap is ~0), and
2. the attention of the text-reading heads (head 0 of ``align_layers``, else of every layer) from
   the target latents to the phonemes for a few utterances — a diagonal is an alignment — saved
   as ``attention.npz`` and, where matplotlib is installed, ``attention.png``.

    python tools/tts_alignment.py EXP PREP_DIR --out DIR [--utts 48] [--device cuda]

Prints and writes DIR/alignment.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from speechkit.models.tts.clear import PHONE
from speechkit.models.tts.data import collate, load_prepared
from speechkit.data.batches import to_device
from speechkit.models.tts.io import load_tts
from speechkit.text.phonemes import PhonemeVocab


def examples(utts, vocab, mean, std, shift: int):
    """(phoneme ids, prompt, latents) per utterance, the prompt from another utterance of the same
    speaker; the ids from the utterance ``shift`` places on when ``shift`` is not 0."""
    by_spk: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        by_spk.setdefault(u.spk, []).append(i)
    out = []
    for i, u in enumerate(utts):
        other = [k for k in by_spk[u.spk] if k != i] or [(i + 1) % len(utts)]
        prompt = (np.asarray(utts[other[0]].latents[:75]) - mean) / std
        z = (np.asarray(u.latents) - mean) / std
        ids = np.array(vocab.encode(utts[(i + shift) % len(utts)].phones))
        out.append((ids, prompt.astype(np.float32), z.astype(np.float32)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exp", help="experiment dir (model.pt)")
    ap.add_argument("prep", help="prepared held-out dir (latents.npy, utts.jsonl)")
    ap.add_argument("--out", required=True, help="output dir")
    ap.add_argument("--utts", type=int, default=48, help="utterances to score (default 48)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, symbols, _ = load_tts(args.exp, args.device)
    vocab = PhonemeVocab(symbols)
    utts = load_prepared(args.prep)[0][: args.utts]
    mean, std = model.latent_mean.cpu().numpy(), model.latent_std.cpu().numpy()
    result = {"utterances": len(utts)}
    with torch.no_grad():
        for name, shift in (("right_text", 0), ("wrong_text", 7)):
            ex = examples(utts, vocab, mean, std, shift)
            torch.manual_seed(0)
            losses = []
            for _ in range(3):
                for j in range(0, len(ex), args.batch):
                    b = to_device(collate(ex[j : j + args.batch]), args.device)
                    losses.append(float(model(b)[1]["flow"]))
            result[f"flow_loss_{name}"] = round(float(np.mean(losses)), 4)
        result["gap"] = round(result["flow_loss_wrong_text"] - result["flow_loss_right_text"], 4)
        # attention of the text-reading heads for the first utterances
        layers = list(model.cfg.align_layers) or list(range(model.cfg.layers))
        for i in layers:
            model.blocks[i].keep_attn = True
        ex = examples(utts[:4], vocab, mean, std, 0)
        b = to_device(collate(ex), args.device)
        model.run(model.embed(b["kinds"], b["phones"], b["latents"]))
        maps = {}
        for n, (ids, _, z) in enumerate(ex):
            rows = b["flow_mask"][n].nonzero().flatten()
            a = torch.stack([model.blocks[i].attn_logp[n].exp() for i in layers])[:, rows][:, :, : len(ids)]
            maps[f"utt{n}"] = a.float().cpu().numpy()  # [layers, latents, phonemes]
        for i in layers:
            model.blocks[i].keep_attn, model.blocks[i].attn_logp = False, None
        assert int((b["kinds"][0] == PHONE).sum()) == len(ex[0][0])
    # how diagonal: the attention-weighted phoneme position against the latent's position, both in [0, 1]
    corr = []
    for a in maps.values():
        for layer in a:
            pos = (layer * np.arange(layer.shape[1])).sum(1) / np.maximum(layer.sum(1), 1e-9) / max(layer.shape[1] - 1, 1)
            corr.append(float(np.corrcoef(np.linspace(0, 1, len(pos)), pos)[0, 1]))
    result["attention_layers"] = layers
    result["attention_diagonal_corr"] = [round(c, 3) for c in corr]
    result["text_mass"] = [round(float(a.sum(-1).mean()), 3) for a in maps.values()]
    np.savez_compressed(out / "attention.npz", **maps)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(maps), len(layers), figsize=(2.6 * len(layers), 2.4 * len(maps)), squeeze=False)
        for r, (name, a) in enumerate(maps.items()):
            for c, layer in enumerate(layers):
                ax = axes[r][c]
                ax.imshow(a[c].T, origin="lower", aspect="auto", interpolation="nearest")
                ax.set_title(f"{name} layer {layer} head 0", fontsize=7)
                ax.set_xlabel("latent", fontsize=7)
                ax.set_ylabel("phoneme", fontsize=7)
                ax.tick_params(labelsize=6)
        fig.tight_layout()
        fig.savefig(out / "attention.png", dpi=90)
    except ImportError:
        pass
    (out / "alignment.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
