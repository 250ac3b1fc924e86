"""Gathering fbank frames into a preallocated batch (``read_frames``, ``OnlineRecognizer.gather_features``)
gives exactly the arrays that stacking each frame into a list gave: every frame, in order, zeros after
a stream's last one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from speechkit.audio.fbank import FbankConfig, compute_fbank, online_fbank, read_frames
from speechkit.data.synth.engines import Prosody, Voice, synthesize
from speechkit.runtime import OnlineRecognizer

MODEL = Path(__file__).resolve().parents[1] / "models" / "asr-stream-synth"


@pytest.fixture(scope="module")
def speech():
    return synthesize(Voice("espeak-ng", "en-us", "espeak-en-us"), "seven small boats were tied along the river bank", Prosody())


def stacked(fbank, start: int, n: int) -> np.ndarray:
    """The way the runtimes built their input before: one list of frames, then ``np.stack``."""
    return np.stack([fbank.get_frame(start + i) for i in range(n)])


def test_read_frames_fills_rows_in_order(speech):
    fbank = online_fbank(FbankConfig())
    fbank.accept_waveform(16000, speech[:16000] * 32768.0)
    n = fbank.num_frames_ready
    assert n > 60
    ref = stacked(fbank, 7, n - 7)
    assert len(np.unique(ref, axis=0)) == len(ref)  # frames differ, so a dropped or swapped one shows
    out = read_frames(fbank, 7, np.full((n - 7, 80), np.nan, np.float32))
    assert out.dtype == np.float32 and np.array_equal(out, ref)
    view = np.zeros((3, 10, 80), np.float32)
    read_frames(fbank, 20, view[1, 2:6])  # a slice of a batch is written in place, nothing around it
    assert np.array_equal(view[1, 2:6], ref[13:17]) and not view[0].any() and not view[2].any()
    assert not view[1, :2].any() and not view[1, 6:].any()


def test_compute_fbank_is_the_stack_of_every_frame(speech):
    fbank = online_fbank(FbankConfig())
    fbank.accept_waveform(16000, np.asarray(speech, np.float32) * 32768.0)
    fbank.input_finished()
    feats = compute_fbank(speech)
    assert feats.dtype == np.float32 and np.array_equal(feats, stacked(fbank, 0, fbank.num_frames_ready))
    assert compute_fbank(np.zeros(0, np.float32)).shape == (0, 80)


def test_gather_features_equals_the_stacked_batch(speech):
    rec = OnlineRecognizer(MODEL, gate=None)
    # streams at different points: a fresh one, one a chunk in, and one whose input ended mid-chunk
    lengths = [len(speech), len(speech), 16000 + 4000]
    streams = [rec.create_stream() for _ in lengths]
    for s, n in zip(streams, lengths):
        s.accept_waveform(speech[:n])
    streams[2].input_finished()
    rec.decode_streams(streams[1:])
    while rec.is_ready(streams[2]) and streams[2].fbank.num_frames_ready - streams[2].frames_done >= rec.chunk_feats:
        rec.decode_streams([streams[2]])
    assert [s.frames_done > 0 for s in streams] == [False, True, True]
    x, x_lens = rec.gather_features(streams)
    want = np.zeros_like(x)
    for b, s in enumerate(streams):
        n = min(rec.chunk_feats, s.fbank.num_frames_ready - s.frames_done)
        want[b, :n] = stacked(s.fbank, s.frames_done, n)
        assert x_lens[b] == n
    assert x_lens.dtype == np.int64 and x_lens[2] < rec.chunk_feats  # the finished stream's short last chunk
    assert x.dtype == np.float32 and np.array_equal(x, want)
    assert not x[2, x_lens[2]:].any()
