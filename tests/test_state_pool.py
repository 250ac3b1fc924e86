"""The device-resident state pool (speechkit.runtime.state_pool) on the CPU: the shipped streaming
model's caches, and a sherpa-format transducer's (greedy and beam), kept in pool slots give exactly
the numpy path's tokens, texts and token times for streams that start, end and drop at different
chunks in batches whose composition changes, the pools grow past their first capacity, and the
server's engine frees a dropped client's slot; a pool on cuda:N opens its graph and keeps its pools on GPU N."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxruntime as ort
from speechkit.data.synth.engines import Prosody, Voice, synthesize
from speechkit.errors import SpeechkitError
from speechkit.runtime import OnlineRecognizer
from speechkit.runtime.asr import STATE_BATCH_AXIS, STATE_NAMES
from speechkit.runtime.state_pool import INITIAL_CAPACITY, StatePool, pool_device, wrap_model
from speechkit.runtime.transducer import SherpaCtcRecognizer, TransducerRecognizer
from test_sherpa_ctc_runtime import folder as sherpa_ctc_folder  # noqa: F401 (the fixture: a tiny zipformer2 CTC export)
from test_transducer_e2e import BEAM, waves_of
from test_transducer_e2e import folder as transducer_folder  # noqa: F401 (the fixture: a tiny exported transducer)

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


def changing_groups(step, live):
    """A different two-way split of the live streams every step (seeded by the step)."""
    r = np.random.default_rng(step)
    order = [live[k] for k in r.permutation(len(live))]
    cut = int(r.integers(0, len(order) + 1))
    return [g for g in (order[:cut], order[cut:]) if g]


def test_many_streams_in_changing_batches_equal_the_numpy_path(recs, speech):
    numpy_rec, pool_rec = recs
    n = 13  # more streams at once than the pool's first capacity: it must grow
    rng = np.random.default_rng(5)
    waves = [speech[i % 3][: len(speech[i % 3]) - int(rng.integers(0, 8000))] for i in range(n)]
    starts = [int(v) for v in rng.integers(0, 6, n)]
    drops = {2: starts[2] + 4, 7: starts[7] + 2}  # dropped mid-way

    ref, _ = drive(numpy_rec, waves, starts, drops, changing_groups)
    grows = pool_rec._pool.grows
    got, slots = drive(pool_rec, waves, starts, drops, changing_groups)
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


def serve(rec, waves, drop_at):
    """``waves`` as clients of one BatchEngine (two streams a batch), client 1 dropped at step
    ``drop_at`` → (each client's results as dicts, the engine)."""
    from speechkit.serve.engine import BatchEngine

    eng = BatchEngine(rec, max_batch=2)
    conns = [eng.open(16000) for _ in waves]
    out = [[] for _ in waves]
    for step in range(40):
        jobs = []
        for k, c in enumerate(conns):
            if c not in eng.conns:
                continue
            if k == 1 and step == drop_at:
                eng.drop(c)
                continue
            audio = [waves[k][step * BLOCK : (step + 1) * BLOCK]] if step * BLOCK < len(waves[k]) else []
            jobs.append((c, audio, not audio and not c.stream.finished))
        if not jobs:
            break
        for c, results, done in eng._step(jobs):
            out[conns.index(c)] += [r.to_dict() for r in results]
            if done:
                eng.conns.discard(c)
    return out, eng


def test_engine_frees_a_dropped_clients_slot_and_keeps_its_results(recs, speech):
    ref, _ = serve(recs[0], speech, drop_at=6)
    got, eng = serve(recs[1], speech, drop_at=6)
    assert got == ref and ref[0] and ref[2]
    assert recs[1]._pool.in_use == 0 and not eng._dropped


@pytest.fixture(scope="module")
def transducer_waves(transducer_folder):
    """Streams 1.5-4 s long: the folder's three short utterances joined in turns."""
    w = waves_of(transducer_folder[1])
    return [np.concatenate([w[k % 3], w[(k + 1) % 3], w[(k + 2) % 3][: 4000 * k]]) for k in range(3)]


@pytest.mark.parametrize("beam", [1, BEAM])
def test_transducer_streams_in_changing_batches_equal_the_numpy_path(transducer_folder, transducer_waves, beam):
    out = transducer_folder[0]
    numpy_rec = TransducerRecognizer(out, beam=beam, gate=None)
    pool_rec = TransducerRecognizer(out, beam=beam, gate=None, device_states=True)
    assert numpy_rec._pool is None and pool_rec._pool is not None
    n = 11  # more streams at once than the pool's first capacity: it must grow
    rng = np.random.default_rng(beam)
    waves = [transducer_waves[i % 3][int(rng.integers(0, 3000)) :] for i in range(n)]
    starts = [int(v) for v in rng.integers(0, 3, n)]
    drops = {1: starts[1] + 3, 6: starts[6] + 1}  # dropped mid-way

    ref, _ = drive(numpy_rec, waves, starts, drops, changing_groups)
    got, slots = drive(pool_rec, waves, starts, drops, changing_groups)
    for i in range(n):
        assert finals(pool_rec, got[i]) == finals(numpy_rec, ref[i]), i
        assert got[i].state == [] and ref[i].state  # the caches lived in the pool, not in the stream
    assert all(len(ref[i].finals[0].tokens) >= 3 for i in range(n) if i not in drops)  # real transcripts
    assert pool_rec._pool.grows and pool_rec._pool.capacity >= 2 * INITIAL_CAPACITY
    assert pool_rec._pool.in_use == 0  # every slot back: done streams and dropped ones
    assert len(slots) == n and max(slots.values()) >= INITIAL_CAPACITY


def test_transducer_engine_frees_a_dropped_clients_slot(transducer_folder, transducer_waves):
    out = transducer_folder[0]
    ref, _ = serve(TransducerRecognizer(out, gate=None), transducer_waves, drop_at=3)
    rec = TransducerRecognizer(out, gate=None, device_states=True)
    got, eng = serve(rec, transducer_waves, drop_at=3)
    assert got == ref and ref[0] and ref[2]
    assert rec._pool.in_use == 0 and not eng._dropped


def test_transducer_failed_call_frees_new_slots_and_released_streams_stay_out(transducer_folder, transducer_waves,
                                                                             monkeypatch):
    rec = TransducerRecognizer(transducer_folder[0], gate=None, device_states=True)
    old, new = rec.create_stream(), rec.create_stream()
    for s in (old, new):
        s.accept_waveform(transducer_waves[0][:8000])
    rec.decode_streams([old])
    slot = old.slot

    def fail(*args):
        raise RuntimeError("the device is gone")

    monkeypatch.setattr(rec._pool, "run_inputs", fail)
    with pytest.raises(RuntimeError, match="gone"):
        rec.decode_streams([old, new])
    assert (old.slot, new.slot, rec._pool.in_use) == (slot, None, 1)  # the new stream starts afresh next time
    monkeypatch.undo()
    rec.release(old)
    with pytest.raises(SpeechkitError, match="released"):
        rec.decode_streams([new, old])
    assert new.slot is None and rec._pool.in_use == 0  # refused before any slot was taken


def test_sherpa_ctc_streams_equal_the_numpy_path(sherpa_ctc_folder):
    """The zipformer2 CTC folder shares the transducer's encoder call, so its pool too."""
    out, wavs, _ = sherpa_ctc_folder
    w = waves_of(wavs)
    waves = [np.concatenate([w[k], w[(k + 1) % 3]]) for k in range(3)]
    numpy_rec = SherpaCtcRecognizer(out, gate=None)
    rec = SherpaCtcRecognizer(out, gate=None, device_states=True)
    texts = rec.transcribe_batch(waves)
    assert texts == numpy_rec.transcribe_batch(waves) and all(texts)
    assert rec.transcribe(waves[0]) == texts[0] and rec._pool.in_use == 0


class CudaSession:
    """A CPU session that says it runs on ``first``."""

    def __init__(self, session, first="CUDAExecutionProvider"):
        self.session, self.first = session, first

    def get_providers(self):
        return [self.first, "CPUExecutionProvider"]

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_pool_device_follows_the_device(monkeypatch):
    assert pool_device("cpu") == ("cpu", 0)
    assert pool_device("cuda:1") == ("cpu", 0)  # a CPU-only onnxruntime: host memory
    monkeypatch.setattr(ort, "get_device", lambda: "GPU")
    assert pool_device("cuda:1") == ("cuda", 1)
    assert pool_device("cuda") == ("cuda", 0)
    assert pool_device("tensorrt:2") == ("cuda", 2)  # TensorRT: CUDA memory
    assert pool_device("cpu") == ("cpu", 0)  # device_states=True on the CPU of a GPU build


def test_pools_and_the_wrapped_session_go_to_the_requested_gpu(monkeypatch, speech):
    """A pool on cuda:1 (faked on the CPU: every device placement the pool asks ORT for is
    recorded, then made on the host): the wrapped graph opens through make_session on GPU 1 (its
    threads and arena too), every pool is created and bound on device 1, and the tokens are the numpy path's."""
    numpy_rec, rec = OnlineRecognizer(MODEL), OnlineRecognizer(MODEL)
    opened, placed = [], []
    real_session, real_value = ort.InferenceSession, ort.OrtValue.ortvalue_from_numpy

    class CpuBinding:  # forwards to a real binding, recording where each output was asked to go
        def __init__(self, io):
            self.io = io

        def bind_output(self, name, device_type="cpu", device_id=0):
            placed.append((name, device_type, device_id))
            self.io.bind_output(name, "cpu", 0)

        def __getattr__(self, name):
            return getattr(self.io, name)

    class Opened(CudaSession):  # ORT asked to open the wrapped graph on CUDA; a CPU session behind it
        def __init__(self, model, options, providers, **kwargs):
            opened.append((providers, kwargs, options.intra_op_num_threads, options.enable_cpu_mem_arena))
            super().__init__(real_session(model, options, providers=["CPUExecutionProvider"]))

        def io_binding(self):
            return CpuBinding(self.session.io_binding())

    def value(arr, device_type="cpu", device_id=0):
        placed.append(("pool", device_type, device_id))
        return real_value(arr, "cpu", 0)

    monkeypatch.setattr(ort, "get_device", lambda: "GPU")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", Opened)
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(value))
    rec._pool = StatePool(MODEL / "model.onnx", "cuda:1", STATE_NAMES, STATE_BATCH_AXIS, rec._state_zeros,
                          num_threads=2, memory_arena=False, capacity=1)
    assert opened == [([("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"], {"enable_fallback": 0}, 2, False)]
    assert (rec._pool.device_type, rec._pool.device_id) == ("cuda", 1)
    assert rec.transcribe_batch(speech[:2]) == numpy_rec.transcribe_batch(speech[:2])
    assert rec._pool.grows == 1  # the pools were re-created once, on the same device
    pools = [(d, i) for name, d, i in placed if name == "pool" or name.startswith("new_pool_")]
    assert len(pools) > 3 * len(STATE_NAMES) and set(pools) == {("cuda", 1)}
    assert {(d, i) for name, d, i in placed if name in ("log_probs", "log_probs_len")} == {("cpu", 0)}


def test_a_wrapped_session_that_falls_back_to_the_cpu_is_an_error(monkeypatch):
    """make_session's check, naming the wrapped graph: this CPU build cannot start the CUDA provider."""
    rec, real = OnlineRecognizer(MODEL), ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", lambda model, options, providers, **kw: real(model, options, providers=["CPUExecutionProvider"]))
    with pytest.raises(SpeechkitError) as e:
        StatePool(MODEL / "model.onnx", "cuda:1", STATE_NAMES, STATE_BATCH_AXIS, rec._state_zeros)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{MODEL / 'model.onnx'} (its device-state graph): onnxruntime could not "
                                              "start CUDAExecutionProvider (the session runs on CPUExecutionProvider)")


def test_a_transducer_opens_its_encoder_on_the_gpu_once(monkeypatch, transducer_folder):
    """The encoder's plain graph opens on the CPU (metadata and shapes), its device-state graph,
    the decoder and the joiner on cuda:1 (faked on the CPU); the tokens stay the numpy path's."""
    from test_runtime_device import CUDA, fake_cuda

    out = transducer_folder[0]
    waves = waves_of(transducer_folder[1])
    want = TransducerRecognizer(out, gate=None).transcribe_batch(waves)
    options = []
    asked = fake_cuda(monkeypatch, options=options)
    rec = TransducerRecognizer(out, gate=None, device="cuda:1")
    assert asked == [["CPUExecutionProvider"], CUDA, CUDA, CUDA]
    assert [o["CUDAExecutionProvider"]["device_id"] for o in options[1:]] == [1, 1, 1]
    assert rec.transcribe_batch(waves) == want and all(want)
