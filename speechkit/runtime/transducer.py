"""Streaming recognition on an exported transducer in sherpa-onnx's online format (``speechkit
export sherpa``: encoder.onnx, decoder.onnx, joiner.onnx, tokens.txt), with no torch: the same
folder sherpa-onnx loads. Streams, fbank, the speech-activity gate and endpointing are
:mod:`speechkit.runtime.asr`'s; the encoder is the zipformer2-layout graph (a flat state list,
one chunk of fixed length per call) and the search is :mod:`speechkit.decoding.transducer`'s
greedy or modified beam search, batched over the streams of a call.

    rec = TransducerRecognizer("exp/hybrid/sherpa")
    print(rec.transcribe(samples))        # float32 in [-1, 1] at rec.sample_rate
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkit.audio.fbank import LOG_FLOOR, FbankConfig, online_fbank
from speechkit.audio.vad import GateConfig, SpeechGate
from speechkit.decoding.transducer import BeamState, GreedyState, Hypothesis, greedy_search, modified_beam_search
from speechkit.errors import SpeechkitError
from speechkit.runtime.asr import EndpointConfig, OnlineRecognizer, Stream
from speechkit.runtime.session import cpu_session
from speechkit.text.tokenizer import load_tokenizer

FAMILY = "transducer-streaming-conformer"  # export.json's model_family (speechkit.export.sherpa_experiment)
MODEL_TYPE = "zipformer2"


@dataclass
class TransducerStream(Stream):
    """A :class:`Stream` whose search is a transducer's: ``search_state`` carries the decoder
    context (greedy) or the beam across chunks; ``state`` is the encoder's flat state list."""

    search_state: GreedyState | BeamState | None = None


def _read_export(model_dir: Path) -> dict:
    info = model_dir / "export.json"
    if not info.is_file():
        raise SpeechkitError(f"{model_dir}: no export.json (export one with `speechkit export sherpa EXP_DIR OUT_DIR`)")
    report = json.loads(info.read_text(encoding="utf-8"))
    if report.get("model_family") != FAMILY:
        raise SpeechkitError(f"{model_dir}: not a streaming transducer export (model_family={report.get('model_family')!r})")
    return report


class TransducerRecognizer(OnlineRecognizer):
    """A sherpa-format streaming transducer ready to decode streams; the interface of
    :class:`OnlineRecognizer` (``beam`` 1: greedy search; > 1: modified beam search with that
    many hypotheses, the best picked by log-prob per token as sherpa-onnx does)."""

    def __init__(self, model_dir: str | Path, *, num_threads: int = 1, att_context: tuple[int, int] | None = None,
                 endpoint: EndpointConfig | None = EndpointConfig(), beam: int = 1, memory_arena: bool = True,
                 gate: GateConfig | None = GateConfig()):
        model_dir = Path(model_dir)
        _read_export(model_dir)
        for name in ("encoder.onnx", "decoder.onnx", "joiner.onnx"):
            if not (model_dir / name).is_file():
                raise SpeechkitError(f"{model_dir / name}: missing (export with `speechkit export sherpa EXP_DIR OUT_DIR`)")
        if not isinstance(beam, int) or beam < 1:
            raise SpeechkitError(f"beam must be a positive integer, got {beam!r}")
        self.session = cpu_session(model_dir / "encoder.onnx", num_threads, memory_arena)
        self.decoder = cpu_session(model_dir / "decoder.onnx", num_threads, memory_arena)
        self.joiner = cpu_session(model_dir / "joiner.onnx", num_threads, memory_arena)
        self.meta = meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("model_type") != MODEL_TYPE or not meta.get("fbank_samples", "").startswith("int16"):
            raise SpeechkitError(f"{model_dir}/encoder.onnx: not a speechkit zipformer2 encoder for int16-range fbank "
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
        self.context_size = int(self.decoder.get_modelmeta().custom_metadata_map["context_size"])
        self.tokenizer = load_tokenizer(model_dir)
        pieces = [line.split(" ")[0] for line in (model_dir / "tokens.txt").read_text(encoding="utf-8").splitlines()]
        self.unk_id = pieces.index("<unk>") if "<unk>" in pieces else None  # unk is blank to the search, as in sherpa-onnx
        self.endpoint, self.beam, self.gate = endpoint, beam, gate
        inputs = self.session.get_inputs()[1:]
        self._state_names = [i.name for i in inputs]
        # each state's batch axis is its one symbolic dimension
        self._state_axes = [next(a for a, d in enumerate(i.shape) if not isinstance(d, int)) for i in inputs]
        self._state_zeros = [np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                                      dtype=np.int64 if i.type == "tensor(int64)" else np.float32) for i in inputs]

    def create_stream(self) -> TransducerStream:
        search = (BeamState if self.beam > 1 else GreedyState).start(self.context_size)
        gate = SpeechGate(self.sample_rate, self.gate) if self.gate is not None else None
        return TransducerStream(online_fbank(self.fbank_cfg), [z.copy() for z in self._state_zeros], self.sample_rate,
                                gate=gate, tokenizer=self.tokenizer, search_state=search)

    def _decoder_fn(self, contexts: np.ndarray) -> np.ndarray:
        return self.decoder.run(None, {"y": contexts})[0]

    def _joiner_fn(self, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
        return self.joiner.run(None, {"encoder_out": enc.astype(np.float32, copy=False),
                                      "decoder_out": dec.astype(np.float32, copy=False)})[0]

    def decode_streams(self, streams: list[TransducerStream]) -> None:
        """One encoder call over every ready stream in ``streams``, then one batched search. A
        last partial chunk is padded with silence; only its encoder frames that real fbank
        frames reach are searched."""
        ready = [s for s in streams if self.is_ready(s)]
        if not ready:
            return
        # a last partial chunk is padded with the fbank of digital silence (the graph takes whole chunks)
        x = np.full((len(ready), self.chunk_feats, self.fbank_cfg.num_mel_bins), LOG_FLOOR, dtype=np.float32)
        n_feats = []
        for b, s in enumerate(ready):
            n = min(self.chunk_feats, s.fbank.num_frames_ready - s.frames_done)
            x[b, :n] = np.stack([s.fbank.get_frame(s.frames_done + i) for i in range(n)])
            n_feats.append(n)
        feeds = {"x": x}
        for k, (name, axis) in enumerate(zip(self._state_names, self._state_axes)):
            feeds[name] = np.concatenate([s.state[k] for s in ready], axis=axis)
        enc_out, *new_state = self.session.run(None, feeds)
        frames = []
        for b, (s, n) in enumerate(zip(ready, n_feats)):
            s.state = [np.take(t, [b], axis=axis) for t, axis in zip(new_state, self._state_axes)]
            s.fbank.pop(n)
            s.frames_done += n
            frames.append(enc_out[b, : -(-n // self.subsampling)])
        searched = self._search(frames, [s.search_state for s in ready])
        for s, state, f in zip(ready, searched, frames):
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
