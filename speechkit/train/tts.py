"""The CLEAR TTS task for the training engine: the transformer, the flow head and the stop head
trained in one stage on prepared data (:mod:`speechkit.models.tts.data`). Step-based: one long
epoch of ``max_steps`` batches, each a pure function of (seed, step, rank), so a killed run
resumes exactly. The flow head trains as a rectified flow or as a mean flow
(``model.flow.objective``); the mean-flow loss (``nn/meanflow.py``, its JVP target included) runs
inside the model's forward, so the task's step is the same for both.

An experiment dir ends with ``model.pt`` (weights, config, phoneme vocabulary, latent statistics
and the codec it was trained on), ``phones.txt``, ``config.yaml``, ``checkpoint.pt`` and
``metrics.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from speechkit.config import from_dict, load_yaml, to_dict
from speechkit.errors import ConfigError, SpeechkitError
from speechkit.models.tts.clear import ClearConfig, ClearTTS
from speechkit.models.tts.data import TtsBank, Utt, load_prepared
from speechkit.data.batches import to_device
from speechkit.models.tts.io import FAMILY, save_tts
from speechkit.text.phonemes import PhonemeVocab
from speechkit.train.engine import CHECKPOINT_VERSION, Engine, LoopConfig, OptimConfig, decay_groups, legacy_rng

NO_DECAY = ("phone.", "kind.")  # the embeddings: no weight decay (nor on biases and norms)


@dataclass(frozen=True)
class TtsOptimConfig(OptimConfig):
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 500
    final_lr_ratio: float = 0.05


@dataclass(frozen=True)
class TtsTrainConfig(LoopConfig):
    """The engine's loop (max_minutes, seed, amp ... as there) with CLEAR's defaults and its data fields."""

    max_steps: int = 20000  # the schedule's length, and the length of the one epoch
    grad_clip: float = 1.0
    log_interval: int = 100
    save_interval_steps: int = 1000
    max_tokens: int = 12000  # padded sequence positions per batch
    prompt_seconds: tuple[float, float] = (1.5, 3.0)  # prompt crop length range at training time


@dataclass(frozen=True)
class TtsExperiment:
    model: ClearConfig = field(default_factory=ClearConfig)
    optim_conf: TtsOptimConfig = field(default_factory=TtsOptimConfig)
    train_conf: TtsTrainConfig = field(default_factory=TtsTrainConfig)


def load_tts_experiment(path: str | Path) -> TtsExperiment:
    """YAML with ``model:`` (ClearConfig, ``flow:`` inside), ``optim_conf:``, ``train_conf:``."""
    data, lines = load_yaml(path)
    try:
        return from_dict(TtsExperiment, data, source=str(path), lines=lines)
    except ConfigError as e:  # a value the config's own check refused (e.g. model.flow.objective) names no file yet
        if str(e).startswith(str(path)):
            raise
        line = lines.get("model.flow")
        raise ConfigError(f"{path}{f':{line}' if line else ''}: {e}") from None


def load_corpus(prep_dirs: list[str | Path]) -> tuple[list[Utt], dict]:
    """Every utterance of the prepared dirs and the first one's ``prepare.json``; one codec for all."""
    utts, info = [], None
    for d in prep_dirs:
        u, i = load_prepared(d)
        if info and (i["latent_dim"], i["frame_rate"]) != (info["latent_dim"], info["frame_rate"]):
            raise SpeechkitError(f"{d}: prepared with another codec than {prep_dirs[0]}")
        utts, info = utts + u, info or i
    return utts, info


