"""CLEAR (AR transformer over codec latents + rectified-flow head + stop head): KV cache, the flow
sampler, the stop head, batch layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechkit.models.tts.clear import BOS, LATENT, PHONE, PROMPT, SEP, ClearConfig, ClearTTS, FlowConfig, alignment_prior
from speechkit.models.tts.data import collate
from speechkit.models.tts.flow import FlowHead


def tiny(vocab: int = 12, dropout: float = 0.0, **kw) -> ClearTTS:
    torch.manual_seed(0)
    cfg = ClearConfig(vocab_size=vocab, latent_dim=4, d_model=32, layers=2, heads=2, ff=64, dropout=dropout,
                      flow=FlowConfig(hidden=32, blocks=2, cfg_dropout=0.0, noise_samples=1), **kw)
    return ClearTTS(cfg).eval()


def test_collate_layout():
    ph = np.array([3, 4, 5])
    pr = np.ones((2, 4), np.float32)
    z = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = collate([(ph, pr, z), (ph[:1], pr[:1], z[:1])])
    k = b["kinds"][0].tolist()
    assert k == [PHONE] * 3 + [SEP] + [PROMPT] * 2 + [BOS] + [LATENT] * 3
    assert b["kinds"][1].tolist()[:5] == [PHONE, SEP, PROMPT, BOS, LATENT] and b["kinds"][1, 5:].eq(0).all()
    # the bos position predicts the first latent, each latent the next; stop only after the last
    fm = b["flow_mask"][0]
    assert fm.nonzero().flatten().tolist() == [6, 7, 8]
    assert torch.equal(b["targets"][0, 6:9], torch.from_numpy(z))
    assert torch.equal(b["latents"][0, 7:10], torch.from_numpy(z))
    assert b["stop_mask"][0].nonzero().flatten().tolist() == [6, 7, 8, 9]
    assert b["stop"][0].nonzero().flatten().tolist() == [9]


@pytest.mark.parametrize("text_layers", [0, 1])
def test_cached_hidden_states_equal_full_forward(text_layers):
    m = tiny(text_layers=text_layers)
    phones, prompt = torch.tensor([1, 5, 7, 2]), torch.randn(3, 4)
    z = torch.randn(5, 4)
    kinds, ids, lat = m.prefix(phones, prompt)
    full_kinds = torch.cat([kinds, torch.full((1, 5), LATENT)], 1)
    full_ids = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1)
    full, _ = m.run(m.embed(full_kinds, full_ids, torch.cat([lat, z[None]], 1)))
    h, cache = m.prefill(phones, prompt)
    hs = [h]
    for i in range(5):
        h, cache = m.step(z[i : i + 1], cache)
        hs.append(h)
    torch.testing.assert_close(torch.cat(hs), full[0, -6:], atol=1e-5, rtol=1e-5)
    assert cache[0][0].shape[2] == full.shape[1]


@pytest.mark.parametrize("text_layers", [0, 1])
def test_kv_cached_generation_equals_uncached(text_layers):
    m = tiny(text_layers=text_layers)
    with torch.no_grad():
        m.stop.bias.fill_(-30.0)  # never stop early: compare 12 frames
    phones, prompt = torch.tensor([1, 5, 7, 2]), torch.randn(3, 4)

    def gen(cache: bool) -> torch.Tensor:
        g = torch.Generator().manual_seed(3)
        return torch.stack(list(m.generate(phones, prompt, steps=4, cfg_scale=2.0, max_frames=12, generator=g, use_cache=cache)))

    a, b = gen(True), gen(False)
    assert a.shape == (12, 4)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # and a different noise seed gives a different draw (the comparison can fail)
    g = torch.Generator().manual_seed(4)
    c = torch.stack(list(m.generate(phones, prompt, steps=4, max_frames=12, generator=g)))
    assert not torch.allclose(a, c, atol=1e-3)


def test_text_encoder_is_bidirectional_and_batch_independent():
    """The text encoder sees the whole phoneme string (a later phoneme changes an earlier one's
    state), and a training batch (phoneme span only, padded rows) gives the phoneme positions the
    same states as the single-utterance inference prefix."""
    m = tiny(text_layers=1)
    prompt = torch.randn(3, 4)
    a = m.embed(*m.prefix(torch.tensor([1, 5, 7, 2]), prompt))
    b = m.embed(*m.prefix(torch.tensor([1, 5, 7, 3]), prompt))
    assert not torch.allclose(a[0, 0], b[0, 0], atol=1e-4)
    assert torch.equal(tiny(text_layers=0).embed(*m.prefix(torch.tensor([1, 5]), prompt))[0, 0],
                       tiny(text_layers=0).embed(*m.prefix(torch.tensor([1, 6]), prompt))[0, 0])
    z = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    batch = collate([(np.array([1, 5, 7, 2]), prompt.numpy(), z), (np.array([3, 4]), prompt.numpy(), z[:2])])
    m.train()  # dropout is 0: only the phoneme-span slicing differs from eval
    x = m.embed(batch["kinds"], batch["phones"], batch["latents"])
    m.eval()
    torch.testing.assert_close(x[0, :4], a[0, :4], atol=1e-5, rtol=1e-5)
    single = m.embed(*m.prefix(torch.tensor([3, 4]), prompt))
    torch.testing.assert_close(x[1, :2], single[0, :2], atol=1e-5, rtol=1e-5)


def test_alignment_prior_prefers_the_diagonal():
    """Attention that walks the text in step with the latents scores better than attention that
    walks it backwards or stays on the prompt; the loss reaches the model's attention and its
    gradient moves head 0 of the chosen layer only."""
    tp, p, n = 6, 3, 12
    kinds = torch.tensor([[PHONE] * tp + [SEP] + [PROMPT] * p + [BOS] + [LATENT] * n])
    flow = torch.zeros_like(kinds, dtype=torch.bool)
    flow[0, tp + 1 + p : tp + 1 + p + n] = True
    t = kinds.shape[1]

    def attention(target) -> torch.Tensor:
        a = torch.full((1, t, t), 1e-6)
        for k, q in enumerate(flow[0].nonzero().flatten().tolist()):
            a[0, q, target(k)] = 1.0
        return (a / a.sum(-1, keepdim=True)).log()

    diagonal, _ = alignment_prior(attention(lambda k: k * tp // n), kinds, flow, 0.2)
    backwards, _ = alignment_prior(attention(lambda k: tp - 1 - k * tp // n), kinds, flow, 0.2)
    on_prompt, mass = alignment_prior(attention(lambda k: tp + 1), kinds, flow, 0.2)
    assert diagonal < 0.1 < backwards < on_prompt
    assert mass < 1e-3
    m = tiny(align_layers=(1,), align_weight=1.0).train()
    z = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
    loss, parts = m(collate([(np.arange(1, tp + 1), np.zeros((p, 4), np.float32), z)]))
    assert {"align", "text_mass"} <= parts.keys() and parts["align"] > 0
    loss.backward()
    assert m.blocks[1].qkv.weight.grad.abs().sum() > 0
    plain = tiny().train()
    loss0, parts0 = plain(collate([(np.arange(1, tp + 1), np.zeros((p, 4), np.float32), z)]))
    torch.testing.assert_close(loss - parts["align"], loss0, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="align_layers"):
        tiny(align_layers=(2,))


def test_regression_aid_adds_its_loss_and_leaves_inference_alone():
    """reg_weight > 0: the loss gains reg_weight × the MSE of a linear map of the hidden state to
    the next latent, its gradient reaches the transformer; generation does not use it, and a model
    without it has no such parameters (older checkpoints load)."""
    tp, p, n = 5, 3, 7
    z = np.random.default_rng(1).standard_normal((n, 4)).astype(np.float32)
    batch = collate([(np.arange(1, tp + 1), np.zeros((p, 4), np.float32), z)])
    m = tiny(reg_weight=0.5).train()
    torch.manual_seed(1)  # the same flow-loss draws for both models
    loss, parts = m(batch)
    plain = tiny().train()
    assert not any(k.startswith("reg.") for k in plain.state_dict())
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("reg.")})
    torch.manual_seed(1)
    loss0, _ = plain(batch)
    h, _ = m.run(m.embed(batch["kinds"], batch["phones"], batch["latents"]))
    fm = batch["flow_mask"]
    want = ((m.reg(h[fm]) - batch["targets"][fm]) ** 2).mean()
    torch.testing.assert_close(parts["reg"], want.detach())
    torch.testing.assert_close(loss - loss0, 0.5 * want.detach(), atol=1e-5, rtol=1e-5)
    loss.backward()
    assert m.reg.weight.grad.abs().sum() > 0 and m.blocks[0].qkv.weight.grad.abs().sum() > 0
    m.eval()
    plain.eval()
    phones, prompt = torch.arange(1, tp + 1), torch.zeros(p, 4)
    a = torch.stack(list(m.generate(phones, prompt, max_frames=4, generator=torch.Generator().manual_seed(0))))
    b = torch.stack(list(plain.generate(phones, prompt, max_frames=4, generator=torch.Generator().manual_seed(0))))
    torch.testing.assert_close(a, b)


def test_flow_head_reaches_a_two_dimensional_target():
    """Two Gaussian modes at (±2, 1) with std 0.25: many Euler steps land on them, in equal shares."""
    torch.manual_seed(0)
    head = FlowHead(2, 8, hidden=64, blocks=2)
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    c = torch.zeros(256, 8)
    for _ in range(1000):
        sign = torch.randint(0, 2, (256, 1)) * 2.0 - 1.0
        x1 = torch.cat([2.0 * sign, torch.ones(256, 1)], 1) + 0.25 * torch.randn(256, 2)
        loss = head.loss(x1, c)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = head.sample(torch.zeros(2000, 8), steps=50)
    right = x[:, 0] > 0
    assert 0.4 < right.float().mean() < 0.6
    for mode, sel in ((2.0, right), (-2.0, ~right)):
        pts = x[sel]
        assert abs(pts[:, 0].mean() - mode) < 0.15 and abs(pts[:, 1].mean() - 1.0) < 0.15
        assert 0.15 < pts.std(0).mean() < 0.4
    # one Euler step of the same field collapses towards the mean: the steps matter
    x1 = head.sample(torch.zeros(2000, 8), steps=1)
    assert x1[:, 0].abs().mean() < x[:, 0].abs().mean() - 0.3


@pytest.mark.parametrize("cfg_scale", [1.0, 1.5])
def test_flow_sampler_equals_stepwise_head_calls(cfg_scale):
    """The sampler hoists the condition and the modulations out of its Euler loop; the result is the
    loop over the head's own forward (what the exported flow graph and the runtime do)."""
    torch.manual_seed(0)
    head = FlowHead(8, 16, hidden=32, blocks=2)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    c, noise = torch.randn(3, 16), torch.randn(3, 8)
    x = 0.8 * noise
    cc = torch.cat([c, head.null.expand_as(c)]) if cfg_scale != 1.0 else c
    with torch.no_grad():
        for i in range(7):
            v = head(torch.cat([x, x]) if cfg_scale != 1.0 else x, torch.full((cc.shape[0],), i / 7), cc)
            if cfg_scale != 1.0:
                v_c, v_u = v.chunk(2)
                v = v_u + cfg_scale * (v_c - v_u)
            x = x + v / 7
    got = head.sample(c, 7, cfg_scale, 0.8, noise)
    torch.testing.assert_close(got, x, atol=5e-5, rtol=1e-4)
    assert not torch.allclose(got, head.sample(c, 6, cfg_scale, 0.8, noise), atol=1e-3)


