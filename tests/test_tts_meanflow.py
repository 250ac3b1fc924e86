"""CLEAR's mean-flow head (issue 21): one step fits a conditional 2-D mixture that one rectified-flow
step cannot; the sampler is ``nn.meanflow.sample``; a tiny mean-flow CLEAR trains through the engine;
flow.onnx (x, r, t, c) matches torch and the runtime's 1/2-step loop matches the torch loop; the
rectified head's weights and old checkpoints are unchanged."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from speechkit.decoding.tts_options import SynthOptions, max_frames
from speechkit.errors import ConfigError, SpeechkitError
from speechkit.models.tts.clear import ClearConfig, ClearTTS, FlowConfig
from speechkit.models.tts.flow import FlowHead
from speechkit.nn.meanflow import meanflow_loss, sample

from test_tts_engine import make_prepared

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "egs" / "synth" / "tts" / "conf"
TEXT = "the quick brown fox"

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the 2-D toy: two classes, two blobs each ----------------------------------------------------

MODES = torch.tensor([[[-2.0, -2.0], [2.0, 2.0]], [[-2.0, 2.0], [2.0, -2.0]]])  # [class, mode, xy]: each class's mean is 0
SPREAD = 0.25


def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n points of the mixture and their class as a one-hot condition [n, 2]."""
    k, m = torch.randint(0, 2, (n,)), torch.randint(0, 2, (n,))
    return MODES[k, m] + SPREAD * torch.randn(n, 2), torch.nn.functional.one_hot(k, 2).float()


def train_toy(objective: str, steps: int = 400, batch: int = 256) -> FlowHead:
    """The same head size, optimiser, data and condition dropout; the mean-flow loss with
    FlowConfig's defaults (the times, the share of r = t rows, the adaptive weights)."""
    fc = FlowConfig()
    torch.manual_seed(0)
    head = FlowHead(2, 2, hidden=64, blocks=2, objective=objective)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        x1, c = draw(batch)
        if objective == "rectified":
            loss = head.loss(x1, head.drop_condition(c, fc.cfg_dropout))
        else:
            loss, _ = meanflow_loss(head.average_velocity, x1, c, fm_fraction=fc.fm_fraction, time_mean=fc.time_mean,
                                    time_std=fc.time_std, null_cond=head.null, cond_drop=fc.cfg_dropout,
                                    adaptive_p=fc.adaptive_p, adaptive_c=fc.adaptive_c)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return head.eval()


def fit(head: FlowHead, steps: int) -> dict[str, float]:
    """Samples of both classes from the same noise: the mean distance to the nearest of the class's
    two modes, the share within 3 spreads of one, the smaller mode's share and the mean per-mode
    standard deviation (the data's: 0.25)."""
    torch.manual_seed(1)
    k = torch.arange(2000) % 2
    x = head.sample(torch.nn.functional.one_hot(k, 2).float(), steps, 1.0, 1.0, torch.randn(2000, 2))
    d = torch.cdist(x[:, None], MODES[k]).squeeze(1)  # [n, 2]: to the class's own modes
    dist, nearest = d.min(1)
    groups = [x[(k == j) & (nearest == m)] for j in (0, 1) for m in (0, 1)]
    return {"dist": dist.mean().item(), "hit": (dist < 3 * SPREAD).float().mean().item(),
            "min_share": min(len(g) for g in groups) / 1000, "sd": float(np.mean([g.std(0).mean().item() for g in groups if len(g) > 1]))}


