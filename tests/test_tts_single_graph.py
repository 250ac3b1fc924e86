"""One exported transformer (issue 21): ``ar_step.onnx`` runs any block of positions after a cache,
so the prefix (one call or several blocks) and every latent go through the same graph, equal to
the model over the whole sequence; a graph whose blocks attend ahead fails the export; the weights
are stored once; a two-graph export from before still runs; the codec can be referenced beside the
model instead of copied (``--codec-dir``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from speechkit.errors import SpeechkitError
from speechkit.models.tts.clear import LATENT, PHONE, ClearTTS

from test_tts_export import FAST, TEXTS, _codec, _experiment, _tamper

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(root, exp, model dir, prompt wav, export.json): exported through `speechkit tts export
    --codec-dir`, the model under root/models beside nothing, the codec at root/codec."""
    from speechkit.cli import main

    root = tmp_path_factory.mktemp("tts_one")
    codec = _codec(root)
    exp = _experiment(root, "exp", codec, stop_bias=-30.0)
    out = root / "models" / "tts"
    assert main(["tts", "export", str(exp), str(out), "--check-text", TEXTS[0], "--codec-dir", str(codec)]) == 0
    t = np.arange(16000) / 16000
    sf.write(root / "prompt.wav", 0.3 * np.sin(2 * np.pi * 180 * t), 16000)
    return root, exp, out, root / "prompt.wav", json.loads((out / "export.json").read_text())


def test_blocks_after_a_cache_equal_the_model_over_the_whole_sequence(made):
    """The prefix in one call or in two blocks, then five latents as one block or one by one: the
    same hidden states, stop logits and caches as ClearTTS over all positions at once (rotary
    positions from the cache length, causal inside a block, all of the cache visible)."""
    from speechkit.models.tts.io import load_tts
    from speechkit.runtime.tts import ArTransformer

    _, exp, out, _, _ = made
    model, symbols, _ = load_tts(exp)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, len(symbols), (12,), generator=g)
    kinds, phones, lat = model.prefix(ids, torch.randn(20, 8, generator=g))
    n, z = kinds.shape[1], torch.randn(1, 5, 8, generator=g)
    kinds = torch.cat([kinds, torch.full((1, 5), LATENT)], 1)
    phones, lat = torch.cat([phones, torch.zeros(1, 5, dtype=torch.long)], 1), torch.cat([lat, z], 1)
    with torch.no_grad():
        hs, cache = model.run(model.embed(kinds, phones, lat))
        ref_h, ref_stop = hs[0].numpy(), model.stop(hs)[0, :, 0].numpy()
    ref_cache = torch.stack([torch.stack(kv) for kv in cache]).numpy()

    ar = ArTransformer(out, LATENT)

    def part(a: int, b: int) -> dict[str, np.ndarray]:
        return {"kinds": kinds[:, a:b].numpy(), "phones": phones[:, a:b].numpy(), "latents": lat[:, a:b].numpy()}

    h, stop, c = ar.prefix(part(0, n))
    np.testing.assert_allclose(h[0], ref_h[n - 1], atol=1e-4)
    np.testing.assert_allclose(c, ref_cache[:, :, :, :, :n], atol=1e-4)
    h, stop, c = ar.block(part(n, n + 5), c)  # five latents in one call
    np.testing.assert_allclose(h[0], ref_h[-1], atol=1e-4)
    np.testing.assert_allclose(stop[0], ref_stop[-1], atol=1e-4)
    np.testing.assert_allclose(c, ref_cache, atol=1e-4)

    split = len(ids) + 5  # phonemes, sep and 4 prompt latents; then the rest of the prompt and bos
    _, _, c = ar.block(part(0, split), ar.empty)
    h, _, c = ar.block(part(split, n), c)
    np.testing.assert_allclose(h[0], ref_h[n - 1], atol=1e-4)
    for i in range(5):
        h, stop, c = ar.step(z[:, i].numpy(), c)
        np.testing.assert_allclose(h[0], ref_h[n + i], atol=1e-4)
        np.testing.assert_allclose(stop[0], ref_stop[n + i], atol=1e-4)
    np.testing.assert_allclose(c, ref_cache, atol=1e-4)
    assert (kinds[0] == PHONE).sum() == len(ids)


def test_a_graph_that_attends_ahead_in_its_block_fails_the_export(made, tmp_path, monkeypatch):
    """Blocks without the causal mask (every new position sees the whole block) would be right for
    single latents only; the prefix in the parity check catches them."""
    import speechkit.export.tts as ex

    _, exp, _, _, _ = made
    monkeypatch.setattr(ex, "causal_bias", lambda pos, n: torch.zeros(pos.shape[0], n))
    with pytest.raises(SpeechkitError, match="disagree"):
        ex.export_tts(exp, tmp_path / "bad", TEXTS[0])
    assert not list((tmp_path / "bad").glob("*.onnx"))


