"""The device-resident state pool (speechkit.runtime.state_pool) on the CPU: the shipped streaming
model's caches kept in pool slots give exactly the numpy path's tokens, texts and token times for
streams that start, end and drop at different chunks in batches whose composition changes, the
pools grow past their first capacity, and the server's engine frees a dropped client's slot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from speechkit.data.synth.engines import Prosody, Voice, synthesize
from speechkit.errors import SpeechkitError
from speechkit.runtime import OnlineRecognizer
from speechkit.runtime.state_pool import INITIAL_CAPACITY, wrap_model

MODEL = Path(__file__).resolve().parents[1] / "models" / "asr-stream-synth"
SENTENCES = ["the museum opened a new hall for old maps", "she walked to the station before the rain started",
             "seven small boats were tied along the river bank"]
BLOCK = 5120  # samples fed a step (0.32 s): one 320 ms chunk or so


@pytest.fixture(scope="module")
def speech():
    voices = [Voice("espeak-ng", "en-us", "espeak-en-us"), Voice("espeak-ng", "en-gb", "espeak-en-gb"),
              Voice("espeak-ng", "en-us+f3", "espeak-en-us-f3")]
    return [synthesize(v, t, Prosody()).astype(np.float32) for v, t in zip(voices, SENTENCES)]


@pytest.fixture(scope="module")
def recs():
    """(numpy path, pool path) on the same model."""
    return OnlineRecognizer(MODEL), OnlineRecognizer(MODEL, device_states=True)


def drive(rec, waves, starts, drops, groups):
    """Feed stream i from step starts[i], a block a step, dropping it (no more audio, released) at
    step drops.get(i); each step decodes the live streams in the groups ``groups(step, live)`` gives,
    one decode_streams call a group, until every stream is done or dropped → (streams, slots seen)."""
    streams = [None] * len(waves)
    at = [0] * len(waves)
    gone, slots = set(), {}
    step = 0
    while True:
        for i, w in enumerate(waves):
            if i in gone or step < starts[i]:
                continue
            if streams[i] is None:
                streams[i] = rec.create_stream()
            s = streams[i]
            if drops.get(i) == step:
                rec.release(s)
                gone.add(i)
                continue
            if not s.finished:
                if at[i] < len(w):
                    s.accept_waveform(w[at[i] : at[i] + BLOCK])
                    at[i] += BLOCK
                else:
                    s.input_finished()
        live = [i for i, s in enumerate(streams) if s is not None and i not in gone and not rec.is_done(s)]
        if not live and all(i in gone or (streams[i] is not None and rec.is_done(streams[i])) for i in range(len(waves))):
            return streams, slots
        for group in groups(step, live):
            while any(rec.is_ready(streams[i]) for i in group):
                rec.decode_streams([streams[i] for i in group])
                for i in group:
                    if streams[i].slot is not None:
                        slots.setdefault(i, streams[i].slot)
        step += 1


def finals(rec, s):
    return rec.text(s), [(seg.tokens, seg.times, seg.start, seg.end) for seg in s.finals]


def test_many_streams_in_changing_batches_equal_the_numpy_path(recs, speech):
    numpy_rec, pool_rec = recs
    n = 13  # more streams at once than the pool's first capacity: it must grow
    rng = np.random.default_rng(5)
    waves = [speech[i % 3][: len(speech[i % 3]) - int(rng.integers(0, 8000))] for i in range(n)]
    starts = [int(v) for v in rng.integers(0, 6, n)]
    drops = {2: starts[2] + 4, 7: starts[7] + 2}  # dropped mid-way

    def groups(step, live):  # a different split of the live streams every step
        r = np.random.default_rng(step)
        order = [live[k] for k in r.permutation(len(live))]
        cut = int(r.integers(0, len(order) + 1))
        return [g for g in (order[:cut], order[cut:]) if g]

    ref, _ = drive(numpy_rec, waves, starts, drops, groups)
    grows = pool_rec._pool.grows
    got, slots = drive(pool_rec, waves, starts, drops, groups)
    for i in range(n):
        assert finals(pool_rec, got[i]) == finals(numpy_rec, ref[i]), i
    texts = [numpy_rec.text(s) for i, s in enumerate(ref) if i not in drops]
    assert sum(bool(t) for t in texts) >= n - 3  # real transcripts, not a silent agreement on nothing
    assert pool_rec._pool.grows > grows and pool_rec._pool.capacity >= 2 * INITIAL_CAPACITY
    assert pool_rec._pool.in_use == 0  # every slot back: done streams and dropped ones
    assert len(set(slots.values())) < n  # slots were reused by later streams


def test_whole_waveforms_and_run_streams_equal_the_numpy_path(recs, speech):
    numpy_rec, pool_rec = recs
    waves = speech + [speech[0][:9000]]
    assert pool_rec.transcribe_batch(waves) == numpy_rec.transcribe_batch(waves)
    assert [pool_rec.transcribe(w) for w in waves[:2]] == [numpy_rec.transcribe(w) for w in waves[:2]]
    assert pool_rec._pool.in_use == 0


def test_a_released_stream_is_not_decoded_again(recs, speech):
    _, rec = recs
    s = rec.create_stream()
    s.accept_waveform(speech[0][:16000])
    rec.decode_streams([s])
    rec.release(s)
    rec.release(s)  # twice: no double free
    assert rec._pool.in_use == 0
    s.accept_waveform(speech[0][16000:32000])
    assert rec.is_ready(s)
    with pytest.raises(SpeechkitError, match="released"):
        rec.decode_streams([s])


def test_device_states_default_and_the_numpy_path_release():
    rec = OnlineRecognizer(MODEL)
    assert rec._pool is None  # CPU: off unless asked
    s = rec.create_stream()
    rec.release(s)  # a no-op
    from speechkit.runtime.transducer import Zipformer2Recognizer
    assert Zipformer2Recognizer._pool is None  # its own decode_streams: the numpy path


def test_wrapped_graph_adds_only_copies():
    model = onnx.load(str(MODEL / "model.onnx"))
    names = ["cached_sub1", "cached_sub2", "cached_att", "cached_conv", "cached_len"]
    wrapped = onnx.load_from_string(wrap_model(MODEL / "model.onnx", names, [0, 0, 1, 1, 0]))
    added = {n.op_type for n in wrapped.graph.node} - {n.op_type for n in model.graph.node}
    assert added <= {"ScatterND", "Where"}  # Gather, Transpose, Reshape, Constant: the model has them already
    assert len(wrapped.graph.node) == len(model.graph.node) + 2 + 5 * 6 + 2 * 2  # 2 batch-axis-1 states transposed
    assert [i.name for i in wrapped.graph.input] == ["x", "x_lens", "att_context", "slots", "fresh", "pool_cached_sub1",
                                                     "pool_cached_sub2", "pool_cached_att", "pool_cached_conv", "pool_cached_len"]
    assert [o.name for o in wrapped.graph.output][:2] == ["log_probs", "log_probs_len"]
    onnx.checker.check_model(wrapped)


def test_engine_frees_a_dropped_clients_slot_and_keeps_its_results(recs, speech):
    from speechkit.serve.engine import BatchEngine

    def serve(rec, drop_at):
        eng = BatchEngine(rec, max_batch=2)
        conns = [eng.open(16000) for _ in speech]
        out = [[] for _ in speech]
        for step in range(40):
            jobs = []
            for k, c in enumerate(conns):
                if c not in eng.conns:
                    continue
                if k == 1 and step == drop_at:
                    eng.drop(c)
                    continue
                audio = [speech[k][step * BLOCK : (step + 1) * BLOCK]] if step * BLOCK < len(speech[k]) else []
                jobs.append((c, audio, not audio and not c.stream.finished))
            if not jobs:
                break
            for c, results, done in eng._step(jobs):
                out[conns.index(c)] += [r.to_dict() for r in results]
                if done:
                    eng.conns.discard(c)
        return out, eng

    ref, _ = serve(recs[0], drop_at=6)
    got, eng = serve(recs[1], drop_at=6)
    assert got == ref and ref[0] and ref[2]
    assert recs[1]._pool.in_use == 0 and not eng._dropped
