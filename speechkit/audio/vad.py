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

import itertools
from dataclasses import dataclass

import numpy as np

from speechkit.errors import SpeechkitError

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
        self.recent_db = np.full(self.floor_frames, np.inf)  # levels of the last floor_frames frames (inf before the first)
        self.active = bytearray()  # one 0/1 per frame

    @property
    def frames(self) -> int:
        return len(self.active)

    def accept(self, samples: np.ndarray) -> None:
        for frames in self._frames(np.asarray(samples, dtype=np.float32)):
            self.active += self._decide(frames).astype(np.uint8).tobytes()

    def _frames(self, samples: np.ndarray) -> list[np.ndarray]:
        """The frames (M, win) that ``samples`` complete, one array per second of them (the work
        arrays stay small whatever the block; ``accept_many`` keeps these same pieces); moves the tail on."""
        out, step = [], 100 * self.hop
        for at in range(0, len(samples), step):
            x = np.concatenate([self.tail, samples[at : at + step]])
            n = (len(x) - self.win) // self.hop + 1 if len(x) >= self.win else 0
            if n:  # a view of x (the ndarray constructor costs a tenth of as_strided's per-call time)
                out.append(np.ndarray((n, self.win), x.dtype, x, 0, (self.hop * x.itemsize, x.itemsize)))
            self.tail = x[n * self.hop :]
        return out

    def _decide(self, frames: np.ndarray) -> np.ndarray:
        """frames (M, win) → speech-like (M,) bool."""
        db, log_power, wide = self._measure(frames)
        return self._update(db, *self._shape(self._untilt(log_power), wide), wide)

    def _measure(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame by frame (each row alone, so frames of many gates at this rate can go in one array):
        level (M,) dB, log power in the flatness band (M, bins), power above 100 Hz (M, bins)."""
        # sum / n is np.mean's own arithmetic, without its per-call Python
        frames = frames - frames.sum(axis=1, keepdims=True) / self.win
        db = 10.0 * np.log10((frames**2).sum(axis=1) / self.win + 1e-12)
        power = np.abs(np.fft.rfft(frames * self.window, self.nfft, axis=1)) ** 2 + 1e-20
        return db, np.log(power[:, self.flat_band]), power[:, self.peak_band]

    def _untilt(self, log_power: np.ndarray) -> np.ndarray:
        # one call per piece of ``_frames`` (or a stack of such pieces, one BLAS call each): BLAS gives
        # last-bit different rows for different M
        return log_power - (log_power @ self.tilt_fit) @ self.tilt.T

    @staticmethod
    def _shape(residual: np.ndarray, wide: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row by row: spectral flatness (of the untilted log spectrum) and the strongest 3 bins' share."""
        bins = residual.shape[1]
        flatness = np.exp(residual.sum(axis=1) / bins) / (np.exp(residual).sum(axis=1) / bins)
        peak = (wide[:, :-2] + wide[:, 1:-1] + wide[:, 2:]).max(axis=1) / wide.sum(axis=1)
        return flatness, peak

    def _update(self, db: np.ndarray, flatness: np.ndarray, peak: np.ndarray, wide: np.ndarray) -> np.ndarray:
        """The frames' measures, in order, against this stream's recent frames (spectral change,
        noise floor) → speech-like (M,) bool; keeps what the next frames need."""
        spectra = np.concatenate([self.recent_power, wide])
        change = _change(wide, spectra[: len(wide)])
        self.recent_power = spectra[-self.lag :]
        levels = np.concatenate([self.recent_db, db])  # each frame's floor: the least of its level and the hold before
        hold = self.floor_frames
        floor = np.ndarray((len(db), hold + 1), levels.dtype, levels, 0, 2 * levels.strides).min(axis=1)
        self.recent_db = levels[-hold:]
        return _speech_like(self.cfg, db, floor, flatness, peak, change)

    def speech_seconds(self, start: float, end: float) -> float:
        """Seconds of speech-like frames between ``start`` and ``end`` (seconds from the stream's
        start; frames not seen yet count as none)."""
        a = max(0, int(np.floor(start / FRAME_SECONDS)))
        b = min(self.frames, int(np.ceil(end / FRAME_SECONDS)))
        return self.active[a:b].count(1) * FRAME_SECONDS if b > a else 0.0

    def is_speech(self, start: float, end: float) -> bool:
        return self.speech_seconds(start, end) >= self.cfg.min_speech - 1e-9


def _change(now: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Spectral change of each frame against the one ``lag`` before: 0 same, 1 disjoint."""
    return np.abs(now - before).sum(axis=1) / (now + before).sum(axis=1)


def _speech_like(cfg: GateConfig, level, floor, flatness, peak, change) -> np.ndarray:
    """The gate's rule over per-frame measures → speech-like (M,) bool."""
    return ((level > cfg.silence_db) & (level >= floor + cfg.above_floor_db) & (flatness < cfg.max_flatness)
            & (peak < cfg.max_peak) & (change > cfg.min_change))


MANY_ROWS = 256  # frames measured in one array by ``accept_many``: its work arrays stay in cache (2048: ~35 % slower)


def accept_many(gates: list[SpeechGate], blocks: list[np.ndarray]) -> None:
    """``gates[i].accept(blocks[i])`` for every i, bit for bit, in a few numpy calls for them all
    instead of a few dozen for each: the frames of all the gates of one sample rate and
    configuration are measured (level, spectrum, flatness, peak) in shared arrays, and their
    states (noise floor, spectral change, ``active``) move on together. A gate may come more than
    once; its blocks are taken in order."""
    if len(gates) != len(blocks):
        raise SpeechkitError(f"accept_many got {len(gates)} gates and {len(blocks)} blocks")
    if len(gates) == 1:  # nothing to share: the plain path has fewer steps
        gates[0].accept(blocks[0])
        return
    groups: dict[tuple, list[tuple[SpeechGate, np.ndarray]]] = {}
    for g, b in zip(gates, blocks):
        pieces = g._frames(np.asarray(b, dtype=np.float32))
        if pieces:
            groups.setdefault((g.sample_rate, g.cfg), []).extend((g, f) for f in pieces)
    for calls in groups.values():
        at = 0
        while at < len(calls):  # pieces of at most MANY_ROWS frames (one call's frames are never split)
            end, rows = at + 1, len(calls[at][1])
            while end < len(calls) and rows + len(calls[end][1]) <= MANY_ROWS:
                rows += len(calls[end][1])
                end += 1
            _decide_many(calls[at:end])
            at = end


def _decide_many(calls: list[tuple[SpeechGate, np.ndarray]]) -> None:
    """``g.active += g._decide(frames)`` for each (g, frames), in order; all of one rate and config."""
    g0 = calls[0][0]
    db, log_power, wide = g0._measure(np.concatenate([f for _, f in calls]) if len(calls) > 1 else calls[0][1])
    residual = np.empty(log_power.shape)  # C order, as ``_untilt`` gives it (log_power's is F): row sums add in the same order
    rounds: list[list[tuple[SpeechGate, int, int]]] = []  # round k: each gate's k-th call
    seen: dict[int, int] = {}
    lone: list[int] = []  # rows of calls with one frame
    a = 0
    for n, run in itertools.groupby(len(f) for _, f in calls):
        # a matmul per piece, as ``accept`` makes them: stacked, one BLAS call per piece still
        k = len(list(run))
        b = a + k * n
        residual[a:b].reshape(k, n, -1)[...] = g0._untilt(log_power[a:b].reshape(k, n, -1))
        a = b
    a = 0
    for g, f in calls:
        b = a + len(f)
        k = seen[id(g)] = seen.get(id(g), -1) + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append((g, a, b))
        if b - a == 1:
            lone.append(a)
        a = b
    flatness, peak = g0._shape(residual, wide)
    for a in lone:  # ``accept``'s power row of a lone frame is contiguous, so its sum goes pairwise: here too
        peak[a] = g0._shape(residual[a : a + 1], wide[a : a + 1].copy())[1][0]
    for items in rounds:
        _update_many(items, db, flatness, peak, wide)


def _update_many(items: list[tuple[SpeechGate, int, int]], db, flatness, peak, wide) -> None:
    """``SpeechGate._update`` for distinct gates of one config at once, rows a:b of the measures being each one's."""
    g0 = items[0][0]
    cfg, lag, hold = g0.cfg, g0.lag, g0.floor_frames
    m = np.array([b - a for _, a, b in items])
    first = np.repeat(np.cumsum(m) - m, m)  # each frame's call's first row, in the round's order
    within = np.arange(m.sum()) - first
    in_order = all(items[i][2] == items[i + 1][1] for i in range(len(items) - 1))

    def rows(x: np.ndarray) -> np.ndarray:  # the round's calls' rows, in its order
        return x[items[0][1] : items[-1][2]] if in_order else np.concatenate([x[a:b] for _, a, b in items])

    # spectral change: each frame against the one ``lag`` before, that gate's recent spectra first
    now = rows(wide)
    before = np.concatenate([p for g, a, b in items for p in (g.recent_power[: b - a], wide[a : max(a, b - lag)])])
    change = _change(now, before)
    # noise floor: each call's frames after its gate's recent levels, ``hold`` + M values a call
    levels = np.concatenate([p for g, a, b in items for p in (g.recent_db, db[a:b])])
    starts_db = np.cumsum(m + hold) - (m + hold)
    windows = np.lib.stride_tricks.sliding_window_view(levels, hold + 1)
    floor = windows[np.repeat(starts_db, m) + within].min(axis=1)
    level, flat, pk = rows(db), rows(flatness), rows(peak)
    bits = _speech_like(cfg, level, floor, flat, pk, change).astype(np.uint8).tobytes()
    at = 0
    for (g, a, b), sd, n in zip(items, starts_db, m.tolist()):
        g.recent_power = wide[b - lag : b].copy() if n >= lag else np.concatenate([g.recent_power[n:], wide[a:b]])
        g.recent_db = levels[sd + n : sd + hold + n].copy()
        g.active += bits[at : at + n]
        at += n
