"""A cache-aware streaming conformer with a stateless-decoder transducer head → sherpa-onnx's online
transducer format: ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx`` and ``tokens.txt`` for
``sherpa_onnx.OnlineRecognizer.from_transducer``; with a CTC head instead → its online zipformer2
CTC format (``model.onnx``, the same encoder graph with log-probabilities out).

sherpa-onnx runs an icefall-style transducer (a decoder graph with one output) as one of five
encoder types named by the encoder's ``model_type`` metadata; each fixes the encoder's state
tensors. We use ``zipformer2``: sherpa-onnx builds its state as a flat list of zero tensors whose
shapes come from metadata vectors (per layer: a key cache (L, B, Dk), a nonlinear-attention cache
(1, B, L, 3E/4), two value caches (L, B, Dv), two conv caches (B, E, K/2); then an embed cache
(B, 128, 3, ((F-1)//2-1)//2) and processed lengths (B,) int64), concatenates streams on fixed
axes and hands the list back untouched. Our state maps onto it exactly (no padding, no
recomputation): each block's attention cache is a key cache, its conv cache a conv cache, one
extra "layer" holds the subsampling caches (the first conv's input frames as its key cache, the
two cached conv outputs as its conv caches), and the processed lengths hold ``cached_len``. The
other slots are unused, carried through unchanged. The attention context is fixed per export.

Features: sherpa-onnx computes the same kaldi fbank as ours (kaldi-native-fbank, 80 bins, 25/10 ms,
povey window, pre-emphasis 0.97, no dither, snip_edges false) with two differences. (1) Scale: it
scales samples to [-1, 1] (``normalize_samples``), ours to int16, so its log-mel values are ours
minus 2 ln 32768 except that bins with less energy than FLT_EPSILON sit on the floor (quiet
low-frequency bins as well as digital silence). (2) Mel range: ours reaches Nyquist
(``high_freq`` 0), sherpa-onnx's default stops 400 Hz below it; no graph can map one onto the
other. So a recognizer is built with ``recognizer_options()`` (``high_freq=0``,
``normalize_samples=False``: then the features are ours bit for bit), which the Python and C++
APIs expose and the C API does not. ``unit_range_samples=True`` exports a graph that instead
takes sherpa-onnx's default scale and undoes it (exact but for the floored bins), for a model
trained with sherpa-onnx's mel range.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from speechkit.audio.fbank import LOG_FLOOR, FbankConfig
from speechkit.errors import SpeechkitError
from speechkit.export.onnx_file import write_onnx

MODEL_TYPE = "zipformer2"
EMBED_CHANNELS, EMBED_FRAMES = 128, 3  # sherpa-onnx's zipformer2 embed cache: (B, 128, 3, ((F-1)//2-1)//2)
INT16_LOG_GAIN = 2.0 * math.log(32768.0)  # log-mel of int16-scaled samples minus that of [-1, 1] samples
FLOOR_MARGIN = 1e-3  # a value within this of the floor was floored
FBANK = {"feature_dim": 80, "sample_rate": 16000, "high_freq": 0.0, "low_freq": 20.0, "dither": 0.0}  # as sherpa-onnx names them
ENCODER_OUT_TOL = 1e-4  # ONNX Runtime vs PyTorch, float32


@dataclass(frozen=True)
class SherpaStateLayout:
    """Our streaming state (``StreamingConformerEncoder.init_state``: sub1 (B, 1, 2, F), sub2
    (B, C, 2, F1), att (N, B, L, D), conv (N, B, D, K1), len (B,)) as sherpa-onnx's zipformer2
    list: N block layers, one subsampling layer, the embed slot, the lengths."""

    num_blocks: int  # N
    cache_frames: int  # L
    d_model: int  # D
    conv_cache: int  # K1 = K - 1
    sub_channels: int  # C
    sub_freq: int  # F1
    num_mel_bins: int  # F

    @classmethod
    def of(cls, state: Sequence[torch.Tensor]) -> "SherpaStateLayout":
        if len(state) != 5:
            raise SpeechkitError(f"a streaming conformer state has 5 tensors (sub1, sub2, att, conv, len), got {len(state)}")
        sub1, sub2, att, conv, _ = state
        if tuple(sub1.shape[1:3]) != (1, 2) or sub2.shape[2] != 2 or att.shape[3] != conv.shape[2]:
            raise SpeechkitError(f"unexpected streaming state shapes {[tuple(t.shape) for t in state]}")
        layout = cls(att.shape[0], att.shape[2], att.shape[3], conv.shape[3], sub2.shape[1], sub2.shape[3], sub1.shape[3])
        if layout.cache_frames < 1 or 3 * min(layout.d_model, layout.sub_channels) // 4 < 1:
            raise SpeechkitError(f"sherpa-onnx export needs a finite left context and dims of at least 2, got {layout}")
        return layout

    @property
    def embed_freq(self) -> int:
        return ((self.num_mel_bins - 1) // 2 - 1) // 2

    def names(self) -> list[str]:
        """The state inputs after ``x``, in sherpa-onnx's order (outputs add ``new_``)."""
        layers = [str(i) for i in range(self.num_blocks)] + ["sub"]
        names = []
        for i in layers:
            key, conv = ("cached_sub1", ["cached_sub2_a", "cached_sub2_b"]) if i == "sub" else (f"cached_att_{i}", [f"cached_conv_{i}", f"unused_conv2_{i}"])
            names += [key, f"unused_nonlin_{i}", f"unused_val1_{i}", f"unused_val2_{i}", *conv]
        return names + ["unused_embed", "cached_len"]

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        """What sherpa-onnx allocates for ``batch`` streams (its ``GetEncoderInitStates``)."""
        b, n, l, d, c = batch, self.num_blocks, self.cache_frames, self.d_model, self.sub_channels
        block = [(l, b, d), (1, b, l, 3 * d // 4), (l, b, 1), (l, b, 1), (b, d, self.conv_cache), (b, d, self.conv_cache)]
        sub = [(2, b, self.num_mel_bins), (1, b, 2, 3 * c // 4), (2, b, 1), (2, b, 1), (b, c, self.sub_freq), (b, c, self.sub_freq)]
        return block * n + sub + [(b, EMBED_CHANNELS, EMBED_FRAMES, self.embed_freq), (b,)]

    def batch_axes(self) -> list[int]:
        """The axis sherpa-onnx concatenates streams on, per state tensor."""
        return [1, 1, 1, 1, 0, 0] * (self.num_blocks + 1) + [0, 0]

    def zeros(self, batch: int) -> list[torch.Tensor]:
        out = [torch.zeros(s) for s in self.shapes(batch)]
        out[-1] = out[-1].long()
        return out

    def metadata(self) -> dict[str, str]:
        n, d, c = self.num_blocks, self.d_model, self.sub_channels
        return {"encoder_dims": f"{d},{c}", "query_head_dims": f"{d},{self.num_mel_bins}", "value_head_dims": "1,1",
                "num_heads": "1,1", "num_encoder_layers": f"{n},1",
                "cnn_module_kernels": f"{2 * self.conv_cache},{2 * self.sub_freq}", "left_context_len": f"{self.cache_frames},2"}

    def to_speechkit(self, flat: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        n = self.num_blocks
        att = torch.stack([flat[6 * i].transpose(0, 1) for i in range(n)])
        conv = torch.stack([flat[6 * i + 4] for i in range(n)])
        sub1 = flat[6 * n].transpose(0, 1).unsqueeze(1)
        sub2 = torch.stack([flat[6 * n + 4], flat[6 * n + 5]], dim=2)
        return [sub1, sub2, att, conv, flat[-1]]

    def to_sherpa(self, state: Sequence[torch.Tensor], flat: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Our new state into the list, the unused slots taken from ``flat`` (the inputs)."""
        sub1, sub2, att, conv, length = state
        out = list(flat)
        for i in range(self.num_blocks):
            out[6 * i], out[6 * i + 4] = att[i].transpose(0, 1), conv[i]
        n = self.num_blocks
        out[6 * n], out[6 * n + 4], out[6 * n + 5] = sub1.squeeze(1).transpose(0, 1), sub2[:, :, 0], sub2[:, :, 1]
        out[-1] = length
        return out


def recognizer_options(unit_range_samples: bool = False) -> dict:
    """The feature options for ``sherpa_onnx.OnlineRecognizer.from_transducer`` that give an
    exported model the fbank it was trained on."""
    return {**FBANK, "normalize_samples": unit_range_samples}


def speechkit_fbank(x: torch.Tensor) -> torch.Tensor:
    """sherpa-onnx's fbank (samples in [-1, 1]) → ours (samples in int16 range): the floor stays."""
    return torch.where(x <= LOG_FLOOR + FLOOR_MARGIN, torch.full_like(x, LOG_FLOOR), x + INT16_LOG_GAIN)


class SherpaEncoder(nn.Module):
    """B: streams, T: fbank frames of one chunk, F: mel bins, n = T/4 encoder frames, J: joiner dim.

    x (B, T, F) sherpa-onnx fbank, then the state list → encoder_out (B, n, J), the new list.
    ``frontend`` maps raw fbank to the encoder's input (the model's CMVN); ``encoder_proj`` maps
    encoder frames to what the joiner takes (identity by default); ``unit_range_samples``: x is
    fbank of samples in [-1, 1], mapped to ours first.
    """

    def __init__(self, encoder: nn.Module, frontend: nn.Module, att_context: tuple[int, int],
                 layout: SherpaStateLayout, encoder_proj: nn.Module | None = None, unit_range_samples: bool = False):
        super().__init__()
        self.encoder, self.frontend, self.unit_range_samples = encoder, frontend, unit_range_samples
        self.encoder_proj = encoder_proj if encoder_proj is not None else nn.Identity()
        self.att_context = tuple(int(v) for v in att_context)
        self.layout = layout

    def forward(self, x: torch.Tensor, *flat: torch.Tensor):
        lens = torch.ones_like(x[:, 0, 0], dtype=torch.int64) * x.shape[1]
        if self.unit_range_samples:
            x = speechkit_fbank(x)
        y, _, state = self.encoder.forward_chunk(self.frontend(x), lens, self.layout.to_speechkit(flat), self.att_context)
        return (self.encoder_proj(y), *self.layout.to_sherpa(state, flat))


class SherpaDecoder(nn.Module):
    """y (N, C) int64, the last C tokens (-1 before the first) → decoder_out (N, J)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(y)


class SherpaJoiner(nn.Module):
    """encoder_out (N, J), decoder_out (N, J) → logit (N, V)."""

    def __init__(self, joiner: nn.Module):
        super().__init__()
        self.joiner = joiner

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        return self.joiner(encoder_out, decoder_out)


def check_tokens(tokens: Sequence[str]) -> None:
    for i, t in enumerate(tokens):
        if not t or any(ch.isspace() for ch in t):
            raise SpeechkitError(f"token {i} ({t!r}) is empty or has white space, which tokens.txt cannot hold")


def write_tokens(tokens: Sequence[str], path: str | Path) -> None:
    """sherpa-onnx's ``tokens.txt``: "piece id" per line, blank first (its transducers hard-code id 0)."""
    check_tokens(tokens)
    Path(path).write_text("".join(f"{t} {i}\n" for i, t in enumerate(tokens)), encoding="utf-8")


class LogSoftmaxHead(nn.Module):
    """A CTC head's logits as log-probabilities: (B, n, D) → (B, n, V)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.head(y), dim=-1)


def _encoder_graph(encoder: nn.Module, frontend: nn.Module, att_context: tuple[int, int], fbank: FbankConfig,
                   head: nn.Module | None, unit_range_samples: bool) -> tuple[SherpaEncoder, dict]:
    """The checked encoder graph and its zipformer2 metadata."""
    left, right = (int(v) for v in att_context)
    if left < 0 or right < 0:
        raise SpeechkitError(f"sherpa-onnx streams one chunk size: att_context must be a finite (left, right), got {att_context}")
    if fbank.num_mel_bins != FBANK["feature_dim"] or fbank.sample_rate != FBANK["sample_rate"]:
        raise SpeechkitError(f"sherpa-onnx export expects 80-bin fbank at 16 kHz, this model has {fbank.num_mel_bins} bins at {fbank.sample_rate} Hz")
    if (fbank.frame_shift_ms, fbank.frame_length_ms, fbank.dither) != (10.0, 25.0, 0.0):
        raise SpeechkitError("sherpa-onnx fixes 25 ms frames every 10 ms without dither; this model's fbank differs")
    layout = SherpaStateLayout.of(encoder.init_state(1))
    chunk = encoder.embed.factor * (right + 1)
    meta = {"model_type": MODEL_TYPE, "version": "1", "model_author": "speechkit", "decode_chunk_len": chunk, "T": chunk,
            **layout.metadata(), "comment": f"speechkit streaming conformer, att_context {left},{right}",
            "att_context": f"{left},{right}", "subsampling": encoder.embed.factor, "sample_rate": fbank.sample_rate,
            "num_mel_bins": fbank.num_mel_bins, "fbank_high_freq": 0.0,
            "fbank_samples": "[-1, 1] (normalize_samples=True)" if unit_range_samples else "int16 range (normalize_samples=False)"}
    graph = SherpaEncoder(encoder, frontend, (left, right), layout, head, unit_range_samples).eval()
    return graph, meta


def _write_encoder(graph: SherpaEncoder, path: Path, output: str, meta: dict, opset: int) -> dict:
    """Write the encoder graph (x, state list → ``output``, new list); → its parity report."""
    layout, chunk, bins = graph.layout, int(meta["T"]), int(meta["num_mel_bins"])
    names = layout.names()
    axes = {n: {a: "N"} for n, a in zip(names, layout.batch_axes())}
    axes.update({"new_" + n: a for n, a in list(axes.items())})
    write_onnx(graph, (torch.zeros(2, chunk, bins), *layout.zeros(2)), path, ["x", *names], [output, *("new_" + n for n in names)],
               {"x": {0: "N"}, output: {0: "N"}, **axes}, meta, opset)
    return check_encoder(path, graph, layout, chunk, bins)


def _eval(*modules: nn.Module | None) -> None:
    for m in modules:
        if m is not None:
            m.eval()


def export_sherpa_transducer(out_dir: str | Path, *, encoder: nn.Module, frontend: nn.Module, decoder: nn.Module,
                             joiner: nn.Module, tokens: Sequence[str], att_context: tuple[int, int], context_size: int,
                             fbank: FbankConfig = FbankConfig(), encoder_proj: nn.Module | None = None,
                             unit_range_samples: bool = False, opset: int = 17) -> dict:
    """Write encoder/decoder/joiner ONNX files and tokens.txt to ``out_dir`` for sherpa-onnx's
    online transducer; ``encoder`` is a streaming conformer (``init_state``, ``forward_chunk``),
    ``decoder`` maps (N, context_size) int64 (-1 before the first token) → (N, J), ``joiner``
    (N, J), (N, J) → (N, V) with blank 0. Refuses to finish unless ONNX Runtime and PyTorch agree
    over three chained chunks; returns the report it writes to ``export.json`` (with the
    recognizer's feature options)."""
    _eval(encoder, frontend, decoder, joiner, encoder_proj)
    graph, enc_meta = _encoder_graph(encoder, frontend, att_context, fbank, encoder_proj, unit_range_samples)
    dec_graph, join_graph = SherpaDecoder(decoder).eval(), SherpaJoiner(joiner).eval()
    with torch.no_grad():
        enc_out = graph(torch.zeros(2, int(enc_meta["T"]), fbank.num_mel_bins), *graph.layout.zeros(2))[0]
        dec_out = dec_graph(torch.zeros(2, context_size, dtype=torch.int64))
        vocab = join_graph(enc_out[:, 0], dec_out).shape[-1]
    if vocab != len(tokens):
        raise SpeechkitError(f"the joiner gives {vocab} logits but there are {len(tokens)} tokens")
    check_tokens(tokens)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"encoder": enc_meta, "decoder": {"context_size": context_size, "vocab_size": vocab},
            "joiner": {"joiner_dim": int(enc_out.shape[-1])}}
    parity = _write_encoder(graph, out / "encoder.onnx", "encoder_out", enc_meta, opset)
    write_onnx(dec_graph, (torch.zeros(3, context_size, dtype=torch.int64),), out / "decoder.onnx", ["y"], ["decoder_out"],
               {"y": {0: "N"}, "decoder_out": {0: "N"}}, meta["decoder"], opset)
    write_onnx(join_graph, (enc_out[:, 0], dec_out), out / "joiner.onnx", ["encoder_out", "decoder_out"], ["logit"],
               {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}}, meta["joiner"], opset)
    write_tokens(tokens, out / "tokens.txt")
    return _report(out, "online transducer", meta, unit_range_samples, parity)


def export_sherpa_ctc(out_dir: str | Path, *, encoder: nn.Module, frontend: nn.Module, ctc: nn.Module, tokens: Sequence[str],
                      att_context: tuple[int, int], fbank: FbankConfig = FbankConfig(), unit_range_samples: bool = False,
                      opset: int = 17) -> dict:
    """Write ``model.onnx`` and tokens.txt to ``out_dir`` for sherpa-onnx's online zipformer2 CTC
    (``OnlineZipformer2CtcModelConfig``): the encoder graph with ``ctc`` (encoder frames → logits,
    blank ``<blk>``) and a log-softmax on top, its output "log_probs" (B, n, V)."""
    _eval(encoder, frontend, ctc)
    if "<blk>" not in tokens:
        raise SpeechkitError("sherpa-onnx's CTC decoder finds the blank by name: tokens must hold <blk>")
    graph, meta = _encoder_graph(encoder, frontend, att_context, fbank, LogSoftmaxHead(ctc), unit_range_samples)
    with torch.no_grad():
        vocab = graph(torch.zeros(1, int(meta["T"]), fbank.num_mel_bins), *graph.layout.zeros(1))[0].shape[-1]
    if vocab != len(tokens):
        raise SpeechkitError(f"the CTC head gives {vocab} outputs but there are {len(tokens)} tokens")
    check_tokens(tokens)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parity = _write_encoder(graph, out / "model.onnx", "log_probs", {**meta, "vocab_size": vocab}, opset)
    write_tokens(tokens, out / "tokens.txt")
    return _report(out, "online zipformer2 CTC", {"model": meta}, unit_range_samples, parity)


def _report(out: Path, kind: str, meta: dict, unit_range_samples: bool, parity: dict) -> dict:
    report = {"format": f"sherpa-onnx {kind}, model_type {MODEL_TYPE}", "metadata": meta,
              "recognizer_feature_options": recognizer_options(unit_range_samples), "parity": parity}
    (out / "export.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def check_encoder(path: str | Path, graph: SherpaEncoder, layout: SherpaStateLayout, chunk: int, num_mel_bins: int,
                  chunks: int = 3, streams: int = 2) -> dict:
    """The encoder graph in ONNX Runtime against PyTorch over ``chunks`` chained chunks of
    random fbank for ``streams`` streams; raise unless within ENCODER_OUT_TOL."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    rng = np.random.default_rng(0)
    state_pt = layout.zeros(streams)
    state_ort = [t.numpy() for t in state_pt]
    diff = 0.0
    for _ in range(chunks):
        x = (rng.standard_normal((streams, chunk, num_mel_bins)) * 3 + 5).astype(np.float32)
        with torch.no_grad():
            a = graph(torch.from_numpy(x), *state_pt)
        b = session.run(None, dict(zip(names, [x, *state_ort])))
        diff = max(diff, *(float(np.abs(p.numpy() - q).max()) for p, q in zip(a, b) if q.size))
        state_pt, state_ort = list(a[1:]), b[1:]
    if not diff <= ENCODER_OUT_TOL:
        raise SpeechkitError(f"sherpa-onnx encoder: ONNX Runtime and PyTorch differ by {diff:.2e} (tolerance {ENCODER_OUT_TOL})")
    return {"chunks": chunks, "streams": streams, "max_abs_diff": diff, "tolerance": ENCODER_OUT_TOL}


INT8_REL_TOL = 0.05  # int8 weights vs float32: relative error of the first output over the check chunks


def quantize_folder_int8(folder: str | Path, encoder_file: str, chunk: int, num_mel_bins: int, chunks: int = 3,
                         streams: int = 2) -> dict:
    """Store every graph of a sherpa-format ``folder`` with int8 weights (``quantize.quantize_weights_int8``:
    per-channel, float32 arithmetic, so a stream's result does not depend on its batch), then the
    int8 encoder against the float32 one over ``chunks`` chained chunks of random fbank for
    ``streams`` streams; raise unless the relative error of its output is within INT8_REL_TOL."""
    import onnx
    import onnxruntime as ort

    from speechkit.export.quantize import quantize_weights_int8

    folder = Path(folder)
    fp32 = ort.InferenceSession(str(folder / encoder_file), providers=["CPUExecutionProvider"])
    sizes = {}
    for path in sorted(folder.glob("*.onnx")):
        before = path.stat().st_size
        model = quantize_weights_int8(onnx.load(str(path)))
        tmp = path.with_suffix(".onnx.tmp")
        onnx.save(model, str(tmp))
        tmp.replace(path)
        sizes[path.name] = {"fp32_mb": round(before / 1e6, 3), "int8_mb": round(path.stat().st_size / 1e6, 3)}
    int8 = ort.InferenceSession(str(folder / encoder_file), providers=["CPUExecutionProvider"])
    inputs = fp32.get_inputs()
    rng = np.random.default_rng(0)
    state = [np.zeros([d if isinstance(d, int) else streams for d in i.shape],
                      dtype=np.int64 if i.type == "tensor(int64)" else np.float32) for i in inputs[1:]]
    state_a, state_b, num, den = state, [t.copy() for t in state], 0.0, 0.0
    for _ in range(chunks):
        x = (rng.standard_normal((streams, chunk, num_mel_bins)) * 3 + 5).astype(np.float32)
        a = fp32.run(None, dict(zip([i.name for i in inputs], [x, *state_a])))
        b = int8.run(None, dict(zip([i.name for i in inputs], [x, *state_b])))
        num += float(np.sum((a[0] - b[0]) ** 2))
        den += float(np.sum(a[0] ** 2))
        state_a, state_b = a[1:], b[1:]
    rel = math.sqrt(num / max(den, 1e-30))
    if not rel <= INT8_REL_TOL:
        raise SpeechkitError(f"int8 weights change the encoder's output by {rel:.1%} (tolerance {INT8_REL_TOL:.0%}); "
                             "export without --int8")
    return {"chunks": chunks, "streams": streams, "output_rel_err": rel, "tolerance": INT8_REL_TOL, "sizes": sizes}
