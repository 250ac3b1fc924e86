"""Synthesis with a trained CLEAR experiment (torch): text + a prompt recording → speech, whole or
as a stream of audio chunks. Every ``chunk_frames`` generated latents go through the codec's
streaming decoder, so audio starts long before the sentence is finished; the chunks joined are
exactly the whole-utterance output.

On CUDA (``fast``, the default there) the loop is :class:`speechkit.models.tts.fast.FastGenerator`
(a static KV cache, one CUDA graph replay per latent) and the codec runs in PyTorch on the same
GPU (:class:`speechkit.inference.codec.TorchCodec`); elsewhere ``ClearTTS.generate`` and
the ONNX codec on the CPU. Both give the same latents for a seed (torch's noise), within float
rounding. Call :meth:`TorchSynthesizer.warmup` before timing: graph capture and lazy CUDA set-up
happen there, not in the first utterance.

    tts = TorchSynthesizer("exp/clear")
    audio = tts.synthesize("hello there", prompt="prompt.wav")
    for chunk in tts.stream("hello there", prompt="prompt.wav"):
        play(chunk)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from speechkit.decoding.tts_options import SynthOptions, flow_steps
from speechkit.errors import SpeechkitError
from speechkit.runtime.tts import LatentSynthesizer, phoneme_ids, prompt_latents

log = logging.getLogger(__name__)


def resolve_codec(model_dir: Path, recorded: str) -> Path:
    """The codec an experiment was trained with: ``MODEL/codec`` when exported alongside, else the
    recorded path."""
    for c in (model_dir / "codec", Path(recorded)):
        if (c / "decoder.onnx").is_file():
            return c
    raise SpeechkitError(f"{model_dir}: its codec {recorded} is not there (export it next to the model as {model_dir / 'codec'})")


class TorchSynthesizer(LatentSynthesizer):
    def __init__(self, exp_dir: str | Path, device: str | None = None, codec_dir: str | Path | None = None,
                 fast: bool | None = None):
        """``fast`` (default: on CUDA): the graphed static-cache loop and the codec on the model's
        device; otherwise ``ClearTTS.generate`` and the ONNX codec on the CPU."""
        from speechkit.models.tts.io import load_tts
        from speechkit.text.phonemes import PhonemeVocab

        exp_dir = Path(exp_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, symbols, codec = load_tts(exp_dir, self.device)
        self.vocab = PhonemeVocab(symbols)
        self.fast = self.device.type == "cuda" if fast is None else fast
        codec_dir = Path(codec_dir or resolve_codec(exp_dir, codec))
        self.codec = self._codec(codec_dir)
        self.generator = None
        if self.fast:
            from speechkit.models.tts.fast import FastGenerator

            self.generator = FastGenerator(self.model)
        self.sample_rate = self.codec.sample_rate
        self.device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu (torch)"

    def _codec(self, codec_dir: Path):
        """The PyTorch codec on the model's device (fast), else ONNX Runtime on the CPU: with a
        few threads when the model is on a GPU (the CPU does nothing else then)."""
        from speechkit.runtime.codec import CodecRuntime

        if self.fast:
            from speechkit.inference.codec import TorchCodec

            try:
                return TorchCodec(codec_dir, self.device)
            except SpeechkitError as e:
                log.warning("%s; decoding with ONNX Runtime on the CPU instead", e)
        threads = min(4, os.cpu_count() or 1) if self.device.type == "cuda" else 1
        return CodecRuntime(codec_dir, threads)

    def steps(self, opts: SynthOptions) -> int:
        """Flow-head steps per latent: ``opts.steps``, or the model's objective's default when None."""
        return flow_steps(self.model.cfg.flow.objective, opts.steps)

    def latents(self, text: str, prompt, opts: SynthOptions = SynthOptions()) -> Iterator[np.ndarray]:
        """Generated latents (D,) one by one; ``opts.cfg_scale`` guides a rectified-flow head only
        (a mean-flow head's guidance is trained in)."""
        g = torch.Generator(device=self.device).manual_seed(opts.seed)
        ids = torch.tensor(phoneme_ids(self.vocab, text), dtype=torch.long)
        prompt_z = torch.from_numpy(self.prompt_latents(prompt, opts.prompt_seconds))
        generate = self.generator.generate if self.generator is not None else self.model.generate
        for z in generate(ids, prompt_z, steps=self.steps(opts), cfg_scale=opts.cfg_scale, temperature=opts.temperature, generator=g):
            yield z.float().cpu().numpy()

    def warmup(self, opts: SynthOptions = SynthOptions(), n_phones: int = 60) -> None:
        """Everything the first utterance would otherwise pay once: the CUDA graph for these
        options (an utterance of up to ~250 phoneme symbols uses the same one), CUDA/cuBLAS/cuDNN
        initialisation, the codec's first encode and decode. Nothing is kept but caches."""
        phoneme_ids(self.vocab, "warm up")  # espeak-ng's binary and data into the page cache
        rng = np.random.default_rng(0)
        prompt = (0.1 * rng.standard_normal(int(opts.prompt_seconds * self.sample_rate))).astype(np.float32)
        prompt_z = torch.from_numpy(prompt_latents(self.codec, prompt, opts.prompt_seconds))
        if self.generator is not None:
            self.generator.warmup(n_phones, prompt_z.shape[0], steps=self.steps(opts), cfg_scale=opts.cfg_scale,
                                  temperature=opts.temperature)
        else:
            latents = self.model.generate(torch.ones(n_phones, dtype=torch.long), prompt_z, steps=self.steps(opts),
                                          cfg_scale=opts.cfg_scale, temperature=opts.temperature, max_frames=2)
            for _ in latents:
                pass
        self.codec.stream().decode(np.ascontiguousarray(prompt_z[: opts.chunk_frames].T.numpy()))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
