"""tools/state_parts.py: how weights come back from the GPU machine in < 16 MB files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

TOOL = Path(__file__).resolve().parent.parent / "tools" / "state_parts.py"


def test_split_join_round_trip_keeps_float_prefixes_exact(tmp_path):
    torch.manual_seed(0)
    state = {"encoder.w": torch.randn(300, 300), "quantizer.codebook": torch.randn(200, 100), "step": torch.tensor(7)}
    torch.save({"model": state, "config": {"codec": "rvq"}}, tmp_path / "model.pt")
    out = subprocess.run([sys.executable, str(TOOL), "split", str(tmp_path / "model.pt"), str(tmp_path / "parts"), "--max-mb", "0.2",
                          "--half", "--name", "rvq", "--keep-float", "quantizer"], capture_output=True, text=True, check=True)
    parts = sorted((tmp_path / "parts").glob("rvq.part*.pt"))
    assert len(parts) == len(out.stdout.split()) >= 2  # the size limit cuts the state dict
    subprocess.run([sys.executable, str(TOOL), "join", str(tmp_path / "parts"), str(tmp_path / "joined.pt"), "--stem", "rvq"], check=True)
    ck = torch.load(tmp_path / "joined.pt", weights_only=True)
    assert ck["config"] == {"codec": "rvq"} and set(ck["model"]) == set(state)
    assert torch.equal(ck["model"]["quantizer.codebook"], state["quantizer.codebook"])  # kept float32
    assert torch.equal(ck["model"]["encoder.w"], state["encoder.w"].half().float())  # through float16
    assert not torch.equal(ck["model"]["encoder.w"], state["encoder.w"])
    assert ck["model"]["encoder.w"].dtype == torch.float32 and torch.equal(ck["model"]["step"], state["step"])
