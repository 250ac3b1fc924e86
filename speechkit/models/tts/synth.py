"""Synthesis with a trained CLEAR experiment (torch): text + a prompt recording → speech, whole or
as a stream of audio chunks. Every ``chunk_frames`` generated latents go through the codec's
streaming decoder, so audio starts long before the sentence is finished; the chunks joined are
exactly the whole-utterance output.

    tts = TorchSynthesizer("exp/clear")
    audio = tts.synthesize("hello there", prompt="prompt.wav")
    for chunk in tts.stream("hello there", prompt="prompt.wav"):
        play(chunk)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from speechkit.errors import SpeechkitError
from speechkit.models.tts.options import SynthOptions
from speechkit.runtime.tts import LatentSynthesizer, phoneme_ids, prompt_latents


def resolve_codec(model_dir: Path, recorded: str) -> Path:
    """The codec an experiment was trained with: ``MODEL/codec`` when exported alongside, else the
    recorded path."""
    for c in (model_dir / "codec", Path(recorded)):
        if (c / "decoder.onnx").is_file():
            return c
    raise SpeechkitError(f"{model_dir}: its codec {recorded} is not there (export it next to the model as {model_dir / 'codec'})")


class TorchSynthesizer(LatentSynthesizer):
    def __init__(self, exp_dir: str | Path, device: str | None = None, codec_dir: str | Path | None = None):
        from speechkit.models.tts.train import load_tts
        from speechkit.runtime.codec import CodecRuntime
        from speechkit.text.phonemes import PhonemeVocab

        exp_dir = Path(exp_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, symbols, codec = load_tts(exp_dir, self.device)
        self.vocab = PhonemeVocab(symbols)
        self.codec = CodecRuntime(codec_dir or resolve_codec(exp_dir, codec))
        self.sample_rate = self.codec.sample_rate
        self.device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu (torch)"

    def latents(self, text: str, prompt, opts: SynthOptions = SynthOptions()) -> Iterator[np.ndarray]:
        """Generated latents (D,) one by one."""
        g = torch.Generator(device=self.device).manual_seed(opts.seed)
        ids = torch.tensor(phoneme_ids(self.vocab, text), dtype=torch.long)
        prompt_z = torch.from_numpy(prompt_latents(self.codec, prompt, opts.prompt_seconds))
        for z in self.model.generate(ids, prompt_z, steps=opts.steps,
                                     cfg_scale=opts.cfg_scale, temperature=opts.temperature, generator=g):
            yield z.float().cpu().numpy()
