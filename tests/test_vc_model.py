"""The voice-conversion model (MeanVC on ChunkDiT) and its training task on the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechkit.models.vc.io import load_vc, save_vc
from speechkit.models.vc.model import MeanVC, VcConfig
from speechkit.train.engine import Engine
from speechkit.train.vc import FlowConfig, VcExperiment, VcOptimConfig, VcTask, VcTrainConfig

CFG = VcConfig(latent_dim=6, content_dim=5, spk_dim=4, dim=32, layers=2, heads=2, chunk=3, cache_chunks=2, ref_frames=12)


class FakeDump:
    """What ``VcTask`` reads of a ``VcDump``: speakers whose latents are a per-speaker offset plus a
    linear map of the content, so the voice is only in the reference and the words only in the content."""

    def __init__(self, speakers: int = 4, per_spk: int = 3, seed: int = 0):
        rng = np.random.default_rng(seed)
        lat, con, spk, emb = [], [], [], []
        offsets = [0]
        mix = rng.normal(size=(CFG.content_dim, CFG.latent_dim)).astype(np.float32)
        for s in range(speakers):
            voice = rng.normal(size=CFG.latent_dim).astype(np.float32) * 2
            e = rng.normal(size=CFG.spk_dim).astype(np.float32)
            for _ in range(per_spk):
                n = int(rng.integers(14, 30))
                c = rng.normal(size=(n, CFG.content_dim)).astype(np.float32)
                lat.append(c @ mix + voice)
                con.append(c)
                spk.append(f"s{s}")
                emb.append(e / np.linalg.norm(e))
                offsets.append(offsets[-1] + n)
        self.latents, self.content = np.concatenate(lat), np.concatenate(con)
        self.offsets, self.spk, self.spk_emb = np.array(offsets), spk, np.stack(emb)
        self.stats = {"latent_dim": CFG.latent_dim, "content_dim": CFG.content_dim, "spk_dim": CFG.spk_dim,
                      "latent_mean": self.latents.mean(0).tolist(), "latent_std": self.latents.std(0).tolist()}

    def frames(self, i: int):
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.latents[a:b], self.content[a:b]


def experiment(**flow) -> VcExperiment:
    return VcExperiment(model_conf=CFG, flow_conf=FlowConfig(**flow),
                        optim_conf=VcOptimConfig(lr=3e-3, warmup_steps=5),
                        train_conf=VcTrainConfig(max_steps=4, batch_size=6, segment_frames=10, min_frames=5,
                                                 log_interval=1, save_interval_steps=2, amp="off"))


def test_streamed_conversion_is_the_training_forward():
    """A one-step chunk-by-chunk conversion gives, for every chunk, what the training forward gives on
    the same noise with the generated chunks as the clean context: training and inference agree."""
    torch.manual_seed(0)
    model = MeanVC(CFG)
    for p in model.parameters():  # the zero-initialised output would make the check trivial
        torch.nn.init.normal_(p, std=0.2)
    model.set_stats(torch.randn(CFG.latent_dim), torch.rand(CFG.latent_dim) + 0.5)
    model.eval()
    T = 13  # four full chunks and a partial one
    content, spk = torch.randn(2, T, CFG.content_dim), torch.randn(2, CFG.spk_dim)
    ref = torch.randn(2, 9, CFG.latent_dim)
    noise = torch.randn(2, T, CFG.latent_dim)
    y = model.convert(content, ref, spk, steps=1, noise=noise)
    assert y.shape == (2, T, CFG.latent_dim)
    x1 = model.normalise(y)
    ones, zeros = torch.ones(2), torch.zeros(2)
    with torch.no_grad():
        u = model(noise, x1, content, model.normalise(ref), torch.ones(2, 9, dtype=torch.bool), spk, None, ones, zeros)
    torch.testing.assert_close(x1, noise + u, atol=2e-4, rtol=1e-4)
    # two steps: a different path, still finite and of the same shape
    y2 = model.convert(content, ref, spk, steps=2, noise=noise)
    assert torch.isfinite(y2).all() and not torch.allclose(y, y2)


def test_dropped_timbre_ignores_reference_and_speaker():
    torch.manual_seed(1)
    model = MeanVC(CFG)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, c = torch.randn(2, 6, CFG.latent_dim), torch.randn(2, 6, CFG.content_dim)
    r, t = torch.full((2,), 0.8), torch.full((2,), 0.3)
    mask = torch.ones(2, 5, dtype=torch.bool)
    keep = torch.tensor([True, False])
    a = model(x, x, c, torch.randn(2, 5, CFG.latent_dim), mask, torch.randn(2, CFG.spk_dim), keep, r, t)
    b = model(x, x, c, torch.randn(2, 5, CFG.latent_dim), mask, torch.randn(2, CFG.spk_dim), keep, r, t)
    torch.testing.assert_close(a[1], b[1])
    assert not torch.allclose(a[0], b[0])


def test_batches_take_timbre_from_another_utterance_of_the_speaker():
    dump = FakeDump()
    task = VcTask(experiment(), dump, torch.device("cpu"))
    b1, b2 = task.batch(7), task.batch(7)
    for k in b1:
        assert torch.equal(b1[k], b2[k])  # a pure function of the key
    assert not torch.equal(task.batch(8)["x1"], b1["x1"])
    assert b1["x1"].shape == (6, 10, CFG.latent_dim) and b1["ref"].shape == (6, CFG.ref_frames, CFG.latent_dim)
    # each row's speaker embedding is its own speaker's (the reference is a same-speaker utterance)
    embs = {tuple(np.round(e, 5)) for e in dump.spk_emb}
    assert all(tuple(np.round(e.numpy(), 5)) in embs for e in b1["spk"])
    assert (b1["lengths"] == 10).all() and b1["ref_mask"].any(1).all()


def test_dump_of_another_shape_is_a_one_line_error():
    dump = FakeDump()
    dump.stats = {**dump.stats, "content_dim": 7}
    with pytest.raises(Exception, match="content_dim is 7"):
        VcTask(experiment(), dump, torch.device("cpu"))


def _train(exp_dir, steps: int, **flow):
    exp = experiment(**flow)
    exp = VcExperiment(exp.model_conf, exp.flow_conf, exp.optim_conf,
                       VcTrainConfig(**{**exp.train_conf.__dict__, "max_steps": steps}))
    torch.manual_seed(0)
    task = VcTask(exp, FakeDump(), torch.device("cpu"))
    engine = Engine(task, exp.train_conf, exp.optim_conf, exp_dir, "cpu", progress=False)
    engine.fit()
    return engine.model_state()


def test_trains_finite_and_resumes_exactly(tmp_path):
    whole = _train(tmp_path / "a", 4, cfg_scale=2.0, cond_drop=0.3)
    _train(tmp_path / "b", 2, cfg_scale=2.0, cond_drop=0.3)
    resumed = _train(tmp_path / "b", 4, cfg_scale=2.0, cond_drop=0.3)
    for k in whole:
        torch.testing.assert_close(whole[k], resumed[k], atol=0, rtol=0)
    rows = [__import__("json").loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows) and rows[-1]["step"] == 4


def test_model_file_round_trip(tmp_path):
    model = MeanVC(CFG)
    model.set_stats(torch.arange(CFG.latent_dim, dtype=torch.float32), torch.full((CFG.latent_dim,), 2.0))
    save_vc(model.state_dict(), CFG, {"codec": "c", "content_layer": 12}, tmp_path / "model.pt")
    back, features = load_vc(tmp_path)
    assert back.cfg == CFG and features["content_layer"] == 12
    torch.testing.assert_close(back.latent_mean, model.latent_mean)
    with pytest.raises(Exception, match="not a voice-conversion model"):
        torch.save({"family": "codec", "config": {}}, tmp_path / "other.pt")
        load_vc(tmp_path / "other.pt")


def test_learns_to_convert_on_a_toy_dump(tmp_path):
    """On the toy dump (latents = content map + the speaker's offset) a short run cuts the one-step
    conversion's error well below the untrained model's: the flow, the timbre and the content all
    reach the output."""
    dump = FakeDump(speakers=3, per_spk=4, seed=3)
    exp = VcExperiment(model_conf=CFG, flow_conf=FlowConfig(fm_fraction=0.5),
                       optim_conf=VcOptimConfig(lr=3e-3, warmup_steps=20, final_lr_ratio=0.1),
                       train_conf=VcTrainConfig(max_steps=250, batch_size=16, segment_frames=12, min_frames=5,
                                                log_interval=50, save_interval_steps=1000, amp="off"))

    def error(model):
        torch.manual_seed(5)
        errs = []
        for i in (0, 5, 10):  # utterance i converted with another utterance of its speaker as the reference
            lat, con = dump.frames(i)
            ref_lat, _ = dump.frames(i + 1 if i % 4 != 3 else i - 1)
            j = i + 1 if i % 4 != 3 else i - 1
            y = model.convert(torch.from_numpy(con)[None], torch.from_numpy(ref_lat)[None],
                              torch.from_numpy(dump.spk_emb[j])[None], steps=1)
            errs.append(float(((y[0].numpy() - lat) ** 2).mean() / lat.var(0).mean()))
        return float(np.mean(errs))

    torch.manual_seed(0)
    task = VcTask(exp, dump, torch.device("cpu"))
    before = error(task.model.eval())
    engine = Engine(task, exp.train_conf, exp.optim_conf, tmp_path, "cpu", progress=False)
    engine.fit()
    model = MeanVC(CFG)
    model.load_state_dict(engine.model_state())
    after = error(model.eval())
    assert after < 0.35 * before, (before, after)


def test_euler_sampler_uses_the_instantaneous_velocity():
    """sampler="euler" steps with u(x, t, t): one step from noise equals noise + u(noise, 0, 0)."""
    torch.manual_seed(2)
    model = MeanVC(CFG)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    model.eval()
    content, spk, ref = torch.randn(1, 3, CFG.content_dim), torch.randn(1, CFG.spk_dim), torch.randn(1, 4, CFG.latent_dim)
    noise = torch.randn(1, 3, CFG.latent_dim)
    y = model.normalise(model.convert(content, ref, spk, steps=1, noise=noise, sampler="euler"))
    zeros = torch.zeros(1)
    with torch.no_grad():
        u = model(noise, y, content, model.normalise(ref), torch.ones(1, 4, dtype=torch.bool), spk, None, zeros, zeros)
    torch.testing.assert_close(y, noise + u, atol=2e-4, rtol=1e-4)
    assert not torch.allclose(y, model.normalise(model.convert(content, ref, spk, steps=1, noise=noise)))
    with pytest.raises(ValueError, match="sampler"):
        model.convert(content, ref, spk, sampler="heun")


def test_forward_chunk_contract_with_a_stream_ending_early():
    """init_state / forward_chunk: two streams in one batch, the second ending inside the last chunk,
    give each stream's own chunk-by-chunk result on its valid frames."""
    torch.manual_seed(4)
    model = MeanVC(CFG)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    model.eval()
    T, short = 6, 5
    content, spk, ref = torch.randn(2, T, CFG.content_dim), torch.randn(2, CFG.spk_dim), torch.randn(2, 4, CFG.latent_dim)
    noise = torch.randn(2, T, CFG.latent_dim)
    reference = model.reference(ref)
    state, out = model.init_state(2), []
    for at in range(0, T, CFG.chunk):
        lens = torch.tensor([CFG.chunk, min(CFG.chunk, max(0, short - at))])
        y, _, state = model.forward_chunk(content[:, at : at + CFG.chunk], lens, state, reference=reference, spk=spk,
                                          noise=noise[:, at : at + CFG.chunk])
        out.append(y)
    y = torch.cat(out, 1)
    alone = model.convert(content[1:, :short], ref[1:], spk[1:], noise=noise[1:, :short])
    torch.testing.assert_close(y[1:, :short], alone, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(y[:1], model.convert(content[:1], ref[:1], spk[:1], noise=noise[:1]), atol=2e-4, rtol=1e-4)
