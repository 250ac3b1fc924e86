"""DDP on CPU: two gloo processes under torchrun share the batches of one epoch (the sampler
splits them by rank) and rank 0 writes the epoch checkpoint."""

import os
import subprocess
import sys

import torch

from conftest import make_train_dev_dumps

CONFIG = """\
encoder: conformer
encoder_conf: {output_size: 16, attention_heads: 2, linear_units: 32, num_blocks: 1, cnn_module_kernel: 5}
tokenizer_conf: {type: char}
optim_conf: {lr: 0.002, warmup_steps: 2}
train_conf: {max_epochs: 1, batch_seconds: 3, num_workers: 0, log_interval: 1, save_interval_steps: 100, avg_last: 1}
"""


def test_torchrun_two_cpu_processes(tmp_path):
    make_train_dev_dumps(tmp_path, n_train=16, seed=3)
    (tmp_path / "conf.yaml").write_text(CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "speechkit.cli",
           "train", "--config", str(tmp_path / "conf.yaml"), "--train-dump", str(tmp_path / "dump_train"),
           "--dev-dump", str(tmp_path / "dump_dev"), "--exp-dir", str(tmp_path / "exp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "exp" / "epoch_1.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
