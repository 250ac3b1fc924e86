"""The speech gate batched across streams (vad.accept_many) gives the bits of each gate's own accept."""

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
    sizes = [160, 320, 480, 1600]
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
