"""Offline recognition with an exported Paraformer, with no torch: kaldi-native-fbank features,
one ONNX Runtime call per padded batch (encoder, CIF and the one-pass decoder are all in the
graph), word times from the CIF weights.

    rec = OfflineRecognizer("models/asr-paraformer-synth")
    for r in rec.recognize([samples_a, samples_b]):   # float32 in [-1, 1] at rec.sample_rate
        print(r.text, r.words)

Long audio is cut into segments of at most ``max_segment`` seconds at the quietest 100 ms near
each cut, so memory stays bounded whatever the file's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkit.audio.fbank import compute_fbank, pad_feats
from speechkit.decoding.cif_times import token_spans, word_times
from speechkit.errors import AudioError
from speechkit.runtime.session import open_model
from speechkit.text.tokenizer import load_tokenizer


@dataclass
class OfflineResult:
    text: str
    words: list[tuple[str, float, float]]  # (word, start s, end s)
    token_ids: list[int]


class OfflineRecognizer:
    def __init__(self, model_dir: str | Path, *, num_threads: int = 1, model_file: str = "model.onnx",
                 max_batch_seconds: float = 60.0, max_segment: float = 30.0):
        model_dir = Path(model_dir)
        self.session, self.meta, self.fbank_cfg = open_model(model_dir, model_file, "paraformer", "Paraformer", num_threads)
        meta = self.meta
        self.sample_rate = self.fbank_cfg.sample_rate
        self.subsampling = int(meta["subsampling"])
        self.frame_seconds = self.subsampling * self.fbank_cfg.frame_shift_ms / 1000.0
        self.threshold = float(meta["cif_threshold"])
        self.tokenizer = load_tokenizer(model_dir)
        self.max_batch_frames = int(max_batch_seconds * 1000.0 / self.fbank_cfg.frame_shift_ms)
        self.max_segment = max_segment

    def prepare(self, samples: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """Mono float32 at the model's rate (other rates are resampled, as in the streaming runtime)."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise AudioError(f"audio must be mono (N,), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise AudioError("audio contains NaN or infinite samples")
        if sample_rate is not None and sample_rate != self.sample_rate and x.size:
            import soxr

            x = soxr.resample(x, sample_rate, self.sample_rate).astype(np.float32)
        return x

    def recognize(self, waveforms: list[np.ndarray], sample_rate: int | None = None) -> list[OfflineResult]:
        """Whole waveforms → one result each; batched by length, one graph call per batch."""
        feats = [compute_fbank(self.prepare(w, sample_rate), self.fbank_cfg) for w in waveforms]
        results: list[OfflineResult | None] = [None] * len(feats)
        order = sorted(range(len(feats)), key=lambda i: len(feats[i]))
        batch: list[int] = []
        for i in order + [None]:
            if i is not None and (not batch or len(feats[i]) * (len(batch) + 1) <= self.max_batch_frames):
                batch.append(i)
                continue
            if batch:
                for j, r in zip(batch, self._run([feats[j] for j in batch])):
                    results[j] = r
            batch = [i] if i is not None else []
        return results

    def transcribe_batch(self, waveforms: list[np.ndarray]) -> list[str]:
        return [r.text for r in self.recognize(waveforms)]

    def _run(self, feats: list[np.ndarray]) -> list[OfflineResult]:
        short = [len(f) < 7 for f in feats]  # fewer fbank frames than one encoder frame needs
        x, lens = pad_feats(feats, min_frames=7)
        tokens, token_lens, _, alphas, alphas_len = self.session.run(
            ["tokens", "token_lens", "log_probs", "alphas", "alphas_len"], {"x": x, "x_lens": lens})
        out = []
        for b in range(len(feats)):
            n = 0 if short[b] else int(token_lens[b])
            ids = tokens[b, :n].tolist()
            spans = token_spans(alphas[b, : int(alphas_len[b])], n, self.threshold)
            words = word_times([self.tokenizer.id_to_piece(i) for i in ids], spans, self.frame_seconds)
            out.append(OfflineResult(self.tokenizer.decode(ids), words, ids))
        return out

    def segments(self, samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Cut a long waveform at the quietest 100 ms in the last third of each ``max_segment``
        window → (start sample, piece)."""
        n_max = int(self.max_segment * self.sample_rate)
        hop = self.sample_rate // 10
        out, start = [], 0
        while len(samples) - start > n_max:
            window = samples[start + 2 * n_max // 3 : start + n_max]
            energy = np.add.reduceat(window.astype(np.float64) ** 2, np.arange(0, len(window), hop))
            cut = start + 2 * n_max // 3 + int(np.argmin(energy)) * hop + hop // 2
            out.append((start, samples[start:cut]))
            start = cut
        out.append((start, samples[start:]))
        return out

    def transcribe_long(self, samples: np.ndarray, sample_rate: int | None = None) -> OfflineResult:
        """Any length: segments recognised as one batch, texts joined, word times shifted."""
        samples = self.prepare(samples, sample_rate)
        pieces = self.segments(samples)
        words, ids, texts = [], [], []
        for (start, _), r in zip(pieces, self.recognize([p for _, p in pieces])):
            offset = start / self.sample_rate
            words += [(w, s + offset, e + offset) for w, s, e in r.words]
            ids += r.token_ids
            texts += [r.text] if r.text else []
        return OfflineResult(" ".join(texts), words, ids)
