"""Training a codec: random fixed-length crops of a corpus held in memory, reconstruction losses
(waveform L1, multi-resolution STFT, multi-scale mel) plus the bottleneck's own term (KL or
commitment), and — switchable, after a warm-up — adversarial training against a multi-scale
STFT discriminator with feature matching. bf16 autocast on GPU.

Resume is exact: ``checkpoint.pt`` holds both networks, both optimizers and the step; each
step's crops are a pure function of (seed, step).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from speechkit.audio.io import load_audio
from speechkit.config import from_dict, load_yaml, to_dict
from speechkit.data.kaldi import read_table
from speechkit.errors import AudioError, ConfigError, SpeechkitError
from speechkit.models.codec.discriminator import MultiScaleSTFTDiscriminator
from speechkit.models.codec.losses import CodecLossWeights, MelL1Loss, MultiResolutionSTFTLoss, generator_loss, hinge_d_loss
from speechkit.models.codec.model import CODECS, CodecConfig, build_codec, codec_config_from_dict
from speechkit.train.checkpoint import load_checkpoint, save_atomic
from speechkit.train.engine import OptimConfig
from speechkit.train.engine import lr_at


@dataclass(frozen=True)
class CodecOptimConfig(OptimConfig):
    """The ASR trainer's optimizer fields with a codec's defaults (GAN-friendly betas, no decay)."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 500
    final_lr_ratio: float = 0.1


@dataclass(frozen=True)
class CodecTrainConfig:
    max_steps: int = 20000  # the lr schedule's length
    max_minutes: float = 0.0  # a wall-time budget (0: none); the schedule then shrinks to the steps that fit at the measured speed
    batch_size: int = 32
    segment_seconds: float = 1.0  # crop length (rounded down to whole frames)
    adversarial: bool = True
    adv_start_step: int = 2000  # reconstruction losses only before this step
    disc_filters: int = 32  # channels of the MS-STFT discriminator's convs
    grad_clip: float = 100.0
    seed: int = 0
    log_interval: int = 100
    save_interval_steps: int = 1000
    amp: str = "auto"  # auto (bf16 on GPU) | bf16 | off
    init_checkpoint: str | None = None  # start from these codec weights (a model.pt) when there is no checkpoint.pt yet


@dataclass(frozen=True)
class CodecExperiment:
    model: CodecConfig = field(default_factory=CodecConfig)
    loss_conf: CodecLossWeights = field(default_factory=CodecLossWeights)
    optim_conf: CodecOptimConfig = field(default_factory=CodecOptimConfig)
    train_conf: CodecTrainConfig = field(default_factory=CodecTrainConfig)

    def to_yaml_dict(self) -> dict:
        return {**to_dict(self.model), "loss_conf": to_dict(self.loss_conf), "optim_conf": to_dict(self.optim_conf),
                "train_conf": to_dict(self.train_conf)}


_MODEL_KEYS = set(CodecConfig.__dataclass_fields__)


def load_codec_experiment(path: str | Path) -> CodecExperiment:
    """A codec YAML (``codec: vae`` + ``encoder_conf``/``vae_conf``/``rvq_conf`` at the top,
    then ``loss_conf``, ``optim_conf``, ``train_conf``) → typed config; one-line errors."""
    data, lines = load_yaml(path)
    model = codec_config_from_dict({k: v for k, v in data.items() if k in _MODEL_KEYS}, str(path), lines)
    rest = {k: v for k, v in data.items() if k not in _MODEL_KEYS}
    if "model" in rest:
        raise ConfigError(f"{path}: unknown key 'model'")
    exp = from_dict(CodecExperiment, rest, source=str(path), lines=lines)
    return CodecExperiment(model, exp.loss_conf, exp.optim_conf, exp.train_conf)


