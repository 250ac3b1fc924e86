"""DDP on CPU: two gloo processes under torchrun share the batches of one epoch (the sampler
splits them by rank) and rank 0 writes the epoch checkpoint."""

import json
import os
import subprocess
import sys

import torch

from conftest import kill_after_first_checkpoint, make_train_dev_dumps

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
    rows = [json.loads(line) for line in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "audio_s_per_s" in r]
    assert rows and all(r["audio_s_per_s_all"] > r["audio_s_per_s"] for r in rows), "both ranks' audio counted"
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


RESUME_CONFIG = """\
encoder: conformer
encoder_conf: {output_size: 16, attention_heads: 2, linear_units: 32, num_blocks: 1, cnn_module_kernel: 5, dropout_rate: 0.2}
specaug_conf: {num_freq_masks: 1, freq_mask_width: 8, num_time_masks: 2, time_mask_ratio: 0.05}
tokenizer_conf: {type: char}
optim_conf: {lr: 0.002, warmup_steps: 2}
train_conf: {max_epochs: 3, batch_seconds: 2, num_workers: 0, log_interval: 1, save_interval_steps: 2, avg_last: 1}
"""


def test_torchrun_sigkill_resume_matches_uninterrupted(tmp_path):
    """Two gloo ranks killed mid-epoch resume to exactly the uninterrupted weights: each rank's
    own RNG (dropout, SpecAugment) is saved and restored, not only rank 0's."""
    make_train_dev_dumps(tmp_path, n_train=24, seed=5)
    (tmp_path / "conf.yaml").write_text(RESUME_CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(exp):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "speechkit.cli",
                "train", "--config", str(tmp_path / "conf.yaml"), "--train-dump", str(tmp_path / "dump_train"),
                "--dev-dump", str(tmp_path / "dump_dev"), "--exp-dir", str(tmp_path / exp)]

    done = subprocess.run(cmd("full"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = kill_after_first_checkpoint(cmd("killed"), tmp_path / "killed" / "checkpoint.pt", env, process_tree=True)
    assert len(state["rng"]) == 2, "each rank's RNG state is in the checkpoint"
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"]), "the two ranks drew differently"
    assert state["epoch"] == 0 and state["batch"] > 0, "the kill should land mid-epoch"
    resumed = subprocess.run(cmd("killed"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "epoch 1, batch" in resumed.stderr, resumed.stderr[-2000:]
    full = torch.load(tmp_path / "full" / "epoch_3.pt", weights_only=True)["model"]
    again = torch.load(tmp_path / "killed" / "epoch_3.pt", weights_only=True)["model"]
    for k in full:
        assert torch.equal(full[k], again[k]), f"{k} differs after resume"


BUDGET_CONFIG = """\
encoder: conformer
encoder_conf: {output_size: 16, attention_heads: 2, linear_units: 32, num_blocks: 1, cnn_module_kernel: 5}
tokenizer_conf: {type: char}
optim_conf: {lr: 0.002, warmup_steps: 2}
train_conf: {max_epochs: 1000, max_minutes: 0.15, batch_seconds: 2, num_workers: 0, log_interval: 2, save_interval_steps: 1000, avg_last: 1}
"""

# rank 1's clock runs three times as fast: left to itself it would refit a shorter schedule and
# leave the loop first, with rank 0 waiting in the next all-reduce
FAST_CLOCK = """\
import os, time
if os.environ.get("RANK") == "1":
    _real, _t0 = time.monotonic, time.monotonic()
    time.monotonic = lambda: _t0 + 3.0 * (_real() - _t0)
"""


def test_time_budget_stops_every_rank_on_the_same_step(tmp_path):
    make_train_dev_dumps(tmp_path, n_train=16, seed=4)
    (tmp_path / "conf.yaml").write_text(BUDGET_CONFIG)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FAST_CLOCK)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "speechkit.cli",
           "train", "--config", str(tmp_path / "conf.yaml"), "--train-dump", str(tmp_path / "dump_train"),
           "--dev-dump", str(tmp_path / "dump_dev"), "--exp-dir", str(tmp_path / "exp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)  # a rank left behind hangs until killed
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "exp" / "checkpoint.pt", weights_only=True)
    assert state["step"] > 4 and state["epoch"] < 1000, "the budget, not the epochs, ended the run"


def test_two_nodes_through_the_recipe_match_one_node_of_two(tmp_path):
    """recipes/asr.sh --nnodes 2 --rdzv_endpoint: two "machines" of one process each (here two
    launches on one host, torchrun's c10d rendezvous) train to exactly the weights of one
    machine with two processes."""
    import socket
    from pathlib import Path

    make_train_dev_dumps(tmp_path, n_train=16, seed=3)
    (tmp_path / "conf.yaml").write_text(CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "asr.sh"
    node = ["bash", str(recipe), "--stage", "4", "--stop_stage", "4", "--config", str(tmp_path / "conf.yaml"), "--dump", str(tmp_path),
            "--train_set", "dump_train", "--dev_set", "dump_dev", "--exp", str(tmp_path / "two_nodes"), "--ngpu", "1", "--nnodes", "2",
            "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "test"]
    nodes = [subprocess.Popen(node, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    one = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "speechkit.cli", "train",
           "--config", str(tmp_path / "conf.yaml"), "--train-dump", str(tmp_path / "dump_train"), "--dev-dump", str(tmp_path / "dump_dev"),
           "--exp-dir", str(tmp_path / "one_node")]
    done = subprocess.run(one, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(tmp_path / "two_nodes" / "epoch_1.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "one_node" / "epoch_1.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between two nodes of one process and one node of two"


def test_the_recipe_says_what_several_nodes_need(tmp_path):
    recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "asr.sh")
    done = subprocess.run(["bash", recipe, "--stage", "4", "--stop_stage", "4", "--config", "c.yaml", "--nnodes", "2"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and "--rdzv_endpoint" in done.stderr and len(done.stderr.strip().splitlines()) == 1
