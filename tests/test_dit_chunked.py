"""The chunk-wise DiT's streaming contract: step + commit over chunks with the KV cache equals the
chunk-masked training forward; gradients show what each chunk may see; torch.func.jvp works
through it (math attention) and matches finite differences; batch rows are independent."""

import pytest
import torch

from speechkit.nn.dit import ChunkDiT, math_attention

IN, COND, REF, SPK = 6, 5, 7, 4
CHUNK = 4

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_dit(cache_chunks=2, clean_context=0, layers=2, seed=0):
    torch.manual_seed(seed)
    model = ChunkDiT(dim=16, layers=layers, heads=2, in_dim=IN, cond_dim=COND, ref_dim=REF, spk_dim=SPK,
                     chunk=CHUNK, cache_chunks=cache_chunks, clean_context=clean_context)
    # AdaLN-Zero starts as the identity with a zero output: every dependence would be hidden
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
            else:
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def inputs(batch, frames, ref_frames, per_chunk=False, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    times = (batch, -(-frames // CHUNK)) if per_chunk else (batch,)
    r = 0.5 * torch.rand(times, generator=g)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    return dict(
        x_noisy=randn(batch, frames, IN), x_clean=randn(batch, frames, IN), content=randn(batch, frames, COND),
        ref=randn(batch, ref_frames, REF), ref_mask=torch.ones(batch, ref_frames, dtype=torch.bool),
        spk=randn(batch, SPK), r=r.to(dtype), t=(r + 0.5 * torch.rand(times, generator=g)).to(dtype),
    )


def stream(model, d, lengths=None):
    """Chunk by chunk: step on the noisy chunk, then commit its clean (ground-truth) frames."""
    batch, frames, _ = d["x_noisy"].shape
    ref_k, ref_v = model.encode_reference(d["ref"])
    cache = model.init_cache(batch)
    outs = []
    for k, start in enumerate(range(0, frames, CHUNK)):
        sl = slice(start, start + CHUNK)
        r, t = (d["r"][:, k], d["t"][:, k]) if d["r"].dim() == 2 else (d["r"], d["t"])
        chunk_lens = None if lengths is None else torch.clamp(lengths - start, 0, CHUNK)
        args = (d["content"][:, sl], ref_k, ref_v, d["ref_mask"], d["spk"])
        u = model.step(d["x_noisy"][:, sl], *args, r, t, cache, chunk_lens)
        # a step is a pure function of its inputs: a second sampling step sees the same cache
        torch.testing.assert_close(model.step(d["x_noisy"][:, sl], *args, r, t, cache, chunk_lens), u, atol=0, rtol=0)
        outs.append(u)
        cache = model.commit(d["x_clean"][:, sl], *args, cache)
        assert cache[0].shape[3] == model.cache_frames
        assert torch.all(cache[2] == min(start + u.shape[1], model.cache_frames))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("per_chunk", [False, True])
@pytest.mark.parametrize("cache_chunks,clean_context", [(2, 0), (2, 1), (2, 2), (1, 0), (0, 0)])
def test_chunked_with_kv_cache_equals_masked_forward(cache_chunks, clean_context, per_chunk):
    model = tiny_dit(cache_chunks, clean_context)
    frames = 6 * CHUNK + 3  # 7 chunks, well past cache_chunks + 1 (trimming), the last one partial
    d = inputs(1, frames, 9, per_chunk)
    with torch.no_grad():
        full = model(**d)
        got = stream(model, d)
    assert got.shape == full.shape == (1, frames, IN)
    assert full.abs().mean() > 0.1  # a real output, not the zero-initialised head
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)


def chunk_grads(grad):
    """(1, T, F) gradient → (chunks,) total magnitude per chunk."""
    return grad[0].abs().sum(dim=1).view(-1, CHUNK).sum(dim=1)


@pytest.mark.parametrize("clean_context", [0, 1])
def test_causality_by_gradients(clean_context):
    cache_chunks, layers, chunks = 2, 2, 8
    model = tiny_dit(cache_chunks, clean_context, layers)
    d = inputs(1, chunks * CHUNK, 9)
    for key in ("x_noisy", "x_clean", "content"):
        d[key].requires_grad_(True)
    out = model(**d)
    w = torch.randn(CHUNK, IN)
    # with clean_context = 0 this is the cache window itself; above it the clean chunks' own
    # attention reaches further back, (layers - 1) * clean_context chunks more
    reach = cache_chunks + (layers - 1) * clean_context
    for k in (0, 3, 7):
        for key in ("x_noisy", "x_clean", "content"):
            d[key].grad = None
        (out[0, k * CHUNK : (k + 1) * CHUNK] * w).sum().backward(retain_graph=True)
        seen = {key: set(torch.nonzero(chunk_grads(d[key].grad)).flatten().tolist()) for key in ("x_noisy", "x_clean", "content")}
        clean_window = set(range(max(0, k - reach), k))
        assert seen["x_noisy"] == {k}, f"chunk {k}: noisy inputs of chunks {seen['x_noisy']}"
        assert seen["x_clean"] == clean_window, f"chunk {k}: clean inputs of chunks {seen['x_clean']}"
        assert seen["content"] == clean_window | {k}, f"chunk {k}: content of chunks {seen['content']}"


@pytest.mark.parametrize("per_chunk", [False, True])
def test_jvp_matches_finite_difference(per_chunk):
    model = tiny_dit(2, 1).double()
    d = inputs(2, 3 * CHUNK + 1, 6, per_chunk, dtype=torch.float64)
    fixed = {k: v for k, v in d.items() if k not in ("x_noisy", "r", "t")}

    def u(x, r, t):
        return model(x_noisy=x, r=r, t=t, **fixed)

    # the mean-flow tangent: along the velocity in x, dr = 0, dt = 1
    dx = torch.randn_like(d["x_noisy"])
    tangents = (dx, torch.zeros_like(d["r"]), torch.ones_like(d["t"]))
    with math_attention():
        value, derivative = torch.func.jvp(u, (d["x_noisy"], d["r"], d["t"]), tangents)
    eps = 1e-7  # the times are scaled by 1000 inside: larger steps leave O(eps^2 1e9) error
    with torch.no_grad():
        plus = u(d["x_noisy"] + eps * dx, d["r"], d["t"] + eps)
        minus = u(d["x_noisy"] - eps * dx, d["r"], d["t"] - eps)
        torch.testing.assert_close(value, u(d["x_noisy"], d["r"], d["t"]), atol=1e-12, rtol=0)
    assert derivative.abs().mean() > 1e-2
    torch.testing.assert_close(derivative, (plus - minus) / (2 * eps), atol=1e-5, rtol=1e-6)


def test_batch_rows_with_different_reference_and_input_lengths_equal_single_rows():
    model = tiny_dit(2, 1)
    frames, ref_frames = 6 * CHUNK + 3, 9
    d = inputs(2, frames, ref_frames)
    lengths, ref_lengths = torch.tensor([frames, 4 * CHUNK + 2]), torch.tensor([ref_frames, 5])
    d["ref_mask"] = torch.arange(ref_frames)[None, :] < ref_lengths[:, None]
    with torch.no_grad():
        full = model(**d, lengths=lengths)
        streamed = stream(model, d, lengths)
        for b in range(2):
            n, m = int(lengths[b]), int(ref_lengths[b])
            one = {k: v[b : b + 1] for k, v in d.items()}
            for key in ("x_noisy", "x_clean", "content"):
                one[key] = one[key][:, :n]
            one["ref"], one["ref_mask"] = one["ref"][:, :m], one["ref_mask"][:, :m]
            alone = model(**one)
            torch.testing.assert_close(full[b : b + 1, :n], alone, atol=1e-5, rtol=0)
            torch.testing.assert_close(streamed[b : b + 1, :n], alone, atol=1e-5, rtol=0)
            torch.testing.assert_close(stream(model, one), alone, atol=1e-5, rtol=0)
