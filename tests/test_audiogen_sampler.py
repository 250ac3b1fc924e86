"""MAGNeT's per-step arithmetic on the device (inference/audiogen.py's TorchSampler) against the
numpy one the torch-free runtime uses: the same draws from the same uniforms, the same log-probs."""

import numpy as np
import torch

from speechkit.decoding.magnet import NUMPY_SAMPLER, MagnetOptions, magnet_generate
from speechkit.inference.audiogen import TorchSampler


def _logits(b=3, t=40, v=64, scale=3.0, seed=0):
    return (np.random.default_rng(seed).standard_normal((b, t, v)) * scale).astype(np.float32)


def test_torch_draws_equal_numpy_draws():
    ts = TorchSampler(torch.device("cpu"))
    rng = np.random.default_rng(1)
    for temperature, top_k, top_p in ((1.0, None, 0.9), (3.0, None, 0.9), (0.5, 8, None), (1.0, None, None), (0.0, None, 0.9)):
        logits = _logits(seed=int(rng.integers(1 << 30)))
        where = rng.random(logits.shape[:2]) < 0.7
        u = rng.random(logits.shape[:2])
        a = NUMPY_SAMPLER.sample(logits, where, u, temperature, top_k, top_p)
        b = ts.sample(torch.from_numpy(logits), where, u, temperature, top_k, top_p)
        assert b.dtype == np.int64 and b.shape == a.shape
        assert (a == b).mean() >= 0.99, (temperature, top_k, top_p, (a == b).mean())


def test_torch_logprobs_and_guidance_equal_numpy():
    ts = TorchSampler(torch.device("cpu"))
    cond, null = _logits(seed=2), _logits(seed=3)
    g_np = NUMPY_SAMPLER.guided(cond, null, 2.5)
    g_t = ts.guided(torch.from_numpy(cond), torch.from_numpy(null), 2.5)
    np.testing.assert_allclose(g_t.numpy(), g_np, atol=1e-5)
    tokens = np.random.default_rng(4).integers(0, cond.shape[-1], cond.shape[:2])
    np.testing.assert_allclose(ts.token_logprob(torch.from_numpy(cond), tokens), NUMPY_SAMPLER.token_logprob(cond, tokens), atol=1e-5)


def test_generation_with_the_torch_sampler_fills_every_frame_and_mostly_agrees():
    k, card, frames = 2, 32, 30
    w = np.random.default_rng(5).standard_normal((k, card, card)).astype(np.float32) * 2

    def logits_fn(tokens, stage, null_text, torch_out=False):
        prev = np.where(tokens[:, max(stage - 1, 0)] >= card, 0, tokens[:, max(stage - 1, 0)])
        out = w[stage][prev] * (0.5 if null_text else 1.0)
        return torch.from_numpy(out) if torch_out else out

    opts = MagnetOptions(steps=(6, 4))
    a = magnet_generate(logits_fn, 2, frames, k, card, opts, rng=7)
    b = magnet_generate(lambda t, s, n: logits_fn(t, s, n, True), 2, frames, k, card, opts, rng=7,
                        sampler=TorchSampler(torch.device("cpu")))
    assert b.min() >= 0 and b.max() < card
    assert (a == b).mean() >= 0.9
