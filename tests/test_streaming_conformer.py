"""The streaming contract: chunk-by-chunk with caches equals the whole-utterance forward under
the same attention mask, and no output depends on input beyond the look-ahead."""

import pytest
import torch

from speechkit.nn.streaming_conformer import StreamingConformerConfig, StreamingConformerEncoder

CONTEXTS = [(8, 0), (8, 1), (8, 3), (5, 2)]


def tiny_encoder(seed=0):
    torch.manual_seed(seed)
    cfg = StreamingConformerConfig(
        output_size=16, attention_heads=2, linear_units=32, num_blocks=2, cnn_module_kernel=5,
        dropout_rate=0.0, attention_dropout_rate=0.0, att_context_size=tuple(CONTEXTS) + ((-1, -1),),
    )
    return StreamingConformerEncoder(cfg, input_size=20).eval()


def stream(enc, feats, lens, context, frames_per_call):
    """Feed (B, T, F) in calls of frames_per_call encoder frames; the last call is padded."""
    state = enc.init_state(feats.shape[0])
    step = 4 * frames_per_call
    outs, out_lens = [], torch.zeros_like(lens)
    for start in range(0, feats.shape[1], step):
        x = feats[:, start : start + step]
        x_lens = torch.clamp(lens - start, 0, x.shape[1])
        if x.shape[1] < step:
            x = torch.nn.functional.pad(x, (0, 0, 0, step - x.shape[1]))
        y, y_lens, state = enc.forward_chunk(x, x_lens, state, context)
        outs.append(y)
        out_lens += y_lens
    return torch.cat(outs, dim=1), out_lens


@pytest.mark.parametrize("context", CONTEXTS)
def test_chunk_by_chunk_equals_full_forward(context):
    enc = tiny_encoder()
    torch.manual_seed(1)
    feats = torch.randn(1, 93, 20)  # not a multiple of 4: the last chunk is partial
    lens = torch.tensor([93])
    with torch.no_grad():
        full, full_lens = enc(feats, lens, context)
        chunk = context[1] + 1
        for frames_per_call in (chunk, 2 * chunk):  # one chunk per call, or two
            got, got_lens = stream(enc, feats, lens, context, frames_per_call)
            assert int(got_lens) == int(full_lens) == 24
            torch.testing.assert_close(got[:, : int(full_lens)], full, atol=1e-5, rtol=0)


def test_batched_streams_of_different_lengths_match_single_streams():
    enc = tiny_encoder()
    torch.manual_seed(2)
    feats = torch.randn(2, 64, 20)
    lens = torch.tensor([64, 37])
    with torch.no_grad():
        got, got_lens = stream(enc, feats, lens, (8, 3), 4)
        for b in range(2):
            one, n = enc(feats[b : b + 1, : lens[b]], lens[b : b + 1], (8, 3))
            assert int(got_lens[b]) == int(n)
            torch.testing.assert_close(got[b : b + 1, : int(n)], one, atol=1e-5, rtol=0)


@pytest.mark.parametrize("context", CONTEXTS)
def test_causality_by_gradients(context):
    enc = tiny_encoder()
    feats = torch.randn(1, 80, 20, requires_grad=True)
    out, _ = enc(feats, torch.tensor([80]), context)
    left, right = context
    chunk = right + 1
    w = torch.randn(out.shape[-1])  # sum() alone has no gradient through the final LayerNorm
    for t in (0, 5, 11):
        last_visible = (t // chunk) * chunk + right  # last encoder frame t may see
        feats.grad = None
        (out[0, t] * w).sum().backward(retain_graph=True)
        g = feats.grad[0].abs().sum(dim=1)
        assert g[: 4 * last_visible + 1].sum() > 0
        assert torch.all(g[4 * last_visible + 1 :] == 0), f"frame {t} depends on fbank beyond {4 * last_visible}"


def test_full_context_sees_the_future():
    enc = tiny_encoder()
    feats = torch.randn(1, 40, 20, requires_grad=True)
    out, _ = enc(feats, torch.tensor([40]), (-1, -1))
    (out[0, 0] * torch.randn(out.shape[-1])).sum().backward()
    assert feats.grad[0, 30:].abs().sum() > 0


def test_training_draws_every_context():
    enc = tiny_encoder().train()
    torch.manual_seed(0)
    drawn = {enc.pick_context(None) for _ in range(200)}
    assert drawn == set(enc.cfg.att_context_size)
    assert enc.eval().pick_context(None) == CONTEXTS[0]
