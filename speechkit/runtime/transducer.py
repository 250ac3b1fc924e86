"""Streaming recognition on the folders ``speechkit export sherpa`` writes, with no torch: the
same folders sherpa-onnx loads. Both hold a zipformer2-layout encoder graph (a flat state list,
one chunk of fixed length per call); they differ in the search on top of it. An online transducer
(encoder.onnx, decoder.onnx, joiner.onnx, tokens.txt) is searched by
:mod:`speechkit.decoding.transducer`'s greedy or modified beam search, batched over the streams of
a call; a zipformer2 CTC model (model.onnx with log-probabilities out, tokens.txt) by greedy CTC
carried across chunks, as sherpa-onnx does. Streams, fbank, the speech-activity gate and
endpointing are :mod:`speechkit.runtime.asr`'s; on CUDA the encoder's caches stay on the GPU
between chunks (:mod:`speechkit.runtime.state_pool`), as the CTC recognizer's do.

    rec = TransducerRecognizer("exp/hybrid/sherpa")     # or SherpaCtcRecognizer("exp/hybrid/sherpa-ctc")
    print(rec.transcribe(samples))        # float32 in [-1, 1] at rec.sample_rate
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import numpy as np

from speechkit.audio.fbank import LOG_FLOOR, FbankConfig, online_fbank
from speechkit.audio.vad import GateConfig, SpeechGate
from speechkit.decoding.transducer import BeamState, GreedyState, Hypothesis, greedy_search, modified_beam_search
from speechkit.errors import SpeechkitError
from speechkit.runtime.asr import DECODE_STAGES, EndpointConfig, OnlineRecognizer, Stream, batch_states, next_chunks, split_states
from speechkit.runtime.session import make_session
from speechkit.text.tokenizer import load_tokenizer

# export.json's model_family of each folder (speechkit.export.sherpa_experiment writes them)
TRANSDUCER_FAMILY = "transducer-streaming-conformer"
CTC_FAMILY = "ctc-streaming-conformer-sherpa"  # not our model.onnx layout, so not "ctc-streaming-conformer"
MODEL_TYPE = "zipformer2"


@dataclass
class TransducerStream(Stream):
    """A :class:`Stream` whose search is a transducer's: ``search_state`` carries the decoder
    context (greedy) or the beam across chunks; ``state`` is the encoder's flat state list (empty
    once it lives in the device state pool). The search state stays on the host even with device
    states: it is a few tokens and one decoder output per hypothesis, and the numpy search reads it."""

    search_state: GreedyState | BeamState | None = None


def _read_export(model_dir: Path, family: str, what: str, hint: str) -> dict:
    info = model_dir / "export.json"
    if not info.is_file():
        raise SpeechkitError(f"{model_dir}: no export.json (export one with `{hint}`)")
    report = json.loads(info.read_text(encoding="utf-8"))
    if report.get("model_family") != family:
        raise SpeechkitError(f"{model_dir}: not a {what} export (model_family={report.get('model_family')!r})")
    return report


def _pieces(model_dir: Path) -> list[str]:
    """tokens.txt's pieces by id (sherpa-onnx finds blank and unk by name in it)."""
    return [line.split(" ")[0] for line in (model_dir / "tokens.txt").read_text(encoding="utf-8").splitlines()]


