"""Codec → ONNX: ``encoder.onnx`` (a whole waveform → latents, or RVQ codes for every stage) and
``decoder.onnx`` (one chunk of latent frames + the decoder's state → audio + new state, named
``state_i`` / ``new_state_i``). The RVQ decoder graph takes the continuous latents; the runtime
sums the codebook vectors itself (``codebooks.npy``), so one graph serves every bitrate. Export
refuses to finish unless ONNX Runtime and PyTorch agree on the encoder and over chained decoder
chunks.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from speechkit.config import to_dict
from speechkit.errors import SpeechkitError
from speechkit.export.onnx_file import write_onnx
from speechkit.models.codec.model import RvqCodec, VaeCodec

AUDIO_TOL = 1e-4  # float32 samples, ONNX Runtime vs PyTorch
LATENT_TOL = 1e-3  # float32 latents
CODE_AGREEMENT = 0.999  # RVQ codes: a near-tie argmin may flip under another summation order


class EncoderGraph(nn.Module):
    """wav (B, 1, T), T a multiple of the hop → latents (B, D, T / hop) or codes (B, n_q, T / hop)."""

    def __init__(self, model: VaeCodec | RvqCodec):
        super().__init__()
        self.model = model

    def forward(self, wav):
        return self.model.encode(wav)


class DecoderChunkGraph(nn.Module):
    """latents (B, D, K) + state → audio (B, 1, K × hop) + new state."""

    def __init__(self, model: VaeCodec | RvqCodec):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, latents, *state):
        y, _, new = self.decoder.forward_chunk(latents, torch.full((latents.shape[0],), latents.shape[-1]), list(state))
        return (y, *new)


def metadata(model: VaeCodec | RvqCodec) -> dict:
    cfg = model.cfg
    meta = {"model_family": f"codec-{cfg.codec}", "sample_rate": cfg.sample_rate, "hop": cfg.hop, "frame_rate": cfg.frame_rate,
            "latent_dim": cfg.encoder_conf.latent_dim, "num_states": len(model.decoder.init_state(1)),
            "codec_config": json.dumps(to_dict(cfg))}
    if isinstance(model, RvqCodec):
        meta.update(n_q=cfg.rvq_conf.n_q, codebook_size=cfg.rvq_conf.codebook_size)
    return meta


def export_codec(model: VaeCodec | RvqCodec, out_dir: str | Path, check_wavs: list[np.ndarray], chunk_frames: int = 1) -> dict:
    """Write encoder.onnx, decoder.onnx (and codebooks.npy for RVQ) with the parity report in
    export.json; ``check_wavs`` are float32 waveforms of at least 3 decoder chunks. The files are
    written to a staging folder and moved into ``out_dir`` only after the parity check passes, so a
    failed export leaves no graph behind."""
    model = model.float().eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        info = _write_and_check(model, staging, check_wavs, chunk_frames)
        for f in sorted(staging.iterdir()):
            f.replace(out_dir / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def _write_and_check(model: VaeCodec | RvqCodec, out_dir: Path, check_wavs: list[np.ndarray], chunk_frames: int) -> dict:
    meta = metadata(model)
    hop = model.cfg.hop
    write_onnx(EncoderGraph(model), (torch.zeros(1, 1, 4 * hop),), out_dir / "encoder.onnx", ["wav"], ["codes" if isinstance(model, RvqCodec) else "latents"],
               {"wav": {0: "B", 2: "T"}, ("codes" if isinstance(model, RvqCodec) else "latents"): {0: "B", 2: "F"}}, meta)
    state = model.decoder.init_state(1)
    names = [f"state_{i}" for i in range(len(state))]
    axes = {"latents": {0: "B", 2: "K"}, "audio": {0: "B", 2: "S"}}
    for name, one, two in zip(names, state, model.decoder.init_state(2)):  # the batch axis: where 1 and 2 streams differ
        axis = next(a for a in range(one.dim()) if one.shape[a] != two.shape[a])
        axes[name] = axes["new_" + name] = {axis: "B"}
    write_onnx(DecoderChunkGraph(model), (torch.zeros(1, model.cfg.encoder_conf.latent_dim, chunk_frames), *state), out_dir / "decoder.onnx",
               ["latents", *names], ["audio", *("new_" + n for n in names)], axes, {**meta, "chunk_frames": chunk_frames})
    if isinstance(model, RvqCodec):
        codebooks = torch.stack([vq.codebook for vq in model.quantizer.stages])  # (n_q, size, D)
        np.save(out_dir / "codebooks.npy", codebooks.detach().cpu().numpy().astype(np.float32))
    report = check_parity(model, out_dir, check_wavs, chunk_frames)
    info = {**meta, "parity": report, "size_mb": round(sum(f.stat().st_size for f in out_dir.glob("*.onnx")) / 1e6, 2)}
    (out_dir / "export.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def check_parity(model: VaeCodec | RvqCodec, out_dir: Path, wavs: list[np.ndarray], chunk_frames: int) -> list[dict]:
    from speechkit.runtime.session import cpu_session

    enc, dec = cpu_session(out_dir / "encoder.onnx"), cpu_session(out_dir / "decoder.onnx")
    hop, report = model.cfg.hop, []
    for i, w in enumerate(wavs):
        n = len(w) // hop * hop
        if n < 3 * chunk_frames * hop:
            raise SpeechkitError(f"parity check: waveform {i} is shorter than 3 decoder chunks")
        x = torch.from_numpy(np.ascontiguousarray(w[:n], dtype=np.float32)).view(1, 1, n)
        with torch.no_grad():
            ref_enc = model.encode(x)
            latents = model.quantizer.decode(ref_enc) if isinstance(model, RvqCodec) else ref_enc
            ref_audio = model.decoder(latents).numpy()
        got_enc = enc.run(None, {"wav": x.numpy()})[0]
        if isinstance(model, RvqCodec):
            enc_ok = float((got_enc == ref_enc.numpy()).mean())
            enc_pass = enc_ok >= CODE_AGREEMENT
        else:
            enc_ok = float(np.abs(got_enc - ref_enc.numpy()).max())
            enc_pass = enc_ok <= LATENT_TOL
        state = [s.numpy() for s in model.decoder.init_state(1)]
        z, pieces = latents.numpy(), []
        for at in range(0, z.shape[-1], chunk_frames):
            out = dec.run(None, {"latents": z[..., at : at + chunk_frames], **{f"state_{j}": s for j, s in enumerate(state)}})
            pieces.append(out[0])
            state = out[1:]
        diff = float(np.abs(np.concatenate(pieces, -1) - ref_audio).max())
        row = {"utt": i, "chunks": -(-z.shape[-1] // chunk_frames), "decoder_max_abs_diff": diff,
               ("encoder_code_agreement" if isinstance(model, RvqCodec) else "encoder_max_abs_diff"): enc_ok}
        report.append(row)
        if diff > AUDIO_TOL or not enc_pass:
            raise SpeechkitError(f"ONNX Runtime and PyTorch disagree on waveform {i}: {row} (audio tolerance {AUDIO_TOL})")
    return report
