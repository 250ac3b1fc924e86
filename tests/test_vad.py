"""The speech gate batched across streams (vad.accept_many) gives the bits of each gate's own accept."""

from pathlib import Path

import numpy as np
import pytest

from speechkit.audio import vad
from speechkit.audio.vad import GateConfig, SpeechGate, accept_many
from speechkit.errors import SpeechkitError


def _signal(rng, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    kind = rng.integers(5)
    if kind == 0:
        return np.zeros(n)
    if kind == 1:  # a steady tone
        return 0.3 * np.sin(2 * np.pi * rng.uniform(100, 0.4 * sr) * t)
    if kind == 2:  # white noise, loud or faint
        return rng.normal(0, rng.uniform(1e-4, 0.3), n)
    if kind == 3:  # speech-like: a wobbling pitch's harmonics, syllable gaps, a little noise
        f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))
        x = sum(np.sin(2 * np.pi * np.cumsum(f0 * h) / sr) / h for h in range(1, 20))
        return 0.1 * x * (np.sin(2 * np.pi * 4 * t) > -0.3) + rng.normal(0, 1e-3, n)
    return 1e-6 * rng.standard_normal(n)  # near silence


def _state(g: SpeechGate):
    return bytes(g.active), g.tail.tobytes(), g.recent_db.tobytes(), g.recent_power.tobytes()


def _record(monkeypatch, seen: dict):
    """Every frame's measures (level, flatness, peak: flatness and peak never reach the state),
    by the frame's samples, into ``seen``."""
    measure, shape, last = SpeechGate._measure, SpeechGate._shape, []

    def spy_measure(self, frames):
        out = measure(self, frames)
        last[:] = [np.array(frames), out[0]]
        return out

    def spy_shape(residual, wide):
        flatness, peak = shape(residual, wide)
        for frame, d, f, p in zip(*last, flatness, peak):
            seen[frame.tobytes()] = (float(d), float(f), float(p))
        return flatness, peak

    monkeypatch.setattr(SpeechGate, "_measure", spy_measure)
    monkeypatch.setattr(SpeechGate, "_shape", staticmethod(spy_shape))


