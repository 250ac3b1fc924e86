"""ASR batches from a feature dump: memory-mapped on the host or resident in device memory (here
the CPU stands in for the GPU), the same padded batch either way, lengths kept on the host."""

import numpy as np
import pytest
import torch

from conftest import make_tiny_data_dir, make_tiny_dump
from speechkit.data.batches import DumpBatcher
from speechkit.data.features import FeatureDump


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    root = tmp_path_factory.mktemp("batches")
    make_tiny_data_dir(root / "data", n_utts=7, seed=4)
    return FeatureDump.open(make_tiny_dump(root / "data", root / "dump"))


@pytest.mark.parametrize("resident", ["off", "on"])
def test_a_batch_is_the_dump_padded(dump, resident):
    tokens = [np.arange(1, 2 + i % 3) for i in range(len(dump))]
    b = DumpBatcher(dump, tokens, torch.device("cpu"), resident=resident).batch([5, 0, 3])
    lens = [int(dump.lengths[i]) for i in (5, 0, 3)]
    assert b["feats"].shape == (3, max(lens), 80) and b["feats"].dtype == torch.float32
    for row, (i, n) in enumerate(zip((5, 0, 3), lens)):
        torch.testing.assert_close(b["feats"][row, :n], torch.from_numpy(dump.feats(i)))
        assert b["feats"][row, n:].abs().sum() == 0, "padding is zero"
        assert b["tokens"][row, : len(tokens[i])].tolist() == tokens[i].tolist()
    assert b["feat_lens"].tolist() == lens and b["feat_lens"].device.type == "cpu"
    assert b["token_lens"].tolist() == [len(tokens[i]) for i in (5, 0, 3)]
    assert b["seconds"] == pytest.approx(sum(lens) / 100.0)


def test_resident_and_mapped_agree(dump):
    tokens = [np.array([1]) for _ in range(len(dump))]
    on = DumpBatcher(dump, tokens, torch.device("cpu"), resident="on")
    off = DumpBatcher(dump, tokens, torch.device("cpu"), resident="off")
    assert on.resident and not off.resident
    a, b = on.batch([1, 2, 6]), off.batch([1, 2, 6])
    assert torch.equal(a["feats"], b["feats"]) and torch.equal(a["tokens"], b["tokens"])
    with pytest.raises(ValueError, match="resident"):
        DumpBatcher(dump, tokens, torch.device("cpu"), resident="yes")