def test_stop_head_ends_generation():
    """A tiny model overfitted on two utterances stops after the right number of frames."""
    m = tiny(vocab=8).train()
    torch.manual_seed(1)
    rng = np.random.default_rng(0)  # seeded: with numpy's global state the data (and the outcome) changed from run to run
    data = [(np.array([1, 2, 3]), rng.standard_normal((2, 4)).astype(np.float32), 0.5 * rng.standard_normal((6, 4)).astype(np.float32)),
            (np.array([4, 5, 6, 7]), rng.standard_normal((2, 4)).astype(np.float32), 0.5 * rng.standard_normal((10, 4)).astype(np.float32))]
    batch = collate(data)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(300):
        loss, parts = m(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    assert parts["stop_acc"] > 0.99
    for ph, pr, z in data:
        g = torch.Generator().manual_seed(0)
        n = len(list(m.generate(torch.from_numpy(ph), torch.from_numpy(pr), steps=8, max_frames=40, generator=g)))
        assert abs(n - len(z)) <= 1, (n, len(z))
    # forced: a stop head that always fires gives nothing, one that never fires runs to the limit
    with torch.no_grad():
        m.stop.weight.zero_()
        m.stop.bias.fill_(20.0)
    assert list(m.generate(torch.tensor([1, 2]), torch.randn(2, 4), max_frames=9)) == []
    with torch.no_grad():
        m.stop.bias.fill_(-20.0)
    assert len(list(m.generate(torch.tensor([1, 2]), torch.randn(2, 4), max_frames=9))) == 9


def test_vocab_size_must_be_set():
    with pytest.raises(ValueError, match="vocab_size"):
        ClearTTS(ClearConfig())


def test_losses_gather_by_host_index_as_by_mask():
    """The collated flat indices pick the same positions as the masks (the training path gathers by
    index: no device sync); the losses and gradients are the same either way."""
    rng = np.random.default_rng(2)
    data = [(np.arange(1, 6), rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((7, 4)).astype(np.float32)),
            (np.arange(2, 5), rng.standard_normal((2, 4)).astype(np.float32), rng.standard_normal((4, 4)).astype(np.float32))]
    batch = collate(data)
    for name in ("flow", "stop"):
        assert batch[f"{name}_index"].tolist() == batch[f"{name}_mask"].flatten().nonzero().flatten().tolist()
    m = tiny(reg_weight=0.5, align_layers=(0,), align_weight=0.1).train()
    torch.manual_seed(3)
    loss_i, parts_i = m(batch)
    grads_i = torch.autograd.grad(loss_i, m.blocks[0].qkv.weight)
    torch.manual_seed(3)
    loss_m, parts_m = m({k: v for k, v in batch.items() if not k.endswith("_index")})
    grads_m = torch.autograd.grad(loss_m, m.blocks[0].qkv.weight)
    torch.testing.assert_close(loss_i, loss_m)
    torch.testing.assert_close(grads_i, grads_m)
    assert parts_i.keys() == parts_m.keys()
