"""The fast (static KV cache, CUDA-graphable) CLEAR loop and the PyTorch codec, on the CPU: the
static-cache step equals ``ClearTTS.step``, the fast loop equals ``ClearTTS.generate`` for a seed
(stop included), the codec loaded from the ONNX dir equals ONNX Runtime, and a fast
``TorchSynthesizer`` streams what it synthesises and what the plain one does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from speechkit.decoding.tts_options import SynthOptions
from speechkit.models.tts.clear import ClearConfig, ClearTTS, FlowConfig
from speechkit.models.tts.fast import FastGenerator, StaticCache, attend_one, static_step

SHIPPED_CODEC = Path(__file__).resolve().parents[1] / "models" / "codec-vae-synth"
OPTS = SynthOptions(steps=3, cfg_scale=1.5, temperature=0.8, chunk_frames=4, prompt_seconds=1.0, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("length", [1, 5, 16])
def test_one_query_attention_equals_sdpa_over_the_valid_positions(length):
    """The decode attention over a static cache: the written positions only, as SDPA with the mask
    (and as plain attention over the written prefix: what lies beyond it has no influence)."""
    g = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(1, 3, n, 8, generator=g) for n in (1, 16, 16))
    valid = (torch.arange(16) < length).view(1, 1, 1, 16)
    a = attend_one(q, k, v, valid)
    torch.testing.assert_close(a, torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=valid))
    torch.testing.assert_close(a, torch.nn.functional.scaled_dot_product_attention(q, k[:, :, :length], v[:, :, :length]))
    k[:, :, length:] = 1e4  # garbage in the unwritten part of the cache
    torch.testing.assert_close(attend_one(q, k, v, valid), a)


def tiny(vocab: int = 12, latent_dim: int = 4, stop_bias: float | None = None, **kw) -> ClearTTS:
    """A random CLEAR whose zero-initialised flow-head layers get weights (else every velocity is 0)."""
    torch.manual_seed(0)
    cfg = ClearConfig(vocab_size=vocab, latent_dim=latent_dim, d_model=32, layers=2, heads=2, ff=64, dropout=0.0,
                      flow=FlowConfig(hidden=32, blocks=2), **kw)
    m = ClearTTS(cfg).eval()
    with torch.no_grad():
        for p in m.head.parameters():
            if not p.any():
                p.normal_(0.0, 0.5 if p.dim() == 1 else 0.05)
        m.latent_mean.normal_(0.0, 0.3)
        m.latent_std.uniform_(0.5, 1.5)
        m.stop.weight.normal_(0.0, 0.5)
        if stop_bias is not None:
            m.stop.bias.fill_(stop_bias)
    return m


def generate_both(m: ClearTTS, **kw) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    phones, prompt = torch.tensor([1, 5, 7, 2, 3]), torch.randn(3, m.cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    ref = list(m.generate(phones, prompt, generator=torch.Generator().manual_seed(3), **kw))
    fast = list(FastGenerator(m).generate(phones, prompt, generator=torch.Generator().manual_seed(3), **kw))
    return ref, fast


@pytest.mark.parametrize("text_layers", [0, 1])
def test_static_cache_step_equals_step(text_layers):
    m = tiny(text_layers=text_layers)
    phones, prompt = torch.tensor([1, 5, 7, 2]), torch.randn(3, 4)
    with torch.no_grad():
        h, cache = m.prefill(phones, prompt)
        static = StaticCache.empty(m, 32)
        static.load(cache)
        for z in torch.randn(10, 1, 4):
            h, cache = m.step(z, cache)
            torch.testing.assert_close(static_step(m, z, static), h, atol=1e-5, rtol=1e-5)
    n = cache[0][0].shape[2]
    assert int(static.length) == n
    torch.testing.assert_close(static.k[:, 0, :, :n], torch.stack([k[0] for k, _ in cache]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg_scale", [1.0, 1.5])
def test_fast_generate_equals_generate(cfg_scale):
    ref, fast = generate_both(tiny(stop_bias=-30.0), steps=4, cfg_scale=cfg_scale, temperature=0.8, max_frames=20)
    assert len(ref) == len(fast) == 20
    torch.testing.assert_close(torch.stack(fast), torch.stack(ref), atol=1e-5, rtol=1e-5)


def test_fast_generate_stops_where_generate_does():
    m = tiny(stop_bias=0.0)
    with torch.no_grad():  # a stop head whose probability sets a new high 17 latents in
        m.stop.weight.copy_(0.5 * torch.randn(m.stop.weight.shape, generator=torch.Generator().manual_seed(4)))
    probs: list[float] = []
    hook = m.stop.register_forward_hook(lambda mod, args, out: probs.append(float(torch.sigmoid(out))))
    generate_both(m, steps=3, max_frames=30, stop_threshold=2.0)  # never stops: the stop probabilities of one run
    hook.remove()
    probs = probs[:30]
    # a threshold the probability first crosses a few latents in
    k = next(k for k in range(3, 30) if probs[k] > max(probs[:k]) + 1e-3)
    threshold = (max(probs[:k]) + probs[k]) / 2
    ref, fast = generate_both(m, steps=3, max_frames=30, stop_threshold=threshold)
    assert len(ref) == len(fast) == k
    torch.testing.assert_close(torch.stack(fast), torch.stack(ref), atol=1e-5, rtol=1e-5)
    # forced: a stop head that always fires gives nothing, one that never fires runs to the limit
    assert generate_both(tiny(stop_bias=30.0), steps=2, max_frames=9) == ([], [])
    ref, fast = generate_both(tiny(stop_bias=-30.0), steps=2)  # the default length limit
    assert len(fast) == len(ref) > 9


def test_generator_is_reused_and_one_utterance_at_a_time():
    from speechkit.errors import SpeechkitError

    m = tiny(stop_bias=-30.0)
    fast = FastGenerator(m)
    phones, prompt = torch.tensor([1, 2, 3]), torch.randn(2, 4)
    one = fast.generate(phones, prompt, steps=2, max_frames=5)
    next(one)
    with pytest.raises(SpeechkitError, match="one utterance at a time"):
        next(fast.generate(phones, prompt, steps=2, max_frames=5))
    one.close()
    a = list(fast.generate(phones, prompt, steps=2, max_frames=5, generator=torch.Generator().manual_seed(0)))
    b = list(fast.generate(phones, prompt, steps=2, max_frames=5, generator=torch.Generator().manual_seed(0)))
    assert len(a) == 5 and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.skipif(not (SHIPPED_CODEC / "decoder.onnx").is_file(), reason="no shipped codec")
def test_torch_codec_equals_onnx_runtime():
    """The shipped fp16 ONNX codec read into PyTorch: its config off the graphs, encode and a
    chunked streaming decode as ONNX Runtime's."""
    from speechkit.inference.codec import TorchCodec
    from speechkit.runtime.codec import CodecRuntime

    ours, ref = TorchCodec(SHIPPED_CODEC, check=False), CodecRuntime(SHIPPED_CODEC)
    enc = ours.model.cfg.encoder_conf
    assert (enc.channels, enc.strides, enc.latent_dim, enc.dilations, enc.shortcuts) == (32, (2, 4, 8, 10), 64, (1, 3, 9), True)
    t = np.arange(int(0.5 * ours.sample_rate)) / ours.sample_rate
    x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.02 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    z, z_ref = ours.encode(x), ref.encode(x)  # 8000 samples: 12.5 frames, the end padded
    assert z.shape == z_ref.shape == (64, 13)
    np.testing.assert_allclose(z, z_ref, atol=2e-4)
    a, b = ours.stream(), ref.stream()
    got = np.concatenate([a.decode(z_ref[:, k : k + 4]) for k in range(0, 13, 4)])
    want = np.concatenate([b.decode(z_ref[:, k : k + 4]) for k in range(0, 13, 4)])
    assert got.shape == (13 * 640,)
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(ours.decode(z_ref), got, atol=1e-5)


