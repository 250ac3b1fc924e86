"""CLEAR trains through the engine: a tiny config on random prepared data, killed with SIGKILL
mid-run, resumes to exactly the weights of an uninterrupted run; a checkpoint of the old trainer
resumes; the embeddings, biases and norms get no weight decay."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from conftest import kill_after_first_checkpoint

CONFIG = """\
model: {d_model: 16, layers: 2, heads: 2, ff: 32, dropout: 0.1, text_layers: 1, align_layers: [1], align_weight: 0.2,
        flow: {hidden: 16, blocks: 1, cfg_dropout: 0.2, noise_samples: 1}}
optim_conf: {lr: 0.003, warmup_steps: 4}
train_conf: {max_steps: 40, max_tokens: 400, prompt_seconds: [0.2, 0.4], log_interval: 5, save_interval_steps: 4}
"""


def make_prepared(out: Path, speakers: int = 3, per_speaker: int = 4, dim: int = 4, seed: int = 0) -> Path:
    """What `speechkit tts prepare` writes, with random latents and phonemes (10 latents/s)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    rows, parts, start = [], [], 0
    for s in range(speakers):
        for k in range(per_speaker):
            n = int(rng.integers(8, 20))
            phones = " ".join(rng.choice(list("abcdefgh"), int(rng.integers(3, 8))))
            rows.append({"utt": f"s{s}-{k}", "spk": f"s{s}", "start": start, "frames": n, "phones": phones, "text": ""})
            parts.append(rng.standard_normal((n, dim)).astype(np.float16))
            start += n
    np.save(out / "latents.npy", np.concatenate(parts))
    (out / "utts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "prepare.json").write_text(json.dumps({"codec": "codec-dir", "frame_rate": 10.0, "latent_dim": dim,
                                                  "utterances": len(rows), "skipped": 0, "frames": start, "hours": start / 36000}))
    return out


def _train_cmd(tmp: Path, exp: str) -> list[str]:
    return [sys.executable, "-m", "speechkit.cli", "tts", "train", "--config", str(tmp / "conf.yaml"),
            "--data", str(tmp / "prep"), "--exp-dir", str(tmp / exp), "--device", "cpu"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    make_prepared(tmp_path / "prep")
    (tmp_path / "conf.yaml").write_text(CONFIG)

    subprocess.run(_train_cmd(tmp_path, "exp_full"), check=True, env=_env(), capture_output=True)
    full_dir = tmp_path / "exp_full"
    assert {"checkpoint.pt", "model.pt", "phones.txt", "metrics.jsonl", "config.yaml"} <= {p.name for p in full_dir.iterdir()}
    rows = [json.loads(line) for line in (full_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30, 35, 40] and {"flow", "stop", "align", "grad_norm"} <= rows[-1].keys()

    state = kill_after_first_checkpoint(_train_cmd(tmp_path, "exp_killed"), tmp_path / "exp_killed" / "checkpoint.pt", _env())
    assert state["version"] == 2 and 0 < state["step"] < 40, "the kill should land mid-run, after the first checkpoint"
    assert not (tmp_path / "exp_killed" / "model.pt").exists(), "the run finished before it was killed"

    resumed = subprocess.run(_train_cmd(tmp_path, "exp_killed"), check=True, env=_env(), capture_output=True, text=True)
    assert "resuming from" in resumed.stderr

    full = torch.load(full_dir / "model.pt", weights_only=True)
    again = torch.load(tmp_path / "exp_killed" / "model.pt", weights_only=True)
    assert full["phones"] == again["phones"] and full["config"] == again["config"] and full["codec"] == "codec-dir"
    assert full["model"].keys() == again["model"].keys()
    for k in full["model"]:
        assert torch.equal(full["model"][k], again["model"][k]), f"{k} differs after resume"


def test_old_trainer_checkpoint_resumes_and_decay_groups(tmp_path):
    from speechkit.train.tts import TtsTask, load_tts_experiment, train_tts

    make_prepared(tmp_path / "prep")
    (tmp_path / "conf.yaml").write_text(CONFIG)
    exp = load_tts_experiment(tmp_path / "conf.yaml")
    task = TtsTask(exp, [tmp_path / "prep"], tmp_path / "exp")
    groups = task.param_groups("model", task.model)
    names = {id(p): n for n, p in task.model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"phone.weight", "kind.weight", "stop.bias", "norm.weight"} <= no_decay
    assert all(n.endswith("weight") and not n.startswith(("phone.", "kind.")) and "norm" not in n
               for n in set(names.values()) - no_decay)

    opt = torch.optim.AdamW(groups, lr=1e-3)
    (tmp_path / "exp").mkdir()
    torch.save({"model": task.model.state_dict(), "opt": opt.state_dict(), "step": 37, "rng": torch.get_rng_state()},
               tmp_path / "exp" / "checkpoint.pt")
    info = train_tts(exp, [tmp_path / "prep"], tmp_path / "exp", device="cpu")
    assert info["steps"] == 40
    assert torch.load(tmp_path / "exp" / "checkpoint.pt", weights_only=True)["version"] == 2
    assert (tmp_path / "exp" / "model.pt").is_file()
