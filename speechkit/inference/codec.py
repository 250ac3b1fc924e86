"""A shipped VAE codec dir (``encoder.onnx``, ``decoder.onnx``) run by PyTorch on any device: the
same interface as :class:`speechkit.runtime.codec.CodecRuntime` (encode, decode, a streaming
decoder), so a GPU synthesiser encodes its prompt and decodes its chunks next to the model
instead of on one CPU thread.

The weights come from the ONNX initializers, which the exporter (:mod:`speechkit.export.codec`)
named after the PyTorch state dict (``model.encoder.*``, ``decoder.*``; float16 copies end in
``_fp16``; of equal tensors one is kept, the others are Identity nodes of it). The exception,
each transposed conv's bias, was constant-folded to an anonymous ``[C, 1]`` tensor and is matched
by order. The SEANet config is read off the graphs (conv shapes,
dilations and strides; shortcuts where the encoder averages channels) or, in newer exports, from
the ``codec_config`` metadata (needed for a mel-input encoder), and every load is checked
against ONNX Runtime on a short signal: a mapping that does not reproduce the export is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from speechkit.errors import SpeechkitError
from speechkit.models.codec.model import CodecConfig, VaeCodec, codec_config_from_dict, encode_samples
from speechkit.nn.seanet import SeanetConfig, State
from speechkit.runtime.codec import (ENCODE_BLOCK_SECONDS, WHOLE_DECODE_FRAMES, decode_blocks, encode_blocks,
                                     receptive_frames)

LATENT_TOL = 1e-3  # the export's own tolerances (speechkit.export.codec)
AUDIO_TOL = 1e-4
_ENC, _DEC = "model.", ""  # prefixes of the two graphs' initializers before the state-dict names


def _initializers(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {}
    for t in model.graph.initializer:
        out[t.name.removesuffix("_fp16")] = numpy_helper.to_array(t).astype(np.float32)
    for n in model.graph.node:  # the exporter keeps one of equal initializers, the others as Identity of it
        if n.op_type == "Identity" and n.input[0] in out:
            out[n.output[0]] = out[n.input[0]]
    return out


def _conv_attrs(model) -> dict[str, dict[str, list[int]]]:
    """Conv attributes by the module path of the conv (read off its bias input's name)."""
    out = {}
    for n in model.graph.node:
        if n.op_type == "Conv" and len(n.input) > 2:
            out[n.input[2].removesuffix(".bias")] = {a.name: list(a.ints) for a in n.attribute}
    return out


def seanet_config(encoder, meta: dict[str, str]) -> SeanetConfig:
    """The SEANet config of an exported VAE encoder graph (an ``onnx.ModelProto``)."""
    if any(n.op_type == "LSTM" for n in encoder.graph.node):
        raise SpeechkitError("codec with an LSTM bottleneck: its ONNX weights are re-laid out; not loadable into PyTorch")
    w = _initializers(encoder)
    attrs = _conv_attrs(encoder)
    first = w["model.encoder.body.0.conv.parametrizations.weight.original1"]
    strides, dilations = [], []
    for i in range(1, 64):
        down = attrs.get(f"model.encoder.body.{i}.down.conv")
        if down is None:
            break
        strides.append(down["strides"][0])
    for j in range(64):
        unit = attrs.get(f"model.encoder.body.1.units.{j}.layers.1.conv")
        if unit is None:
            break
        dilations.append(unit["dilations"][0])
    shortcuts = any(n.op_type == "ReduceMean" for n in encoder.graph.node)  # space_to_channel's mean
    return SeanetConfig(channels=first.shape[0], strides=tuple(strides), latent_dim=int(meta["latent_dim"]),
                        dilations=tuple(dilations), kernel_size=first.shape[-1], shortcuts=shortcuts)


def state_dict_from_onnx(encoder, decoder, expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """``VaeCodec`` state dict from the two graphs' initializers; ``expected`` (the target's own
    state dict) gives the names and shapes every tensor must have."""
    out = {}
    for prefix, graph in ((_ENC, encoder), (_DEC, decoder)):
        for name, w in _initializers(graph).items():
            if name.startswith(prefix) and name[len(prefix):] in expected:
                out[name[len(prefix):]] = torch.from_numpy(w)
    # ConvTranspose biases: folded into anonymous [C, 1] constants, in the decoder's stage order
    folded = [n.name for n in decoder.graph.initializer if n.name.startswith("onnx::")]
    consumers = {i: k for k, node in enumerate(decoder.graph.node) for i in node.input}
    folded.sort(key=lambda n: consumers.get(n, -1))
    biases = sorted((k for k in expected if re.fullmatch(r"decoder\.body\.\d+\.up\.bias", k)), key=lambda k: int(k.split(".")[2]))
    w = _initializers(decoder)
    if len(folded) != len(biases):
        raise SpeechkitError(f"decoder.onnx: {len(folded)} folded constants for {len(biases)} transposed-conv biases")
    for key, name in zip(biases, folded):
        out[key] = torch.from_numpy(w[name].reshape(-1))
    missing = sorted(set(expected) - set(out))
    wrong = [k for k in out if tuple(out[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        raise SpeechkitError(f"ONNX codec → PyTorch: missing {missing[:3]}, wrong shapes {wrong[:3]}")
    return out


class TorchDecoderStream:
    """One stream's decoder state on the codec's device; ``decode`` takes the next latent frames (D, K)."""

    def __init__(self, codec: TorchCodec):
        self.codec = codec
        with codec.context():
            self.state: State = codec.model.decoder.init_state(1, codec.device)

    @torch.no_grad()
    def decode(self, frames: np.ndarray | Tensor) -> np.ndarray:
        with self.codec.context():
            z = torch.as_tensor(frames, dtype=torch.float32).to(self.codec.device, non_blocking=True)[None]
            y, self.state = self.codec.model.decode_chunk(z, self.state)
            return y[0, 0].cpu().numpy()


class TorchCodec:
    """A VAE codec dir on ``device``; what :class:`CodecRuntime` offers, same numbers (within
    float rounding). On CUDA it runs on a stream of its own (so decoding a chunk does not queue
    behind the TTS model's next step) with TF32 off (the export's numbers, not 1e-3 off them)."""

    kind = "vae"
    codebooks = None

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu", check: bool = True):
        import onnx

        model_dir = Path(model_dir)
        for name in ("encoder.onnx", "decoder.onnx"):
            if not (model_dir / name).is_file():
                raise SpeechkitError(f"{model_dir / name}: no such file (export a codec with `speechkit codec export EXP OUT`)")
        enc, dec = onnx.load(str(model_dir / "encoder.onnx")), onnx.load(str(model_dir / "decoder.onnx"))
        meta = {p.key: p.value for p in dec.metadata_props}
        if meta.get("model_family") != "codec-vae":
            raise SpeechkitError(f"{model_dir}: not a VAE codec (model_family={meta.get('model_family')!r})")
        if "codec_config" in meta:  # exports since the mel-input VAE carry their whole config
            cfg = codec_config_from_dict(json.loads(meta["codec_config"]), f"{model_dir / 'decoder.onnx'}: codec_config")
        else:  # older ones: the SEANet config read off the encoder graph
            cfg = CodecConfig("vae", sample_rate=int(meta["sample_rate"]), encoder_conf=seanet_config(enc, meta))
        if cfg.hop != int(meta["hop"]):
            raise SpeechkitError(f"{model_dir}: the decoder strides {cfg.encoder_conf.strides} do not make the exported hop {meta['hop']}")
        model = VaeCodec(cfg)
        model.load_state_dict(state_dict_from_onnx(enc, dec, model.state_dict()))
        for m in model.modules():  # weight norm once, not at every call
            if torch.nn.utils.parametrize.is_parametrized(m, "weight"):
                torch.nn.utils.parametrize.remove_parametrizations(m, "weight")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sample_rate, self.hop, self.latent_dim = cfg.sample_rate, cfg.hop, cfg.encoder_conf.latent_dim
        self.stream_ = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._context = None  # frames of audio a block needs before it (measured on first long input)
        if check:
            self.check(model_dir)

    def context(self):
        """Where the codec's kernels run: its own CUDA stream, cuDNN without TF32 or autotuning."""
        if self.stream_ is None:
            return torch.no_grad()
        from contextlib import ExitStack

        stack = ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(torch.cuda.stream(self.stream_))
        stack.enter_context(torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False))
        return stack

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """Mono float32 at the codec's rate → (D, F) latents; the end is padded with zeros to a
        whole frame. Inputs longer than ``ENCODE_BLOCK_SECONDS`` go by blocks, as in the runtime."""
        x = np.asarray(samples, dtype=np.float32)
        size = int(ENCODE_BLOCK_SECONDS * self.sample_rate)
        if len(x) <= size:
            return self._encode(x)
        if self._context is None:
            self._context = receptive_frames(self._encode, self.hop) + 2
        blocks = (x[at : at + size] for at in range(0, len(x), size))
        return np.concatenate(list(encode_blocks(self._encode, blocks, self.hop, self._context, size // self.hop)), axis=1)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        with self.context():
            return encode_samples(self.model, x)

    def latents(self, frames: np.ndarray) -> np.ndarray:
        return np.asarray(frames, dtype=np.float32)

    def stream(self) -> TorchDecoderStream:
        return TorchDecoderStream(self)

    def decode(self, frames: np.ndarray) -> np.ndarray:
        """Latents of a whole utterance (D, F) → mono float32 samples (F × hop); more than
        ``WHOLE_DECODE_FRAMES`` go through the streaming state by blocks."""
        if frames.shape[1] <= WHOLE_DECODE_FRAMES:
            return self.stream().decode(frames)
        return np.concatenate(list(decode_blocks(self.stream(), [frames])))

    def check(self, model_dir: Path, frames: int = 6) -> dict:
        """Encode a fixed noise signal and decode its latents in 2-frame chunks, here and with ONNX
        Runtime on the CPU; the largest differences, or an error beyond the export's tolerances."""
        from speechkit.runtime.codec import CodecRuntime

        ref = CodecRuntime(model_dir)
        x = (0.1 * np.random.default_rng(0).standard_normal(frames * self.hop)).astype(np.float32)
        z_ref, z = ref.encode(x), self.encode(x)
        ours, theirs = self.stream(), ref.stream()
        a = np.concatenate([ours.decode(z_ref[:, k : k + 2]) for k in range(0, frames, 2)])
        b = np.concatenate([theirs.decode(z_ref[:, k : k + 2]) for k in range(0, frames, 2)])
        diff = {"latent_max_abs_diff": float(np.abs(z - z_ref).max()), "audio_max_abs_diff": float(np.abs(a - b).max())}
        if diff["latent_max_abs_diff"] > LATENT_TOL or diff["audio_max_abs_diff"] > AUDIO_TOL:
            raise SpeechkitError(f"{model_dir}: the PyTorch codec loaded from the ONNX graphs disagrees with ONNX Runtime: {diff}")
        return diff
