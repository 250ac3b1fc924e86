"""The codec task for the training engine (waveform VAE and RVQ codecs): random fixed-length crops
of a corpus held in memory; reconstruction losses (waveform L1, multi-resolution STFT, multi-scale
mel) plus the bottleneck's own term (KL or commitment); and, switchable, after a warm-up, EnCodec's
multi-scale STFT discriminator trained adversarially, with feature matching.

Step-based: one long epoch whose micro-batch k is a pure function of (seed, k); ``max_steps`` or
the time budget ends it, and a run resumed with a larger ``max_steps`` carries on.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from speechkit.audio.io import load_audio
from speechkit.config import from_dict, load_yaml, to_dict
from speechkit.data.batches import to_device
from speechkit.data.kaldi import read_table
from speechkit.errors import AudioError, ConfigError, SpeechkitError
from speechkit.models.codec.discriminator import MultiScaleSTFTDiscriminator
from speechkit.models.codec.io import load_codec, save_codec
from speechkit.models.codec.losses import CodecLossWeights, MelL1Loss, MultiResolutionSTFTLoss, generator_loss, hinge_d_loss
from speechkit.models.codec.model import CodecConfig, build_codec, codec_config_from_dict
from speechkit.train.engine import Engine, LoopConfig, OptimConfig, decay_groups, legacy_rng, make_optimizer, setup_distributed

FAMILY = "codec"


@dataclass(frozen=True)
class CodecOptimConfig(OptimConfig):
    """The engine's optimizer fields with a codec's defaults (GAN-friendly betas, no decay)."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 500
    final_lr_ratio: float = 0.1


@dataclass(frozen=True)
class CodecTrainConfig(LoopConfig):
    """The engine's loop fields (``LoopConfig``) with codec defaults, plus the crops' and the discriminator's."""

    max_steps: int = 20000  # the lr schedule's length; 0 trains nothing (model.pt gets the initial weights)
    grad_clip: float = 100.0
    log_interval: int = 100
    save_interval_steps: int = 1000
    batch_size: int = 32  # crops per micro-batch (per GPU)
    segment_seconds: float = 1.0  # crop length (rounded down to whole frames)
    adversarial: bool = True
    adv_start_step: int = 2000  # reconstruction losses only before this step
    disc_filters: int = 32  # channels of the MS-STFT discriminator's convs
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

    def batch(self, size: int, samples: int, seed: int, index: int) -> torch.Tensor:
        """[size, 1, samples] float32 crops, the same for the same (seed, index)."""
        rng = np.random.default_rng([seed, index])
        out = np.empty((size, 1, samples), dtype=np.float32)
        for b, i in enumerate(rng.choice(len(self.waves), size=size, p=self.weights)):
            w = self.waves[i]
            at = rng.integers(0, len(w) - samples + 1)
            out[b, 0] = w[at : at + samples] / 32768.0
        return torch.from_numpy(out)


