"""The text-to-music task for the training engine: MAGNeT (``kind: magnet``) or the delay-pattern
AR baseline (``kind: ar``) on a ``speechkit audiogen prepare`` token dump.

A training row is a random crop of ``segment_frames`` frames of a random clip (shorter clips are
padded and their length passed on) with the clip's caption. The caption vocabulary is built from
the dump's captions when the task starts (words seen ``min_count`` times) and its size written into
the model's config; both travel in ``model.pt`` (and the vocabulary in every checkpoint's config,
so a resume on another dump stops in one line instead of loading mismatched embeddings).

Step-based: one long epoch whose micro-batch k is a pure function of (seed, k); ``max_steps`` or the
time budget ends it, and a resumed run carries on exactly. The models' losses are methods, so the
engine trains a thin ``TrainingObjective`` whose ``forward`` is the loss (DDP and ``torch.compile``
see it); ``model.pt`` keeps the bare model's weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from speechkit.checkpoint import load_checkpoint
from speechkit.config import from_dict, load_yaml, to_dict
from speechkit.data.audiogen_dump import AudiogenDump
from speechkit.data.batches import to_device
from speechkit.errors import ConfigError, SpeechkitError
from speechkit.models.audiogen.ar import DelayAR
from speechkit.models.audiogen.config import DelayArConfig, MagnetConfig
from speechkit.models.audiogen.io import FAMILY, KINDS, build_model, save_audiogen
from speechkit.models.audiogen.magnet import Magnet
from speechkit.models.audiogen.text import PAD, CaptionTokenizer
from speechkit.train.engine import Engine, LoopConfig, OptimConfig, decay_groups, setup_distributed

PREFIX = "net."  # the objective's parameter names: the model's behind this


@dataclass(frozen=True)
class AudiogenOptimConfig(OptimConfig):
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 500
    final_lr_ratio: float = 0.1


@dataclass(frozen=True)
class AudiogenTrainConfig(LoopConfig):
    max_steps: int = 20000
    log_interval: int = 100
    save_interval_steps: int = 1000
    batch_size: int = 32  # crops per micro-batch (per GPU)
    segment_frames: int = 500  # crop length (10 s at 50 frames/s); shorter clips are padded
    min_frames: int = 10  # shorter clips are left out
    min_count: int = 1  # caption words seen fewer times in the dump's captions become <unk>


@dataclass(frozen=True)
class AudiogenExperiment:
    kind: str = "magnet"  # magnet | ar
    model_conf: MagnetConfig | DelayArConfig = field(default_factory=MagnetConfig)
    optim_conf: AudiogenOptimConfig = field(default_factory=AudiogenOptimConfig)
    train_conf: AudiogenTrainConfig = field(default_factory=AudiogenTrainConfig)

    def to_yaml_dict(self) -> dict:
        return {"kind": self.kind, "model_conf": to_dict(self.model_conf), "optim_conf": to_dict(self.optim_conf),
                "train_conf": to_dict(self.train_conf)}


def audiogen_experiment_from_dict(data: dict, source: str = "<config>", lines: dict[str, int] | None = None) -> AudiogenExperiment:
    """``kind`` picks ``model_conf``'s dataclass (MagnetConfig or DelayArConfig); one-line errors."""
    lines = lines or {}
    kind = data.get("kind", "magnet")
    if kind not in KINDS:
        where = f"{source}:{lines['kind']}" if "kind" in lines else source
        raise ConfigError(f"{where}: unknown kind '{kind}' (known: {', '.join(KINDS)})")
    rest = {k: v for k, v in data.items() if k != "model_conf"}
    model_data = data.get("model_conf")
    model = from_dict(KINDS[kind][1], {} if model_data is None else model_data, source=source, lines=lines, prefix="model_conf.")
    exp = replace(from_dict(AudiogenExperiment, rest, source=source, lines=lines), model_conf=model)
    tc = exp.train_conf
    if not 1 <= tc.segment_frames <= model.max_frames:
        raise ConfigError(f"{source}: train_conf.segment_frames ({tc.segment_frames}) must be in 1..model_conf.max_frames ({model.max_frames})")
    if tc.batch_size < 1 or tc.min_count < 1 or tc.min_frames < 1:
        raise ConfigError(f"{source}: train_conf.batch_size, min_count and min_frames must be at least 1")
    return exp