class WaveBank:
    """Every utterance of some Kaldi data dirs as int16 in memory, cut into random crops."""

    def __init__(self, data_dirs: list[str | Path], sample_rate: int, min_samples: int):
        paths = [p for d in data_dirs for p in read_table(Path(d) / "wav.scp").values()]

        def read(path: str) -> np.ndarray | None:
            try:
                return load_audio(path, sample_rate, resample=True, downmix=True)[0]
            except AudioError as e:  # one bad file is reported and left out, not fatal
                print(f"speechkit: skipped: {e}", file=sys.stderr)
                return None

        with ThreadPoolExecutor(8) as pool:
            audio = [a for a in pool.map(read, paths) if a is not None]
        self.waves = [np.round(np.clip(a, -1, 1) * 32767).astype(np.int16) for a in audio if len(a) >= min_samples]
        if not self.waves:
            raise SpeechkitError(f"no utterance of at least {min_samples / sample_rate:.2f} s in {', '.join(map(str, data_dirs))}")
        lengths = np.array([len(w) for w in self.waves], dtype=np.float64)
        self.weights = lengths / lengths.sum()
        self.seconds = float(lengths.sum()) / sample_rate

    def batch(self, size: int, samples: int, seed: int, step: int) -> torch.Tensor:
        """[size, 1, samples] float32 crops, the same for the same (seed, step)."""
        rng = np.random.default_rng([seed, step])
        out = np.empty((size, 1, samples), dtype=np.float32)
        for b, i in enumerate(rng.choice(len(self.waves), size=size, p=self.weights)):
            w = self.waves[i]
            at = rng.integers(0, len(w) - samples + 1)
            out[b, 0] = w[at : at + samples] / 32768.0
        return torch.from_numpy(out)


def save_codec(model: torch.nn.Module, cfg: CodecConfig, path: str | Path) -> None:
    save_atomic({"model": model.state_dict(), "config": to_dict(cfg)}, path)


