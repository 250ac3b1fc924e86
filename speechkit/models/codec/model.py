"""The two codecs on the shared causal SEANet encoder/decoder (speechkit/nn/seanet.py):

- ``VaeCodec`` — continuous latents: a Gaussian bottleneck (mean and log-variance, KL to
  N(0, I)) with parameter-free shortcuts and a hard compression (default 640× = 25 latents/s),
  the representation CLEAR's TTS models;
- ``RvqCodec`` — token streams: a residual vector quantizer (k-means init, EMA codebooks,
  dead-code restart, quantizer dropout) between encoder and decoder, EnCodec style, the
  representation MAGNeT models.

Both decode frame by frame through the decoder's streaming state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from speechkit.config import from_dict
from speechkit.errors import ConfigError, SpeechkitError
from speechkit.nn.mel_encoder import MelEncoder, MelEncoderConfig
from speechkit.nn.rvq import ResidualVectorQuantizer
from speechkit.nn.seanet import SeanetConfig, SeanetDecoder, SeanetEncoder, State


@dataclass(frozen=True)
class VaeConfig:
    kl_weight: float = 1e-3  # on the per-element mean KL; small, so the latents keep the detail the decoder needs


@dataclass(frozen=True)
class RvqConfig:
    n_q: int = 12  # stages; 12 × 10 bits × 50 frames/s = 6 kbps at the top
    codebook_size: int = 1024
    decay: float = 0.99  # EMA of the codebooks
    dead_threshold: float = 0.25  # EMA vectors per batch below which an entry is restarted (a batch of 32 × 1 s has 1.6 per entry)
    commitment_weight: float = 1.0


@dataclass(frozen=True)
class CodecConfig:
    codec: str = "vae"  # vae | rvq
    sample_rate: int = 16000
    encoder_conf: SeanetConfig = field(default_factory=SeanetConfig)
    vae_conf: VaeConfig = field(default_factory=VaeConfig)
    rvq_conf: RvqConfig = field(default_factory=RvqConfig)
    # VAE only: "wav" (the SEANet encoder on the waveform) or "mel" (MelEncoder: the latents can hold
    # only what the log mel holds, no phase; the decoder is still encoder_conf's SEANet decoder)
    encoder_input: str = "wav"
    mel_conf: MelEncoderConfig = field(default_factory=MelEncoderConfig)

    @property
    def hop(self) -> int:
        return self.encoder_conf.hop

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop


class VaeCodec(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        seanet = cfg.encoder_conf
        self.cfg, self.latent_dim = cfg, seanet.latent_dim
        if cfg.encoder_input == "mel":
            self.encoder = MelEncoder(cfg.sample_rate, cfg.mel_conf, 2 * seanet.latent_dim)
        else:
            self.encoder = SeanetEncoder(dataclasses.replace(seanet, latent_dim=2 * seanet.latent_dim))
        self.decoder = SeanetDecoder(seanet)

    def posterior(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        """wav [B, 1, T] → (mean, log-variance), each [B, D, T / hop]."""
        mean, logvar = self.encoder(wav).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, wav: Tensor, n_q: int | None = None) -> Tensor:
        """The latents a downstream model sees: the posterior means [B, D, F]. (``n_q`` is the RVQ
        codec's; a VAE has no bitrates to choose from.)"""
        if n_q is not None:
            raise SpeechkitError("n_q (a number of RVQ stages) does not apply to a VAE codec")
        return self.posterior(wav)[0]

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, wav: Tensor) -> tuple[Tensor, dict]:
        """B: batch, T: samples (a multiple of the hop). → (reconstruction [B, 1, T], {kl, weighted loss})."""
        mean, logvar = self.posterior(wav)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).mean()
        return self.decoder(z), {"kl": kl, "loss": self.cfg.vae_conf.kl_weight * kl}

    def decode_chunk(self, z: Tensor, state: State) -> tuple[Tensor, State]:
        """Streaming: latent frames [B, D, K] → audio [B, 1, K × hop]."""
        y, _, state = self.decoder.forward_chunk(z, torch.full((z.shape[0],), z.shape[-1]), state)
        return y, state


