"""Paraformer → ONNX: one graph from raw fbank to token ids — encoder, CIF predictor, the
integrate-and-fire step itself (the overlap-matrix form in ``cif.py``, plain tensor ops with a
dynamic token count) and the NAR decoder. Batch and length are dynamic axes.

Outputs: ``tokens`` (B, N) int64, ``token_lens`` (B,), ``log_probs`` (B, N, V) for the parity
check and N-best users, ``alphas`` (B, T') and ``alphas_len`` (B,) for token times. Export
refuses to finish unless ONNX Runtime and PyTorch give the same tokens on real utterances, alone
and batched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from speechkit.audio.fbank import pad_feats
from speechkit.errors import SpeechkitError
from speechkit.export.onnx_file import write_onnx
from speechkit.models.asr.cif import cif, token_counts
from speechkit.models.asr.paraformer import ParaformerModel

# float32, ONNX Runtime vs PyTorch. The log-probs come out of 12 encoder + 6 decoder layers: the
# 50 h model's export measured 1.7e-3 with identical tokens (streaming CTC, 12 layers: 3e-5).
LOGPROB_TOL = 5e-3
ALPHA_TOL = 1e-4  # the CIF weights, where token counts and times come from
INT8_TOKEN_ERROR = 0.05  # int8 weights vs the float32 graph
OUTPUTS = ["tokens", "token_lens", "log_probs", "alphas", "alphas_len"]


class ParaformerGraph(nn.Module):
    """B: batch, T: fbank frames, F: mel bins, T': encoder frames, N: tokens, V: vocabulary.

    x (B, T, F) raw fbank, x_lens (B,) → tokens (B, N), token_lens (B,), log_probs (B, N, V),
    alphas (B, T'), alphas_len (B,).
    """

    def __init__(self, model: ParaformerModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor):
        m, hc = self.model, self.model.hc
        enc, enc_lens = m.encoder(m.cmvn(x), x_lens)
        alphas = m.predictor(enc, enc_lens)
        counts = token_counts(alphas, hc.cif_threshold, hc.tail_threshold)
        k = counts.max().clamp(min=1)  # a tensor: the token axis stays dynamic in the graph
        emb = cif(enc, alphas, k, hc.cif_threshold).to(enc.dtype)
        log_probs = torch.log_softmax(m.decoder(emb, counts, enc, enc_lens).float(), dim=-1)
        return log_probs.argmax(-1), counts, log_probs, alphas, enc_lens


def export_paraformer(model: ParaformerModel, out_path: str | Path, metadata: dict[str, str], opset: int = 18) -> None:
    graph = ParaformerGraph(model.float()).eval()  # a fresh wrapper is in training mode; export restores it
    lens = torch.tensor([200, 160])
    args = (torch.randn(2, 200, model.cfg.frontend_conf.num_mel_bins), lens)
    axes = {"x": {0: "B", 1: "T"}, "x_lens": {0: "B"}, "tokens": {0: "B", 1: "N"}, "token_lens": {0: "B"},
            "log_probs": {0: "B", 1: "N"}, "alphas": {0: "B", 1: "T_enc"}, "alphas_len": {0: "B"}}
    write_onnx(graph, args, out_path, ["x", "x_lens"], OUTPUTS, axes, metadata, opset)


def metadata(model: ParaformerModel, tokenizer) -> dict[str, str]:
    fe = model.cfg.frontend_conf
    return {
        "model_family": "paraformer",
        "sample_rate": fe.sample_rate, "num_mel_bins": fe.num_mel_bins,
        "frame_length_ms": fe.frame_length_ms, "frame_shift_ms": fe.frame_shift_ms,
        "subsampling": model.encoder.embed.factor, "cif_threshold": model.hc.cif_threshold,
        "tail_threshold": model.hc.tail_threshold, "encoder": model.cfg.encoder,
        "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.kind, "blank_id": 0,
    }


def check_parity(model: ParaformerModel, onnx_path: str | Path, utterances: list[np.ndarray]) -> list[dict]:
    """Each utterance alone and all of them as one padded batch, through PyTorch and ONNX Runtime:
    raise unless the tokens and counts agree and the log-probs are within LOGPROB_TOL."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    graph = ParaformerGraph(model.float()).eval()  # a fresh wrapper is in training mode; export restores it
    groups = [[i] for i in range(len(utterances))] + [list(range(len(utterances)))]
    report = []
    for group in groups:
        x, lens = pad_feats([utterances[i] for i in group])
        with torch.no_grad():
            ref = [t.numpy() for t in graph(torch.from_numpy(x), torch.from_numpy(lens))]
        got = session.run(OUTPUTS, {"x": x, "x_lens": lens})
        same = ref[0].shape == got[0].shape and bool(np.array_equal(ref[1], got[1]))
        if same:
            valid = np.arange(ref[0].shape[1])[None, :] < ref[1][:, None]
            same = bool(np.array_equal(ref[0][valid], got[0][valid]))
        diff = float(np.abs(ref[2] - got[2]).max()) if ref[2].shape == got[2].shape else float("inf")
        alpha_diff = float(np.abs(ref[3] - got[3]).max())
        report.append({"utts": group, "batch": len(group), "tokens": int(ref[1].sum()), "max_abs_diff": diff,
                       "max_alpha_diff": alpha_diff, "same_tokens": same})
        if not same or diff > LOGPROB_TOL or alpha_diff > ALPHA_TOL:
            raise SpeechkitError(f"ONNX Runtime and PyTorch disagree on utterances {group}: same tokens {same}, "
                                 f"max |Δ log-prob| {diff:.2e} (tolerance {LOGPROB_TOL}), max |Δ α| {alpha_diff:.1e} (tolerance {ALPHA_TOL})")
    return report


def check_int8(model: ParaformerModel, fp32_path: str | Path, int8_path: str | Path, utterances: list[np.ndarray]) -> dict:
    """The int8 graph against the float32 one it came from, each utterance alone: raise unless the
    token error rate between their outputs is at most INT8_TOKEN_ERROR."""
    import onnxruntime as ort

    from speechkit.models.asr.paraformer import edit_distance

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32_path, int8_path)]
    errors = tokens = same = 0
    for feats in utterances:
        x, lens = pad_feats([feats])
        (a, na), (b, nb) = (s.run(OUTPUTS[:2], {"x": x, "x_lens": lens}) for s in sessions)
        ref, hyp = a[0, : int(na[0])].tolist(), b[0, : int(nb[0])].tolist()
        errors, tokens, same = errors + edit_distance(ref, hyp), tokens + len(ref), same + (ref == hyp)
    rate = errors / max(tokens, 1)
    report = {"utterances": len(utterances), "same_tokens": same, "token_error_rate": round(rate, 4),
              "tolerance": f"token error rate against float32 at most {INT8_TOKEN_ERROR:.0%}"}
    if rate > INT8_TOKEN_ERROR:
        raise SpeechkitError(f"the int8 model disagrees with float32: token error rate {rate:.1%} on {len(utterances)} "
                             f"utterances (at most {INT8_TOKEN_ERROR:.0%}); export without --int8")
    return report
