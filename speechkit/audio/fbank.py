"""Kaldi-compatible log-mel filterbank features through kaldi-native-fbank.

The same ``FbankConfig`` drives training, offline decoding and (later) the streaming runtime, so
the features a model was trained on are the features it is served with. Samples are scaled to
the int16 range before extraction, as Kaldi does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import kaldi_native_fbank as knf
import numpy as np

# kaldi-native-fbank floors mel energies at FLT_EPSILON: the log fbank of digital silence
LOG_FLOOR = float(np.log(np.finfo(np.float32).eps))


@dataclass(frozen=True)
class FbankConfig:
    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return 1000.0 / self.frame_shift_ms

    def as_dict(self) -> dict:
        return asdict(self)


def _options(cfg: FbankConfig) -> knf.FbankOptions:
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = cfg.sample_rate
    opts.frame_opts.frame_length_ms = cfg.frame_length_ms
    opts.frame_opts.frame_shift_ms = cfg.frame_shift_ms
    opts.frame_opts.dither = cfg.dither
    opts.frame_opts.snip_edges = False  # frame count = round(N / shift): streaming gives the same frames
    opts.mel_opts.num_bins = cfg.num_mel_bins
    return opts


def online_fbank(cfg: FbankConfig) -> knf.OnlineFbank:
    """A streaming fbank extractor with ``cfg``'s settings (the runtimes' per-stream front end)."""
    return knf.OnlineFbank(_options(cfg))


def compute_fbank(samples: np.ndarray, cfg: FbankConfig = FbankConfig()) -> np.ndarray:
    """samples: float32 (N,) in [-1, 1] at ``cfg.sample_rate`` → (T, num_mel_bins) float32."""
    fbank = online_fbank(cfg)
    fbank.accept_waveform(cfg.sample_rate, np.asarray(samples, dtype=np.float32) * 32768.0)
    fbank.input_finished()
    return read_frames(fbank, 0, np.empty((fbank.num_frames_ready, cfg.num_mel_bins), dtype=np.float32))


def read_frames(fbank: knf.OnlineFbank, start: int, out: np.ndarray) -> np.ndarray:
    """Frames ``start`` .. ``start + len(out) - 1`` of ``fbank`` written into the rows of ``out``
    (n, num_mel_bins) float32, in place, and ``out`` returned. kaldi-native-fbank hands out one
    frame a call; filling a preallocated array skips the list and the copy of ``np.stack``."""
    get = fbank.get_frame
    for i in range(len(out)):
        out[i] = get(start + i)
    return out


def pad_feats(feats: list[np.ndarray], min_frames: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(T_i, F) fbank arrays → zero-padded (B, T, F) float32 and lengths (B,) int64. Lengths are at
    least ``min_frames`` (the padding stands in for frames an utterance lacks)."""
    lens = np.array([max(len(f), min_frames) for f in feats], dtype=np.int64)
    x = np.zeros((len(feats), int(lens.max()), feats[0].shape[1]), dtype=np.float32)
    for i, f in enumerate(feats):
        x[i, : len(f)] = f
    return x, lens
