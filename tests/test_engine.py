"""The one training engine on a toy task (linear regression): accumulation, the step limit and the
schedule, EMA, a skipped non-finite step, exact resume in-process, the metrics log."""

import json
import math

import pytest
import torch
from torch import nn

from speechkit.errors import SpeechkitError
from speechkit.train.engine import Engine, LoopConfig, OptimConfig, lr_at


class ToyTask:
    """y = x·w + noise; batches are a pure function of (seed, key)."""

    family = "toy"
    config = {"toy": True}

    def __init__(self, n_batches=12, poison=()):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.n, self.poison = n_batches, set(poison)
        self.seen = []

    def modules(self):
        return {"model": self.model}

    def plan(self, epoch, rank, world):
        return [(epoch, i) for i in range(self.n)]

    def load(self, key, device):
        g = torch.Generator().manual_seed(1000 * key[0] + key[1])
        x = torch.randn(8, 4, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.01 * torch.randn(8, 1, generator=g)
        return {"x": x, "y": y, "key": key, "seconds": 1.0}

    def step(self, modules, b, update):
        self.seen.append(b["key"])
        loss = ((modules["model"](b["x"]) - b["y"]) ** 2).mean()
        if b["key"] in self.poison:
            loss = loss * float("nan")
        update("model", loss)
        return {"mse": loss.detach()}


OPT = OptimConfig(lr=0.05, weight_decay=0.0, warmup_steps=2, final_lr_ratio=0.1)


def fit(tmp_path, name, task=None, **loop):
    task = task or ToyTask()
    conf = LoopConfig(**{"log_interval": 2, "save_interval_steps": 3, **loop})
    engine = Engine(task, conf, OPT, tmp_path / name, torch.device("cpu"), progress=False)
    info = engine.fit()
    return task, engine, info


def test_learns_and_logs(tmp_path):
    task, engine, info = fit(tmp_path, "a", max_epochs=25)
    assert info["steps"] == 300
    w = task.model.weight.detach().flatten()
    assert torch.allclose(w, torch.tensor([1.0, -2.0, 0.5, 3.0]), atol=0.1)
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 300 and rows[-1]["mse"] < 0.01 * rows[0]["mse"]
    assert all("audio_s_per_s" in r and "grad_norm" in r for r in rows)
    assert engine.audio_seconds == 300.0


def test_accumulation_steps_once_per_group(tmp_path):
    task, engine, info = fit(tmp_path, "acc", max_epochs=1, accum_grad=3)
    assert info["steps"] == 4 and len(task.seen) == 12
    assert engine.optimizers["model"].state[task.model.weight]["step"] == 4


def test_step_limit_and_schedule(tmp_path):
    task, engine, info = fit(tmp_path, "lim", max_epochs=10, max_steps=7)
    assert info["steps"] == 7 and engine.total == 7
    assert math.isclose(lr_at(6, 0.05, 2, 7, 0.1), 0.05 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 5))))
    again = Engine(task, LoopConfig(max_epochs=10, max_steps=7), OPT, tmp_path / "lim", torch.device("cpu"), progress=False)
    assert again.fit()["steps"] == 7, "a finished run trains no more"


def test_a_limit_inside_an_epoch_ends_that_epoch_for_the_task(tmp_path):
    """The task's end_epoch (where ASR writes epoch_N.pt, which averaging reads) runs at a stop that
    falls mid-epoch, with the last weights: otherwise a time budget's final steps are never averaged."""

    class Ending(ToyTask):
        def end_epoch(self, engine, epoch):
            self.ended.append((epoch, engine.step, self.model.weight.detach().clone()))

    task = Ending()
    task.ended = []
    _, engine, info = fit(tmp_path, "mid", task=task, max_epochs=10, max_steps=17)  # 12 steps an epoch
    assert info["steps"] == 17
    assert [(e, s) for e, s, _ in task.ended] == [(1, 12), (2, 17)]
    assert torch.equal(task.ended[-1][2], task.model.weight.detach())


def test_non_finite_step_is_skipped(tmp_path):
    task = ToyTask(poison={(0, 3)})
    _, engine, _ = fit(tmp_path, "nan", task=task, max_epochs=1)
    assert all(torch.isfinite(p).all() for p in task.model.parameters())
    assert engine.optimizers["model"].state[task.model.weight]["step"] == 11  # 12 batches, one skipped


def test_ema_is_kept_and_saved(tmp_path):
    task, engine, _ = fit(tmp_path, "ema", max_epochs=2, ema_decay=0.9)
    ema = engine.model_state()["weight"]
    assert not torch.equal(ema, task.model.weight.detach())
    assert torch.equal(torch.load(tmp_path / "ema" / "checkpoint.pt", weights_only=True)["ema"][0], ema)


def test_resume_mid_epoch_equals_uninterrupted(tmp_path):
    full, _, _ = fit(tmp_path, "full", max_epochs=2)

    class Stop(Exception):
        pass

    cut = ToyTask()
    engine = Engine(cut, LoopConfig(max_epochs=2, log_interval=2, save_interval_steps=3), OPT, tmp_path / "cut", torch.device("cpu"), progress=False)

    def stop_at(e):
        if e.step == 16:  # after the checkpoint at step 15, mid-epoch 2
            raise Stop

    engine.on_step = stop_at
    with pytest.raises(Stop):
        engine.fit()
    resumed, _, _ = fit(tmp_path, "cut", max_epochs=2)
    assert resumed.seen[0] == (1, 3), "resumes at the batch after the checkpoint"
    assert torch.equal(full.model.weight, resumed.model.weight) and torch.equal(full.model.bias, resumed.model.bias)


def test_bad_settings_are_one_line(tmp_path):
    with pytest.raises(SpeechkitError, match="accum_grad"):
        Engine(ToyTask(), LoopConfig(accum_grad=0), OPT, tmp_path / "x", torch.device("cpu"))
    with pytest.raises(SpeechkitError, match="amp"):
        Engine(ToyTask(), LoopConfig(amp="fp8"), OPT, tmp_path / "x", torch.device("cpu"))


def test_compile_trains_the_same_weights(tmp_path):
    """``train_conf.compile``: the step runs through torch.compile on the same parameters (the
    checkpoint holds the plain module's keys) and learns what the eager step learns."""
    eager, _, _ = fit(tmp_path, "eager", max_epochs=2)
    compiled, engine, info = fit(tmp_path, "compiled", max_epochs=2, compile=True)
    assert info["steps"] == 24
    assert torch.allclose(compiled.model.weight, eager.model.weight, atol=1e-5)
    saved = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=False)
    assert set(saved["model"]) == {"weight", "bias"}
