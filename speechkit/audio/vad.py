"""A speech-activity gate in front of the recognizers, so that silence and non-speech give no text.

Each 10 ms frame (25 ms window) is speech-like when it is loud enough, stands above the noise
floor (the quietest frame of the last few seconds), its spectrum is neither flat once its tilt is
removed (noise of any colour) nor one sinusoid's peak, and it differs from the frame 100 ms
before (speech never holds still; tones, chords and hum do). Steady sounds also never rise above
their own floor, so each test covers the others' gaps. A recognizer keeps a token only when
enough speech-like frames lie around its time, and an offline one does not decode a piece
without any.
The gate is causal and framed on a fixed grid, so it gives the same answer however the audio is
split into blocks, and it keeps one byte per frame (100 bytes a second).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_SECONDS = 0.01  # one decision per 10 ms, the fbank's frame shift
WINDOW_SECONDS = 0.025
CHANGE_SECONDS = 0.1  # spectral change is measured against the frame this long before


@dataclass(frozen=True)
class GateConfig:
    silence_db: float = -55.0  # frames quieter than this (RMS, dB full scale) are silence
    above_floor_db: float = 8.0  # speech stands this far above the quietest frame of the last floor_seconds
    floor_seconds: float = 3.0
    max_flatness: float = 0.45  # flatness of the 125 Hz-4 kHz log spectrum less its tilt: noise ≈ 0.58, speech ≈ 0.18
    max_peak: float = 0.95  # share of the energy above 100 Hz in the strongest 3 FFT bins: a pure tone ≈ 0.97-1.0
    min_change: float = 0.2  # spectral change over 100 ms (0 same, 1 disjoint): steady tones 0, speech ≈ 0.9
    min_speech: float = 0.15  # seconds of speech-like frames that make a stretch of audio speech


class SpeechGate:
    """One stream's gate: ``accept`` samples as they come (float32 mono at ``sample_rate``), then
    ask ``speech_seconds(t0, t1)``. Frame t ends at sample (t + 1) × hop, so a frame exists as soon
    as its samples do (the window starts before 0 for the first frames: zeros there)."""

    def __init__(self, sample_rate: int, cfg: GateConfig = GateConfig()):
        self.cfg, self.sample_rate = cfg, sample_rate
        self.hop = int(round(FRAME_SECONDS * sample_rate))
        self.win = int(round(WINDOW_SECONDS * sample_rate))
        self.nfft = 1 << (self.win - 1).bit_length()
        hz = np.fft.rfftfreq(self.nfft, 1.0 / sample_rate)
        self.flat_band = (hz >= 125.0) & (hz <= min(4000.0, 0.45 * sample_rate))
        self.peak_band = hz >= 100.0
        self.tilt = np.stack([np.ones(self.flat_band.sum()), np.log(hz[self.flat_band])], axis=1)  # log power ≈ a + b log f
        self.tilt_fit = np.linalg.pinv(self.tilt).T  # (bins, 2): least-squares (a, b) of a frame
        self.window = np.hanning(self.win)
        self.lag = int(round(CHANGE_SECONDS / FRAME_SECONDS))
        self.recent_power = np.zeros((self.lag, self.peak_band.sum()))  # the last ``lag`` frames' spectra
        self.floor_frames = max(1, int(round(cfg.floor_seconds / FRAME_SECONDS)))
        self.tail = np.zeros(self.win - self.hop, dtype=np.float64)  # samples the next frame's window starts with
        self.recent_db = np.full(0, np.inf)  # levels of the last floor_frames frames
        self.active = bytearray()  # one 0/1 per frame

    @property
    def frames(self) -> int:
        return len(self.active)

    def accept(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32)
        step = 100 * self.hop  # 1 s at a time: the work arrays stay small whatever the block
        for at in range(0, len(samples), step):
            x = np.concatenate([self.tail, samples[at : at + step]])
            n = (len(x) - self.win) // self.hop + 1 if len(x) >= self.win else 0
            if n:
                idx = np.arange(n)[:, None] * self.hop + np.arange(self.win)[None]
                self.active += self._decide(x[idx]).astype(np.uint8).tobytes()
            self.tail = x[n * self.hop :]

    def _decide(self, frames: np.ndarray) -> np.ndarray:
        """frames (M, win) → speech-like (M,) bool."""
        cfg = self.cfg
        frames = frames - frames.mean(axis=1, keepdims=True)
        db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
        power = np.abs(np.fft.rfft(frames * self.window, self.nfft, axis=1)) ** 2 + 1e-20
        log_power = np.log(power[:, self.flat_band])
        residual = log_power - (log_power @ self.tilt_fit) @ self.tilt.T
        flatness = np.exp(np.mean(residual, axis=1)) / np.mean(np.exp(residual), axis=1)
        wide = power[:, self.peak_band]
        peak = (wide[:, :-2] + wide[:, 1:-1] + wide[:, 2:]).max(axis=1) / wide.sum(axis=1)
        before = np.concatenate([self.recent_power, wide])[: len(wide)]
        change = np.abs(wide - before).sum(axis=1) / (wide + before).sum(axis=1)
        self.recent_power = np.concatenate([self.recent_power, wide])[-self.lag :]
        history = np.concatenate([self.recent_db, db])
        padded = np.concatenate([np.full(self.floor_frames, np.inf), history])
        floor = np.lib.stride_tricks.sliding_window_view(padded, self.floor_frames + 1).min(axis=1)[-len(db) :]
        self.recent_db = history[-self.floor_frames :]
        return ((db > cfg.silence_db) & (db >= floor + cfg.above_floor_db) & (flatness < cfg.max_flatness)
                & (peak < cfg.max_peak) & (change > cfg.min_change))

    def speech_seconds(self, start: float, end: float) -> float:
        """Seconds of speech-like frames between ``start`` and ``end`` (seconds from the stream's
        start; frames not seen yet count as none)."""
        a = max(0, int(np.floor(start / FRAME_SECONDS)))
        b = min(self.frames, int(np.ceil(end / FRAME_SECONDS)))
        return self.active[a:b].count(1) * FRAME_SECONDS if b > a else 0.0

    def is_speech(self, start: float, end: float) -> bool:
        return self.speech_seconds(start, end) >= self.cfg.min_speech - 1e-9