class RvqCodec(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        seanet, rvq = cfg.encoder_conf, cfg.rvq_conf
        self.cfg = cfg
        self.encoder = SeanetEncoder(seanet)
        self.quantizer = ResidualVectorQuantizer(seanet.latent_dim, n_q=rvq.n_q, codebook_size=rvq.codebook_size, decay=rvq.decay,
                                                 dead_threshold=rvq.dead_threshold)
        self.decoder = SeanetDecoder(seanet)

    def encode(self, wav: Tensor, n_q: int | None = None) -> Tensor:
        """wav [B, 1, T] → codes [B, n_q, T / hop] (int64)."""
        return self.quantizer.encode(self.encoder(wav), n_q)

    def decode(self, codes: Tensor) -> Tensor:
        return self.decoder(self.quantizer.decode(codes))

    def forward(self, wav: Tensor, n_q: int | None = None) -> tuple[Tensor, dict]:
        """→ (reconstruction [B, 1, T], {commit, n_q, weighted loss}); in training the number of
        stages is drawn per batch (quantizer dropout) unless given."""
        q = self.quantizer(self.encoder(wav), n_q)
        commit = q.commit_loss.float()
        return self.decoder(q.quantized), {"commit": commit, "n_q": q.n_q, "loss": self.cfg.rvq_conf.commitment_weight * commit}

    def bitrate(self, n_q: int | None = None) -> float:
        return ResidualVectorQuantizer.bitrate(self.cfg.frame_rate, n_q or self.cfg.rvq_conf.n_q, self.cfg.rvq_conf.codebook_size)

    def decode_chunk(self, codes: Tensor, state: State) -> tuple[Tensor, State]:
        """Streaming: codes [B, n_q, K] → audio [B, 1, K × hop]."""
        z = self.quantizer.decode(codes)
        y, _, state = self.decoder.forward_chunk(z, torch.full((z.shape[0],), z.shape[-1]), state)
        return y, state


CODECS = {"vae": VaeCodec, "rvq": RvqCodec}


def build_codec(cfg: CodecConfig) -> VaeCodec | RvqCodec:
    return CODECS[cfg.codec](cfg)


def codec_config_from_dict(data: dict, source: str = "<config>", lines: dict | None = None) -> CodecConfig:
    cfg = from_dict(CodecConfig, data, source=source, lines=lines)
    if cfg.codec not in CODECS:
        where = f"{source}:{lines['codec']}" if lines and "codec" in lines else source
        raise ConfigError(f"{where}: unknown codec '{cfg.codec}' (known: {', '.join(CODECS)})")
    if cfg.encoder_input not in ("wav", "mel") or (cfg.encoder_input == "mel" and cfg.codec != "vae"):
        where = f"{source}:{lines['encoder_input']}" if lines and "encoder_input" in lines else source
        raise ConfigError(f"{where}: encoder_input '{cfg.encoder_input}': 'wav', or 'mel' for a vae codec")
    if cfg.encoder_input == "mel" and cfg.mel_conf.hop != cfg.hop:
        raise ConfigError(f"{source}: mel_conf: frame_hop {cfg.mel_conf.frame_hop} × strides {list(cfg.mel_conf.strides)} = "
                          f"{cfg.mel_conf.hop}, not the decoder's hop {cfg.hop}")
    try:  # shape rules of the encoder (even strides for shortcuts, divisible widths) as one line
        build_codec(cfg)
    except ValueError as e:
        raise ConfigError(f"{source}: encoder_conf: {e}") from None
    return cfg


@torch.no_grad()
def encode_samples(model: VaeCodec | RvqCodec, samples: np.ndarray, n_q: int | None = None) -> np.ndarray:
    """Mono float32 samples → latents (D, F) or codes (n_q, F); the end is zero-padded to a whole
    frame, as the ONNX runtime does."""
    hop = model.cfg.hop
    x = np.asarray(samples, dtype=np.float32)
    n = -(-len(x) // hop) * hop
    wav = torch.from_numpy(np.pad(x, (0, n - len(x)))).view(1, 1, n).to(next(model.parameters()).device)
    return model.encode(wav, n_q)[0].cpu().numpy()


@torch.no_grad()
def decode_frames(model: VaeCodec | RvqCodec, frames: np.ndarray) -> np.ndarray:
    """Latents (D, F) or codes (n, F) → mono float32 samples (F × hop)."""
    z = torch.from_numpy(frames)[None].to(next(model.parameters()).device)
    return model.decode(z)[0, 0].float().cpu().numpy()
