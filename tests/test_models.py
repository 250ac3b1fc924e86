"""Unit tests on tiny configs: conformer encoder, relative positions, CTC decoding, SpecAugment,
the duration batch sampler, CMVN stats, speed perturbation and checkpoint helpers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from conftest import TINY_ENCODER_CONF
from speechkit.audio.augment import SpecAugConfig, SpecAugment
from speechkit.audio.fbank import FbankConfig
from speechkit.checkpoint import average_checkpoints, load_checkpoint, save_atomic
from speechkit.data.features import FeatureDump, cmvn_from_stats, speed_perturb
from speechkit.data.sampler import DurationBatchSampler
from speechkit.decoding.ctc import BLANK_ID, ctc_greedy, ctc_prefix_beam_search
from speechkit.models.asr.ctc_model import AsrModelConfig, CtcAsrModel
from speechkit.nn.attention import RelPositionalEncoding, relative_index
from speechkit.nn.conformer import ConformerConfig, ConformerEncoder
from speechkit.nn.subsampling import Conv2dSubsampling4

F = 20  # mel bins for the encoder tests


def _encoder(seed: int = 0) -> ConformerEncoder:
    torch.manual_seed(seed)
    return ConformerEncoder(ConformerConfig(**TINY_ENCODER_CONF), input_size=F).eval()


# ---- conformer encoder ----------------------------------------------------------------------

def test_encoder_shapes_follow_the_subsampling_formula():
    enc = _encoder()
    lens = torch.tensor([61, 40, 7, 12])
    x = torch.randn(len(lens), int(lens.max()), F)
    with torch.no_grad():
        y, y_lens = enc(x, lens)
    expected = ((lens - 1) // 2 - 1) // 2
    assert y.shape == (4, int(expected.max()), TINY_ENCODER_CONF["output_size"])
    assert y_lens.tolist() == expected.tolist() == [14, 9, 1, 2]
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("t", [7, 8, 9, 10, 11, 33, 100])
def test_subsampling_length_matches_conv_arithmetic(t):
    sub = Conv2dSubsampling4(F, 16)
    y, n = sub(torch.randn(1, t, F), torch.tensor([t]))
    assert y.shape[1] == int(n) == ((t - 1) // 2 - 1) // 2


def test_encoder_is_padding_invariant():
    """An utterance encoded alone equals itself inside a padded batch, whatever the padding holds."""
    enc = _encoder()
    torch.manual_seed(1)
    short, long = torch.randn(37, F), torch.randn(90, F)
    with torch.no_grad():
        alone, alone_len = enc(short[None], torch.tensor([37]))
        batch = torch.randn(2, 90, F) * 100.0  # garbage in the padding must not leak in
        batch[0, :37], batch[1] = short, long
        both, both_lens = enc(batch, torch.tensor([37, 90]))
        long_alone, _ = enc(long[None], torch.tensor([90]))
    n = int(alone_len)
    assert int(both_lens[0]) == n
    torch.testing.assert_close(both[0, :n], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1], long_alone[0], atol=1e-5, rtol=0)


def test_ctc_model_is_padding_invariant_with_cmvn():
    """Same check through CMVN (which makes zero padding non-zero) and the CTC head."""
    cfg = AsrModelConfig(frontend_conf=FbankConfig(num_mel_bins=F),
                         encoder_conf=ConformerConfig(**TINY_ENCODER_CONF))
    torch.manual_seed(0)
    model = CtcAsrModel(cfg, vocab_size=7).eval()
    model.cmvn.set_stats(np.full(F, 3.0, np.float32), np.full(F, 0.5, np.float32))
    a, b = torch.randn(25, F), torch.randn(60, F)
    with torch.no_grad():
        alone, n = model.ctc_log_probs(a[None], torch.tensor([25]))
        x = torch.zeros(2, 60, F)
        x[0, :25], x[1] = a, b
        both, _ = model.ctc_log_probs(x, torch.tensor([25, 60]))
    torch.testing.assert_close(both[0, : int(n)], alone[0], atol=1e-5, rtol=0)


def test_ctc_model_trains_one_step():
    cfg = AsrModelConfig(frontend_conf=FbankConfig(num_mel_bins=F),
                         encoder_conf=ConformerConfig(**TINY_ENCODER_CONF))
    torch.manual_seed(0)
    model = CtcAsrModel(cfg, vocab_size=7).train()
    feats, lens = torch.randn(2, 50, F), torch.tensor([50, 41])
    tokens, tok_lens = torch.tensor([[2, 3, 4], [5, 6, 0]]), torch.tensor([3, 2])
    loss, stats = model(feats, lens, tokens, tok_lens)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0 and stats["ctc"] == pytest.approx(loss.item())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


# ---- relative positions ---------------------------------------------------------------------

@pytest.mark.parametrize("tq, tk", [(4, 4), (3, 7), (1, 5)])
def test_relative_index_points_at_the_right_distance(tq, tk):
    """Query i sits at key position tk - tq + i; its column must hold the sinusoid of (i' - j)."""
    d = 8
    pe = RelPositionalEncoding(d)(tq, tk, "cpu", torch.float32)[0]  # (tq + tk - 1, d)
    assert pe.shape == (tq + tk - 1, d)
    idx = relative_index(tq, tk, "cpu")
    assert idx.shape == (tq, tk) and int(idx.min()) == 0 and int(idx.max()) == tq + tk - 2
    freq = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
    for i, j in itertools.product(range(tq), range(tk)):
        dist = (tk - tq + i) - j
        want = torch.stack([torch.sin(dist * freq), torch.cos(dist * freq)], -1).reshape(d)
        torch.testing.assert_close(pe[idx[i, j]], want, atol=1e-6, rtol=0)
    # one distance, one column: the index is constant along diagonals (Toeplitz)
    for i, j in itertools.product(range(1, tq), range(1, tk)):
        assert idx[i, j] == idx[i - 1, j - 1]


# ---- CTC decoding ---------------------------------------------------------------------------

def _log(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    return np.log(p / p.sum(-1, keepdims=True)).astype(np.float32)


def _peaky(path: list[int], vocab: int, peak: float = 0.97) -> np.ndarray:
    p = np.full((len(path), vocab), (1 - peak) / (vocab - 1))
    p[np.arange(len(path)), path] = peak
    return _log(p)


def test_greedy_collapses_repeats_and_drops_blanks():
    # argmax path: a a _ a b b _ _ c  →  a a b c
    a, b, c = 1, 2, 3
    assert ctc_greedy(_peaky([a, a, 0, a, b, b, 0, 0, c], 4)) == [a, a, b, c]
    assert ctc_greedy(_peaky([0, 0, 0], 4)) == []
    assert ctc_greedy(np.zeros((0, 4), np.float32)) == []


def test_beam_finds_the_labelling_greedy_misses():
    """Two frames, P(blank) = 0.6, P(a) = 0.4: the best path is "_ _" (0.36), but the labelling
    "a" collects a a, a _, _ a = 0.16 + 0.24 + 0.24 = 0.64."""
    lp = _log([[0.6, 0.4], [0.6, 0.4]])
    assert ctc_greedy(lp) == []
    nbest = ctc_prefix_beam_search(lp, beam=4)
    assert list(nbest[0][0]) == [1]
    assert nbest[0][1] == pytest.approx(math.log(0.64), abs=1e-5)
    assert [list(k) for k, _ in nbest[1:2]] == [[]] and nbest[1][1] == pytest.approx(math.log(0.36), abs=1e-5)


def _exact_labelling_scores(lp: np.ndarray) -> dict[tuple[int, ...], float]:
    """Sum over every alignment path (brute force, tiny T and V only)."""
    scores: dict[tuple[int, ...], float] = {}
    t, v = lp.shape
    for path in itertools.product(range(v), repeat=t):
        label, prev = [], BLANK_ID
        for s in path:
            if s != prev and s != BLANK_ID:
                label.append(s)
            prev = s
        p = math.exp(sum(float(lp[i, s]) for i, s in enumerate(path)))
        scores[tuple(label)] = scores.get(tuple(label), 0.0) + p
    return scores


@pytest.mark.parametrize("seed", range(4))
def test_wide_beam_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    lp = _log(rng.random((5, 3)) + 0.05)
    exact = _exact_labelling_scores(lp)
    nbest = ctc_prefix_beam_search(lp, beam=len(exact))
    got = {tuple(k): math.exp(s) for k, s in nbest}
    assert got.keys() == exact.keys()
    for k in exact:
        assert got[k] == pytest.approx(exact[k], rel=1e-5), k
    assert tuple(nbest[0][0]) == max(exact, key=exact.get)


@pytest.mark.parametrize("seed", range(5))
def test_beam_agrees_with_greedy_on_peaky_inputs(seed):
    rng = np.random.default_rng(seed)
    path = rng.choice([0, 0, 1, 2, 3, 4], size=30).tolist()  # blanks and repeats included
    lp = _peaky(path, 5)
    greedy = ctc_greedy(lp)
    assert list(ctc_prefix_beam_search(lp, beam=1)[0][0]) == greedy
    assert list(ctc_prefix_beam_search(lp, beam=5)[0][0]) == greedy


# ---- SpecAugment ----------------------------------------------------------------------------

def test_specaugment_masks_only_in_training():
    aug = SpecAugment(SpecAugConfig(num_freq_masks=2, freq_mask_width=5, num_time_masks=3, time_mask_ratio=0.1))
    x = torch.rand(3, 120, F) + 1.0  # no zeros before masking
    lens = torch.tensor([120, 80, 40])
    aug.eval()
    assert torch.equal(aug(x, lens), x)
    aug.train()
    torch.manual_seed(0)
    y = aug(x, lens)
    assert y.shape == x.shape
    masked = y == 0
    assert masked.any(), "training mode should mask something"
    assert torch.equal(y[~masked], x[~masked]), "unmasked bins must be untouched"
    # a mask zeroes whole rows (time) or whole columns (frequency)
    for b in range(3):
        cols = masked[b].all(0)
        rows = masked[b].all(1)
        assert torch.equal(masked[b], cols[None, :] | rows[:, None])
        assert rows.sum() <= 3 * int(0.1 * lens[b])
        assert cols.sum() <= 2 * 5


# ---- duration batch sampler -----------------------------------------------------------------

def _lengths(n: int = 300, seed: int = 0) -> np.ndarray:
    lengths = np.random.default_rng(seed).integers(50, 600, n)
    lengths[[3, 77]] = 5000  # longer than the budget on their own
    return lengths


def test_sampler_covers_every_index_once_within_budget():
    lengths, budget = _lengths(), 2000
    batches = DurationBatchSampler(lengths, budget, seed=3).batches(epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        padded = max(lengths[i] for i in b) * len(b)
        assert padded <= budget or len(b) == 1, (b, padded)
    assert [3] in batches and [77] in batches


def test_sampler_is_a_pure_function_of_seed_and_epoch():
    lengths = _lengths()
    a = DurationBatchSampler(lengths, 2000, seed=3)
    b = DurationBatchSampler(lengths, 2000, seed=3)
    assert a.batches(2) == b.batches(2)
    assert a.batches(2) != a.batches(3)
    assert a.batches(2) != DurationBatchSampler(lengths, 2000, seed=4).batches(2)
    fixed = DurationBatchSampler(lengths, 2000, shuffle=False)
    assert fixed.batches(0) == fixed.batches(1)


def test_sampler_ranks_are_disjoint_with_equal_counts():
    lengths = _lengths()
    ranks = [DurationBatchSampler(lengths, 2000, seed=3, rank=r, world_size=2).batches(1) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    seen = [set(i for b in r for i in b) for r in ranks]
    assert not seen[0] & seen[1]
    everything = DurationBatchSampler(lengths, 2000, seed=3).batches(1)
    assert len(everything) - (len(ranks[0]) + len(ranks[1])) == len(everything) % 2  # at most one dropped


def test_sampler_ranks_get_equal_counts_when_batches_are_few():
    """With fewer batches than ranks, DDP needs every rank to run the same number of steps (the
    docstring's promise); otherwise the ranks with a batch wait forever in all-reduce."""
    lengths = np.array([100, 120])  # one batch in total
    counts = [len(DurationBatchSampler(lengths, 2000, rank=r, world_size=2).batches(0)) for r in range(2)]
    assert counts[0] == counts[1], (
        f"ranks got {counts} batches: speechkit/data/sampler.py drops the multiple-of-world_size rounding "
        "when len(batches) < world_size")


# ---- features, CMVN, speed perturbation -----------------------------------------------------

def test_cmvn_from_stats_matches_the_dumped_frames(tiny_dump):
    dump = FeatureDump.open(tiny_dump)
    frames = np.concatenate([dump.feats(i) for i in range(len(dump))]).astype(np.float64)
    assert len(dump) == 12 and len(frames) == int(dump.lengths.sum())
    mean, istd = cmvn_from_stats(tiny_dump / "stats.json")
    np.testing.assert_allclose(mean, frames.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(istd, 1.0 / frames.std(0), rtol=1e-3)


def test_dump_frames_match_durations(tiny_dump):
    """10 ms shift, snip_edges off: frames = round(duration / 10 ms)."""
    from speechkit.data.kaldi import load_data_dir

    dump = FeatureDump.open(tiny_dump)
    durations = {u.utt_id: u.duration for u in load_data_dir(tiny_dump.parent / "data")}
    for utt, n in zip(dump.utt_ids, dump.lengths):
        assert abs(int(n) - durations[utt] * 100) <= 1


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_changes_length_by_the_factor(factor):
    sr = 16000
    x = np.sin(2 * np.pi * 300 * np.arange(sr) / sr).astype(np.float32)
    y = speed_perturb(x, sr, factor)
    assert abs(len(y) - sr / factor) <= 2
    assert speed_perturb(x, sr, 1.0) is x


# ---- checkpoints ----------------------------------------------------------------------------

def _state(seed: int) -> dict:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    net.train()(torch.randn(5, 4))  # move the running stats and the int counter
    return net.state_dict()


def test_average_of_two_checkpoints_is_their_mean(tmp_path):
    a, b = _state(0), _state(1)
    b["1.num_batches_tracked"] += 4
    save_atomic({"model": a}, tmp_path / "epoch_1.pt")
    save_atomic({"model": b}, tmp_path / "epoch_2.pt")
    avg = average_checkpoints([tmp_path / "epoch_1.pt", tmp_path / "epoch_2.pt"])
    assert avg.keys() == a.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(avg[k], (a[k] + b[k]) / 2, atol=1e-7, rtol=0)
            assert avg[k].dtype == torch.float32
        else:
            assert torch.equal(avg[k], b[k]), k  # integer buffers come from the last checkpoint


def test_save_atomic_leaves_no_temp_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"model": _state(0), "epoch": 1}, path)
    save_atomic({"model": _state(1), "epoch": 2}, path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 2
    assert torch.equal(loaded["model"]["0.weight"], _state(1)["0.weight"])
