"""The shipped models' records state the files actually shipped: export.json's size is the size of
the ONNX files in the folder, and every "`NAME.onnx` (X MB" in the card names that file's size."""

import json
import re
from pathlib import Path

import pytest

MODELS = sorted(p for p in (Path(__file__).resolve().parents[1] / "models").iterdir() if (p / "export.json").is_file())


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_recorded_sizes_are_the_shipped_files(model):
    onnx_mb = sum(f.stat().st_size for f in model.glob("*.onnx")) / 1e6
    assert json.loads((model / "export.json").read_text())["size_mb"] == pytest.approx(onnx_mb, abs=0.01)
    stated = re.findall(r"`([\w.]+\.onnx)` \(([\d.]+) MB", (model / "README.md").read_text())
    assert stated, f"{model.name}/README.md states no file size"
    for name, mb in stated:
        assert float(mb) == pytest.approx((model / name).stat().st_size / 1e6, abs=0.05), name