def test_the_transformer_weights_are_stored_once_and_the_dir_holds_no_codec(made):
    import onnx
    from onnx import numpy_helper

    from speechkit.models.tts.io import load_tts

    _, exp, out, _, info = made
    model, _, _ = load_tts(exp)
    # the matrices (vectors are deduplicated: every LayerNorm of a fresh model is ones and zeros)
    used = sum(p.numel() for name, p in model.named_parameters() if p.dim() > 1 and not name.startswith(("head.", "reg.")))
    stored = sum(t.size for t in map(numpy_helper.to_array, onnx.load(str(out / "ar_step.onnx")).graph.initializer) if t.ndim > 1)
    assert used <= stored < 1.02 * used, (used, stored)  # the prefix's weights are the steps'; no second copy
    assert sorted(f.name for f in out.iterdir()) == ["ar_step.onnx", "export.json", "flow.onnx", "phones.txt"]
    size = sum(f.stat().st_size for f in out.glob("*.onnx")) / 1e6
    assert info["size_mb"] == pytest.approx(size, abs=0.01) and info["graphs_mb"] == pytest.approx(size, abs=0.001)
    codec = sum(f.stat().st_size for f in (out.parents[1] / "codec").glob("*.onnx")) / 1e6
    assert info["codec_mb"] == pytest.approx(codec, abs=0.001) and info["total_mb"] == pytest.approx(size + codec, abs=0.01)


def test_a_referenced_codec_is_found_beside_the_model_and_must_be_the_trained_one(made, tmp_path):
    from speechkit.export.tts import export_tts
    from speechkit.runtime.tts import Synthesizer

    root, exp, out, prompt, info = made
    assert info["codec"] == "../../codec" and info["codec_source"] == str(root / "codec")
    audio = Synthesizer(out).synthesize(TEXTS[2], prompt, FAST)
    assert len(audio) > 0 and np.all(np.isfinite(audio))
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    with pytest.raises(SpeechkitError, match=r"codec.*no exported codec there.*keep the model beside its codec"):
        Synthesizer(moved)
    np.testing.assert_array_equal(Synthesizer(moved, codec_dir=root / "codec").synthesize(TEXTS[2], prompt, FAST), audio)
    other = tmp_path / "other_codec"
    shutil.copytree(root / "codec", other)
    _tamper(other / "decoder.onnx")
    with pytest.raises(SpeechkitError, match="not the codec .* was trained on"):
        export_tts(exp, tmp_path / "bad", TEXTS[0], codec_dir=other)
    with pytest.raises(SpeechkitError, match="no exported codec there"):
        export_tts(exp, tmp_path / "bad", TEXTS[0], codec_dir=tmp_path)


class _OldPrefix(nn.Module):
    """ar_prefix.onnx as exports wrote it before the single graph."""

    def __init__(self, model: ClearTTS):
        super().__init__()
        self.model = model

    def forward(self, kinds, phones, latents):
        h, cache = self.model.run(self.model.embed(kinds, phones, latents))
        return h[:, -1], self.model.stop(h[:, -1])[:, 0], torch.stack([torch.stack(kv) for kv in cache])


class _OldStep(_OldPrefix):
    """ar_step.onnx before the single graph: one latent."""

    def forward(self, latent, cache):
        kinds = torch.full((latent.shape[0], 1), LATENT, dtype=torch.long)
        x = self.model.embed(kinds, torch.zeros_like(kinds), latent[:, None], text=False)
        h, new = self.model.run(x, [(layer[0], layer[1]) for layer in cache.unbind(0)])
        return h[:, -1], self.model.stop(h[:, -1])[:, 0], torch.stack([torch.stack(kv) for kv in new])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the old graphs traced Block.forward's Python branches
def test_an_export_with_the_old_two_graphs_still_runs(made):
    from speechkit.export.onnx_file import write_onnx
    from speechkit.models.tts.io import load_tts
    from speechkit.runtime.tts import Synthesizer

    root, exp, out, prompt, _ = made
    old = root / "models" / "old"  # beside out: export.json's ../../codec still holds
    shutil.copytree(out, old)
    model, _, _ = load_tts(exp)
    kinds = torch.tensor([[PHONE, PHONE, 2, 3, 3, 4]])
    axes = {"kinds": {0: "B", 1: "T"}, "phones": {0: "B", 1: "T"}, "latents": {0: "B", 1: "T"}, "hidden": {0: "B"},
            "stop_logit": {0: "B"}, "cache": {2: "B", 4: "T"}}
    write_onnx(_OldPrefix(model).eval(), (kinds, torch.tensor([[4, 5, 0, 0, 0, 0]]), torch.randn(1, 6, 8)), old / "ar_prefix.onnx",
               ["kinds", "phones", "latents"], ["hidden", "stop_logit", "cache"], axes, {"model_family": "tts-clear"})
    write_onnx(_OldStep(model).eval(), (torch.randn(1, 8), torch.randn(2, 2, 1, 2, 5, 32)), old / "ar_step.onnx", ["latent", "cache"],
               ["hidden", "stop_logit", "cache_out"], {"latent": {0: "B"}, "cache": {2: "B", 4: "T"}, "hidden": {0: "B"},
                                                      "stop_logit": {0: "B"}, "cache_out": {2: "B", 4: "T_next"}},
               {"model_family": "tts-clear"})
    tts = Synthesizer(old)
    assert tts.ar.legacy_prefix is not None
    got = np.stack(list(tts.latents(TEXTS[2], prompt, FAST)))
    np.testing.assert_allclose(got, np.stack(list(Synthesizer(out).latents(TEXTS[2], prompt, FAST))), atol=1e-4)
    with pytest.raises(SpeechkitError, match="one latent at a time"):
        tts.ar.block({}, tts.ar.empty)
    (old / "ar_prefix.onnx").unlink()
    with pytest.raises(SpeechkitError, match=r"ar_prefix\.onnx: no such file"):
        Synthesizer(old)