def load_audiogen_experiment(path: str | Path) -> AudiogenExperiment:
    data, lines = load_yaml(path)
    return audiogen_experiment_from_dict(data, str(path), lines)


class TrainingObjective(nn.Module):
    """The model's ``loss`` as a ``forward``: B: batch, K: codebooks, T: frames, L: caption tokens.
    codes [B, K, T], text [B, L], lengths [B] → (loss, metrics)."""

    def __init__(self, net: Magnet | DelayAR):
        super().__init__()
        self.net = net

    def forward(self, codes: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.net.loss(codes, text, lengths=lengths)


def check_dump(cfg: MagnetConfig | DelayArConfig, dump: AudiogenDump) -> None:
    st = dump.stats
    if cfg.codebooks > dump.codebooks:
        raise SpeechkitError(f"model_conf.codebooks is {cfg.codebooks}, the dump holds {dump.codebooks}")
    if int(st["card"]) != cfg.card:
        raise SpeechkitError(f"model_conf.card is {cfg.card}, the dump's codec has codebooks of {st['card']} entries")


class AudiogenTask:
    family = FAMILY

    def __init__(self, exp: AudiogenExperiment, dump: AudiogenDump, tokenizer: CaptionTokenizer, world: int = 1):
        tc, cfg = exp.train_conf, exp.model_conf
        check_dump(cfg, dump)
        self.exp, self.dump, self.tokenizer = exp, dump, tokenizer
        self.config = {**exp.to_yaml_dict(), "words": list(tokenizer.words)}
        self.objective = TrainingObjective(build_model(exp.kind, cfg))
        frames = dump.frames()
        self.keep = np.flatnonzero(frames >= tc.min_frames)
        if not len(self.keep):
            raise SpeechkitError(f"no clip of at least {tc.min_frames} frames in the dump")
        self.text = [tokenizer.encode(c, cfg.text.max_tokens) for c in dump.captions]
        self.hours = float(frames[self.keep].sum()) / float(dump.stats["frame_rate"]) / 3600
        self.micro_per_step = tc.accum_grad * world

    @property
    def model(self) -> Magnet | DelayAR:
        return self.objective.net

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.objective}

    def param_groups(self, name: str, module: nn.Module) -> list[dict]:
        # no decay on the token and caption embeddings (rows of rare tokens would only shrink)
        return decay_groups(module, self.exp.optim_conf.weight_decay, (PREFIX + "embed", PREFIX + "text.embed"))

    def plan(self, epoch: int, rank: int, world: int) -> range:
        # as the codec task: key k is the k-th micro-batch of all ranks; one step more than the limit,
        # so that a run given more steps carries on (a time budget alone ends the run itself)
        steps = self.exp.train_conf.max_steps or 10**9
        return range(rank, (steps + 1) * self.micro_per_step, world)

    def batch(self, key: int) -> dict[str, torch.Tensor]:
        """Micro-batch ``key`` on the host: codes [B, K, T] int64 (0 past each length), text [B, L]
        int64 (PAD-padded), lengths [B] int64."""
        tc, k = self.exp.train_conf, self.exp.model_conf.codebooks
        rng = np.random.default_rng([tc.seed, key])
        rows = rng.choice(self.keep, size=tc.batch_size)
        t = tc.segment_frames
        codes = np.zeros((len(rows), k, t), np.int64)
        lengths = np.zeros(len(rows), np.int64)
        texts = [self.text[int(i)] for i in rows]
        text = np.full((len(rows), max(1, *map(len, texts))), PAD, np.int64)
        for b, i in enumerate(rows):
            clip = self.dump.clip(int(i))
            at = int(rng.integers(0, max(1, clip.shape[1] - t + 1)))
            crop = clip[:k, at : at + t]
            codes[b, :, : crop.shape[1]], lengths[b] = crop, crop.shape[1]
            text[b, : len(texts[b])] = texts[b]
        return {"codes": torch.from_numpy(codes), "text": torch.from_numpy(text), "lengths": torch.from_numpy(lengths)}

    def load(self, key: int, device: torch.device) -> dict:
        b = self.batch(key)
        return {**to_device(b, device), "seconds": float(b["lengths"].sum()) / float(self.dump.stats["frame_rate"])}

    def step(self, modules, b: dict, update) -> dict[str, torch.Tensor]:
        loss, metrics = modules["model"](b["codes"], b["text"], b["lengths"])
        update("model", loss)
        return {"loss": loss.detach(), **metrics}


