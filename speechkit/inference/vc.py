"""Voice conversion with a trained MeanVC experiment (``model.pt``) in PyTorch, on any device: the
content of the source from the shipped streaming ASR graph (``runtime.content``, chunk by chunk),
the reference's VAE latents and the decoder from the codec's ONNX graphs, the speaker embedding
from our speaker encoder. The exported, torch-free converter is ``speechkit.runtime.vc``; this one
serves training experiments (evaluation on a GPU, a quick listen before export).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from speechkit.errors import AudioError, SpeechkitError
from speechkit.runtime.vc import check_reference, resolve

class TorchVoiceConverter:
    def __init__(self, model: str | Path, codec_dir: str | Path | None = None, asr_dir: str | Path | None = None,
                 speaker_model: str | Path | None = None, device: str | None = None, threads: int = 1):
        from speechkit.models.speaker.io import load_speaker_encoder
        from speechkit.models.vc.io import load_vc
        from speechkit.runtime.codec import CodecRuntime
        from speechkit.runtime.content import ContentEncoder

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, f = load_vc(model, self.device)
        self.codec = CodecRuntime(resolve(codec_dir or f.get("codec"), "codec", "--codec"), num_threads=threads)
        att = f.get("att_context")
        self.content = ContentEncoder(resolve(asr_dir or f.get("asr"), "content encoder (streaming ASR model)", "--asr"),
                                      layer=f.get("content_layer"), att_context=tuple(att) if att else None, num_threads=threads)
        if self.content.dim != self.model.cfg.content_dim:
            raise SpeechkitError(f"the content encoder gives {self.content.dim} dims, the model takes {self.model.cfg.content_dim}")
        self.speaker = load_speaker_encoder(resolve(speaker_model or f.get("speaker_model"), "speaker encoder", "--speaker-model"), self.device)
        self.sample_rate = self.codec.sample_rate

    @torch.no_grad()
    def target(self, samples: np.ndarray, sample_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference audio → (its raw latents (1, R, D), its speaker embedding (1, S)) on the device."""
        from speechkit.audio.io import resample_audio
        from speechkit.models.speaker.embed import embed_samples

        rate = sample_rate or self.sample_rate
        x = check_reference(samples, rate)
        if rate != self.sample_rate:
            x = resample_audio(x, rate, self.sample_rate)
        latents = self.codec.encode(x).T
        spk = embed_samples(self.speaker, x)
        return (torch.from_numpy(np.ascontiguousarray(latents))[None].to(self.device),
                torch.from_numpy(spk)[None].to(self.device))

    @torch.no_grad()
    def convert(self, samples: np.ndarray, target: tuple[torch.Tensor, torch.Tensor], sample_rate: int | None = None,
                steps: int = 1, sampler: str = "meanflow", seed: int = 0) -> np.ndarray:
        """Source audio → the same words in the target's voice (the codec's rate), made chunk by chunk."""
        content = self.content.encode(np.asarray(samples, dtype=np.float32), sample_rate or self.sample_rate)
        if not len(content):
            raise AudioError("source: too short to hold a single content frame")
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(1, len(content), self.model.cfg.latent_dim, generator=g).to(self.device)
        ref, spk = target
        z = self.model.convert(torch.from_numpy(content)[None].to(self.device), ref, spk, steps=steps, noise=noise, sampler=sampler)
        latents = z[0].float().cpu().numpy().T
        stream = self.codec.stream()
        chunk = self.model.cfg.chunk
        return np.concatenate([stream.decode(latents[:, k : k + chunk]) for k in range(0, latents.shape[1], chunk)])
