"""Streaming speech recognition on an exported cache-aware CTC model, with no torch: online
kaldi-native-fbank features, ONNX Runtime for the encoder chunk, incremental greedy CTC or
prefix beam search with token times, and endpointing on trailing silence. Many streams are
decoded as one batch. A speech-activity gate (speechkit.audio.vad) drops tokens that have no
speech around them, so silence, steady noise and tones give no text.

    rec = OnlineRecognizer("models/asr-stream-synth")
    s = rec.create_stream()
    s.accept_waveform(samples)            # float32 in [-1, 1] at rec.sample_rate
    while rec.is_ready(s):
        rec.decode_streams([s])
    print(s.partial, s.finals)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

import kaldi_native_fbank as knf
import numpy as np

from speechkit.audio.fbank import online_fbank, read_frames
from speechkit.audio.vad import GateConfig, SpeechGate, accept_many
from speechkit.decoding.ctc import BLANK_ID, CtcPrefixBeamSearch
from speechkit.decoding.ngram import LmConfig, require_beam
from speechkit.errors import AudioError, SpeechkitError
from speechkit.runtime.session import open_model, require_provider
from speechkit.text.tokenizer import load_tokenizer

STATE_NAMES = ["cached_sub1", "cached_sub2", "cached_att", "cached_conv", "cached_len"]
STATE_BATCH_AXIS = [0, 0, 1, 1, 0]
TOKEN_SPEECH_WINDOW = (1.0, 0.5)  # seconds before and after a token's frame where the gate looks for speech
FEED_SECONDS = 1.0  # whole waveforms are fed in pieces this long, so their fbank never sits whole in memory
# the parts of a decode_streams call that ``OnlineRecognizer.timings`` adds up (wall seconds): features
# and states stacked into the batch, the encoder's session run, states handed back to the streams
# (and their fbank frames freed), the search and endpointing on the encoder's output
DECODE_STAGES = ("stack", "session", "unstack", "search")


def decoding_error(path, e: Exception) -> AudioError:
    """The one-line error that reports a file whose decoding failed; batch jobs list it and go on
    with the other files (ONNX Runtime's errors have no common base class to catch instead)."""
    if isinstance(e, AudioError):
        return e
    detail = str(e).splitlines()[0] if str(e) else ""
    return AudioError(f"{path}: decoding failed ({type(e).__name__}{': ' + detail if detail else ''})")


@dataclass(frozen=True)
class EndpointConfig:
    """sherpa-style rules, in seconds: trailing non-speech (blank) after nothing was said, after
    something was said, and the longest segment."""

    silence_before_speech: float = 2.4
    silence_after_speech: float = 1.2
    max_segment: float = 20.0


@dataclass
class Segment:
    text: str
    tokens: list[str]
    times: list[float]  # seconds from the start of the stream, one per token
    start: float
    end: float


@dataclass
class Stream:
    """One audio source. Feed it with ``accept_waveform``; read ``partial`` and ``finals``."""

    fbank: knf.OnlineFbank
    state: list[np.ndarray]
    sample_rate: int
    frames_done: int = 0  # fbank frames already given to the encoder
    enc_frames: int = 0  # encoder frames decoded so far
    finished: bool = False
    prev: int = BLANK_ID
    ids: list[int] = field(default_factory=list)
    id_frames: list[int] = field(default_factory=list)
    segment_start: int = 0  # encoder frame where the current segment began
    last_token_frame: int = -1
    finals: list[Segment] = field(default_factory=list)
    samples_in: int = 0
    search: CtcPrefixBeamSearch | None = None  # set when the recognizer decodes with a beam
    resampler: tuple | None = None  # (input rate, soxr.ResampleStream) once audio at another rate came in
    gate: SpeechGate | None = None  # set when the recognizer gates tokens by speech activity
    pending: list[tuple[int, int]] = field(default_factory=list)  # greedy (token, frame)s the gate has not decided yet
    gate_queue: list[np.ndarray] = field(default_factory=list)  # model-rate blocks taken with gate=False, not gated yet
    slot: int | None = None  # its caches' slot in the recognizer's device state pool (None: none yet; -1: released)
    tokenizer: object = None  # spells ``partial``

    @property
    def partial(self) -> str:
        """The open segment's text so far (spelt when asked: a long segment is not re-spelt every chunk)."""
        return self.tokenizer.decode(self.ids) if self.ids else ""

    def accept_waveform(self, samples, sample_rate: int | None = None, gate: bool = True) -> None:
        """``gate=False``: the fbank takes the samples now, the speech gate only at ``feed_gates``
        (which gives many streams' gates their audio in one pass); until then it lags behind."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise AudioError(f"accept_waveform wants mono samples (N,), got shape {x.shape}")
        if x.size == 0:
            return
        if not np.all(np.isfinite(x)):
            raise AudioError("accept_waveform got NaN or infinite samples; nothing was added")
        if self.finished:
            raise SpeechkitError("this stream's input is finished; create a new stream")
        rate = sample_rate or self.sample_rate
        if rate != self.sample_rate:
            x = self._resample(x, rate)
        self._accept(x, gate)

    def _accept(self, x: np.ndarray, gate: bool = True) -> None:
        self.samples_in += x.size
        self.fbank.accept_waveform(self.sample_rate, x * 32768.0)
        if self.gate is not None:
            if not gate:
                self.gate_queue.append(x)
                return
            for q in self.gate_queue:  # blocks queued earlier go first, each as the call it was
                self.gate.accept(q)
            self.gate_queue.clear()
            self.gate.accept(x)

    def _resample(self, x: np.ndarray, rate: int, last: bool = False) -> np.ndarray:
        # one resampler per stream, so block edges leave no clicks and no samples are lost
        if self.resampler is None or self.resampler[0] != rate:
            import soxr  # only when the caller's rate differs from the model's

            self.resampler = (rate, soxr.ResampleStream(rate, self.sample_rate, 1, dtype="float32"))
        return self.resampler[1].resample_chunk(x, last=last).astype(np.float32, copy=False)

    def input_finished(self, gate: bool = True) -> None:
        if not self.finished:
            if self.resampler is not None:
                tail = self._resample(np.zeros(0, np.float32), self.resampler[0], last=True)
                if tail.size:
                    self._accept(tail, gate)
            self.fbank.input_finished()
            self.finished = True


def feed_gates(streams) -> None:
    """Give the streams' gates the blocks they queued (``accept_waveform(..., gate=False)``), all in
    one ``accept_many``: the same bits as each stream's gate taking them at once, less work."""
    gates, blocks = [], []
    for s in streams:
        if s.gate_queue:
            gates += [s.gate] * len(s.gate_queue)
            blocks += s.gate_queue
            s.gate_queue = []
    if gates:
        accept_many(gates, blocks)


def next_chunks(streams: list, chunk_feats: int, num_mel_bins: int, pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The next chunk of each stream's fbank frames (streams with ``fbank`` and ``frames_done``)
    → x (B, chunk_feats, num_mel_bins) float32, ``pad`` past each stream's frames, and x_lens (B,)
    int64: how many frames each has (a whole chunk, or what is left of a finished stream). The
    frames stay in the streams' fbanks."""
    x = np.empty((len(streams), chunk_feats, num_mel_bins), dtype=np.float32)
    x_lens = np.empty(len(streams), dtype=np.int64)
    for b, s in enumerate(streams):
        n = min(chunk_feats, s.fbank.num_frames_ready - s.frames_done)
        read_frames(s.fbank, s.frames_done, x[b, :n])
        x[b, n:] = pad
        x_lens[b] = n
    return x, x_lens


def batch_states(states: list[list[np.ndarray]], axes: list[int]) -> list[np.ndarray]:
    """Streams' encoder caches → one batch per cache, along its batch axis; a lone stream's as they
    are (the usual CPU case: concatenating and slicing back copied every cache for nothing)."""
    if len(states) == 1:
        return list(states[0])
    return [np.concatenate([s[k] for s in states], axis=axis) for k, axis in enumerate(axes)]


def split_states(batch: list[np.ndarray], count: int, axes: list[int]) -> list[list[np.ndarray]]:
    """:func:`batch_states` undone: each stream's own copy (an idle stream never keeps a whole
    batch's memory alive); a lone stream's as they are."""
    if count == 1:
        return [list(batch)]
    return [[np.take(t, [b], axis=axis) for t, axis in zip(batch, axes)] for b in range(count)]


class OnlineRecognizer:
    """An exported streaming model (``model.onnx`` + tokenizer files) ready to decode streams."""

    def __init__(self, model_dir: str | Path, *, num_threads: int = 1, att_context: tuple[int, int] | None = None,
                 chunks_per_call: int = 1, endpoint: EndpointConfig | None = EndpointConfig(), model_file: str = "model.onnx",
                 beam: int = 1, memory_arena: bool = True, gate: GateConfig | None = GateConfig(), device: str = "cpu",
                 device_states: bool | None = None, lm: LmConfig | str | Path | None = None):
        """``device_states``: keep the streams' encoder caches on ``device`` between
        chunks (:mod:`speechkit.runtime.state_pool`); None: on for a GPU (``cuda[:N]``, ``tensorrt[:N]``), off on the CPU.
        ``lm``: a word n-gram model fused into the beam search (needs ``beam`` > 1): an ARPA path
        (default weight and bonus) or an :class:`LmConfig`."""
        if isinstance(lm, (str, Path)):
            lm = LmConfig(str(lm))
        if lm is not None:
            require_beam(beam)
        model_dir = Path(model_dir)
        pooled = self._wants_pool(device, device_states)
        # with a pool, the plain graph's session only gives the metadata and shapes: the CPU's
        self.session, self.meta, self.fbank_cfg = open_model(model_dir, model_file, "ctc-streaming-conformer", "streaming CTC",
                                                             num_threads, memory_arena, "cpu" if pooled else device)
        meta = self.meta
        self.sample_rate = self.fbank_cfg.sample_rate
        self.subsampling = int(meta["subsampling"])
        self.contexts = [tuple(int(v) for v in c.split(",")) for c in meta["att_contexts"].split(";")]
        self.att_context = tuple(att_context) if att_context is not None else self.contexts[0]
        if self.att_context not in self.contexts:
            known = ", ".join(f"{l},{r}" for l, r in self.contexts)
            raise SpeechkitError(f"att_context {self.att_context} was not trained (trained: {known})")
        left, right = self.att_context
        self.chunk_frames = (right + 1) * chunks_per_call  # encoder frames per call
        self.chunk_feats = self.chunk_frames * self.subsampling
        self.frame_seconds = self.subsampling * self.fbank_cfg.frame_shift_ms / 1000.0
        self.chunk_ms = self.chunk_frames * self.frame_seconds * 1000.0
        self.tokenizer = load_tokenizer(model_dir)
        self.endpoint = endpoint
        self.beam = beam  # 1: greedy; > 1: CTC prefix beam search carried across chunks
        self.fusion = lm.fusion(self.tokenizer) if lm is not None else None  # loads the model: a bad file fails here, once
        self.gate = gate  # None: every token the model emits is kept
        self._state_shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.timings = dict.fromkeys(DECODE_STAGES, 0.0)  # cumulative wall seconds of decode_streams' parts
        # a new stream's caches (batch 1): what create_stream copies and what a fresh pool slot reads
        self._state_zeros = [np.zeros([d if isinstance(d, int) else 1 for d in self._state_shapes[n]],
                                     dtype=np.int64 if n == "cached_len" else np.float32) for n in STATE_NAMES]
        self._pool = (self._state_pool(model_dir / model_file, device, STATE_NAMES, STATE_BATCH_AXIS, num_threads, memory_arena)
                      if pooled else None)

    @staticmethod
    def _wants_pool(device: str, device_states: bool | None) -> bool:
        """Whether the caches go to a device state pool (:mod:`speechkit.runtime.state_pool`);
        ``device_states`` None: on a GPU (cuda[:N], tensorrt[:N]), not on the CPU. A provider this
        onnxruntime lacks is the one-line error here, before the plain graph opens on the CPU."""
        kind = require_provider(device)[0]
        return device_states if device_states is not None else kind != "cpu"

    def _state_pool(self, model_path: Path, device: str, state_names: list[str], batch_axes: list[int],
                    num_threads: int, memory_arena: bool):
        """The device state pool of the encoder at ``model_path``, its wrapped graph opened on
        ``device``; ``self._state_zeros`` must be set."""
        from speechkit.runtime.state_pool import StatePool

        return StatePool(model_path, device, state_names, batch_axes, self._state_zeros, num_threads, memory_arena)

    def create_stream(self) -> Stream:
        state = [z.copy() for z in self._state_zeros]
        search = CtcPrefixBeamSearch(self.beam, fusion=self.fusion) if self.beam > 1 else None
        gate = SpeechGate(self.sample_rate, self.gate) if self.gate is not None else None
        return Stream(online_fbank(self.fbank_cfg), state, self.sample_rate, search=search, gate=gate,
                      tokenizer=self.tokenizer)

    def is_ready(self, s: Stream) -> bool:
        pending = s.fbank.num_frames_ready - s.frames_done
        return pending >= self.chunk_feats or (s.finished and pending > 0)

    def decode_streams(self, streams: list[Stream]) -> None:
        """Run one encoder call over every ready stream in ``streams`` together."""
        ready = [s for s in streams if self.is_ready(s)]
        if not ready:
            return
        t0 = perf_counter()
        x, x_lens = self.gather_features(ready)
        att_context = np.array(self.att_context, dtype=np.int64)
        if self._pool is not None:  # a new stream takes a slot; a failed call gives new slots back
            t1 = perf_counter()
            log_probs, lens = self._pool.run_streams(ready, {"x": x, "x_lens": x_lens, "att_context": att_context})
            t2 = perf_counter()
        else:
            feeds = {"x": x, "x_lens": x_lens, "att_context": att_context,
                     **dict(zip(STATE_NAMES, batch_states([s.state for s in ready], STATE_BATCH_AXIS)))}
            t1 = perf_counter()
            out = self.session.run(None, feeds)
            t2 = perf_counter()
            log_probs, lens = out[0], out[1]
            for s, state in zip(ready, split_states(out[2:], len(ready), STATE_BATCH_AXIS)):
                s.state = state
        for b, s in enumerate(ready):
            s.fbank.pop(int(x_lens[b]))  # frees the frames: memory stays flat however long the stream
            s.frames_done += int(x_lens[b])
        t3 = perf_counter()
        for b, s in enumerate(ready):  # each stream's search reads only its own state, so it can follow the unstacking
            self._decode(s, log_probs[b, : int(lens[b])])
        self._add_timings(t0, t1, t2, t3, perf_counter())

    def gather_features(self, ready: list[Stream]) -> tuple[np.ndarray, np.ndarray]:
        """:func:`next_chunks` at this model's chunk size, zero past each stream's frames."""
        return next_chunks(ready, self.chunk_feats, self.fbank_cfg.num_mel_bins)

    def _add_timings(self, t0: float, t1: float, t2: float, t3: float, t4: float) -> None:
        """One decode_streams call's stage boundaries (perf_counter readings) into ``timings``."""
        tm = self.timings
        tm["stack"] += t1 - t0
        tm["session"] += t2 - t1
        tm["unstack"] += t3 - t2
        tm["search"] += t4 - t3

    def _decode(self, s: Stream, log_probs: np.ndarray) -> None:
        if s.search is not None:
            s.search.accept(log_probs)
            ids, frames = s.search.best()
            self._set_segment(s, ids, [s.segment_start + f for f in frames])
        else:
            for t, tok in enumerate(log_probs.argmax(-1).tolist()):
                if tok != BLANK_ID and tok != s.prev:
                    s.pending.append((tok, s.enc_frames + t))
                s.prev = tok
        self._advance(s, len(log_probs))

    def _advance(self, s: Stream, frames: int) -> None:
        """After ``frames`` more encoder frames of ``s`` were searched: let the gate settle
        pending tokens, then close the segment at an endpoint or at the end of the input."""
        s.enc_frames += frames
        last = s.finished and s.frames_done >= s.fbank.num_frames_ready
        self._settle(s, last)
        if self._endpoint(s) or last:
            self._finalize(s)

    def _set_segment(self, s: Stream, ids: list[int], frames: list[int]) -> None:
        """A beam search's current best for the open segment (``frames``: encoder frames from the
        start of the stream) → the segment's tokens, those without speech around them dropped."""
        kept = [(i, f) for i, f in zip(ids, frames) if self._speech_near(s, f)]
        s.ids, s.id_frames = [i for i, _ in kept], [f for _, f in kept]
        s.last_token_frame = s.id_frames[-1] if s.id_frames else s.last_token_frame

    def _speech_near(self, s: Stream, frame: int) -> bool:
        """Whether the gate heard speech around encoder frame ``frame``, looking no further than
        the audio decoded so far (so the answer does not depend on how the audio was fed)."""
        if s.gate is None:
            return True
        t = frame * self.frame_seconds
        decoded = s.frames_done * self.fbank_cfg.frame_shift_ms / 1000.0
        before, after = TOKEN_SPEECH_WINDOW
        return s.gate.is_speech(t - before, min(t + after, decoded))

    def _settle(self, s: Stream, last: bool) -> None:
        """Greedy: move pending tokens, in order, into the segment once the gate has decided them
        — kept as soon as enough speech lies around, dropped once their window's audio is all
        decoded (or the input has ended) without it. The outcome is the whole window's, however
        the audio was chunked; a token waits at most ``TOKEN_SPEECH_WINDOW[1]`` for it."""
        decoded = s.frames_done * self.fbank_cfg.frame_shift_ms / 1000.0
        while s.pending:
            tok, frame = s.pending[0]
            if self._speech_near(s, frame):
                s.ids.append(tok)
                s.id_frames.append(frame)
                s.last_token_frame = frame
            elif not last and decoded < frame * self.frame_seconds + TOKEN_SPEECH_WINDOW[1]:
                break
            s.pending.pop(0)

    def _endpoint(self, s: Stream) -> bool:
        if self.endpoint is None or s.pending:
            return False
        sec = self.frame_seconds
        since = s.last_token_frame if s.ids else s.segment_start
        trailing = (s.enc_frames - max(since, s.segment_start)) * sec
        if not s.ids:
            return trailing >= self.endpoint.silence_before_speech and bool(self.endpoint.silence_before_speech)
        return trailing >= self.endpoint.silence_after_speech or (s.enc_frames - s.segment_start) * sec >= self.endpoint.max_segment

    def _finalize(self, s: Stream) -> None:
        if s.ids:
            sec = self.frame_seconds
            s.finals.append(Segment(self.tokenizer.decode(s.ids), [self.tokenizer.id_to_piece(i) for i in s.ids],
                                    [round(f * sec, 3) for f in s.id_frames], round(s.segment_start * sec, 3), round(s.enc_frames * sec, 3)))
        s.ids, s.id_frames = [], []
        s.segment_start = s.enc_frames
        s.prev = BLANK_ID
        if s.search is not None:
            s.search.reset()

    def is_done(self, s: Stream) -> bool:
        """True once the stream's input is finished and every frame is decoded; closes the last
        segment (it stays open when the input ended exactly at a chunk boundary) and frees the
        stream's state slot."""
        if not s.finished or self.is_ready(s):
            return False
        self._settle(s, last=True)
        if s.ids:
            self._finalize(s)
        self.release(s)
        return True

    def release(self, s: Stream) -> None:
        """The stream will not be decoded again (done, or dropped mid-way): its slot in the
        device state pool goes back to the free list. A no-op on the numpy path and when repeated;
        call it from the thread that calls decode_streams."""
        if self._pool is not None and s.slot is not None and s.slot >= 0:
            self._pool.release(s.slot)
            s.slot = -1  # released: never acquires again (a later decode would read no state)

    def text(self, s: Stream) -> str:
        """Everything recognised so far: final segments then the partial one."""
        partial = s.partial
        return " ".join([seg.text for seg in s.finals] + ([partial] if partial else []))

    def transcribe(self, samples: np.ndarray, sample_rate: int | None = None) -> str:
        """A whole waveform through one stream, chunk by chunk."""
        return self.text(self.run_streams([array_blocks(samples, sample_rate or self.sample_rate)])[0])

    def transcribe_batch(self, waveforms: list[np.ndarray]) -> list[str]:
        """Several whole waveforms as parallel streams, decoded as one batch per chunk."""
        return [self.text(s) for s in self.run_streams([array_blocks(w, self.sample_rate) for w in waveforms])]

    def run_streams(self, sources: list[Iterable[tuple[np.ndarray, int]]], errors: list | None = None) -> list[Stream | None]:
        """Decode several inputs as parallel streams, one encoder call per chunk for all of them.
        Each source yields (mono float32 block, rate) and is read only when its stream needs more
        audio, so memory holds a block and a chunk per stream whatever the inputs' lengths (see
        ``speechkit.audio.io.read_blocks``). A source that raises ``AudioError`` stops only its own
        stream: with ``errors`` given, its slot is None and the error is appended there as
        (index, error); without, the error propagates."""
        streams: list[Stream | None] = [self.create_stream() for _ in sources]
        feeds: list[Iterator | None] = [iter(src) for src in sources]
        while True:
            for i, s in enumerate(streams):
                while s is not None and feeds[i] is not None and not self.is_ready(s):
                    try:
                        block = next(feeds[i], None)
                    except AudioError as e:
                        if errors is None:
                            raise
                        errors.append((i, e))
                        self.release(s)
                        streams[i] = s = feeds[i] = None
                        break
                    if block is None:
                        s.input_finished()
                        feeds[i] = None
                    else:
                        s.accept_waveform(*block)
            live = [s for s in streams if s is not None]
            if not any(self.is_ready(s) for s in live):
                break
            self.decode_streams(live)
        for s in streams:
            if s is not None:
                self.is_done(s)  # closes the last segment
        return streams


def array_blocks(samples: np.ndarray, sample_rate: int, seconds: float = FEED_SECONDS) -> Iterator[tuple[np.ndarray, int]]:
    """A whole waveform as (view, rate) blocks for :meth:`OnlineRecognizer.run_streams`."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise AudioError(f"audio must be mono (N,), got shape {x.shape}")
    step = max(1, int(seconds * sample_rate))
    for at in range(0, len(x), step):
        yield x[at : at + step], sample_rate
