"""The trainer: plain PyTorch, one process per device under ``torchrun`` (DDP; gloo on CPU,
NCCL on GPU), bf16 autocast on GPU, gradient clipping, warm-up + cosine decay.

Resume is exact: ``checkpoint.pt`` (written every ``save_interval_steps`` and at each epoch end)
holds the model, the optimizer, the position in the epoch's batch list and every RNG state, and
the batch list itself is a pure function of (seed, epoch).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from speechkit.data.dataset import AsrDataset, collate
from speechkit.data.features import FeatureDump, cmvn_from_stats
from speechkit.data.sampler import DurationBatchSampler
from speechkit.errors import SpeechkitError
from speechkit.models.asr.ctc_model import AsrEncoderModel
from speechkit.models.asr.heads import build_asr_model
from speechkit.text.tokenizer import load_tokenizer, train_tokenizer
from speechkit.train.checkpoint import load_checkpoint, save_atomic
from speechkit.train.config import ExperimentConfig, save_experiment_config


def lr_at(step: int, peak: float, warmup: int, total: int, final_ratio: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``peak * final_ratio`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def prepare_tokenizer(cfg: ExperimentConfig, exp_dir: Path, texts: list[str]):
    """Train the tokenizer once per experiment (rank 0), reuse it afterwards; a fine-tuning run
    copies the tokenizer of the experiment its ``init_checkpoint`` comes from."""
    try:
        return load_tokenizer(exp_dir)
    except SpeechkitError:
        pass
    init = cfg.train_conf.init_checkpoint
    if init:
        src = Path(init).parent
        load_tokenizer(src)  # one line if it has none
        for name in ("tokens.txt", "bpe.model"):
            if (src / name).is_file():
                shutil.copy(src / name, exp_dir / name)
        return load_tokenizer(exp_dir)
    return train_tokenizer(cfg.tokenizer_conf.type, texts, exp_dir, cfg.tokenizer_conf.vocab_size)


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


def build_model(cfg: ExperimentConfig, vocab_size: int, tokenizer=None) -> AsrEncoderModel:
    return build_asr_model(cfg.model, vocab_size, tokenizer)


@torch.no_grad()
def evaluate_loss(model: AsrEncoderModel, dataset: AsrDataset, max_frames: int, device: torch.device, amp) -> float:
    """Mean training loss per utterance over a whole dump (no augmentation, no dropout)."""
    model.eval()
    sampler = DurationBatchSampler(dataset.dump.lengths, max_frames, shuffle=False)
    total, count = 0.0, 0
    for idx in sampler.batches(0):
        b = collate([dataset[i] for i in idx])
        with amp():
            loss, _ = model(b["feats"].to(device), b["feat_lens"].to(device), b["tokens"].to(device), b["token_lens"].to(device))
        total += loss.item() * len(idx)
        count += len(idx)
    model.train()
    return total / max(count, 1)


def train(cfg: ExperimentConfig, exp_dir: str | Path, train_dump: str | Path, dev_dump: str | Path) -> Path:
    """Train until ``max_epochs``; returns the experiment dir. Safe to re-run: it resumes."""
    exp_dir = Path(exp_dir)
    rank, world, device = _setup_distributed()
    tc, oc = cfg.train_conf, cfg.optim_conf
    if rank == 0:
        exp_dir.mkdir(parents=True, exist_ok=True)
        save_experiment_config(cfg, exp_dir / "config.yaml")
    train_set_dump = FeatureDump.open(train_dump, cfg.model.frontend_conf.num_mel_bins)
    if rank == 0:
        prepare_tokenizer(cfg, exp_dir, train_set_dump.texts)
    if world > 1:
        dist.barrier()
    tokenizer = load_tokenizer(exp_dir)
    train_set = AsrDataset(train_set_dump, tokenizer)
    dev_set = AsrDataset(FeatureDump.open(dev_dump, cfg.model.frontend_conf.num_mel_bins), tokenizer)

    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    model = build_model(cfg, tokenizer.vocab_size, tokenizer)
    model.cmvn.set_stats(*cmvn_from_stats(Path(train_dump) / "stats.json"))
    if tc.init_checkpoint:
        load_init(model, tc.init_checkpoint, tc.init_modules)
    model.to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)

    fps = cfg.model.frontend_conf.frames_per_second
    keep = np.flatnonzero((train_set_dump.lengths > 0) & (train_set_dump.lengths <= tc.max_utt_seconds * fps))
    sampler = DurationBatchSampler(train_set_dump.lengths[keep], int(tc.batch_seconds * fps), seed=tc.seed, rank=rank, world_size=world)
    steps_per_epoch = len(sampler.batches(0))
    total_steps = steps_per_epoch * tc.max_epochs

    pos = {"epoch": 0, "batch": 0, "step": 0}
    ckpt_path = exp_dir / "checkpoint.pt"
    if ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        optim.load_state_dict(ckpt["optimizer"])
        pos = {k: int(ckpt[k]) for k in pos}
        _set_rng_state(ckpt["rng"])
        if rank == 0:
            print(f"resuming from {ckpt_path}: epoch {pos['epoch'] + 1}, batch {pos['batch']}, step {pos['step']}", file=sys.stderr)

    ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    use_bf16 = tc.amp == "bf16" or (tc.amp == "auto" and device.type == "cuda")
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    def save_resume_point(epoch: int, batch: int, step: int) -> None:
        if rank == 0:
            save_atomic({"model": model.state_dict(), "optimizer": optim.state_dict(), "epoch": epoch, "batch": batch,
                         "step": step, "rng": _rng_state(), "config": cfg.to_yaml_dict()}, ckpt_path)

    metrics = open(exp_dir / "metrics.jsonl", "a") if rank == 0 else None
    step = pos["step"]
    t0 = time.time()
    for epoch in range(pos["epoch"], tc.max_epochs):
        batches = sampler.batches(epoch)
        start = pos["batch"] if epoch == pos["epoch"] else 0
        subset = torch.utils.data.Subset(train_set, keep.tolist())
        loader = torch.utils.data.DataLoader(
            subset, batch_sampler=batches[start:], collate_fn=collate, num_workers=tc.num_workers,
            pin_memory=device.type == "cuda", generator=torch.Generator(),  # never draw from the global RNG
        )
        model.train()
        bar = tqdm(loader, total=len(batches) - start, desc=f"epoch {epoch + 1}/{tc.max_epochs}", disable=rank != 0, file=sys.stderr, dynamic_ncols=True)
        run_loss, run_n = 0.0, 0
        for bi, b in enumerate(bar, start):
            lr = lr_at(step, oc.lr, oc.warmup_steps, total_steps, oc.final_lr_ratio)
            for g in optim.param_groups:
                g["lr"] = lr
            with amp():
                loss, _ = ddp_model(b["feats"].to(device, non_blocking=True), b["feat_lens"].to(device),
                                    b["tokens"].to(device), b["token_lens"].to(device))
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if torch.isfinite(grad_norm):
                optim.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            run_loss += loss.detach()  # read at log time only: a per-step .item() stalls the GPU queue
            run_n += 1
            if step % tc.log_interval == 0 and rank == 0:
                mean_loss = float(run_loss) / run_n
                bar.set_postfix(loss=f"{mean_loss:.2f}", lr=f"{lr:.2e}")
                metrics.write(json.dumps({"epoch": epoch + 1, "step": step, "loss": mean_loss, "lr": lr,
                                          "grad_norm": float(grad_norm), "elapsed_s": round(time.time() - t0, 1)}) + "\n")
                metrics.flush()
                run_loss, run_n = 0.0, 0
            if step % tc.save_interval_steps == 0 and bi + 1 < len(batches):
                save_resume_point(epoch, bi + 1, step)
        bar.close()
        if rank == 0:
            dev_loss = evaluate_loss(model, dev_set, int(tc.batch_seconds * fps), device, amp)
            save_atomic({"model": model.state_dict(), "config": cfg.to_yaml_dict(), "epoch": epoch + 1}, exp_dir / f"epoch_{epoch + 1}.pt")
            metrics.write(json.dumps({"epoch": epoch + 1, "step": step, "dev_loss": dev_loss, "elapsed_s": round(time.time() - t0, 1)}) + "\n")
            metrics.flush()
            print(f"epoch {epoch + 1}: dev loss {dev_loss:.3f} ({time.time() - t0:.0f} s)", file=sys.stderr)
        save_resume_point(epoch + 1, 0, step)
        if world > 1:
            dist.barrier()
    if metrics:
        metrics.close()
    return exp_dir
