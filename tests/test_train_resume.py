"""Nothing lost: a training run killed with SIGKILL mid-epoch resumes from its last checkpoint
and ends with exactly the weights of an uninterrupted run."""

import os
import subprocess
import sys

import torch

from conftest import kill_after_first_checkpoint, make_train_dev_dumps

CONFIG = """\
encoder: conformer
encoder_conf: {output_size: 16, attention_heads: 2, linear_units: 32, num_blocks: 2, cnn_module_kernel: 5}
specaug_conf: {num_freq_masks: 1, freq_mask_width: 8, num_time_masks: 2, time_mask_ratio: 0.05}
tokenizer_conf: {type: char}
optim_conf: {lr: 0.002, warmup_steps: 5}
train_conf: {max_epochs: 3, batch_seconds: 3, num_workers: 0, log_interval: 2, save_interval_steps: 3}
"""


def _train_cmd(tmp, exp):
    return [sys.executable, "-m", "speechkit.cli", "train", "--config", str(tmp / "conf.yaml"),
            "--train-dump", str(tmp / "dump_train"), "--dev-dump", str(tmp / "dump_dev"), "--exp-dir", str(tmp / exp)]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    make_train_dev_dumps(tmp_path, n_train=40, seed=1)
    (tmp_path / "conf.yaml").write_text(CONFIG)

    subprocess.run(_train_cmd(tmp_path, "exp_full"), check=True, env=_env(), capture_output=True)

    state = kill_after_first_checkpoint(_train_cmd(tmp_path, "exp_killed"), tmp_path / "exp_killed" / "checkpoint.pt", _env())
    assert state["epoch"] == 0 and state["batch"] > 0, "the kill should land mid-epoch, after the first checkpoint"
    assert not (tmp_path / "exp_killed" / "epoch_3.pt").exists(), "the run finished before it was killed"

    resumed = subprocess.run(_train_cmd(tmp_path, "exp_killed"), check=True, env=_env(), capture_output=True, text=True)
    assert "resuming from" in resumed.stderr

    full = torch.load(tmp_path / "exp_full" / "epoch_3.pt", weights_only=True)["model"]
    again = torch.load(tmp_path / "exp_killed" / "epoch_3.pt", weights_only=True)["model"]
    assert full.keys() == again.keys()
    for k in full:
        assert torch.equal(full[k], again[k]), f"{k} differs after resume"