def _experiment(root: Path) -> Path:
    """A tiny exported VAE codec (fp32 weights) and a random CLEAR on it, saved like trained ones."""
    from speechkit.export.codec import export_codec
    from speechkit.models.codec.model import CodecConfig, build_codec
    from speechkit.models.tts.io import save_tts
    from speechkit.nn.seanet import SeanetConfig
    from speechkit.text.phonemes import PhonemeVocab, text_to_phonemes

    torch.manual_seed(0)
    enc = SeanetConfig(channels=2, strides=(2, 4, 8, 10), latent_dim=8, dilations=(1, 3), shortcuts=True)
    codec = build_codec(CodecConfig("vae", encoder_conf=enc)).eval()
    export_codec(codec, root / "codec", [np.random.default_rng(0).standard_normal(4 * 640).astype(np.float32) * 0.1])
    vocab = PhonemeVocab.build(text_to_phonemes(["hello world, one two three."]))
    model = tiny(vocab=len(vocab), latent_dim=8, stop_bias=-30.0)
    exp = root / "exp"
    exp.mkdir()
    save_tts(model, vocab.symbols, str(root / "codec"), exp / "model.pt")
    return exp


def test_fast_synthesizer_streams_what_the_plain_one_synthesises(tmp_path):
    from speechkit.inference.codec import TorchCodec
    from speechkit.inference.tts import TorchSynthesizer
    from speechkit.runtime.codec import CodecRuntime

    exp = _experiment(tmp_path)
    prompt = (0.1 * np.random.default_rng(1).standard_normal(16000)).astype(np.float32)
    fast, plain = TorchSynthesizer(exp, "cpu", fast=True), TorchSynthesizer(exp, "cpu")
    assert isinstance(fast.codec, TorchCodec) and isinstance(plain.codec, CodecRuntime) and not plain.fast
    fast.warmup(OPTS)
    whole = fast.synthesize("one two", prompt, OPTS)
    chunks = list(fast.stream("one two", prompt, OPTS))
    assert len(whole) > 0 and all(len(c) == OPTS.chunk_frames * 640 for c in chunks[:-1])
    np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-5)
    np.testing.assert_allclose(plain.synthesize("one two", prompt, OPTS), whole, atol=1e-4)
