"""The ASR task for the training engine (every head: CTC, Paraformer, attention): duration-bucketed
batches from a feature dump (resident in GPU memory when it fits), the head's own loss, the dev
loss and an ``epoch_N.pt`` for averaging after each epoch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from speechkit.checkpoint import load_checkpoint, save_atomic
from speechkit.data.batches import DumpBatcher
from speechkit.data.features import FeatureDump, cmvn_from_stats
from speechkit.data.sampler import DurationBatchSampler
from speechkit.errors import SpeechkitError
from speechkit.models.asr.ctc_model import AsrEncoderModel
from speechkit.models.asr.heads import build_asr_model
from speechkit.text.tokenizer import load_tokenizer, train_tokenizer
from speechkit.train.config import ExperimentConfig, save_experiment_config
from speechkit.train.engine import Engine, setup_distributed

FAMILY = "asr"


def prepare_tokenizer(cfg: ExperimentConfig, exp_dir: Path, texts: list[str]):
    """Train the tokenizer once per experiment (rank 0), reuse it afterwards; a fine-tuning run
    copies the tokenizer of the experiment its ``init_checkpoint`` comes from, unless the config
    asks for another kind (or BPE size): a new head on a trained encoder (``init_modules``)."""
    try:
        return load_tokenizer(exp_dir)
    except SpeechkitError:
        pass
    init, want = cfg.train_conf.init_checkpoint, cfg.tokenizer_conf
    if init:
        src = Path(init).parent
        tok = load_tokenizer(src)  # one line if it has none
        if tok.kind == want.type and (tok.kind != "bpe" or tok.vocab_size == want.vocab_size):
            exp_dir.mkdir(parents=True, exist_ok=True)  # the recipe's tokenizer stage runs before training makes it
            for name in ("tokens.txt", "bpe.model"):
                if (src / name).is_file():
                    shutil.copy(src / name, exp_dir / name)
            return load_tokenizer(exp_dir)
    return train_tokenizer(want.type, texts, exp_dir, want.vocab_size)


def load_init(model: torch.nn.Module, path: str | Path, modules: tuple[str, ...] = ()) -> None:
    """Start from another run's weights: all of them, or only the named top-level modules (e.g.
    cmvn, encoder, ctc — a new head on a trained encoder). Shapes must match."""
    state, own = load_checkpoint(path)["model"], model.state_dict()
    if modules:
        state = {k: v for k, v in state.items() if k.split(".")[0] in modules}
        missing = sorted(k for k in own if k.split(".")[0] in modules and k not in state)
        if missing or not state:
            raise SpeechkitError(f"{path}: no weights for {', '.join(missing[:3]) or ', '.join(modules)} (init_modules {list(modules)})")
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise SpeechkitError(f"{path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, this model's is "
                             f"{tuple(own[wrong[0]].shape)} (another encoder size, vocabulary or head?)")
    try:
        model.load_state_dict(state, strict=not modules)
    except RuntimeError as e:  # missing or unexpected keys: another head or encoder
        raise SpeechkitError(f"{path}: does not fit this model ({str(e).splitlines()[0]})") from None


def freeze(model: torch.nn.Module, names: tuple[str, ...]) -> list[torch.nn.Module]:
    """The named top-level modules take no gradient; returns them, for ``hold_frozen``."""
    modules = [getattr(model, n, None) for n in names]
    unknown = [n for n, m in zip(names, modules) if not isinstance(m, torch.nn.Module)]
    if unknown:
        have = ", ".join(n for n, _ in model.named_children())
        raise SpeechkitError(f"train_conf.freeze_modules: this model has no module {unknown[0]} (it has {have})")
    for m in modules:
        m.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise SpeechkitError(f"train_conf.freeze_modules {list(names)}: nothing of the model is left to train")
    return modules


def hold_frozen(frozen: list[torch.nn.Module]) -> None:
    """The layers of frozen modules compute as at inference, no dropout (the engine and the dev
    loss switch the whole model to train mode; this switches them back before a step). The frozen
    module itself stays in train mode: a streaming encoder still draws its look-ahead per batch,
    so a new head learns every context the encoder serves."""
    for m in frozen:
        for child in m.children():
            child.eval()


def build_model(cfg: ExperimentConfig, vocab_size: int, tokenizer=None) -> AsrEncoderModel:
    return build_asr_model(cfg.model, vocab_size, tokenizer)


def tokenize(dump: FeatureDump, tokenizer) -> list[np.ndarray]:
    return [np.asarray(tokenizer.encode(t), dtype=np.int64) for t in dump.texts]


@torch.no_grad()
def evaluate_loss(model: AsrEncoderModel, batcher: DumpBatcher, max_frames: int, amp) -> float:
    """Mean training loss per utterance over a whole dump (no augmentation, no dropout)."""
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), device=batcher.device), 0
    for idx in DurationBatchSampler(batcher.dump.lengths, max_frames, shuffle=False).batches(0):
        b = batcher.batch(idx)
        with amp():
            loss, _ = model(b["feats"], b["feat_lens"], b["tokens"], b["token_lens"])
        total += loss.detach().float() * len(idx)
        count += len(idx)
    model.train(was_training)
    return float(total) / max(count, 1)


class AsrTask:
    """A head on the shared encoder, trained on a feature dump; dev loss and ``epoch_N.pt`` each epoch."""

    family = FAMILY

    def __init__(self, cfg: ExperimentConfig, exp_dir: Path, train_dump: str | Path, dev_dump: str | Path | None,
                 device: torch.device, rank: int = 0, world: int = 1):
        self.cfg, self.exp_dir = cfg, exp_dir
        self.config = cfg.to_yaml_dict()
        tc = cfg.train_conf
        fps = cfg.model.frontend_conf.frames_per_second
        dim = cfg.model.frontend_conf.num_mel_bins
        train = FeatureDump.open(train_dump, dim)
        self.tokenizer = load_tokenizer(exp_dir)
        self.train = DumpBatcher(train, tokenize(train, self.tokenizer), device, tc.resident, fps)
        self.dev = None
        if dev_dump is not None:
            dev = FeatureDump.open(dev_dump, dim)
            self.dev = DumpBatcher(dev, tokenize(dev, self.tokenizer), device, tc.resident, fps)
        self.keep = np.flatnonzero((train.lengths > 0) & (train.lengths <= tc.max_utt_seconds * fps))
        self.max_frames = int(tc.batch_seconds * fps)
        self.sampler = DurationBatchSampler(train.lengths[self.keep], self.max_frames, seed=tc.seed, rank=rank, world_size=world)
        self.model = build_model(cfg, self.tokenizer.vocab_size, self.tokenizer)
        self.model.cmvn.set_stats(*cmvn_from_stats(Path(train_dump) / "stats.json"))
        if tc.init_checkpoint:
            load_init(self.model, tc.init_checkpoint, tc.init_modules)
        self.frozen = freeze(self.model, tc.freeze_modules)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def plan(self, epoch: int, rank: int, world: int) -> list[list[int]]:
        return [self.keep[b].tolist() for b in self.sampler.batches(epoch)]

    def load(self, idx: list[int], device: torch.device) -> dict:
        return self.train.batch(idx)

    def step(self, modules, b: dict, update) -> dict[str, torch.Tensor]:
        hold_frozen(self.frozen)
        loss, stats = modules["model"](b["feats"], b["feat_lens"], b["tokens"], b["token_lens"])
        update("model", loss)
        return {"loss": loss.detach(), **stats}

    def end_epoch(self, engine: Engine, epoch: int) -> dict:
        row = {}
        if self.dev is not None:
            row["dev_loss"] = evaluate_loss(self.model, self.dev, self.max_frames, engine.amp)
        save_atomic({"model": engine.model_state(), "config": self.config, "epoch": epoch}, self.exp_dir / f"epoch_{epoch}.pt")
        return row

    def convert_legacy(self, ck: dict) -> dict:
        """A checkpoint.pt of the pre-engine ASR trainer (one optimizer, rank 0's RNG only)."""
        if "optimizer" not in ck:
            raise SpeechkitError("checkpoint.pt: neither an engine nor an older ASR trainer checkpoint")
        return {**ck, "optimizers": {"model": ck["optimizer"]}, "rng": [ck["rng"]], "modules": {}}


def train(cfg: ExperimentConfig, exp_dir: str | Path, train_dump: str | Path, dev_dump: str | Path | None) -> Path:
    """Train until ``max_epochs`` (or the time budget); returns the experiment dir. Safe to re-run: it resumes."""
    exp_dir = Path(exp_dir)
    rank, world, device = setup_distributed()
    if rank == 0:
        exp_dir.mkdir(parents=True, exist_ok=True)
        save_experiment_config(cfg, exp_dir / "config.yaml")
        dump = FeatureDump.open(train_dump, cfg.model.frontend_conf.num_mel_bins)
        prepare_tokenizer(cfg, exp_dir, dump.texts)
    if world > 1:
        torch.distributed.barrier()
    torch.manual_seed(cfg.train_conf.seed)  # the model's initial weights
    task = AsrTask(cfg, exp_dir, train_dump, dev_dump, device, rank, world)
    Engine(task, cfg.train_conf, cfg.optim_conf, exp_dir, device).fit()
    return exp_dir