def test_one_mean_flow_step_fits_a_conditional_mixture_that_one_rectified_step_cannot():
    mean_flow, rectified = train_toy("meanflow"), train_toy("rectified")
    mf1, mf2, rf1, rf50 = fit(mean_flow, 1), fit(mean_flow, 2), fit(rectified, 1), fit(rectified, 50)
    print("\n" + "\n".join(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items())
                           for name, r in (("mean flow 1 step", mf1), ("mean flow 2 steps", mf2),
                                           ("rectified 1 step", rf1), ("rectified 50 steps", rf50))))
    assert mf1["dist"] < 0.5 and mf1["hit"] > 0.8, mf1  # one step lands on the modes ...
    assert mf1["min_share"] > 0.35 and 0.1 < mf1["sd"] < 0.5, mf1  # ... every mode of each class, with spread
    assert mf2["dist"] < 0.5 and mf2["hit"] > 0.8, mf2
    assert rf1["dist"] > 1.5 and rf1["hit"] < 0.05, rf1  # one Euler step: the class mean, between the modes
    assert rf50["dist"] < 0.5 and rf50["hit"] > 0.8, rf50  # its field is fine: fifty steps get there


# --- the head ------------------------------------------------------------------------------------


def randomised(head: FlowHead) -> FlowHead:
    """Every parameter drawn (the zero-initialised output layers would make the velocity 0)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 0.3)
    return head


def test_the_hoisted_sampler_is_the_shared_mean_flow_sampler():
    head = randomised(FlowHead(6, 10, hidden=32, blocks=2, objective="meanflow"))
    c, noise = torch.randn(3, 10), torch.randn(3, 6)
    for steps in (1, 2, 5):
        ref = sample(head.average_velocity, 0.8 * noise, c, steps=steps)
        got = head.sample(c, steps, cfg_scale=1.7, temperature=0.8, noise=noise)  # guidance is in the weights: 1.7 is unused
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(head.sample(c, 1, noise=noise), head.sample(c, 2, noise=noise), atol=1e-3)
    x, t = torch.randn(3, 6), torch.rand(3)
    with torch.no_grad():  # r = None is r = t, the instantaneous velocity; the interval matters
        assert torch.equal(head(x, t, c), head(x, t, c, t))
        assert not torch.allclose(head(x, t, c, t + 0.5), head(x, t, c, t), atol=1e-3)
    with pytest.raises(ValueError, match="takes no r"):
        FlowHead(6, 10, hidden=32, blocks=2)(x, t, c, t)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        head.sample(c, 0)


def rectified_reference(sd: dict[str, torch.Tensor], x, t, c):
    """The rectified head written out from its state dict (the layout before mean flow existed)."""
    from speechkit.nn.dit import timestep_features

    lin = lambda name, v: torch.nn.functional.linear(v, sd[f"{name}.weight"], sd[f"{name}.bias"])  # noqa: E731
    silu, norm = torch.nn.functional.silu, lambda v: torch.nn.functional.layer_norm(v, v.shape[-1:])
    e = silu(lin("cond", c) + lin("time.2", silu(lin("time.0", timestep_features(t, 256)))))
    h = lin("inp", x)
    shift, scale, gate = lin("blocks.0.mod", e).chunk(3, -1)
    h = h + gate * lin("blocks.0.mlp.2", silu(lin("blocks.0.mlp.0", norm(h) * (1 + scale) + shift)))
    shift, scale = lin("out_mod", e).chunk(2, -1)
    return lin("out", norm(h) * (1 + scale) + shift)


def test_rectified_weights_and_old_checkpoints_are_unchanged(tmp_path):
    head = randomised(FlowHead(2, 3, hidden=8, blocks=1))
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {"null": (3,), "inp.weight": (8, 2), "inp.bias": (8,), "cond.weight": (8, 3), "cond.bias": (8,),
                      "time.0.weight": (8, 256), "time.0.bias": (8,), "time.2.weight": (8, 8), "time.2.bias": (8,),
                      "blocks.0.mlp.0.weight": (16, 8), "blocks.0.mlp.0.bias": (16,), "blocks.0.mlp.2.weight": (8, 16),
                      "blocks.0.mlp.2.bias": (8,), "blocks.0.mod.weight": (24, 8), "blocks.0.mod.bias": (24,),
                      "out_mod.weight": (16, 8), "out_mod.bias": (16,), "out.weight": (2, 8), "out.bias": (2,)}
    x, t, c = torch.randn(4, 2), torch.rand(4), torch.randn(4, 3)
    with torch.no_grad():
        torch.testing.assert_close(head(x, t, c), rectified_reference(head.state_dict(), x, t, c), atol=1e-6, rtol=1e-6)
    mf = FlowHead(2, 3, hidden=8, blocks=1, objective="meanflow").state_dict()
    assert set(mf) - set(shapes) == {"gap.0.weight", "gap.0.bias", "gap.2.weight", "gap.2.bias"} and set(shapes) <= set(mf)

    # a model.pt saved before FlowConfig had an objective loads as the rectified head it was
    from speechkit.models.tts.io import FAMILY, load_tts

    torch.manual_seed(0)
    model = ClearTTS(ClearConfig(vocab_size=5, latent_dim=2, d_model=16, layers=1, heads=2, ff=32,
                                 flow=FlowConfig(hidden=8, blocks=1))).eval()
    randomised(model.head)
    config = dataclasses.asdict(model.cfg)
    config["flow"] = {k: config["flow"][k] for k in ("hidden", "blocks", "cfg_dropout", "noise_samples")}
    torch.save({"model": model.state_dict(), "config": config, "phones": ["a"] * 5, "codec": "c", "family": FAMILY}, tmp_path / "model.pt")
    old, _, _ = load_tts(tmp_path)
    assert old.head.objective == "rectified" and old.cfg.flow == FlowConfig(hidden=8, blocks=1)
    h, noise = torch.randn(3, 16), torch.randn(3, 2)
    assert torch.equal(old.head.sample(h, 10, 1.5, 0.8, noise), model.head.sample(h, 10, 1.5, 0.8, noise))


def test_bad_flow_configs_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="unknown flow objective 'meanflows'"):
        FlowConfig(objective="meanflows")
    with pytest.raises(ConfigError, match="needs cfg_dropout > 0"):
        FlowConfig(objective="meanflow", cfg_scale=2.0, cfg_dropout=0.0)
    from speechkit.train.tts import load_tts_experiment

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: 16\n  flow:\n    objective: mean\n")
    with pytest.raises(ConfigError, match=rf"^{bad}:3: unknown flow objective 'mean'"):
        load_tts_experiment(bad)
    for name in ("train_clear_mf_gpu.yaml", "train_clear_mf_cpu.yaml"):
        assert load_tts_experiment(CONF / name).model.flow.objective == "meanflow"


# --- a tiny mean-flow CLEAR through the engine ---------------------------------------------------


def test_tiny_mean_flow_clear_trains_through_the_engine(tmp_path):
    from speechkit.models.tts.fast import FastGenerator
    from speechkit.models.tts.io import load_tts
    from speechkit.train.tts import load_tts_experiment, train_tts

    make_prepared(tmp_path / "prep")
    exp = load_tts_experiment(CONF / "train_clear_mf_cpu.yaml")
    exp = dataclasses.replace(exp, optim_conf=dataclasses.replace(exp.optim_conf, lr=3e-3, warmup_steps=2),
                              train_conf=dataclasses.replace(exp.train_conf, max_steps=20, max_tokens=400, prompt_seconds=(0.2, 0.4),
                                                             log_interval=5, save_interval_steps=10))
    train_tts(exp, [tmp_path / "prep"], tmp_path / "exp", device="cpu")
    rows = [json.loads(line) for line in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    for r in rows:
        assert {"flow", "flow_mse", "flow_mse_mf", "flow_masked", "stop"} <= r.keys()
        assert all(math.isfinite(r[k]) for k in ("loss", "flow", "flow_mse", "flow_mse_mf", "stop") if k in r) and r["flow_masked"] == 0
    assert rows[-1]["flow_mse"] < rows[0]["flow_mse"], [r["flow_mse"] for r in rows]

    model, _, _ = load_tts(tmp_path / "exp")
    assert model.head.objective == "meanflow" and model.head.gap is not None
    phones, prompt = torch.tensor([1, 2, 3]), torch.randn(3, 4)
    gen = {s: torch.stack(list(model.generate(phones, prompt, steps=s, max_frames=6, stop_threshold=2.0,
                                              generator=torch.Generator().manual_seed(0)))) for s in (1, 2)}
    assert all(torch.isfinite(z).all() for z in gen.values()) and not torch.allclose(gen[1], gen[2], atol=1e-4)
    fast = torch.stack(list(FastGenerator(model, graphs=False).generate(phones, prompt, steps=1, max_frames=6, stop_threshold=2.0,
                                                                        generator=torch.Generator().manual_seed(0))))
    torch.testing.assert_close(fast, gen[1], atol=1e-4, rtol=1e-4)


# --- export and the runtime ----------------------------------------------------------------------


def export_codec(root: Path) -> Path:
    """A random VAE codec at 25 latents/s (hop 640) x 8, exported."""
    from speechkit.export.codec import export_codec as export
    from speechkit.models.codec.model import CodecConfig, build_codec
    from speechkit.nn.seanet import SeanetConfig

    torch.manual_seed(0)
    enc = SeanetConfig(channels=2, strides=(2, 4, 8, 10), latent_dim=8, dilations=(1,), shortcuts=True)
    export(build_codec(CodecConfig("vae", encoder_conf=enc)).eval(), root / "codec",
           [np.random.default_rng(0).standard_normal(4 * 640).astype(np.float32) * 0.1])
    return root / "codec"


def mean_flow_experiment(root: Path, codec: Path) -> Path:
    """A random mean-flow CLEAR saved like a trained one (every head weight drawn, the stop head never fires)."""
    from speechkit.models.tts.io import save_tts
    from speechkit.text.phonemes import PhonemeVocab, text_to_phonemes

    vocab = PhonemeVocab.build(text_to_phonemes([TEXT, "hi"]))
    torch.manual_seed(0)
    cfg = ClearConfig(vocab_size=len(vocab), latent_dim=8, d_model=32, layers=2, heads=2, ff=64, dropout=0.0,
                      flow=FlowConfig(hidden=32, blocks=2, objective="meanflow", cfg_scale=1.5))
    model = ClearTTS(cfg).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0.0, 0.5 if p.dim() == 1 else 0.1)
        model.latent_mean.normal_(0.0, 0.3)
        model.latent_std.uniform_(0.5, 1.5)
        model.stop.bias.fill_(-30.0)
    (root / "exp").mkdir()
    save_tts(model, vocab.symbols, str(codec), root / "exp" / "model.pt")
    return root / "exp"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import soundfile as sf

    from speechkit.export.tts import export_tts

    root = tmp_path_factory.mktemp("tts_mf")
    exp = mean_flow_experiment(root, export_codec(root))
    info = export_tts(exp, root / "onnx", TEXT)
    t = np.arange(16000) / 16000
    sf.write(root / "prompt.wav", 0.3 * np.sin(2 * np.pi * 180 * t), 16000)
    return exp, root / "onnx", root / "prompt.wav", info


def test_mean_flow_export_parity(exported):
    from speechkit.runtime.session import cpu_session

    _, out, _, info = exported
    written = json.loads((out / "export.json").read_text())
    assert info["flow_objective"] == written["flow_objective"] == written["config"]["flow"]["objective"] == "meanflow"
    p = info["parity"]
    assert p["flow_objective"] == "meanflow" and p["flow_steps"] == 2 and p["trained_cfg_scale"] == 1.5
    assert p["max_abs_diff"] <= 1e-3 and p["velocity_max_abs_diff"] <= 1e-3 and p["sample_max_abs_diff"] <= 1e-3
    flow = cpu_session(out / "flow.onnx")
    assert [(i.name, i.shape) for i in flow.get_inputs()] == [("x", ["N", 8]), ("r", ["N"]), ("t", ["N"]), ("c", ["N", 32])]
    assert flow.get_modelmeta().custom_metadata_map["flow_objective"] == "meanflow"


def test_a_wrong_mean_flow_graph_fails_the_export(exported, tmp_path, monkeypatch):
    import speechkit.export.tts as ex
    from speechkit.models.tts.io import load_tts

    exp = exported[0]
    real = ex.write_flow_graph

    def write_shifted(head, path, meta):  # the graph of a head whose interval embedding is a little off
        other, _, _ = load_tts(exp)
        with torch.no_grad():
            other.head.gap[2].bias.add_(0.05)
        real(other.head, path, meta)

    monkeypatch.setattr(ex, "write_flow_graph", write_shifted)
    with pytest.raises(SpeechkitError, match="disagree"):
        ex.export_tts(exp, tmp_path / "bad", TEXT)
    assert not (tmp_path / "bad" / "flow.onnx").exists()


@pytest.mark.parametrize("steps", [1, 2])
def test_runtime_mean_flow_steps_equal_the_torch_loop(exported, steps):
    from speechkit.models.tts.io import load_tts
    from speechkit.runtime.tts import Synthesizer, phoneme_ids, prompt_latents

    exp, out, prompt, _ = exported
    tts = Synthesizer(out)
    assert tts.objective == "meanflow"
    opts = SynthOptions(steps=steps, cfg_scale=3.0, temperature=0.8, prompt_seconds=1.0, seed=0)  # cfg_scale: unused by mean flow
    got = np.stack(list(tts.latents("hi", prompt, opts)))
    model, _, _ = load_tts(exp)
    ids = torch.tensor(phoneme_ids(tts.vocab, "hi"))
    rng = np.random.default_rng(opts.seed)
    ref = []
    with torch.no_grad():
        h, cache = model.prefill(ids, model.normalize(torch.from_numpy(prompt_latents(tts.codec, prompt, opts.prompt_seconds))))
        for _ in range(max_frames(len(ids), 25.0)):
            z = model.head.sample(h, steps, 1.0, opts.temperature, torch.from_numpy(rng.standard_normal((1, 8), dtype=np.float32)))
            ref.append(model.denormalize(z[0]).numpy())
            h, cache = model.step(z, cache)
    np.testing.assert_allclose(got, np.stack(ref), atol=1e-3)
    if steps == 1:  # steps left to the model: one mean-flow step
        np.testing.assert_array_equal(np.stack(list(tts.latents("hi", prompt, dataclasses.replace(opts, steps=None)))), got)


def test_the_torch_synthesiser_takes_the_objectives_default_steps(exported):
    from speechkit.inference.tts import TorchSynthesizer
    from speechkit.decoding.tts_options import flow_steps

    assert flow_steps("rectified", None) == 10 and flow_steps("meanflow", None) == 1 and flow_steps("meanflow", 3) == 3
    with pytest.raises(SpeechkitError, match="at least 1"):
        flow_steps("meanflow", 0)
    exp, _, prompt, _ = exported
    tts = TorchSynthesizer(exp, "cpu")
    opts = SynthOptions(temperature=0.8, prompt_seconds=1.0, seed=0)
    one = tts.synthesize("hi", prompt, dataclasses.replace(opts, steps=1))
    np.testing.assert_array_equal(tts.synthesize("hi", prompt, dataclasses.replace(opts, steps=None)), one)
    assert np.abs(tts.synthesize("hi", prompt, dataclasses.replace(opts, steps=2)) - one).max() > 1e-4


def test_int8_mean_flow_export_stays_close(exported, tmp_path):
    from speechkit.export.tts import export_tts
    from speechkit.runtime.tts import Synthesizer

    exp, _, prompt, _ = exported
    info = export_tts(exp, tmp_path / "int8", TEXT, int8=True)
    check = info["int8_check"]
    assert check["velocity_rel_err"] < 0.05 and check["sample_rel_err"] < 0.05, check
    audio = Synthesizer(tmp_path / "int8").synthesize("hi", prompt, SynthOptions(steps=1, prompt_seconds=1.0))
    assert len(audio) == max_frames(4, 25.0) * 640 and np.all(np.isfinite(audio))