class CodecTask:
    """A codec, and its discriminator when adversarial, trained on crops of a ``WaveBank``."""

    family = FAMILY

    def __init__(self, exp: CodecExperiment, data_dirs: list[str | Path], exp_dir: str | Path, device: torch.device, world: int = 1):
        tc, cfg, exp_dir = exp.train_conf, exp.model, Path(exp_dir)
        self.exp, self.device = exp, device
        self.config = to_dict(cfg)  # model.pt's config, so load_codec reads checkpoint.pt too
        self.model = build_codec(cfg)
        self.disc = MultiScaleSTFTDiscriminator(tc.disc_filters) if tc.adversarial else None
        if tc.init_checkpoint and not (exp_dir / "checkpoint.pt").is_file():
            init = load_codec(tc.init_checkpoint)
            if replace(init.cfg, vae_conf=cfg.vae_conf) != cfg:  # the KL weight is a loss weight: it may change
                raise SpeechkitError(f"{tc.init_checkpoint}: another codec config than this experiment's")
            self.model.load_state_dict(init.state_dict())
        self.stft_loss = MultiResolutionSTFTLoss().to(device)
        self.mel_loss = MelL1Loss(cfg.sample_rate).to(device)
        self.samples = int(tc.segment_seconds * cfg.sample_rate) // cfg.hop * cfg.hop
        self.seconds = tc.batch_size * self.samples / cfg.sample_rate
        self.bank = WaveBank(data_dirs, cfg.sample_rate, self.samples)
        self.micro_per_step = tc.accum_grad * world  # micro-batches of all ranks in one optimizer step
        self.max_steps = tc.max_steps

    def compile(self) -> None:
        """With ``train_conf.compile``: the spectral losses compiled too (fixed crop shapes: compiled once)."""
        self.stft_loss = torch.compile(self.stft_loss)
        self.mel_loss = torch.compile(self.mel_loss)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, **({"disc": self.disc} if self.disc is not None else {})}

    def plan(self, epoch: int, rank: int, world: int) -> range:
        # Key k is the k-th micro-batch of all ranks together (one process draws the old trainer's
        # crops). One step more than max_steps: the step limit, never the end of the plan, ends a
        # run, so its checkpoint stays mid-epoch and a run given more steps carries on.
        return range(rank, (self.max_steps + 1) * self.micro_per_step, world)

    def load(self, key: int, device: torch.device) -> dict:
        """wav [B, 1, T] on the device, the optimizer step it belongs to, and its audio seconds."""
        tc = self.exp.train_conf
        wav = self.bank.batch(tc.batch_size, self.samples, tc.seed, key)
        return {"wav": to_device(wav, device), "step": key // self.micro_per_step, "seconds": self.seconds}

    def step(self, modules, b: dict, update) -> dict[str, torch.Tensor]:
        """The discriminator's update (from ``adv_start_step`` on), then the generator's against it."""
        wav = b["wav"]
        y_hat, aux = modules["model"](wav)
        y_hat = y_hat.float()
        adversarial = self.disc is not None and b["step"] >= self.exp.train_conf.adv_start_step
        parts = {}
        if adversarial:
            logits, _ = modules["disc"](torch.cat([wav, y_hat.detach()]))  # real and fake in one pass
            d_loss = hinge_d_loss([x[: len(wav)] for x in logits], [x[len(wav) :] for x in logits])
            update("disc", d_loss)
            parts["d"] = d_loss.detach()
            # the generator's adversarial terms reach y_hat through the discriminator; on its own
            # parameters they would be gradients added to its next step. (Unwrapped: no DDP hooks.)
            self.disc.requires_grad_(False)
        g_loss, g_parts = generator_loss(y_hat, wav, self.disc if adversarial else None, self.exp.loss_conf,
                                         self.stft_loss, self.mel_loss)
        update("model", g_loss + aux["loss"])
        if adversarial:
            self.disc.requires_grad_(True)
        bottleneck = {k: aux[k].detach() for k in ("kl", "commit") if k in aux}
        # mel and stft first: the progress bar shows the first two
        return {"mel": g_parts["mel"], "stft": g_parts["stft"], **g_parts, **bottleneck, **parts}

    def convert_legacy(self, ck: dict) -> dict:
        """A checkpoint.pt of the pre-engine codec trainer (keys model, opt_g, disc, opt_d, step, rng,
        cuda_rng; one process, one parameter group per optimizer) in the engine's layout."""
        if "opt_g" not in ck:
            raise SpeechkitError("checkpoint.pt: neither an engine nor an older codec trainer checkpoint; move it away to start afresh")
        optimizers = {"model": _regroup(ck["opt_g"], self.model, self.exp.optim_conf, self.device)}
        modules = {}
        if self.disc is not None and "disc" in ck:
            optimizers["disc"] = _regroup(ck["opt_d"], self.disc, self.exp.optim_conf, self.device)
            modules["disc"] = ck["disc"]
        rng = legacy_rng(ck["rng"], ck.get("cuda_rng"))
        step = int(ck["step"])
        return {"model": ck["model"], "modules": modules, "optimizers": optimizers, "epoch": 0,
                "batch": step * self.exp.train_conf.accum_grad, "step": step, "rng": [rng]}


def _regroup(legacy: dict, module: torch.nn.Module, oc: OptimConfig, device: torch.device) -> dict:
    """An optimizer state over ``module.parameters()`` in one group → the layout of the engine's
    optimizer (``decay_groups``' order), so the moments carry over to the parameters they belong to."""
    groups = decay_groups(module, oc.weight_decay)
    position = {id(p): i for i, p in enumerate(module.parameters())}
    order = [position[id(p)] for g in groups for p in g["params"]]
    state = make_optimizer(groups, oc, device).state_dict()
    state["state"] = {new: legacy["state"][old] for new, old in enumerate(order) if old in legacy["state"]}
    return state


def train_codec(exp: CodecExperiment, data_dirs: list[str | Path], exp_dir: str | Path, device: str | None = None) -> dict:
    """Train (or resume) in ``exp_dir``; writes checkpoint.pt, model.pt and metrics.jsonl and returns
    {steps, minutes, params_m}."""
    exp_dir = Path(exp_dir)
    tc, cfg = exp.train_conf, exp.model
    rank, world, dev = setup_distributed()
    device = torch.device(device) if device else dev
    if rank == 0:
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / "config.yaml").write_text(yaml.safe_dump(exp.to_yaml_dict(), sort_keys=False))
    torch.manual_seed(tc.seed)  # the initial weights
    task = CodecTask(exp, data_dirs, exp_dir, device, world)
    params_m = round(sum(p.numel() for p in task.model.parameters()) / 1e6, 2)
    if rank == 0:
        print(f"codec {cfg.codec}: {params_m:.2f} M parameters, hop {cfg.hop} ({cfg.frame_rate:g} frames/s), "
              f"{task.bank.seconds / 3600:.2f} h of audio, {task.samples / cfg.sample_rate:.2f} s crops x {tc.batch_size}", flush=True)
    info, state = {"steps": 0, "minutes": 0.0, "params_m": params_m}, task.model.state_dict()
    if tc.max_steps > 0:
        engine = Engine(task, tc, exp.optim_conf, exp_dir, device)
        info, state = engine.fit(), engine.model_state()
    if rank == 0:
        save_codec(state, cfg, exp_dir / "model.pt")
    return info
