"""TTS training data: a Kaldi data dir made into phonemes + codec latents, and batches of
``[phonemes] [sep] [prompt latents] [bos] [latents]`` sequences.

``prepare_tts_data`` phonemises every transcript (espeak-ng, one process per batch) and encodes
every wav with an exported codec (torch-free :class:`~speechkit.runtime.codec.CodecRuntime`,
one process per core) into

    OUT/latents.npy   float16 [sum of frames, D] — every utterance's latents, one after another
    OUT/utts.jsonl    {"utt", "spk", "start", "frames", "phones", "text"} per utterance
    OUT/prepare.json  the codec, its frame rate and latent size, counts

A training example pairs an utterance with a prompt: a crop of *another* utterance of the same
speaker (speakers with a single utterance give no examples). Batches are a pure function of
(seed, step) — the training run resumes exactly.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from speechkit.errors import AudioError, SpeechkitError
from speechkit.models.tts.clear import BOS, LATENT, PHONE, PROMPT, SEP

_codec = None


def _init_worker(codec_dir: str) -> None:
    global _codec
    from speechkit.runtime.codec import CodecRuntime

    _codec = CodecRuntime(codec_dir, num_threads=1)


def _encode(path: str) -> np.ndarray | str:
    from speechkit.audio.io import load_audio

    try:
        x = load_audio(path, _codec.sample_rate, resample=True, downmix=True)[0]
    except AudioError as e:
        return str(e)
    return _codec.encode(x).T.astype(np.float16)  # (F, D)


def prepare_tts_data(data_dir: str | Path, codec_dir: str | Path, out_dir: str | Path, nj: int | None = None) -> dict:
    """Phonemes and codec latents of every utterance of ``data_dir`` → ``out_dir`` (see module doc)."""
    from speechkit.data.kaldi import read_table
    from speechkit.runtime.codec import CodecRuntime
    from speechkit.text.phonemes import text_to_phonemes

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    codec = CodecRuntime(codec_dir)
    if codec.kind != "vae":
        raise SpeechkitError(f"{codec_dir}: CLEAR models continuous latents: needs a VAE codec, not {codec.kind!r}")
    wavs = read_table(data_dir / "wav.scp")
    texts = read_table(data_dir / "text")
    spk = read_table(data_dir / "utt2spk")
    utts = [u for u in wavs if u in texts and u in spk]
    if not utts:
        raise SpeechkitError(f"{data_dir}: no utterance with a wav, a text and a speaker")
    phones = text_to_phonemes([texts[u] for u in utts])
    nj = nj or os.cpu_count() or 1
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, parts, start, skipped = [], [], 0, 0
    with ProcessPoolExecutor(nj, initializer=_init_worker, initargs=(str(codec_dir),)) as pool:
        encoded = pool.map(_encode, [wavs[u] for u in utts], chunksize=8)
        for u, ph, z in tqdm(zip(utts, phones, encoded), total=len(utts), desc=f"prepare {data_dir.name}", unit="utt", mininterval=5):
            if isinstance(z, str) or not ph:
                print(f"speechkit: skipped {u}: {z if isinstance(z, str) else 'no phonemes'}", file=sys.stderr)
                skipped += 1
                continue
            rows.append({"utt": u, "spk": spk[u], "start": start, "frames": len(z), "phones": " ".join(ph), "text": texts[u]})
            parts.append(z)
            start += len(z)
    np.save(out_dir / "latents.npy", np.concatenate(parts) if parts else np.zeros((0, codec.latent_dim), np.float16))
    with open(out_dir / "utts.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    info = {"codec": str(Path(codec_dir).resolve()), "frame_rate": codec.sample_rate / codec.hop, "latent_dim": codec.latent_dim,
            "utterances": len(rows), "skipped": skipped, "frames": start, "hours": round(start / (codec.sample_rate / codec.hop) / 3600, 3)}
    (out_dir / "prepare.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


@dataclass
class Utt:
    utt: str
    spk: str
    latents: np.ndarray  # (F, D) float16, a view into the bank
    phones: list[str]
    text: str


def load_prepared(prep_dir: str | Path) -> tuple[list[Utt], dict]:
    prep_dir = Path(prep_dir)
    for name in ("latents.npy", "utts.jsonl", "prepare.json"):
        if not (prep_dir / name).is_file():
            raise SpeechkitError(f"{prep_dir / name}: no such file (run `speechkit tts prepare DATA CODEC {prep_dir}`)")
    z = np.load(prep_dir / "latents.npy", mmap_mode="r")
    info = json.loads((prep_dir / "prepare.json").read_text())
    utts = []
    for line in open(prep_dir / "utts.jsonl"):
        r = json.loads(line)
        utts.append(Utt(r["utt"], r["spk"], z[r["start"] : r["start"] + r["frames"]], r["phones"].split(), r["text"]))
    return utts, info


class TtsBank:
    """Prepared utterances in memory with their phoneme ids; batches by a token budget."""

    def __init__(self, utts: list[Utt], vocab, prompt_frames: tuple[int, int]):
        self.vocab = vocab
        self.prompt_frames = prompt_frames
        by_spk: dict[str, list[int]] = {}
        for i, u in enumerate(utts):
            by_spk.setdefault(u.spk, []).append(i)
        self.utts = utts
        self.latents = [np.asarray(u.latents, dtype=np.float32) for u in utts]
        self.ids = [np.asarray(vocab.encode(u.phones), dtype=np.int64) for u in utts]
        self.same_spk = [by_spk[u.spk] for u in utts]
        # examples: utterances whose speaker has another one to prompt with; sorted by length
        ex = [i for i in range(len(utts)) if len(self.same_spk[i]) > 1]
        if not ex:
            raise SpeechkitError("no speaker with two or more utterances: nothing to prompt with")
        self.examples = sorted(ex, key=lambda i: len(self.ids[i]) + len(self.latents[i]))

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        allz = np.concatenate(self.latents)
        return allz.mean(0), allz.std(0) + 1e-5

    def seq_len(self, i: int) -> int:
        return len(self.ids[i]) + len(self.latents[i]) + self.prompt_frames[1] + 2

    def batch(self, max_tokens: int, seed: int, step: int, mean: np.ndarray, std: np.ndarray) -> dict:
        """Length-homogeneous examples (consecutive in length order from a random start) up to
        ``max_tokens`` padded positions; a pure function of (seed, step)."""
        rng = np.random.default_rng([seed, step])
        at = int(rng.integers(len(self.examples)))
        chosen, longest = [], 0
        for j in list(range(at, len(self.examples))) + list(range(at - 1, -1, -1)):
            i = self.examples[j]
            longest2 = max(longest, self.seq_len(i))
            if chosen and longest2 * (len(chosen) + 1) > max_tokens:
                break
            chosen.append(i)
            longest = longest2
        pairs = []
        for i in chosen:
            others = [k for k in self.same_spk[i] if k != i]
            p = self.latents[others[int(rng.integers(len(others)))]]
            lo, hi = self.prompt_frames
            n = min(len(p), int(rng.integers(lo, hi + 1)))
            off = int(rng.integers(0, len(p) - n + 1))
            pairs.append((self.ids[i], (p[off : off + n] - mean) / std, (self.latents[i] - mean) / std))
        return collate(pairs)


def collate(examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """(phoneme ids [Tp], prompt [P, D], target latents [N, D]) per example → padded numpy
    arrays: kinds, phones [B, T]; latents, targets [B, T, D]; flow_mask, stop, stop_mask [B, T];
    flow_index, stop_index (the masks' flat positions in B*T); and ``phone_span``, the longest phoneme string (an int: the model needs it without a device sync)."""
    import torch

    lens = [len(ph) + len(pr) + len(z) + 2 for ph, pr, z in examples]
    b, t, d = len(examples), max(lens), examples[0][2].shape[1]
    kinds = np.zeros((b, t), np.int64)
    phones = np.zeros((b, t), np.int64)
    lat = np.zeros((b, t, d), np.float32)
    tgt = np.zeros((b, t, d), np.float32)
    flow_mask = np.zeros((b, t), bool)
    stop = np.zeros((b, t), np.float32)
    stop_mask = np.zeros((b, t), bool)
    for i, (ph, pr, z) in enumerate(examples):
        tp, p, n = len(ph), len(pr), len(z)
        kinds[i, :tp], phones[i, :tp] = PHONE, ph
        kinds[i, tp] = SEP
        kinds[i, tp + 1 : tp + 1 + p], lat[i, tp + 1 : tp + 1 + p] = PROMPT, pr
        b0 = tp + 1 + p
        kinds[i, b0] = BOS
        kinds[i, b0 + 1 : b0 + 1 + n], lat[i, b0 + 1 : b0 + 1 + n] = LATENT, z
        tgt[i, b0 : b0 + n] = z  # the position before each latent predicts it
        flow_mask[i, b0 : b0 + n] = True
        stop_mask[i, b0 : b0 + n + 1] = True
        stop[i, b0 + n] = 1.0  # after the last latent: done
    # the masked positions as flat indices too: a gather by index needs no device sync, a boolean mask does
    arrays = {"kinds": kinds, "phones": phones, "latents": lat, "targets": tgt, "flow_mask": flow_mask, "stop": stop, "stop_mask": stop_mask,
              "flow_index": np.flatnonzero(flow_mask), "stop_index": np.flatnonzero(stop_mask)}
    return {**{k: torch.from_numpy(v) for k, v in arrays.items()}, "phone_span": max(len(ph) for ph, _, _ in examples)}
