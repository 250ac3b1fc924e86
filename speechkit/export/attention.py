"""The attention (AR) baseline → ONNX, for benchmarks: ``encoder.onnx`` (raw fbank to encoder
output and CTC log-probs) and ``decoder_step.onnx`` (one incremental decoder step, the layer
cache stacked into one tensor). The search loop stays in Python: :class:`OnnxDecoderStep` looks
like a ``TransformerDecoder`` to ``greedy_search`` / ``beam_search``, so the same search code
drives either backend and only the network runs in ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from speechkit.export.onnx_file import write_onnx
from speechkit.models.asr.attention_decoder import TransformerDecoder, beam_search, greedy_search
from speechkit.models.asr.attention_model import AttentionAsrModel
from speechkit.runtime.session import make_session

ENCODER_FILE = "encoder.onnx"
DECODER_STEP_FILE = "decoder_step.onnx"
ENCODER_OUTPUTS = ["enc", "enc_lens", "ctc_log_probs"]  # the last only when the model has a CTC layer
STEP_INPUTS = ["enc", "enc_mask", "ys", "cache"]
STEP_OUTPUTS = ["log_probs", "new_cache"]


class AttentionEncoderGraph(nn.Module):
    """B: batch, T: fbank frames, F: mel bins, T': encoder frames, D: encoder dim, V: vocabulary.

    x (B, T, F) raw fbank, x_lens (B,) valid frames → enc (B, T', D), enc_lens (B,) valid encoder
    frames and, when the model has a CTC layer, ctc_log_probs (B, T', V) float32.
    """

    def __init__(self, model: AttentionAsrModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor):
        m = self.model
        enc, enc_lens = m.encoder(m.cmvn(x), x_lens)
        if m.ctc is None:
            return enc, enc_lens
        return enc, enc_lens, torch.log_softmax(m.ctc(enc).float(), dim=-1)


class DecoderStepGraph(nn.Module):
    """N: hypotheses, T: encoder frames, D: d_model, i: prefix length (sos included), L: blocks.

    enc (N, T, D), enc_mask (N, 1, T) bool True on valid frames, ys (N, i) int64 prefixes, cache
    (L, N, i-1, D) every block's outputs for the first i-1 positions (i-1 = 0 at the first step)
    → log-probs of the next token (N, V+1) float32, new cache (L, N, i, D).
    """

    def __init__(self, decoder: TransformerDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, enc, enc_mask, ys, cache):
        # with an empty cache the block's cached path equals the masked one: one query, one key
        log_probs, new_cache = self.decoder.forward_one_step(enc, enc_mask, ys, list(cache.unbind(0)))
        return log_probs, torch.stack(new_cache)


def metadata(model: AttentionAsrModel) -> dict[str, str]:
    fe = model.cfg.frontend_conf
    return {
        "model_family": "attention", "sample_rate": fe.sample_rate, "num_mel_bins": fe.num_mel_bins,
        "frame_length_ms": fe.frame_length_ms, "frame_shift_ms": fe.frame_shift_ms, "encoder": model.cfg.encoder,
        "vocab_size": model.vocab_size, "sos": model.sos, "eos": model.eos, "num_blocks": len(model.decoder.blocks),
        "d_model": model.decoder.d_model, "has_ctc": int(model.ctc is not None),
    }


def export_attention(model: AttentionAsrModel, out_dir: str | Path, opset: int = 18) -> Path:
    """Write ``encoder.onnx`` and ``decoder_step.onnx`` (both with ``metadata(model)``) to
    ``out_dir``; batch, time and prefix length are dynamic axes. Returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    meta = metadata(model)
    d, blocks = model.decoder.d_model, len(model.decoder.blocks)

    enc_graph = AttentionEncoderGraph(model).eval()  # a fresh wrapper is in training mode, and export restores that mode
    x = torch.randn(2, 200, model.cfg.frontend_conf.num_mel_bins)
    x_lens = torch.tensor([200, 160])
    outputs = ENCODER_OUTPUTS if model.ctc is not None else ENCODER_OUTPUTS[:2]
    axes = {"x": {0: "B", 1: "T"}, "x_lens": {0: "B"}, "enc": {0: "B", 1: "T_enc"}, "enc_lens": {0: "B"},
            "ctc_log_probs": {0: "B", 1: "T_enc"}}
    write_onnx(enc_graph, (x, x_lens), out_dir / ENCODER_FILE, ["x", "x_lens"], outputs,
               {k: v for k, v in axes.items() if k in ["x", "x_lens", *outputs]}, meta, opset)

    # traced at a mid-sequence step (i = 3) so the cache's prefix axis is a real, dynamic one
    step = DecoderStepGraph(model.decoder).eval()
    n, t, i = 2, 20, 3
    args = (torch.randn(n, t, d), (torch.arange(t)[None, :] < torch.tensor([[t], [t - 5]]))[:, None, :],
            torch.randint(1, model.vocab_size, (n, i)), torch.randn(blocks, n, i - 1, d))
    axes = {"enc": {0: "N", 1: "T"}, "enc_mask": {0: "N", 2: "T"}, "ys": {0: "N", 1: "i"},
            "cache": {1: "N", 2: "i_prev"}, "log_probs": {0: "N"}, "new_cache": {1: "N", 2: "i"}}
    write_onnx(step, args, out_dir / DECODER_STEP_FILE, STEP_INPUTS, STEP_OUTPUTS, axes, meta, opset)
    return out_dir


class OnnxEncoder:
    """Runs ``encoder.onnx``: torch tensors in and out (CPU, float32)."""

    def __init__(self, model_dir: str | Path, num_threads: int = 1, device: str = "cpu"):
        self.session = make_session(Path(model_dir) / ENCODER_FILE, num_threads, device=device)
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """feats (B, T, F) raw fbank, feat_lens (B,) → enc (B, T', D), enc_lens (B,), CTC
        log-probs (B, T', V) or None when the model has no CTC layer."""
        got = self.session.run(self.outputs, {"x": feats.float().numpy(), "x_lens": feat_lens.long().numpy()})
        out = [torch.from_numpy(a) for a in got]
        return out[0], out[1], out[2] if len(out) > 2 else None


class OnnxDecoderStep:
    """Runs ``decoder_step.onnx`` behind ``TransformerDecoder``'s search interface
    (``vocab_size``, ``forward_one_step``); the cache is a list of per-block (N, i, D) tensors as
    the search code expects, stacked into one tensor for the graph."""

    def __init__(self, model_dir: str | Path, num_threads: int = 1, device: str = "cpu"):
        self.session = make_session(Path(model_dir) / DECODER_STEP_FILE, num_threads, device=device)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.vocab_size, self.d_model = int(meta["vocab_size"]), int(meta["d_model"])
        self.num_blocks = int(meta["num_blocks"])
        self.sos, self.eos = int(meta["sos"]), int(meta["eos"])

    def forward_one_step(self, enc: torch.Tensor, enc_mask: torch.Tensor, ys: torch.Tensor,
                         cache: list[torch.Tensor] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Same shapes as ``TransformerDecoder.forward_one_step``; cache None = the first step."""
        n = ys.shape[0]
        if cache is None:
            stacked = np.zeros((self.num_blocks, n, ys.shape[1] - 1, self.d_model), dtype=np.float32)
        else:
            stacked = torch.stack(cache).numpy()
        log_probs, new_cache = self.session.run(STEP_OUTPUTS, {
            "enc": enc.numpy(), "enc_mask": enc_mask.numpy(), "ys": ys.numpy(), "cache": stacked})
        return torch.from_numpy(log_probs), list(torch.from_numpy(new_cache).unbind(0))


class OnnxAttentionModel:
    """The exported pair with ``AttentionAsrModel.recognize``'s decoding: greedy (beam 1) or
    batched beam search, CTC rescoring of the N-best when ``ctc_weight`` > 0."""

    def __init__(self, model_dir: str | Path, num_threads: int = 1, device: str = "cpu"):
        self.encoder = OnnxEncoder(model_dir, num_threads, device)
        self.decoder = OnnxDecoderStep(model_dir, num_threads, device)

    @torch.no_grad()
    def recognize(self, feats: torch.Tensor, feat_lens: torch.Tensor, beam: int = 1, ctc_weight: float = 0.0) -> list[list[int]]:
        """feats (B, T, F) raw fbank on the CPU, feat_lens (B,) → token ids per utterance."""
        enc, enc_lens, ctc_lp = self.encoder(feats, feat_lens)
        sos, eos = self.decoder.sos, self.decoder.eos
        if beam <= 1:
            return greedy_search(self.decoder, enc, enc_lens, sos, eos)
        nbest = beam_search(self.decoder, enc, enc_lens, beam, sos, eos,
                            ctc_log_probs=ctc_lp if ctc_weight > 0 else None, ctc_weight=ctc_weight)
        return [hyps[0][0] if hyps else [] for hyps in nbest]
