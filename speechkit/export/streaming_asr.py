"""Streaming CTC recognizer → ONNX: one graph runs one call of the cache-aware encoder plus the
CTC head, with the state as named ``cached_*`` inputs and ``new_cached_*`` outputs, the attention
context as an input (one file serves every trained look-ahead) and the metadata a runtime needs.
Export refuses to finish unless ONNX Runtime and PyTorch give the same tokens over chained chunks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from speechkit.errors import SpeechkitError
from speechkit.export.onnx_file import write_onnx
from speechkit.models.asr.ctc_model import CtcAsrModel
from speechkit.nn.streaming_conformer import StreamingConformerEncoder

STATE_NAMES = ["cached_sub1", "cached_sub2", "cached_att", "cached_conv", "cached_len"]
LOGPROB_TOL = 1e-3  # float32 log-probabilities, ONNX Runtime vs PyTorch
# int8 weights vs the float32 graph: the share of chunks whose greedy tokens must be identical
INT8_CHUNK_AGREEMENT = 0.9


class StreamingCtcGraph(nn.Module):
    """B: streams, 4n: fbank frames per call, F: mel bins, n: encoder frames, V: vocabulary.

    x (B, 4n, F) raw fbank, x_lens (B,) valid frames, att_context (2,) int64 (left, right), state
    → log_probs (B, n, V), log_probs_len (B,), new state.
    """

    def __init__(self, model: CtcAsrModel):
        super().__init__()
        if not isinstance(model.encoder, StreamingConformerEncoder):
            raise SpeechkitError(f"streaming export needs a streaming_conformer encoder, this model has '{model.cfg.encoder}'")
        self.model = model

    def forward(self, x, x_lens, att_context, cached_sub1, cached_sub2, cached_att, cached_conv, cached_len):
        state = [cached_sub1, cached_sub2, cached_att, cached_conv, cached_len]
        y, y_lens, new_state = self.model.encoder.forward_chunk(self.model.cmvn(x), x_lens, state, att_context)
        log_probs = torch.log_softmax(self.model.ctc(y), dim=-1)
        return (log_probs, y_lens, *new_state)


def export_streaming_ctc(model: CtcAsrModel, out_path: str | Path, metadata: dict[str, str], opset: int = 18) -> None:
    """Write the graph to ``out_path`` with ``metadata`` in the ONNX metadata_props."""
    graph = StreamingCtcGraph(model.eval()).eval()
    enc = model.encoder
    chunk = 4 * (max(r for _, r in enc.cfg.streamable()) + 1) if enc.cfg.streamable() else 4
    state = enc.init_state(2)
    x = torch.zeros(2, chunk, model.cfg.frontend_conf.num_mel_bins)
    args = (x, torch.tensor([chunk, chunk]), torch.tensor(enc.cfg.streamable()[0]), *state)
    inputs = ["x", "x_lens", "att_context", *STATE_NAMES]
    outputs = ["log_probs", "log_probs_len", *("new_" + n for n in STATE_NAMES)]
    batch = {0: "B"}
    axes = {"x": {0: "B", 1: "T"}, "x_lens": batch, "cached_sub1": batch, "cached_sub2": batch,
            "cached_att": {1: "B"}, "cached_conv": {1: "B"}, "cached_len": batch,
            "log_probs": {0: "B", 1: "n"}, "log_probs_len": batch, "new_cached_sub1": batch,
            "new_cached_sub2": batch, "new_cached_att": {1: "B"}, "new_cached_conv": {1: "B"},
            "new_cached_len": batch}
    write_onnx(graph, args, out_path, inputs, outputs, axes, metadata, opset)


def metadata(model: CtcAsrModel, tokenizer) -> dict[str, str]:
    fe, enc = model.cfg.frontend_conf, model.encoder.cfg
    return {
        "model_family": "ctc-streaming-conformer",
        "sample_rate": fe.sample_rate, "num_mel_bins": fe.num_mel_bins,
        "frame_length_ms": fe.frame_length_ms, "frame_shift_ms": fe.frame_shift_ms,
        "subsampling": model.encoder.embed.factor,
        "att_contexts": ";".join(f"{l},{r}" for l, r in enc.streamable()),
        "cache_frames": enc.cache_frames, "num_blocks": enc.num_blocks, "d_model": enc.output_size,
        "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.kind, "blank_id": 0,
    }


def _chain(run_chunk, feats: np.ndarray, chunk_feats: int, state):
    """Feed (T, F) fbank through run_chunk in calls of chunk_feats → (T', V) log-probs."""
    outs = []
    for start in range(0, len(feats), chunk_feats):
        x = feats[start : start + chunk_feats]
        n = len(x)
        x = np.pad(x, ((0, chunk_feats - n), (0, 0)))[None]
        lp, lens, state = run_chunk(x, np.array([n], dtype=np.int64), state)
        outs.append(lp[0, : int(lens[0])])
    return np.concatenate(outs)


def check_parity(model: CtcAsrModel, onnx_path: str | Path, utterances: list[np.ndarray]) -> list[dict]:
    """Run every utterance chunk by chunk through PyTorch and ONNX Runtime for every trained
    look-ahead; raise unless the greedy tokens agree and the log-probs are within LOGPROB_TOL."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    enc = model.encoder
    report = []
    for left, right in enc.cfg.streamable():
        chunk_feats = 4 * (right + 1)
        ctx = np.array([left, right], dtype=np.int64)

        def torch_chunk(x, x_lens, state):
            with torch.no_grad():
                y, lens, state = enc.forward_chunk(model.cmvn(torch.from_numpy(x)), torch.from_numpy(x_lens), state, (left, right))
                return torch.log_softmax(model.ctc(y), -1).numpy(), lens.numpy(), state

        def onnx_chunk(x, x_lens, state):
            out = session.run(None, {"x": x.astype(np.float32), "x_lens": x_lens, "att_context": ctx, **dict(zip(STATE_NAMES, state))})
            return out[0], out[1], out[2:]

        for i, feats in enumerate(utterances):
            if len(feats) < 3 * chunk_feats:
                raise SpeechkitError(f"parity check: utterance {i} has {len(feats)} frames, fewer than 3 chunks of {chunk_feats}")
            a = _chain(torch_chunk, feats, chunk_feats, enc.init_state(1))
            b = _chain(onnx_chunk, feats, chunk_feats, [s.numpy() for s in enc.init_state(1)])
            if a.shape != b.shape:
                raise SpeechkitError(f"ONNX Runtime and PyTorch disagree on utterance {i}: output shapes {b.shape} vs {a.shape}")
            diff = float(np.abs(a - b).max())
            same = bool(np.array_equal(a.argmax(-1), b.argmax(-1)))
            report.append({"att_context": [left, right], "utt": i, "chunks": -(-len(feats) // chunk_feats), "max_abs_diff": diff, "same_tokens": same})
            if not same or diff > LOGPROB_TOL:
                raise SpeechkitError(f"ONNX Runtime and PyTorch disagree on utterance {i} at att_context ({left}, {right}): "
                                     f"same tokens {same}, max |Δ log-prob| {diff:.2e} (tolerance {LOGPROB_TOL})")
    return report


def check_int8(model: CtcAsrModel, fp32_path: str | Path, int8_path: str | Path, utterances: list[np.ndarray]) -> dict:
    """The int8 graph against the float32 one it came from, chunk by chunk at every look-ahead the
    model was trained for: raise unless at least INT8_CHUNK_AGREEMENT of the chunks give the same
    greedy tokens."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32_path, int8_path)]
    chunks = same = frames = same_frames = 0
    diff = 0.0
    for left, right in model.encoder.cfg.streamable():
        chunk_feats = 4 * (right + 1)
        ctx = np.array([left, right], dtype=np.int64)
        for feats in utterances:
            out = []
            for session in sessions:
                def run(x, x_lens, state, session=session):
                    o = session.run(None, {"x": x.astype(np.float32), "x_lens": x_lens, "att_context": ctx, **dict(zip(STATE_NAMES, state))})
                    return o[0], o[1], o[2:]

                out.append(_chain(run, feats, chunk_feats, [t.numpy() for t in model.encoder.init_state(1)]))
            a, b = out
            diff = max(diff, float(np.abs(a - b).max()))
            ta, tb = a.argmax(-1), b.argmax(-1)
            frames, same_frames = frames + len(ta), same_frames + int((ta == tb).sum())
            per_chunk = right + 1
            for at in range(0, len(ta), per_chunk):
                chunks += 1
                same += bool(np.array_equal(ta[at : at + per_chunk], tb[at : at + per_chunk]))
    report = {"chunks": chunks, "same_token_chunks": round(same / max(chunks, 1), 4),
              "same_token_frames": round(same_frames / max(frames, 1), 4), "max_abs_diff": round(diff, 4),
              "tolerance": f"same greedy tokens on at least {INT8_CHUNK_AGREEMENT:.0%} of chunks"}
    if same < INT8_CHUNK_AGREEMENT * chunks:
        raise SpeechkitError(f"the int8 model disagrees with float32: same tokens on {same} of {chunks} chunks "
                             f"(needs {INT8_CHUNK_AGREEMENT:.0%}); export without --int8")
    return report
