"""Content features for voice conversion, with no torch: the output of one conformer block of the
shipped streaming ASR encoder (MeanVC's "bottleneck features"), 25 frames/s, computed chunk by
chunk with the encoder's caches exactly as streaming recognition computes them.

    enc = ContentEncoder("models/asr-stream-synth")        # last block; layer=8 for an earlier one
    feats = enc.encode(samples)                            # (F, 192), F = round(N / 640) or one more
    s = enc.stream()
    new = s.accept(block)                                  # (k, 192): the frames this block completed
    tail = s.finish()

The exported graph only returns CTC log-probabilities; the block output is added as one more graph
output in memory (found by the graph's structure, checked against its metadata), so the file on
disk stays the one the ASR runtime runs.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import onnx

from speechkit.audio.fbank import online_fbank
from speechkit.errors import SpeechkitError
from speechkit.runtime.asr import STATE_BATCH_AXIS, STATE_NAMES, Stream, array_blocks, batch_states, next_chunks, split_states
from speechkit.runtime.session import open_model

FAMILY = "ctc-streaming-conformer"
BLOCK_NAME = re.compile(r"/blocks\.(\d+)/")


def block_outputs(model: onnx.ModelProto, where: str = "model") -> list[str]:
    """The tensor each conformer block outputs, first block first. A block output is the
    LayerNormalization whose result both opens the next block (its first LayerNormalization) and
    is its residual (an Add), and, for the last block, the one the CTC projection (the MatMul that
    leads to ``log_probs``) reads. Raises a one-line error unless there is one per block
    (``num_blocks`` in the metadata) and, where nodes are named ``/blocks.<i>/``, block i's is
    inside block i."""
    graph = model.graph
    meta = {p.key: p.value for p in model.metadata_props}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    producer = {out: node for node in graph.node for out in node.output}

    def bad(why: str) -> SpeechkitError:
        return SpeechkitError(f"{where}: not the streaming conformer graph the content encoder expects ({why})")

    # the CTC projection: walk back from log_probs (LogSoftmax, Add, ...) to the first MatMul, which reads the encoder output
    node = producer.get("log_probs")
    for _ in range(8):
        if node is None or node.op_type == "MatMul":
            break
        node = producer.get(next((i for i in node.input if i in producer), ""))
    if node is None or node.op_type != "MatMul":
        raise bad("no MatMul before log_probs")
    encoder_out = node.input[0]
    found = []
    for node in graph.node:
        if node.op_type != "LayerNormalization":
            continue
        ops = {u.op_type for u in users.get(node.output[0], [])}
        if {"Add", "LayerNormalization"} <= ops or node.output[0] == encoder_out:
            found.append(node)
    blocks = int(meta.get("num_blocks", -1))
    if not found or found[-1].output[0] != encoder_out:
        raise bad("the CTC projection does not read a block's LayerNormalization")
    if len(found) != blocks:
        raise bad(f"found {len(found)} block outputs, metadata num_blocks={meta.get('num_blocks')}")
    for i, node in enumerate(found):
        m = BLOCK_NAME.search(node.name)
        if m and int(m.group(1)) != i:
            raise bad(f"block {i + 1}'s output {node.output[0]!r} lies in block {int(m.group(1)) + 1}")
    return [node.output[0] for node in found]


def with_block_outputs(model: onnx.ModelProto, layers: list[int], where: str = "model") -> tuple[onnx.ModelProto, list[str]]:
    """The model with the outputs of conformer blocks ``layers`` (1-based) added as graph outputs
    → (model, their names). Changes ``model`` in place."""
    names = block_outputs(model, where)
    picked = []
    for layer in layers:
        if not 1 <= layer <= len(names):
            raise SpeechkitError(f"{where}: layer {layer} out of range (the encoder has blocks 1..{len(names)})")
        picked.append(names[layer - 1])
    have = {o.name for o in model.graph.output}
    for name in picked:
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            have.add(name)
    return model, picked


class ContentEncoder:
    """The shipped streaming ASR encoder cut at conformer block ``layer`` (1-based; None: the last
    block, whose output the CTC projection reads). ``att_context`` is one of the trained
    (left, right) contexts in the file's metadata (None: its first, as the ASR runtime); chunks are
    right + 1 frames (40 ms each), the same chunking as :class:`OnlineRecognizer`."""

    def __init__(self, model_dir: str | Path, layer: int | None = None, att_context: tuple[int, int] | None = None, *,
                 num_threads: int = 1, model_file: str = "model.onnx", device: str = "cpu"):
        path = Path(model_dir) / model_file
        if not path.is_file():
            raise SpeechkitError(f"{path}: no such model (export one with `speechkit export onnx EXP_DIR OUT_DIR`)")
        try:
            model = onnx.load(str(path))
        except Exception as e:  # protobuf's DecodeError and friends share no useful base class
            raise SpeechkitError(f"{path}: not an ONNX file ({type(e).__name__})") from None
        family = {p.key: p.value for p in model.metadata_props}.get("model_family")
        if family != FAMILY:
            raise SpeechkitError(f"{path}: not a streaming CTC model (model_family={family!r})")
        blocks = len(block_outputs(model, str(path)))
        self.layer = blocks if layer is None else int(layer)
        model, (self.output_name,) = with_block_outputs(model, [self.layer], str(path))
        # ONNX Runtime's session options live in open_model/make_session, which take a path
        with tempfile.TemporaryDirectory(prefix="content-") as tmp:
            onnx.save(model, str(Path(tmp) / model_file))
            self.session, self.meta, self.fbank_cfg = open_model(tmp, model_file, FAMILY, "streaming CTC", num_threads,
                                                                 device=device)
        self.sample_rate = self.fbank_cfg.sample_rate
        self.subsampling = int(self.meta["subsampling"])
        self.dim = int(self.meta["d_model"])
        contexts = [tuple(int(v) for v in c.split(",")) for c in self.meta["att_contexts"].split(";")]
        self.att_context = tuple(att_context) if att_context is not None else contexts[0]
        if self.att_context not in contexts:
            known = ", ".join(f"{l},{r}" for l, r in contexts)
            raise SpeechkitError(f"att_context {self.att_context} was not trained (trained: {known})")
        self.chunk_feats = (self.att_context[1] + 1) * self.subsampling
        self.frame_rate = 1000.0 / (self.subsampling * self.fbank_cfg.frame_shift_ms)
        self._outputs = ["log_probs", "log_probs_len", self.output_name] + ["new_" + n for n in STATE_NAMES]
        self._state_shapes = {i.name: i.shape for i in self.session.get_inputs()}

    def init_state(self) -> list[np.ndarray]:
        """Zero caches for one stream (the ASR runtime's ``create_stream``)."""
        return [np.zeros([1 if not isinstance(d, int) else d for d in self._state_shapes[name]],
                         dtype=np.int64 if name == "cached_len" else np.float32) for name in STATE_NAMES]

    def stream(self, keep_log_probs: bool = False) -> ContentStream:
        return ContentStream(self, keep_log_probs)

    def encode(self, samples: np.ndarray, sample_rate: int | None = None, with_log_probs: bool = False):
        """A whole waveform, streamed in 1 s blocks → (F, dim) float32; with ``with_log_probs``
        also the CTC log-probabilities of the same frames, (F, vocab)."""
        s = self.stream(keep_log_probs=with_log_probs)
        parts = [s.accept(block, rate) for block, rate in array_blocks(samples, sample_rate or self.sample_rate)]
        feats = np.concatenate(parts + [s.finish()])
        if not with_log_probs:
            return feats
        vocab = int(self.meta["vocab_size"])
        return feats, np.concatenate(s.log_probs) if s.log_probs else np.zeros((0, vocab), np.float32)

    def step_many(self, streams: list[ContentStream]) -> list[np.ndarray]:
        """One encoder call over the next chunk of every ``ready`` stream → per stream the frames
        that chunk completed, (k, dim) (empty for a stream that was not ready). A stream's frames
        are those it gets alone: every row of the batch is computed on its own."""
        ready = [s for s in streams if s.ready]
        if not ready:
            return [np.zeros((0, self.dim), np.float32) for _ in streams]
        x, x_lens = next_chunks([cs._feed for cs in ready], self.chunk_feats, self.fbank_cfg.num_mel_bins)
        feeds = {"x": x, "x_lens": x_lens, "att_context": np.array(self.att_context, dtype=np.int64),
                 **dict(zip(STATE_NAMES, batch_states([cs._feed.state for cs in ready], STATE_BATCH_AXIS)))}
        log_probs, lens, feats, *new_state = self.session.run(self._outputs, feeds)
        out = {}
        for b, (cs, state) in enumerate(zip(ready, split_states(new_state, len(ready), STATE_BATCH_AXIS))):
            s, k = cs._feed, int(lens[b])
            s.state = state
            s.fbank.pop(int(x_lens[b]))  # frees the frames: memory stays flat however long the stream
            s.frames_done += int(x_lens[b])
            cs.frames += k
            if cs.log_probs is not None:
                cs.log_probs.append(log_probs[b, :k])
            out[id(cs)] = feats[b, :k]
        return [out.get(id(cs), np.zeros((0, self.dim), np.float32)) for cs in streams]


class ContentStream:
    """One source's encoder caches and online fbank. ``accept`` returns the frames each block
    completes (whole chunks only); ``finish`` runs the last, partial chunk. A caller batching many
    sources ``push``es audio, ``end``s the input and runs :meth:`ContentEncoder.step_many` while
    any is ``ready``."""

    def __init__(self, encoder: ContentEncoder, keep_log_probs: bool = False):
        self.encoder = encoder
        # the ASR stream: input checks, resampling from other rates, the online fbank
        self._feed = Stream(online_fbank(encoder.fbank_cfg), encoder.init_state(), encoder.sample_rate)
        self.frames = 0  # content frames given out so far
        self.log_probs: list[np.ndarray] | None = [] if keep_log_probs else None

    @property
    def ready(self) -> bool:
        """An encoder chunk is waiting: a whole one, or the input ended and a part is left."""
        pending = self._feed.fbank.num_frames_ready - self._feed.frames_done
        return pending >= self.encoder.chunk_feats or (self._feed.finished and pending > 0)

    @property
    def ended(self) -> bool:
        return self._feed.finished

    def push(self, samples, sample_rate: int | None = None) -> None:
        """Audio in (checked, resampled, fbank computed); no encoder call."""
        self._feed.accept_waveform(samples, sample_rate)

    def end(self) -> None:
        """No more audio: the last, partial chunk becomes ready."""
        self._feed.input_finished()

    def accept(self, samples, sample_rate: int | None = None) -> np.ndarray:
        self.push(samples, sample_rate)
        return self._drain()

    def finish(self) -> np.ndarray:
        self.end()
        return self._drain()

    def _drain(self) -> np.ndarray:
        out = []
        while self.ready:
            out.extend(self.encoder.step_many([self]))
        return np.concatenate(out) if out else np.zeros((0, self.encoder.dim), dtype=np.float32)