class TtsTask:
    """CLEAR on a :class:`TtsBank`: batches by a token budget, the model's own losses."""

    family = FAMILY

    def __init__(self, exp: TtsExperiment, prep_dirs: list[str | Path], exp_dir: str | Path):
        """``exp`` as read from YAML: the vocabulary size and the latents' size and rate come from the data."""
        utts, self.info = load_corpus(prep_dirs)
        if exp.train_conf.max_steps <= 0:
            raise SpeechkitError("train_conf.max_steps must be > 0: it is the length of CLEAR's one epoch")
        path = Path(exp_dir) / "phones.txt"
        # a resumed run keeps its vocabulary; a new one is built sorted, so every rank builds the same
        self.vocab = PhonemeVocab.load(path) if path.is_file() else PhonemeVocab.build([u.phones for u in utts])
        cfg = replace(exp.model, vocab_size=len(self.vocab), latent_dim=self.info["latent_dim"], frame_rate=self.info["frame_rate"])
        self.exp = replace(exp, model=cfg)
        self.config = to_dict(self.exp)
        prompt = tuple(max(1, int(round(s * cfg.frame_rate))) for s in exp.train_conf.prompt_seconds)
        self.bank = TtsBank(utts, self.vocab, prompt)
        self.mean, self.std = self.bank.stats()
        torch.manual_seed(exp.train_conf.seed)  # the model's initial weights
        self.model = ClearTTS(cfg)
        self.model.latent_mean.copy_(torch.from_numpy(self.mean))
        self.model.latent_std.copy_(torch.from_numpy(self.std))

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def param_groups(self, name: str, module: torch.nn.Module) -> list[dict]:
        return decay_groups(module, self.exp.optim_conf.weight_decay, NO_DECAY)

    def plan(self, epoch: int, rank: int, world: int) -> range:
        """Micro-batch i of this rank is batch ``i * world + rank`` of the seed's endless stream."""
        tc = self.exp.train_conf
        return range(rank, tc.max_steps * tc.accum_grad * world, world)

    def load(self, key: int, device: torch.device) -> dict:
        tc = self.exp.train_conf
        batch = self.bank.batch(tc.max_tokens, tc.seed, key, self.mean, self.std)
        batch["seconds"] = int(batch["flow_mask"].sum()) / self.exp.model.frame_rate  # on the host: no sync
        return to_device(batch, device)

    def step(self, modules, batch: dict, update) -> dict[str, torch.Tensor]:
        loss, parts = modules["model"](batch)
        update("model", loss)
        return parts

    def convert_legacy(self, ck: dict) -> dict:
        """A checkpoint.pt of the pre-engine CLEAR trainer: one optimizer (``opt``), one batch per
        step, the torch RNG states only (Python's and NumPy's, which CLEAR does not draw, start afresh)."""
        if "opt" not in ck:
            raise SpeechkitError("checkpoint.pt: neither an engine nor an older CLEAR trainer checkpoint")
        rng = legacy_rng(ck["rng"], ck.get("cuda_rng"))
        step = int(ck["step"])
        return {"version": CHECKPOINT_VERSION, "family": FAMILY, "config": self.config, "model": ck["model"], "modules": {},
                "optimizers": {"model": ck["opt"]}, "epoch": 0, "batch": step * self.exp.train_conf.accum_grad,
                "step": step, "total": None, "rng": [rng]}


def train_tts(exp: TtsExperiment, prep_dirs: list[str | Path], exp_dir: str | Path, device: str | None = None) -> dict:
    """Train (or resume) in ``exp_dir`` on prepared dirs; writes checkpoint.pt, model.pt,
    phones.txt, metrics.jsonl and config.yaml. Returns {steps, minutes, params_m}."""
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    task = TtsTask(exp, prep_dirs, exp_dir)
    exp, model, info = task.exp, task.model, task.info
    engine = Engine(task, exp.train_conf, exp.optim_conf, exp_dir, device)
    if engine.rank == 0:
        task.vocab.save(exp_dir / "phones.txt")
        (exp_dir / "config.yaml").write_text(yaml.safe_dump(task.config, sort_keys=False))
        cfg, params = exp.model, sum(p.numel() for p in model.parameters())
        print(f"CLEAR: {params / 1e6:.2f} M parameters ({sum(p.numel() for p in model.head.parameters()) / 1e6:.2f} M "
              f"{cfg.flow.objective} flow head), "
              f"{len(task.vocab)} phoneme symbols, {len(task.bank.examples)} examples of {len(task.bank.utts)} utterances "
              f"({info['hours']:.2f} h, {cfg.frame_rate:g} latents/s x {cfg.latent_dim}), {exp.train_conf.max_tokens} positions per batch",
              flush=True)
    summary = engine.fit()
    if engine.rank == 0:
        if engine.ema is not None:
            model.load_state_dict(engine.ema_state())
        save_tts(model, task.vocab.symbols, info["codec"], exp_dir / "model.pt")
    return summary