def _check_resume(exp_dir: Path, tokenizer: CaptionTokenizer, kind: str) -> None:
    path = exp_dir / "checkpoint.pt"
    if path.is_file():
        saved = load_checkpoint(path).get("config", {})
        if saved.get("kind", kind) != kind:
            raise SpeechkitError(f"{path}: a '{saved.get('kind')}' run, this config trains '{kind}'; move it away to start afresh")
        if saved.get("words") is not None and saved["words"] != list(tokenizer.words):
            raise SpeechkitError(f"{path}: trained with another caption vocabulary (another dump?); move it away to start afresh")


def bare_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The objective's state dict → the model's (``net.`` dropped)."""
    return {k.removeprefix(PREFIX): v for k, v in state.items()}


def train_audiogen(exp: AudiogenExperiment, dump_dir: str | Path, exp_dir: str | Path, device: str | None = None,
                   progress: bool = True) -> dict:
    """Train (or resume) in ``exp_dir`` on the dump in ``dump_dir``; writes config.yaml,
    checkpoint.pt, metrics.jsonl and model.pt (``save_audiogen``: the EMA weights when
    ``train_conf.ema_decay`` keeps them) and returns {steps, minutes, params_m}."""
    exp_dir = Path(exp_dir)
    tc = exp.train_conf
    rank, world, dev = setup_distributed()
    device = torch.device(device) if device else dev
    dump = AudiogenDump.open(dump_dir)
    tokenizer = CaptionTokenizer.build(dump.captions, tc.min_count)
    cfg = exp.model_conf
    exp = replace(exp, model_conf=replace(cfg, text=dataclasses.replace(cfg.text, vocab_size=len(tokenizer))))
    if rank == 0:
        exp_dir.mkdir(parents=True, exist_ok=True)
        _check_resume(exp_dir, tokenizer, exp.kind)
        (exp_dir / "config.yaml").write_text(yaml.safe_dump(exp.to_yaml_dict(), sort_keys=False))
    torch.manual_seed(tc.seed)  # the initial weights
    task = AudiogenTask(exp, dump, tokenizer, world)
    params_m = round(sum(p.numel() for p in task.model.parameters()) / 1e6, 2)
    m = exp.model_conf
    if rank == 0:
        print(f"audiogen {exp.kind}: {params_m:.2f} M parameters, {m.codebooks} codebooks of {m.card}, caption vocabulary "
              f"{len(tokenizer)}; {task.hours:.2f} h in {len(task.keep)} clips, {tc.segment_frames}-frame crops x {tc.batch_size}",
              flush=True)
    info, state = {"steps": 0, "minutes": 0.0, "params_m": params_m}, task.model.state_dict()
    if tc.max_steps > 0 or tc.max_minutes > 0:
        engine = Engine(task, tc, exp.optim_conf, exp_dir, device, progress=progress)
        info, state = engine.fit(), bare_state(engine.model_state())
    if rank == 0:
        tokens = {k: dump.stats.get(k) for k in ("codec", "codec_sha256", "codebooks_sha256", "card", "frame_rate", "sample_rate", "hop")}
        save_audiogen(state, exp.kind, exp.model_conf, tokenizer, {**tokens, "codebooks": m.codebooks}, exp_dir / "model.pt")
    return info