@pytest.mark.parametrize("seed", [0, 1])
def test_accept_many_is_bit_identical_to_each_gate_alone(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    rates = [16000, 16000, 16000, 8000, 48000, 16000]  # mixed rates and a second config go in one call
    cfgs = [GateConfig()] * 5 + [GateConfig(floor_seconds=0.5, min_change=0.1)]
    audio = [np.concatenate([_signal(rng, int(rng.integers(1, 2 * sr)), sr) for _ in range(3)]).astype(np.float32)
             for sr in rates]
    alone = [SpeechGate(sr, c) for sr, c in zip(rates, cfgs)]
    many = [SpeechGate(sr, c) for sr, c in zip(rates, cfgs)]
    pos = [0] * len(audio)
    calls = 0
    while any(p < len(x) for p, x in zip(pos, audio)):
        gates, blocks = [], []
        for i, (sr, x) in enumerate(zip(rates, audio)):
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # idle some steps, twice in one call other steps
                n = int(rng.choice([1, 50, sr // 100, sr // 100 + 1, sr // 10, int(1.3 * sr), int(rng.integers(1, sr))]))
                block = x[pos[i] : pos[i] + n]
                pos[i] += n
                alone[i].accept(block)
                gates.append(many[i])
                blocks.append(block)
        accept_many(gates, blocks)
        calls += 1
    assert calls > 5
    for a, m, x, sr in zip(alone, many, audio, rates):
        assert a.frames == len(x) // (sr // 100)
        assert _state(a) == _state(m)
    assert sum(a.active.count(1) for a in alone) > 50  # some speech was heard, and some not
    assert sum(a.active.count(0) for a in alone) > 50

    # and the measures behind the decisions are the same bits, frame by frame: 1, 2, 3 and 10 frames
    # a call (BLAS gives different last bits for different row counts: each call's rows keep theirs)
    sizes = [160, 320, 320, 320, 480, 1600, 1600]  # runs of calls of one size too (one lone frame a call: the spy takes it first)
    x = [(_signal(rng, 40000, 16000) + rng.normal(0, 1e-7, 40000)).astype(np.float32) for _ in sizes]  # no two frames alike
    measured = []
    for batched in (False, True):
        seen: dict = {}
        with monkeypatch.context() as mp:
            _record(mp, seen)
            gates = [SpeechGate(16000) for _ in x]
            for step in range(25):
                blocks = [xi[step * n : (step + 1) * n] for xi, n in zip(x, sizes)]
                if batched:
                    accept_many(gates, blocks)
                else:
                    for g, b in zip(gates, blocks):
                        g.accept(b)
        measured.append(seen)
    assert len(measured[0]) > 300 and measured[0] == measured[1]


def test_accept_many_in_small_pieces_and_bad_input(monkeypatch):
    monkeypatch.setattr(vad, "MANY_ROWS", 7)  # many pieces: a gate's calls fall on both sides of a piece's edge
    rng = np.random.default_rng(3)
    x = [_signal(rng, 24000, 16000).astype(np.float32) for _ in range(5)]
    alone, many = [SpeechGate(16000) for _ in x], [SpeechGate(16000) for _ in x]
    for at in range(0, 24000, 2400):
        for g, xi in zip(alone, x):
            g.accept(xi[at : at + 2400])
        accept_many(many, [xi[at : at + 2400] for xi in x])
    assert [_state(g) for g in alone] == [_state(g) for g in many]
    with pytest.raises(SpeechkitError, match="2 gates and 1 blocks"):
        accept_many(many[:2], [x[0]])


def test_streams_gated_later_in_one_pass_match_streams_gated_at_once():
    from speechkit.audio.fbank import FbankConfig, online_fbank
    from speechkit.runtime.asr import Stream, feed_gates

    def stream():
        return Stream(online_fbank(FbankConfig()), [], 16000, gate=SpeechGate(16000))

    rng = np.random.default_rng(4)
    rates = [16000, 48000, 8000, 16000]  # the gate sees model-rate audio: 48 and 8 kHz go through the resampler
    audio = [np.concatenate([_signal(rng, 2 * r, r) for _ in range(2)]).astype(np.float32) for r in rates]
    now, later = [stream() for _ in rates], [stream() for _ in rates]
    for step, at in enumerate(np.linspace(0, 1, 13)[1:]):
        for s, t, x, r in zip(now, later, audio, rates):
            a, b = int(len(x) * (at - 1 / 12)), int(len(x) * at)
            s.accept_waveform(x[a:b], r)
            if step % 4 == 3:  # a stream's own gated call after queued ones: the queued blocks go first
                t.accept_waveform(x[a:b], r)
            else:
                t.accept_waveform(x[a:b], r, gate=False)
            if step == 11:
                s.input_finished()
                t.input_finished(gate=False)  # the resampler's last samples queue too
        if step < 11:  # queued unless a gated call just took them
            assert all(bool(t.gate_queue) == (step % 4 != 3) for t in later)
        if step % 2:
            feed_gates(later)
            assert not any(t.gate_queue for t in later)
    for s, t in zip(now, later):
        assert s.gate.frames > 300 and _state(s.gate) == _state(t.gate)
        assert s.fbank.num_frames_ready == t.fbank.num_frames_ready and s.samples_in == t.samples_in


class _ReferenceGate:
    """The gate's per-call algorithm as it was before its per-call cost was cut (2026-12-07),
    kept verbatim in its arithmetic: the fast path must give these bits for any split."""

    def __init__(self, sample_rate: int, cfg: GateConfig = GateConfig()):
        g = SpeechGate(sample_rate, cfg)  # constants only (bands, tilt fit, window)
        self.cfg, self.hop, self.win, self.nfft, self.lag, self.floor_frames = cfg, g.hop, g.win, g.nfft, g.lag, g.floor_frames
        self.flat_band, self.peak_band, self.tilt, self.tilt_fit, self.window = g.flat_band, g.peak_band, g.tilt, g.tilt_fit, g.window
        self.recent_power = np.zeros((self.lag, self.peak_band.sum()))
        self.tail = np.zeros(self.win - self.hop, dtype=np.float64)
        self.recent_db = np.full(0, np.inf)
        self.active = bytearray()
        self.measures: list[np.ndarray] = []  # (5, M) a call: level, floor, flatness, peak, change

    def accept(self, samples: np.ndarray) -> None:
        samples, step = np.asarray(samples, dtype=np.float32), 100 * self.hop
        for at in range(0, len(samples), step):
            x = np.concatenate([self.tail, samples[at : at + step]])
            n = (len(x) - self.win) // self.hop + 1 if len(x) >= self.win else 0
            self.tail = x[n * self.hop :]
            if n:
                frames = np.lib.stride_tricks.as_strided(x, (n, self.win), (self.hop * x.strides[0], x.strides[0]))
                self.active += self._decide(frames).astype(np.uint8).tobytes()

    def _decide(self, frames: np.ndarray) -> np.ndarray:
        frames = frames - frames.mean(axis=1, keepdims=True)
        db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
        power = np.abs(np.fft.rfft(frames * self.window, self.nfft, axis=1)) ** 2 + 1e-20
        log_power, wide = np.log(power[:, self.flat_band]), power[:, self.peak_band]
        residual = log_power - (log_power @ self.tilt_fit) @ self.tilt.T
        flatness = np.exp(np.mean(residual, axis=1)) / np.mean(np.exp(residual), axis=1)
        peak = (wide[:, :-2] + wide[:, 1:-1] + wide[:, 2:]).max(axis=1) / wide.sum(axis=1)
        before = np.concatenate([self.recent_power, wide])[: len(wide)]
        change = np.abs(wide - before).sum(axis=1) / (wide + before).sum(axis=1)
        self.recent_power = np.concatenate([self.recent_power, wide])[-self.lag :]
        history = np.concatenate([self.recent_db, db])
        padded = np.concatenate([np.full(self.floor_frames, np.inf), history])
        floor = np.lib.stride_tricks.sliding_window_view(padded, self.floor_frames + 1).min(axis=1)[-len(db) :]
        self.recent_db = history[-self.floor_frames :]
        cfg = self.cfg
        self.measures.append(np.stack([db, floor, flatness, peak, change]))
        return ((db > cfg.silence_db) & (db >= floor + cfg.above_floor_db) & (flatness < cfg.max_flatness)
                & (peak < cfg.max_peak) & (change > cfg.min_change))


def _splits(rng, n: int, sr: int) -> dict[str, list[int]]:
    """Block edges: one block, 20 ms messages, random sizes (single samples to several seconds)."""
    ragged = np.cumsum(rng.choice([1, 7, sr // 100 - 1, sr // 50, sr // 10 + 3, int(rng.integers(1, 3 * sr))], 400))
    return {"one": [0, n], "20ms": list(range(0, n, sr // 50)) + [n], "random": [0] + [int(e) for e in ragged if e < n] + [n]}


@pytest.mark.parametrize("sr,cfg", [(16000, GateConfig()), (8000, GateConfig(floor_seconds=0.5, min_change=0.1))])
def test_gate_gives_the_reference_bits_for_any_split(sr, cfg, monkeypatch):
    import soundfile as sf

    rng = np.random.default_rng(sr)
    speech = sf.read(Path(__file__).parents[1] / "egs/synth/codec/samples/original.flac", dtype="float32")[0]  # 16 kHz
    speech = np.interp(np.arange(len(speech) * sr // 16000) * 16000 / sr, np.arange(len(speech)), speech)
    x = np.concatenate([speech] + [_signal(rng, int(rng.integers(sr // 2, 2 * sr)), sr) for _ in range(6)]).astype(np.float32)
    for name, edges in _splits(rng, len(x), sr).items():
        ref, fast, many = _ReferenceGate(sr, cfg), SpeechGate(sr, cfg), SpeechGate(sr, cfg)
        twin = SpeechGate(sr, cfg)  # accept_many shares its calls with a second gate
        measures = []  # the measures behind ``fast``'s decisions, to the last bit
        rule = vad._speech_like
        for a, b in zip(edges[:-1], edges[1:]):
            ref.accept(x[a:b])
            with monkeypatch.context() as mp:
                mp.setattr(vad, "_speech_like", lambda c, *m: measures.append(np.stack(m)) or rule(c, *m))
                fast.accept(x[a:b])
            accept_many([many, twin], [x[a:b], x[a:b][::-1]])
        assert ref.active.count(1) > 100 and ref.active.count(0) > 100, name  # both decisions are exercised
        assert np.concatenate(measures, axis=1).tobytes() == np.concatenate(ref.measures, axis=1).tobytes(), name
        for g in (fast, many):
            assert bytes(g.active) == bytes(ref.active), name
            assert g.tail.tobytes() == ref.tail.tobytes() and g.recent_power.tobytes() == ref.recent_power.tobytes()
            assert g.recent_db[-len(ref.recent_db) :].tobytes() == ref.recent_db.tobytes()
