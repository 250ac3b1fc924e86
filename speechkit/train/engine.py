"""The one training engine. A family supplies a :class:`Task` (its modules, its batches as a pure
function of a key, one step's losses); the engine owns everything else, once: the step loop,
torchrun/DDP, bf16 autocast, gradient accumulation and clipping, the warm-up + cosine schedule
(refitted to a wall-time budget), fused AdamW that skips a non-finite step without a host sync,
EMA, metrics JSONL, progress bars, atomic checkpoints and exact resume.

Exact resume: ``checkpoint.pt`` holds every module and optimizer, the data position (epoch,
micro-batch), the step, the schedule length and **each rank's** RNG states; a batch is a pure
function of its key and the key list of an epoch a pure function of (seed, epoch, rank), so a
killed run continues as if it had never stopped.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from speechkit.checkpoint import load_checkpoint, save_atomic
from speechkit.errors import SpeechkitError

CHECKPOINT_VERSION = 2


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3  # peak, reached at the end of warm-up
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 1000
    final_lr_ratio: float = 0.02  # cosine decay to this fraction of lr at the last step


@dataclass(frozen=True)
class LoopConfig:
    """The engine's fields; each family's ``train_conf`` extends this with its data fields."""

    max_epochs: int = 1  # passes over the task's plan (step-based families have one long epoch)
    max_steps: int = 0  # optimizer steps (0: no limit beyond the epochs); the schedule's length
    max_minutes: float = 0.0  # wall-time budget (0: none); the schedule is refitted to the measured speed
    accum_grad: int = 1  # micro-batches per optimizer step
    grad_clip: float = 5.0
    seed: int = 0
    log_interval: int = 50
    save_interval_steps: int = 500  # mid-epoch checkpoint for resume
    amp: str = "auto"  # auto (bf16 on GPU) | bf16 | off
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the model's weights and save it
    compile: bool = False  # torch.compile the trained modules (and the task's losses, where it offers them)


def lr_at(step: int, peak: float, warmup: int, total: int, final_ratio: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``peak * final_ratio`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Task(Protocol):
    """What a family tells the engine. ``modules()`` names its trainable modules (the first is
    the model that is saved, averaged and EMA'd); ``plan`` lists this rank's batch keys for an
    epoch; ``load`` turns a key into a batch on the device (it may run on a worker thread and
    must draw no global randomness); ``step`` runs the forward passes under autocast and hands
    each loss to ``update(module_name, loss)``; it returns the numbers to log (tensors)."""

    family: str
    config: dict  # saved into every checkpoint

    def modules(self) -> dict[str, nn.Module]: ...

    def plan(self, epoch: int, rank: int, world: int) -> Sequence[Any]: ...

    def load(self, key: Any, device: torch.device) -> Any: ...

    def step(self, modules: dict[str, nn.Module], batch: Any, update: Callable[[str, torch.Tensor], None]) -> dict[str, torch.Tensor]: ...


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; one process per GPU."""
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
        # left to the interpreter's teardown, gloo's worker threads can abort the process (SIGABRT,
        # "terminate called without an active exception") after training has finished
        atexit.register(_close_process_group)
    return rank, world, device


def _close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def legacy_rng(torch_state: torch.Tensor, cuda_state: torch.Tensor | None = None) -> dict:
    """An RNG entry for an older trainer's checkpoint that kept torch's (and CUDA's) states only;
    Python's and NumPy's are this process's as they stand."""
    state = {k: v for k, v in rng_state().items() if k != "cuda"}
    state["torch"] = torch_state
    if cuda_state is not None:
        state["cuda"] = cuda_state
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def autocast_for(amp: str, device: torch.device):
    """A factory of autocast contexts: bf16 on GPU by default, or as asked; nothing otherwise."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if amp not in ("auto", "off"):
        raise SpeechkitError(f"train_conf.amp: '{amp}' is not one of auto, bf16, off")
    return nullcontext


def decay_groups(module: nn.Module, weight_decay: float, no_decay_prefixes: tuple[str, ...] = ()) -> list[dict]:
    """Weight decay on matrices, none on vectors (biases, norms) or on the named embeddings."""
    groups: dict[bool, list] = {True: [], False: []}
    for n, p in module.named_parameters():
        if p.requires_grad:
            groups[p.dim() >= 2 and not n.startswith(no_decay_prefixes)].append(p)
    return [g for g in ({"params": groups[True], "weight_decay": weight_decay}, {"params": groups[False], "weight_decay": 0.0}) if g["params"]]


def make_optimizer(params, oc: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; on CUDA the fused kernel, which also skips a non-finite step on the device."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=oc.lr, betas=tuple(oc.betas), weight_decay=oc.weight_decay, fused=fused or None,
                             foreach=None if fused else True)


class _Prefetcher:
    """Loads micro-batch i+1 on a worker thread while step i runs."""

    def __init__(self, task: Task, keys: Sequence[Any], device: torch.device):
        self.task, self.keys, self.device = task, keys, device
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="speechkit-load")
        self.next = self.pool.submit(task.load, keys[0], device) if len(keys) else None
        self.i = 0
        self.wait_s = self.total_wait_s = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        if self.next is None:
            self.pool.shutdown()
            raise StopIteration
        t = time.perf_counter()
        batch = self.next.result()
        self.wait_s += time.perf_counter() - t
        self.total_wait_s += time.perf_counter() - t
        self.i += 1
        self.next = self.pool.submit(self.task.load, self.keys[self.i], self.device) if self.i < len(self.keys) else None
        return batch

    def close(self):
        if self.next is not None:
            self.next.cancel()
        self.pool.shutdown(wait=True)


class Engine:
    """One run of a task in an experiment dir; ``fit()`` trains (or resumes) and returns a summary."""

    def __init__(self, task: Task, conf: LoopConfig, optim: OptimConfig, exp_dir: str | Path,
                 device: torch.device | str | None = None, progress: bool = True, log_name: str = "metrics.jsonl"):
        self.task, self.conf, self.optim_conf = task, conf, optim
        self.exp_dir = Path(exp_dir)
        self.rank, self.world, dev = setup_distributed()
        self.device = torch.device(device) if device is not None else dev
        self.progress = progress and self.rank == 0
        self.log_name = log_name
        self.amp = autocast_for(conf.amp, self.device)
        self.on_step: Callable[["Engine"], None] | None = None  # called after every optimizer step (benchmarks)
        self.audio_seconds = 0.0  # trained so far in this process
        self.data_wait_s = 0.0  # waited for batches so far in this process
        if conf.accum_grad < 1:
            raise SpeechkitError(f"train_conf.accum_grad must be >= 1, not {conf.accum_grad}")

    # -- building ---------------------------------------------------------------------------
    def _build(self) -> None:
        self.modules = {k: m.to(self.device).train() for k, m in self.task.modules().items()}
        self.main = next(iter(self.modules))
        self.optimizers = {}
        for name, m in self.modules.items():
            groups = self.task.param_groups(name, m) if hasattr(self.task, "param_groups") else None
            params = groups if groups is not None else decay_groups(m, self.optim_conf.weight_decay)
            if params:
                self.optimizers[name] = make_optimizer(params, self.optim_conf, self.device)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = {k: nn.parallel.DistributedDataParallel(m, device_ids=ids) if k in self.optimizers else m
                            for k, m in self.modules.items()}
        else:
            self.wrapped = dict(self.modules)
        if self.conf.compile:
            # fewer kernel launches per step where the step is host-bound; the parameters stay
            # the modules' own, so checkpoints and EMA see the same tensors
            self.wrapped = {k: torch.compile(m) for k, m in self.wrapped.items()}
            if hasattr(self.task, "compile"):
                self.task.compile()
        self.ema = None
        if self.conf.ema_decay > 0:
            self.ema = [p.detach().clone().float() for p in self.modules[self.main].parameters()]

    def _agree_on_budget(self, over_time: bool) -> bool:
        """Rank 0's refitted schedule length and its verdict on the time budget, for every rank
        (each rank's own clock and step speed differ a little)."""
        t = torch.tensor([self.total, int(over_time)], dtype=torch.int64, device=self.device)
        dist.broadcast(t, 0)
        self.total = int(t[0])
        return bool(t[1])

    # -- checkpoints ------------------------------------------------------------------------
    def _gather_rng(self) -> list[dict]:
        state = rng_state()
        if self.world == 1:
            return [state]
        out: list = [None] * self.world
        dist.all_gather_object(out, state)
        return out

    def _save(self, epoch: int, batch: int) -> None:
        rngs = self._gather_rng()  # every rank takes part
        if self.rank != 0:
            return
        state = {"version": CHECKPOINT_VERSION, "family": self.task.family, "config": self.task.config,
                 "model": self.modules[self.main].state_dict(),
                 "modules": {k: m.state_dict() for k, m in self.modules.items() if k != self.main},
                 "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                 "epoch": epoch, "batch": batch, "step": self.step, "total": self.total, "rng": rngs}
        if self.ema is not None:
            state["ema"] = [t.cpu() for t in self.ema]
        save_atomic(state, self.exp_dir / "checkpoint.pt")

    def _resume(self) -> tuple[int, int]:
        path = self.exp_dir / "checkpoint.pt"
        if not path.is_file():
            return 0, 0
        ck = load_checkpoint(path)
        if ck.get("version") != CHECKPOINT_VERSION:
            if not hasattr(self.task, "convert_legacy"):
                raise SpeechkitError(f"{path}: a checkpoint of an older trainer; move it away to start afresh")
            ck = self.task.convert_legacy(ck)
        self.modules[self.main].load_state_dict(ck["model"])
        for k, s in ck.get("modules", {}).items():
            self.modules[k].load_state_dict(s)
        for k, s in ck["optimizers"].items():
            opt = self.optimizers[k]
            opt.load_state_dict(s)
            for g in opt.param_groups:  # the saved flags are the writing device's: take this device's
                g["fused"], g["foreach"] = (True, None) if self.device.type == "cuda" else (None, True)
        if self.ema is not None and "ema" in ck:
            self.ema = [t.to(self.device) for t in ck["ema"]]
        rngs = ck["rng"]
        if len(rngs) != self.world and len(rngs) != 1:
            raise SpeechkitError(f"{path}: written by {len(rngs)} processes, resumed with {self.world}")
        set_rng_state(rngs[self.rank] if len(rngs) == self.world else rngs[0])
        self.step = int(ck["step"])
        if self.conf.max_minutes:  # a refitted schedule carries on; otherwise the config's (a run may be given more steps)
            self.total = int(ck.get("total") or self.total)
        if self.rank == 0:
            print(f"resuming from {path}: epoch {int(ck['epoch']) + 1}, batch {int(ck['batch'])}, step {self.step}", file=sys.stderr)
        if (self.conf.max_steps or self.conf.max_minutes) and self.step >= self.total:
            return self.conf.max_epochs, 0  # a finished run trains no more
        return int(ck["epoch"]), int(ck["batch"])

    def ema_state(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the EMA weights in place of the trained ones."""
        state = self.modules[self.main].state_dict()
        names = [n for n, _ in self.modules[self.main].named_parameters()]
        for n, t in zip(names, self.ema):
            state[n] = t.to(state[n].dtype).cpu()
        return state

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.ema_state() if self.ema is not None else self.modules[self.main].state_dict()

    # -- the step -----------------------------------------------------------------------------
    def _update(self, name: str, loss: torch.Tensor) -> None:
        """Backward one loss into its module's gradients; at the last micro-batch, clip and step."""
        (loss / self.conf.accum_grad).backward()
        if not self._boundary:
            return
        opt = self.optimizers[name]
        params = [p for g in opt.param_groups for p in g["params"]]
        norm = nn.utils.clip_grad_norm_(params, self.conf.grad_clip)
        if self.device.type == "cuda":  # the fused kernel skips the step on the device: no host sync
            opt.found_inf = (~torch.isfinite(norm)).float()
            opt.step()
        elif torch.isfinite(norm):
            opt.step()
        opt.zero_grad(set_to_none=True)
        self._norms[name] = norm.detach()
        if name == self.main and self.ema is not None:
            torch._foreach_lerp_(self.ema, [p.detach().float() for p in self.modules[self.main].parameters()], 1.0 - self.conf.ema_decay)

    def _set_lr(self) -> float:
        oc = self.optim_conf
        lr = lr_at(self.step, oc.lr, oc.warmup_steps, self.total, oc.final_lr_ratio)
        for opt in self.optimizers.values():
            for g in opt.param_groups:
                g["lr"] = lr
        return lr

    def fit(self) -> dict:
        c = self.conf
        if self.rank == 0:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(c.seed)
        self._build()
        steps_per_epoch = len(self.task.plan(0, self.rank, self.world)) // c.accum_grad
        self.total = steps_per_epoch * c.max_epochs
        if c.max_steps:
            self.total = min(self.total, c.max_steps) if self.total else c.max_steps
        if self.total <= 0:
            raise SpeechkitError("nothing to train on: the task's first epoch has no batches")
        self.step = 0
        epoch0, batch0 = self._resume()
        metrics = open(self.exp_dir / self.log_name, "a") if self.rank == 0 else None
        start = time.monotonic()
        log = _LogWindow(start)
        first_step, mark = self.step, (self.step, start)
        stop = False
        waited = 0.0
        for epoch in range(epoch0, c.max_epochs):
            keys = self.task.plan(epoch, self.rank, self.world)
            first = batch0 if epoch == epoch0 else 0
            keys = keys[first : first + (len(keys) - first) // c.accum_grad * c.accum_grad]
            desc = f"{self.task.family} epoch {epoch + 1}/{c.max_epochs}" if c.max_epochs > 1 else self.task.family
            limited = c.max_steps or c.max_minutes
            bar = tqdm(total=min(len(keys) // c.accum_grad, self.total - self.step) if limited else len(keys) // c.accum_grad, desc=desc, disable=not self.progress,
                       file=sys.stderr, dynamic_ncols=True, mininterval=2, unit="step")
            loader = _Prefetcher(self.task, keys, self.device)
            done = 0  # micro-batches of this epoch consumed
            for batch in loader:
                micro = done % c.accum_grad
                self._boundary = micro == c.accum_grad - 1
                if micro == 0:
                    lr = self._set_lr()
                    self._norms: dict[str, torch.Tensor] = {}
                with ExitStack() as stack:
                    if not self._boundary and self.world > 1:
                        for m in self.wrapped.values():
                            if isinstance(m, nn.parallel.DistributedDataParallel):
                                stack.enter_context(m.no_sync())
                    with self.amp():
                        parts = self.task.step(self.wrapped, batch, self._update)
                done += 1
                self.audio_seconds += batch_seconds(batch)
                log.add(parts, batch_seconds(batch))
                if not self._boundary:
                    continue
                log.add_norms(self._norms, self.main)
                self.step += 1
                bar.update(1)
                self.data_wait_s = waited + loader.total_wait_s
                if self.on_step is not None:
                    self.on_step(self)
                over_time = False
                if self.step % c.log_interval == 0 or self.step == self.total:
                    now = time.monotonic()
                    if c.max_minutes and self.step - first_step >= 2 * c.log_interval:
                        # refit the schedule to the time budget at the current speed, so the learning
                        # rate has decayed when the time is up
                        per_step = (now - mark[1]) / max(1, self.step - mark[0])
                        fits = self.step + int((60 * c.max_minutes - (now - start)) / per_step)
                        self.total = min(c.max_steps, fits) if c.max_steps else fits
                        mark = (self.step, now)
                    if c.max_minutes and self.world > 1:
                        over_time = self._agree_on_budget(now - start > 60 * c.max_minutes)
                    every_rank = None
                    if self.world > 1:  # the audio all ranks trained on in this window (scaling figures)
                        t = torch.tensor([log.seconds], dtype=torch.float64, device=self.device)
                        dist.all_reduce(t)
                        every_rank = float(t[0])
                    row = log.flush(now, loader, every_rank, epoch=epoch + 1, step=self.step, lr=lr, elapsed_s=round(now - start, 1))
                    if metrics is not None:
                        metrics.write(json.dumps(row) + "\n")
                        metrics.flush()
                        bar.set_postfix({k: row[k] for k in list(row)[4:6]}, refresh=False)
                # epochs bound an epoch-based run (their batch counts vary a little; the schedule only
                # uses the estimate); a step limit or a time budget cuts it where it is
                # several ranks stop on one clock (rank 0's, agreed at log steps): a rank that
                # left the loop alone would leave the others waiting in an all-reduce for ever
                stop = bool((c.max_steps or c.max_minutes) and self.step >= self.total) or over_time \
                    or bool(c.max_minutes and self.world == 1 and time.monotonic() - start > 60 * c.max_minutes)
                if stop:
                    break
                if self.step % c.save_interval_steps == 0 and done < len(keys):
                    self._save(epoch, first + done)
            loader.close()
            waited += loader.total_wait_s
            bar.close()
            finished = done >= len(keys)
            # a step limit or time budget that ends mid-epoch ends the epoch too: the task's epoch
            # checkpoint then holds the run's last weights, which averaging would otherwise never see
            if (finished or stop) and hasattr(self.task, "end_epoch"):
                self._end_epoch(epoch, metrics, start)
            self._save(epoch + 1, 0) if finished else self._save(epoch, first + done)
            if self.world > 1:
                dist.barrier()
            if stop:
                break
        if metrics is not None:
            metrics.close()
        return {"steps": self.step, "minutes": round((time.monotonic() - start) / 60, 2),
                "params_m": round(sum(p.numel() for p in self.modules[self.main].parameters()) / 1e6, 2)}

    def _end_epoch(self, epoch: int, metrics, start: float) -> None:
        if self.rank == 0:
            row = self.task.end_epoch(self, epoch + 1) or {}
            if metrics is not None and row:
                metrics.write(json.dumps({"epoch": epoch + 1, "step": self.step, **row, "elapsed_s": round(time.monotonic() - start, 1)}) + "\n")
                metrics.flush()
        if self.world > 1:
            dist.barrier()


def batch_seconds(batch) -> float:
    """Audio seconds in a batch, where the task says (a ``seconds`` entry), else 0."""
    return float(batch.get("seconds", 0.0)) if isinstance(batch, dict) else 0.0


class _LogWindow:
    """Sums of the logged numbers between two log lines, kept on the device until the line is written."""

    def __init__(self, start: float):
        self.t = start
        self._reset()

    def _reset(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.norms: dict[str, torch.Tensor] = {}
        self.micro = self.steps = 0
        self.seconds = 0.0

    def add(self, parts: dict[str, torch.Tensor], seconds: float) -> None:
        for k, v in parts.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.micro += 1
        self.seconds += seconds

    def add_norms(self, norms: dict[str, torch.Tensor], main: str) -> None:
        for k, v in norms.items():
            key = "grad_norm" if k == main else f"grad_norm_{k}"
            self.norms[key] = self.norms[key] + v if key in self.norms else v
        self.steps += 1

    def flush(self, now: float, loader: _Prefetcher, every_rank: float | None = None, **head) -> dict:
        """``audio_s_per_s``: this process's; ``audio_s_per_s_all``: every rank's together
        (``every_rank``: their audio seconds in this window), under DDP."""
        span = max(now - self.t, 1e-9)
        row = dict(head)
        row.update({k: round(float(v) / max(1, self.micro), 5) for k, v in self.sums.items()})
        row.update({k: round(float(v) / max(1, self.steps), 4) for k, v in self.norms.items()})
        if self.seconds:
            row["audio_s_per_s"] = round(self.seconds / span, 1)
        if every_rank:
            row["audio_s_per_s_all"] = round(every_rank / span, 1)
        row["data_wait"] = round(loader.wait_s / span, 4)
        loader.wait_s = 0.0
        self.t = now
        self._reset()
        return row