class Zipformer2Recognizer(OnlineRecognizer):
    """The part both sherpa-format folders share: the export's family and files checked, the
    encoder graph (``encoder_file``) opened and its metadata read, the fbank, the flat state list
    with each tensor's batch axis, streams, and one batched encoder call per chunk. A subclass
    names its family and files and searches each chunk's encoder output (``_search_chunk``).
    ``device_states``: keep the streams' encoder caches on ``device`` between chunks
    (:mod:`speechkit.runtime.state_pool`: a slot per stream until it is done or released); None: on
    for a GPU ``device`` (cuda[:N], tensorrt[:N]), off on the CPU."""

    family: str  # export.json's model_family
    what: str  # the family in words, for errors
    encoder_file: str
    files: tuple[str, ...]  # every graph the folder must hold
    export_hint = "speechkit export sherpa EXP_DIR OUT_DIR"

    def __init__(self, model_dir: str | Path, *, num_threads: int = 1, att_context: tuple[int, int] | None = None,
                 endpoint: EndpointConfig | None = EndpointConfig(), memory_arena: bool = True,
                 gate: GateConfig | None = GateConfig(), device: str = "cpu", device_states: bool | None = None):
        model_dir = Path(model_dir)
        _read_export(model_dir, self.family, self.what, self.export_hint)
        for name in self.files:
            if not (model_dir / name).is_file():
                raise SpeechkitError(f"{model_dir / name}: missing (export with `{self.export_hint}`)")
        pooled = self._wants_pool(device, device_states)
        # with a pool, the plain encoder's session only gives the metadata and shapes: the CPU's
        self.session = make_session(model_dir / self.encoder_file, num_threads, memory_arena, "cpu" if pooled else device)
        self.meta = meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("model_type") != MODEL_TYPE or not meta.get("fbank_samples", "").startswith("int16"):
            raise SpeechkitError(f"{model_dir}/{self.encoder_file}: not a speechkit zipformer2 encoder for int16-range fbank "
                                 f"(model_type={meta.get('model_type')!r}, fbank_samples={meta.get('fbank_samples')!r})")
        self.fbank_cfg = FbankConfig(sample_rate=int(meta["sample_rate"]), num_mel_bins=int(meta["num_mel_bins"]))
        self.sample_rate = self.fbank_cfg.sample_rate
        self.subsampling = int(meta["subsampling"])
        self.contexts = [tuple(int(v) for v in meta["att_context"].split(","))]
        self.att_context = tuple(att_context) if att_context is not None else self.contexts[0]
        if self.att_context not in self.contexts:
            raise SpeechkitError(f"att_context {self.att_context} is not this export's ({meta['att_context']}): "
                                 "a sherpa-format encoder streams one context")
        self.chunk_feats = int(meta["T"])
        self.chunk_frames = self.chunk_feats // self.subsampling
        self.frame_seconds = self.subsampling * self.fbank_cfg.frame_shift_ms / 1000.0
        self.chunk_ms = self.chunk_frames * self.frame_seconds * 1000.0
        self.tokenizer = load_tokenizer(model_dir)
        self.endpoint, self.gate = endpoint, gate
        inputs = self.session.get_inputs()[1:]
        self._state_names = [i.name for i in inputs]
        # each state's batch axis is its one symbolic dimension
        self._state_axes = [next(a for a, d in enumerate(i.shape) if not isinstance(d, int)) for i in inputs]
        self._state_zeros = [np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                                      dtype=np.int64 if i.type == "tensor(int64)" else np.float32) for i in inputs]
        self.timings = dict.fromkeys(DECODE_STAGES, 0.0)  # cumulative wall seconds of decode_streams' parts
        self._pool = (self._state_pool(model_dir / self.encoder_file, device, self._state_names, self._state_axes,
                                       num_threads, memory_arena) if pooled else None)

    def create_stream(self) -> Stream:
        return self._new_stream(Stream)

    def _new_stream(self, kind: type[Stream], **search) -> Stream:
        """A fresh stream of ``kind`` (zero state, its own fbank and gate); ``search``: its extra fields."""
        gate = SpeechGate(self.sample_rate, self.gate) if self.gate is not None else None
        return kind(online_fbank(self.fbank_cfg), [z.copy() for z in self._state_zeros], self.sample_rate,
                    gate=gate, tokenizer=self.tokenizer, **search)

    def decode_streams(self, streams: list[Stream]) -> None:
        """One encoder call over every ready stream in ``streams``, then one batched search. A
        last partial chunk is padded with silence; only its encoder frames that real fbank
        frames reach are searched."""
        ready = [s for s in streams if self.is_ready(s)]
        if not ready:
            return
        t0 = perf_counter()
        # a last partial chunk is padded with the fbank of digital silence (the graph takes whole chunks)
        x, n_feats = next_chunks(ready, self.chunk_feats, self.fbank_cfg.num_mel_bins, pad=LOG_FLOOR)
        if self._pool is not None:
            t1 = perf_counter()
            out = self._pool.run_streams(ready, {"x": x})[0]
            t2 = perf_counter()
        else:
            feeds = {"x": x, **dict(zip(self._state_names, batch_states([s.state for s in ready], self._state_axes)))}
            t1 = perf_counter()
            out, *new_state = self.session.run(None, feeds)
            t2 = perf_counter()
            for s, state in zip(ready, split_states(new_state, len(ready), self._state_axes)):
                s.state = state
        frames = []
        for b, (s, n) in enumerate(zip(ready, n_feats.tolist())):
            s.fbank.pop(n)
            s.frames_done += n
            frames.append(out[b, : -(-n // self.subsampling)])
        t3 = perf_counter()
        self._search_chunk(ready, frames)
        self._add_timings(t0, t1, t2, t3, perf_counter())

    def _search_chunk(self, streams: list[Stream], frames: list[np.ndarray]) -> None:
        """Search each stream's new encoder output (n_b, ·) and advance it by n_b frames."""
        raise NotImplementedError


class TransducerRecognizer(Zipformer2Recognizer):
    """A sherpa-format streaming transducer ready to decode streams; the interface of
    :class:`OnlineRecognizer` (``beam`` 1: greedy search; > 1: modified beam search with that
    many hypotheses, the best picked by log-prob per token as sherpa-onnx does)."""

    family, what = TRANSDUCER_FAMILY, "streaming transducer"
    encoder_file, files = "encoder.onnx", ("encoder.onnx", "decoder.onnx", "joiner.onnx")

    def __init__(self, model_dir: str | Path, *, num_threads: int = 1, att_context: tuple[int, int] | None = None,
                 endpoint: EndpointConfig | None = EndpointConfig(), beam: int = 1, memory_arena: bool = True,
                 gate: GateConfig | None = GateConfig(), device: str = "cpu", device_states: bool | None = None):
        if not isinstance(beam, int) or beam < 1:
            raise SpeechkitError(f"beam must be a positive integer, got {beam!r}")
        super().__init__(model_dir, num_threads=num_threads, att_context=att_context, endpoint=endpoint,
                         memory_arena=memory_arena, gate=gate, device=device, device_states=device_states)
        model_dir = Path(model_dir)
        self.decoder = make_session(model_dir / "decoder.onnx", num_threads, memory_arena, device)
        self.joiner = make_session(model_dir / "joiner.onnx", num_threads, memory_arena, device)
        self.context_size = int(self.decoder.get_modelmeta().custom_metadata_map["context_size"])
        pieces = _pieces(model_dir)
        self.unk_id = pieces.index("<unk>") if "<unk>" in pieces else None  # unk is blank to the search, as in sherpa-onnx
        self.beam = beam

    def create_stream(self) -> TransducerStream:
        search = (BeamState if self.beam > 1 else GreedyState).start(self.context_size)
        return self._new_stream(TransducerStream, search_state=search)

    def _decoder_fn(self, contexts: np.ndarray) -> np.ndarray:
        return self.decoder.run(None, {"y": contexts})[0]

    def _joiner_fn(self, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
        return self.joiner.run(None, {"encoder_out": enc.astype(np.float32, copy=False),
                                      "decoder_out": dec.astype(np.float32, copy=False)})[0]

    def _search_chunk(self, streams: list[TransducerStream], frames: list[np.ndarray]) -> None:
        searched = self._search(frames, [s.search_state for s in streams])
        for s, state, f in zip(streams, searched, frames):
            self._take(s, state)
            self._advance(s, len(f))

    def _search(self, frames: list[np.ndarray], states: list) -> list:
        if self.beam > 1:
            return modified_beam_search(frames, states, self._decoder_fn, self._joiner_fn, beam=self.beam, unk_id=self.unk_id)
        return greedy_search(frames, states, self._decoder_fn, self._joiner_fn, unk_id=self.unk_id)

    def _take(self, s: TransducerStream, state: GreedyState | BeamState) -> None:
        """The search's new tokens into the stream: greedy ones wait for the gate (the state keeps
        only its context); the beam's best replaces the open segment."""
        if isinstance(state, GreedyState):
            s.pending.extend(zip(state.tokens, state.frames))
            s.search_state = GreedyState(state.context, state.decoder_out, (), (), state.frame)
        else:
            s.search_state = state
            ids, frames, _ = state.best(length_norm=True)
            self._set_segment(s, ids, frames)

    def _finalize(self, s: TransducerStream) -> None:
        """Close the segment; a beam restarts from its best hypothesis's last tokens (the decoder
        context runs on across segments, as the audio does)."""
        super()._finalize(s)
        state = s.search_state
        if isinstance(state, BeamState):
            best = max(state.hyps, key=lambda h: h.log_prob / len(h.ys))
            s.search_state = BeamState((Hypothesis(best.ys[-self.context_size :], (), 0.0),), self.context_size, state.frame)


class SherpaCtcRecognizer(Zipformer2Recognizer):
    """A sherpa-format streaming CTC model (``speechkit export sherpa`` of a CTC experiment, or of a
    hybrid's CTC head with ``--head ctc``) ready to decode streams; the interface of
    :class:`OnlineRecognizer`. Greedy search only (``beam`` 1), as sherpa-onnx's zipformer2 CTC;
    blank is ``<blk>``, id 0."""

    family, what = CTC_FAMILY, "sherpa-format streaming CTC"
    encoder_file, files = "model.onnx", ("model.onnx",)
    export_hint = "speechkit export sherpa EXP_DIR OUT_DIR --head ctc"

    def __init__(self, model_dir: str | Path, *, num_threads: int = 1, att_context: tuple[int, int] | None = None,
                 endpoint: EndpointConfig | None = EndpointConfig(), beam: int = 1, memory_arena: bool = True,
                 gate: GateConfig | None = GateConfig(), device: str = "cpu", device_states: bool | None = None):
        if beam != 1:
            raise SpeechkitError(f"a sherpa-format CTC model decodes greedily, as sherpa-onnx does: beam must be 1, got {beam!r}")
        super().__init__(model_dir, num_threads=num_threads, att_context=att_context, endpoint=endpoint,
                         memory_arena=memory_arena, gate=gate, device=device, device_states=device_states)
        pieces = _pieces(Path(model_dir))
        if pieces[:1] != ["<blk>"]:
            raise SpeechkitError(f"{Path(model_dir) / 'tokens.txt'}: token 0 must be the blank <blk> (sherpa-onnx finds it "
                                 f"by name, our search by id), got {pieces[:1]}")
        self.beam = 1

    def _search_chunk(self, streams: list[Stream], frames: list[np.ndarray]) -> None:
        # OnlineRecognizer's greedy CTC: the last argmax (s.prev) carries across chunks, so a
        # token spanning a chunk boundary is emitted once, as sherpa-onnx's decoder does
        for s, log_probs in zip(streams, frames):
            self._decode(s, log_probs)