def load_codec(path: str | Path, device: str | torch.device = "cpu"):
    """An experiment dir (its ``model.pt``) or a checkpoint file → the codec in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    ckpt = load_checkpoint(path)
    if "config" not in ckpt or ckpt["config"].get("codec") not in CODECS:
        raise SpeechkitError(f"{path}: not a codec checkpoint")
    cfg = codec_config_from_dict(ckpt["config"], str(path))
    model = build_codec(cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def train_codec(exp: CodecExperiment, data_dirs: list[str | Path], exp_dir: str | Path, device: str | None = None) -> dict:
    """Train (or resume) in ``exp_dir``; writes checkpoint.pt, model.pt and metrics.jsonl."""
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "config.yaml").write_text(yaml.safe_dump(exp.to_yaml_dict(), sort_keys=False))
    tc, oc, cfg = exp.train_conf, exp.optim_conf, exp.model
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(tc.seed)
    model = build_codec(cfg).to(device).train()
    disc = MultiScaleSTFTDiscriminator(tc.disc_filters).to(device).train() if tc.adversarial else None
    opt_g = torch.optim.AdamW(model.parameters(), lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay) if disc else None
    step = 0
    if (exp_dir / "checkpoint.pt").is_file():
        ckpt = load_checkpoint(exp_dir / "checkpoint.pt")
        model.load_state_dict(ckpt["model"])
        opt_g.load_state_dict(ckpt["opt_g"])
        if disc is not None:
            disc.load_state_dict(ckpt["disc"])
            opt_d.load_state_dict(ckpt["opt_d"])
        step = ckpt["step"]
        torch.set_rng_state(ckpt["rng"])  # posterior sampling and quantizer dropout continue as if never stopped
        if "cuda_rng" in ckpt and device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
    elif tc.init_checkpoint:
        init = load_codec(tc.init_checkpoint)
        if replace(init.cfg, vae_conf=cfg.vae_conf) != cfg:  # the KL weight is a loss weight: it may change
            raise SpeechkitError(f"{tc.init_checkpoint}: another codec config than this experiment's")
        model.load_state_dict(init.state_dict())
    stft_loss, mel_loss = MultiResolutionSTFTLoss().to(device), MelL1Loss(cfg.sample_rate).to(device)
    samples = int(tc.segment_seconds * cfg.sample_rate) // cfg.hop * cfg.hop
    bank = WaveBank(data_dirs, cfg.sample_rate, samples)
    use_amp = tc.amp == "bf16" or (tc.amp == "auto" and device.type == "cuda")
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if use_amp else nullcontext()
    params = sum(p.numel() for p in model.parameters())
    print(f"codec {cfg.codec}: {params / 1e6:.2f} M parameters, hop {cfg.hop} ({cfg.frame_rate:g} frames/s), "
          f"{bank.seconds / 3600:.2f} h of audio, {samples / cfg.sample_rate:.2f} s crops x {tc.batch_size}", flush=True)

    def checkpoint() -> None:
        state = {"model": model.state_dict(), "opt_g": opt_g.state_dict(), "step": step, "config": to_dict(cfg),
                 "rng": torch.get_rng_state()}
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        if disc is not None:
            state.update(disc=disc.state_dict(), opt_d=opt_d.state_dict())
        save_atomic(state, exp_dir / "checkpoint.pt")

    start, sums, n = time.monotonic(), {}, 0
    total, first = tc.max_steps, step
    mark = (step, start)  # (step, time) where the current speed measurement began
    bar = tqdm(total=tc.max_steps, initial=step, desc=f"train {cfg.codec}", unit="step", mininterval=5)
    with open(exp_dir / "metrics.jsonl", "a") as log:
        while step < total and not (tc.max_minutes and time.monotonic() - start > 60 * tc.max_minutes):
            wav = bank.batch(tc.batch_size, samples, tc.seed, step).to(device, non_blocking=True)
            if tc.max_minutes and step - first >= 200 and step % tc.log_interval == 0:
                # fit the schedule to the time budget at the current speed (it drops when the
                # discriminator joins), so the learning rate has decayed when the time is up
                now = time.monotonic()
                per_step = (now - mark[1]) / max(1, step - mark[0])
                total = min(tc.max_steps, step + int((60 * tc.max_minutes - (now - start)) / per_step))
                mark = (step, now)
            lr = lr_at(step, oc.lr, oc.warmup_steps, total, oc.final_lr_ratio)
            for opt in (opt_g, opt_d):
                for g in opt.param_groups if opt else ():
                    g["lr"] = lr
            adversarial = disc is not None and step >= tc.adv_start_step
            with amp:
                y_hat, aux = model(wav)
            y_hat = y_hat.float()
            parts = {}
            if adversarial:
                with amp:
                    real, _ = disc(wav)
                    fake, _ = disc(y_hat.detach())
                d_loss = hinge_d_loss(real, fake)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                torch.nn.utils.clip_grad_norm_(disc.parameters(), tc.grad_clip)
                opt_d.step()
                parts["d"] = d_loss.detach()
            with amp:
                g_loss, g_parts = generator_loss(y_hat, wav, disc if adversarial else None, exp.loss_conf, stft_loss, mel_loss)
            loss = g_loss + aux["loss"]
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt_g.step()
            step += 1
            bar.update(1)
            for k, v in {**g_parts, **parts, **{k: v for k, v in aux.items() if k in ("kl", "commit")}}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            n += 1
            if step % tc.log_interval == 0 or step == total:
                row = {"step": step, "lr": lr, "minutes": round((time.monotonic() - start) / 60, 2), **{k: round(float(v) / n, 5) for k, v in sums.items()}}
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(mel=row.get("mel"), refresh=False)
                sums, n = {}, 0
            if step % tc.save_interval_steps == 0:
                checkpoint()
    bar.close()
    checkpoint()
    save_codec(model, cfg, exp_dir / "model.pt")
    return {"steps": step, "minutes": round((time.monotonic() - start) / 60, 2), "params_m": round(params / 1e6, 2)}
