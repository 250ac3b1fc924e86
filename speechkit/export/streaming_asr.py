"""Streaming CTC recognizer → ONNX: one graph runs one call of the cache-aware encoder plus the
CTC head, with the state as named ``cached_*`` inputs and ``new_cached_*`` outputs, the attention
context as an input (one file serves every trained look-ahead) and the metadata a runtime needs.
Export refuses to finish unless ONNX Runtime and PyTorch give the same tokens over chained chunks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from speechkit.errors import SpeechkitError
from speechkit.models.asr.ctc_model import CtcAsrModel
from speechkit.nn.streaming_conformer import StreamingConformerEncoder

STATE_NAMES = ["cached_sub1", "cached_sub2", "cached_att", "cached_conv", "cached_len"]
LOGPROB_TOL = 1e-3  # float32 log-probabilities, ONNX Runtime vs PyTorch


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
    import onnx

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
    out_path = Path(out_path)
    tmp = out_path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(graph, args, str(tmp), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    proto = onnx.load(str(tmp))
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, str(v)
    onnx.save(proto, str(tmp))
    tmp.replace(out_path)


def _metadata(model: CtcAsrModel, tokenizer) -> dict[str, str]:
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


def export_exp_dir(exp_dir: str | Path, out_dir: str | Path, utterances: list[np.ndarray], *, checkpoint: str = "model_avg.pt",
                   int8: bool = False) -> dict:
    """Export an experiment to ``out_dir`` (model.onnx, tokenizer, export.json): a streaming CTC
    model as the chunk graph, a Paraformer as one offline graph. The fp32 graph is checked against
    PyTorch on ``utterances`` (fbank arrays) before anything is kept; with ``int8`` the shipped
    model.onnx is its dynamic int8 quantization."""
    from speechkit.export import paraformer as pf
    from speechkit.models.asr.inference import Recognizer

    rec = Recognizer.from_exp_dir(exp_dir, checkpoint, device="cpu")
    model = rec.model.float().eval()
    if len(utterances) < 1:
        raise SpeechkitError("export needs at least one test utterance for the parity check")
    if isinstance(model, pf.ParaformerModel):
        export, check, meta = pf.export_paraformer, pf.check_parity, pf.metadata(model, rec.tokenizer)
    elif isinstance(model, CtcAsrModel) and isinstance(model.encoder, StreamingConformerEncoder):
        export, check, meta = export_streaming_ctc, check_parity, _metadata(model, rec.tokenizer)
    else:
        raise SpeechkitError(f"{exp_dir}: ONNX export covers streaming_conformer + ctc and paraformer models, "
                             f"not encoder '{model.cfg.encoder}' with head '{model.cfg.head}'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = out_dir / "model.fp32.onnx"
    export(model, fp32, meta)
    try:
        report = check(model, fp32, utterances)
    except Exception:
        fp32.unlink(missing_ok=True)
        raise
    for name in ("tokens.txt", "bpe.model"):
        if (Path(exp_dir) / name).is_file():
            shutil.copy(Path(exp_dir) / name, out_dir / name)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(out_dir / "model.onnx"), weight_type=QuantType.QInt8)
        fp32.unlink()
    else:
        fp32.replace(out_dir / "model.onnx")
    info = {"exp_dir": str(exp_dir), "checkpoint": checkpoint, "model_family": meta["model_family"], "int8": int8,
            "parity": report, "size_mb": round((out_dir / "model.onnx").stat().st_size / 1e6, 2)}
    (out_dir / "export.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
