"""The codec task on the training engine: a run killed with SIGKILL resumes to exactly the weights of
an uninterrupted one; the discriminator steps from ``adv_start_step`` on and gets no gradients from
the generator's loss; a finished run re-run trains no more; an old trainer's checkpoint carries on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import kill_after_first_checkpoint, make_tiny_data_dir
from speechkit.errors import SpeechkitError

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = """\
codec: rvq
encoder_conf: {channels: 4, strides: [2, 4, 6], latent_dim: 8, dilations: [1], shortcuts: false}
rvq_conf: {n_q: 3, codebook_size: 16}
optim_conf: {warmup_steps: 2}
train_conf: {max_steps: 12, batch_size: 3, segment_seconds: 0.3, adv_start_step: 2, disc_filters: 2, log_interval: 1,
             save_interval_steps: 3}
"""


@pytest.fixture
def setup(tmp_path) -> tuple[Path, Path]:
    """(config path, data dir)."""
    make_tiny_data_dir(tmp_path / "data", n_utts=4)
    (tmp_path / "conf.yaml").write_text(CONFIG)
    return tmp_path / "conf.yaml", tmp_path / "data"


def _experiment(conf: Path, **train_conf):
    import dataclasses

    from speechkit.train.codec import load_codec_experiment

    exp = load_codec_experiment(conf)
    return dataclasses.replace(exp, train_conf=dataclasses.replace(exp.train_conf, **train_conf))


def _train_cmd(conf: Path, data: Path, exp: Path) -> list[str]:
    return [sys.executable, "-m", "speechkit.cli", "codec", "train", "--config", str(conf), "--data", str(data),
            "--exp-dir", str(exp), "--device", "cpu"]


def test_sigkill_then_resume_matches_uninterrupted(setup, tmp_path):
    conf, data = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(conf, data, tmp_path / "full"), check=True, env=env, capture_output=True)

    state = kill_after_first_checkpoint(_train_cmd(conf, data, tmp_path / "killed"), tmp_path / "killed" / "checkpoint.pt", env)
    assert 0 < state["step"] < 12 and not (tmp_path / "killed" / "model.pt").exists(), \
        "the kill should land mid-run, after the first checkpoint"

    resumed = subprocess.run(_train_cmd(conf, data, tmp_path / "killed"), check=True, env=env, capture_output=True, text=True)
    assert "resuming from" in resumed.stderr

    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["model"]
    again = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["model"]
    assert full.keys() == again.keys()
    for k in full:
        assert torch.equal(full[k], again[k]), f"{k} differs after resume"
    full_disc = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["modules"]["disc"]
    again_disc = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["modules"]["disc"]
    assert all(torch.equal(full_disc[k], again_disc[k]) for k in full_disc)


def test_adversarial_run_trains_both_from_adv_start_step_and_rerun_trains_no_more(setup, tmp_path):
    import json

    from speechkit.train.codec import train_codec

    conf, data = setup
    exp = _experiment(conf, max_steps=4, save_interval_steps=100)
    assert train_codec(exp, [data], tmp_path / "exp", "cpu")["steps"] == 4
    ck = torch.load(tmp_path / "exp" / "checkpoint.pt", weights_only=True)
    steps = {name: {int(s["step"]) for s in opt["state"].values()} for name, opt in ck["optimizers"].items()}
    assert steps == {"model": {4}, "disc": {2}}  # the discriminator from step 2 (adv_start_step) on
    rows = [json.loads(line) for line in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    assert "d" not in rows[1] and {"d", "adversarial", "grad_norm_disc", "commit", "mel"} <= rows[2].keys()
    assert rows[-1]["audio_s_per_s"] > 0

    before = torch.load(tmp_path / "exp" / "model.pt", weights_only=True)["model"]
    assert train_codec(exp, [data], tmp_path / "exp", "cpu")["steps"] == 4
    after = torch.load(tmp_path / "exp" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_generator_step_leaves_the_discriminator_no_gradients(setup, tmp_path):
    from speechkit.train.codec import CodecTask

    conf, data = setup
    torch.manual_seed(0)
    task = CodecTask(_experiment(conf), [data], tmp_path, torch.device("cpu"))
    modules = task.modules()
    seen = []

    def update(name: str, loss: torch.Tensor) -> None:  # as the engine: backward, step, zero this module's gradients
        loss.backward()
        seen.append((name, [p.grad is not None for p in modules["disc"].parameters()]))
        modules[name].zero_grad(set_to_none=True)

    parts = task.step(modules, task.load(0, torch.device("cpu")), update)
    assert [name for name, _ in seen] == ["model"] and "d" not in parts  # before adv_start_step
    seen.clear()
    parts = task.step(modules, task.load(2, torch.device("cpu")), update)
    assert [name for name, _ in seen] == ["disc", "model"]
    assert all(seen[0][1]) and not any(seen[1][1])
    assert all(p.requires_grad for p in modules["disc"].parameters())
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in parts.values())


def test_an_old_trainers_checkpoint_carries_on(setup, tmp_path):
    from speechkit.train.codec import CodecTask, train_codec
    from speechkit.train.engine import decay_groups, make_optimizer

    conf, data = setup
    exp = _experiment(conf, max_steps=3)
    cpu = torch.device("cpu")
    task = CodecTask(exp, [data], tmp_path / "old", cpu)
    olds = {}
    for name, m in task.modules().items():  # the old trainer: one AdamW group over parameters(), one step
        olds[name] = torch.optim.AdamW(m.parameters(), lr=1e-3)
        for i, p in enumerate(m.parameters()):
            p.grad = torch.full_like(p, float(i + 1))
        olds[name].step()
    legacy = {"model": task.model.state_dict(), "opt_g": olds["model"].state_dict(), "disc": task.disc.state_dict(),
              "opt_d": olds["disc"].state_dict(), "step": 1, "rng": torch.get_rng_state(), "config": task.config}

    converted = task.convert_legacy(legacy)
    for name, m in task.modules().items():
        opt = make_optimizer(decay_groups(m, exp.optim_conf.weight_decay), exp.optim_conf, cpu)
        opt.load_state_dict(converted["optimizers"][name])
        assert all(torch.equal(opt.state[p]["exp_avg"], olds[name].state[p]["exp_avg"]) for p in m.parameters())

    (tmp_path / "old").mkdir()
    torch.save(legacy, tmp_path / "old" / "checkpoint.pt")
    assert train_codec(exp, [data], tmp_path / "old", "cpu")["steps"] == 3
    ck = torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=True)
    assert ck["version"] == 2 and {int(s["step"]) for s in ck["optimizers"]["model"]["state"].values()} == {3}

    torch.save({"weights": {}}, tmp_path / "old" / "checkpoint.pt")
    with pytest.raises(SpeechkitError, match="move it away to start afresh"):
        train_codec(exp, [data], tmp_path / "old", "cpu")
