"""Residual vector quantizer: code round trips, k-means init, EMA, dead-entry restarts, quantizer
dropout, straight-through gradients, float32 under autocast, checkpoints, ONNX and two ranks."""

import copy
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from speechkit.nn.rvq import ResidualVectorQuantizer

DIM, N_Q, K = 8, 4, 16


def latents(b=4, t=64, dim=DIM, seed=0):
    """[B, D, T] latents near a 3-D subspace plus noise, so codebooks have structure to learn."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(3, dim, generator=g)
    return (torch.randn(b, t, 3, generator=g) @ basis + 0.3 * torch.randn(b, t, dim, generator=g)).transpose(1, 2)


def trained_rvq(z, steps=5, seed=0, **kwargs):
    torch.manual_seed(seed)
    rvq = ResidualVectorQuantizer(DIM, **{"n_q": N_Q, "codebook_size": K, **kwargs}).train()
    for _ in range(steps):
        rvq(z, n_q=rvq.n_q)
    return rvq.eval()


def test_round_trip_shapes_and_fewer_stages():
    z = latents()
    rvq = trained_rvq(z)
    codes = rvq.encode(z)
    assert codes.shape == (4, N_Q, 64) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < K
    out = rvq(z)
    assert out.n_q == N_Q and torch.equal(out.codes, codes)
    assert rvq.decode(codes).shape == z.shape
    torch.testing.assert_close(rvq.decode(codes), out.quantized)
    for k in range(1, N_Q):
        assert torch.equal(rvq.encode(z, n_q=k), codes[:, :k])
        torch.testing.assert_close(rvq.decode(codes[:, :k]), rvq(z, n_q=k).quantized)
    with pytest.raises(ValueError):
        rvq.encode(z, n_q=N_Q + 1)


def test_error_does_not_grow_with_stages():
    z = latents()
    rvq = trained_rvq(z, steps=10)
    codes = rvq.encode(z)
    errors = [z.pow(2).mean().item()] + [(z - rvq.decode(codes[:, :k])).pow(2).mean().item() for k in range(1, N_Q + 1)]
    assert all(b <= a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[1]


def test_kmeans_init_finds_every_blob():
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(8, DIM, generator=g)
    points = centres.repeat_interleave(32, 0) + 0.1 * torch.randn(256, DIM, generator=g)
    z = points[torch.randperm(256, generator=g)].view(4, 64, DIM).transpose(1, 2)
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(DIM, n_q=1, codebook_size=8, kmeans_iters=5).train()
    rvq(z)
    assert bool(rvq.stages[0].initialized)
    nearest = torch.cdist(centres, rvq.stages[0].codebook).min(1).values
    assert (nearest < 0.2).all(), nearest


def test_kmeans_init_with_fewer_vectors_than_entries():
    z = latents(b=1, t=4)
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(DIM, n_q=1, codebook_size=K).train()
    rvq(z)
    vectors = z[0].t()
    assert (torch.cdist(rvq.stages[0].codebook, vectors).min(1).values < 1e-4).all()


def test_ema_moves_codebook_toward_data():
    z = latents()
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(DIM, n_q=1, codebook_size=K, decay=0.8, dead_threshold=0.0).train()
    rvq(z)
    vq = rvq.stages[0]
    with torch.no_grad():  # a stale codebook whose statistics agree with it
        vq.codebook += 1.5
        vq.embed_sum.copy_(vq.codebook * vq.cluster_size[:, None])
    errors = []
    for _ in range(8):
        errors.append((rvq.eval()(z).quantized - z).pow(2).mean().item())
        rvq.train()(z)
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]


def test_dead_entries_restart_on_batch_vectors():
    z = latents(b=8)
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(DIM, n_q=1, codebook_size=K, dead_threshold=2.0).train()
    rvq(z)
    vq = rvq.stages[0]
    with torch.no_grad():  # four entries far from all data that nothing chooses
        vq.codebook[:4] = 100.0
        vq.embed_sum[:4] = 0.0
        vq.cluster_size[:4] = 0.0
    rvq(z)
    vectors = z.transpose(1, 2).reshape(-1, DIM)
    assert (vq.cluster_size[:4] == 2.0).all()
    assert (torch.cdist(vq.codebook[:4], vectors).min(1).values < 1e-4).all()
    for _ in range(5):
        rvq(z)
    usage = rvq.usage()
    assert usage["alive"] == [1.0] and usage["dead"] == 0
    assert torch.bincount(rvq.encode(z)[:, 0].flatten(), minlength=K).min() > 0  # every entry wins vectors


def test_quantizer_dropout_draws_and_freezes_later_stages():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(DIM, n_q=N_Q, codebook_size=K).train()
    rvq(latents(), n_q=N_Q)  # initialise every stage
    drawn = []
    for seed in range(1, 21):  # fresh data each step, so every stage that runs moves
        before = copy.deepcopy(rvq.state_dict())
        out = rvq(latents(seed=seed))
        drawn.append(out.n_q)
        assert out.codes.shape[1] == out.n_q
        for i, vq in enumerate(rvq.stages):
            changed = not torch.equal(vq.cluster_size, before[f"stages.{i}.cluster_size"])
            assert changed == (i < out.n_q)
    assert set(drawn) == set(range(1, N_Q + 1))
    assert rvq(latents(), n_q=2).n_q == 2
    assert rvq.eval()(latents()).n_q == N_Q


def test_stages_past_first_draw_stay_uninitialised():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(DIM, n_q=N_Q, codebook_size=K).train()
    rvq(latents(), n_q=2)
    assert [bool(vq.initialized) for vq in rvq.stages] == [True, True, False, False]
    assert not rvq.stages[2].codebook.any()


def test_straight_through_gradient():
    rvq = trained_rvq(latents()).train()
    z = latents(seed=1).requires_grad_()
    out = rvq(z, n_q=N_Q)
    weight = torch.randn_like(z)
    (out.quantized * weight).sum().backward()
    torch.testing.assert_close(z.grad, weight)
    z.grad = None
    rvq(z, n_q=N_Q).commit_loss.backward()
    assert z.grad.abs().sum() > 0


def test_float32_under_autocast():
    z = latents()
    rvq = trained_rvq(z, codebook_size=64).train()
    twin = copy.deepcopy(rvq)
    torch.manual_seed(1)
    plain = rvq(z)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = twin(z)
    assert torch.equal(plain.codes, auto.codes)
    assert auto.quantized.dtype == torch.float32 and auto.commit_loss.dtype == torch.float32
    for a, b in zip(rvq.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)


def test_bitrate():
    assert ResidualVectorQuantizer.bitrate(50, 12, 1024) == 6000
    assert ResidualVectorQuantizer.bitrate(75, 8, 1024) == 6000  # EnCodec 24 kHz at 6 kbps
    assert ResidualVectorQuantizer.bitrate(75, 2, 1024) == 1500
    assert ResidualVectorQuantizer.bitrate(50, 1, 256) == 400


def test_usage_perplexity_and_alive():
    rvq = ResidualVectorQuantizer(DIM, n_q=2, codebook_size=K, dead_threshold=2.0)
    rvq.stages[0].cluster_size.fill_(5.0)
    rvq.stages[1].cluster_size[3] = 10.0
    usage = rvq.usage()
    assert usage["perplexity"] == pytest.approx([K, 1.0])
    assert usage["alive"] == pytest.approx([1.0, 1 / K])
    assert usage["mean_perplexity"] == pytest.approx((K + 1) / 2)
    assert usage["alive_fraction"] == pytest.approx((K + 1) / (2 * K))
    assert usage["dead"] == K - 1


def test_state_dict_resumes_exactly():
    z = latents()
    rvq = trained_rvq(z)
    resumed = ResidualVectorQuantizer(DIM, n_q=N_Q, codebook_size=K)
    resumed.load_state_dict(rvq.state_dict())
    resumed.eval()
    assert torch.equal(resumed.encode(z), rvq.encode(z))
    for model in (rvq, resumed):  # one more training step each, same randomness
        torch.manual_seed(3)
        model.train()(latents(seed=2))
    for a, b in zip(rvq.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


class _Encode(torch.nn.Module):
    def __init__(self, rvq):
        super().__init__()
        self.rvq = rvq

    def forward(self, z):
        return self.rvq.encode(z)


class _Decode(_Encode):
    def forward(self, codes):
        return self.rvq.decode(codes)


def test_onnx_encode_decode_match_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rvq = trained_rvq(latents())
    z = latents(b=3, t=37, seed=5)
    axes = {0: "batch", 2: "frames"}
    with torch.no_grad():
        torch.onnx.export(_Encode(rvq), (latents(b=2, t=10),), str(tmp_path / "enc.onnx"), input_names=["z"],
                          output_names=["codes"], dynamic_axes={"z": axes, "codes": axes}, dynamo=False)
        torch.onnx.export(_Decode(rvq), (rvq.encode(latents(b=2, t=10)),), str(tmp_path / "dec.onnx"),
                          input_names=["codes"], output_names=["z"], dynamic_axes={"codes": axes, "z": axes}, dynamo=False)
    codes = ort.InferenceSession(str(tmp_path / "enc.onnx")).run(None, {"z": z.numpy()})[0]
    assert (codes == rvq.encode(z).numpy()).all()
    decoded = ort.InferenceSession(str(tmp_path / "dec.onnx")).run(None, {"codes": codes})[0]
    torch.testing.assert_close(torch.from_numpy(decoded), rvq.decode(torch.from_numpy(codes)))


def _two_rank_worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    # A timeout, so ranks that disagree on the stages they run fail instead of hanging in a collective.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=20))
    torch.manual_seed(rank)  # different draws and data on each rank: the quantizer must agree anyway
    rvq = ResidualVectorQuantizer(DIM, n_q=N_Q, codebook_size=K).train()
    drawn = [rvq(latents(seed=10 + rank)).n_q for _ in range(4)]
    torch.save({"drawn": drawn, "state": rvq.state_dict()}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_keep_identical_codebooks(tmp_path):
    # fork: the children need not import torch again (spawn would cost seconds)
    mp.start_processes(_two_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["drawn"] == r1["drawn"]
    assert any(bool(v) for k, v in r0["state"].items() if k.endswith("initialized"))
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
