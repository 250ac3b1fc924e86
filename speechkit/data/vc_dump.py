"""The voice-conversion training dump (built by ``speechkit vc prepare``, see
``speechkit.train.vc_prepare``): for every utterance of a Kaldi
data dir, at 25 frames/s, the codec's VAE latents (the target), the streaming ASR encoder's block
output (the content, computed chunk by chunk with its caches exactly as a stream would) and one
speaker embedding of the whole utterance.

A dump dir holds
  ``utt_ids.txt``, ``spk.txt``  one line per utterance (data dir order), its speaker
  ``offsets.npy``               int64 (N + 1,): frame offsets into the two frame arrays
  ``latents.npy``               float16 (frames, latent_dim), not normalised
  ``content.npy``               float16 (frames, content_dim)
  ``spk_emb.npy``               float32 (N, spk_dim), L2-normalised
  ``stats.json``                dims, the latents' per-dimension mean and std, the models used
  ``skipped.txt``               one line per utterance left out, with the reason
and is written into ``DIR.tmp`` then renamed, so a dump that exists is complete.
Latents and content frames come from different models at the same rate; each utterance keeps the
shorter count, and one whose counts differ by more than two frames is skipped as a mismatch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkit.errors import SpeechkitError


@dataclass
class VcDump:
    utt_ids: list[str]
    spk: list[str]
    offsets: np.ndarray
    latents: np.ndarray
    content: np.ndarray
    spk_emb: np.ndarray
    stats: dict

    @classmethod
    def open(cls, dump_dir: str | Path) -> "VcDump":
        d = Path(dump_dir)
        if not (d / "stats.json").is_file():
            raise SpeechkitError(f"{d}: not a voice-conversion dump (make one with `speechkit vc prepare DATA {d}`)")
        return cls(utt_ids=(d / "utt_ids.txt").read_text().split(), spk=(d / "spk.txt").read_text().split(),
                   offsets=np.load(d / "offsets.npy"), latents=np.load(d / "latents.npy", mmap_mode="r"),
                   content=np.load(d / "content.npy", mmap_mode="r"), spk_emb=np.load(d / "spk_emb.npy"),
                   stats=json.loads((d / "stats.json").read_text()))

    def __len__(self) -> int:
        return len(self.utt_ids)

    def frames(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Utterance ``i`` → (latents (F, latent_dim), content (F, content_dim)), float16 views."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.latents[a:b], self.content[a:b]
