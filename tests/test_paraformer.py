"""Paraformer pieces: CIF on hand-built α sequences (fire positions, tail, exact embeddings), the
glancing sampler's replacement count, MWER's gradient direction, and the whole head on tiny data."""

from __future__ import annotations

import math

import pytest
import torch

from speechkit.decoding.cif_times import fire_frames, token_spans, word_times
from speechkit.models.asr.cif import cif, cif_weights, quantity_loss, scale_alphas, token_counts
from speechkit.models.asr.paraformer import edit_distance, glancing_sample, mwer_loss, split_words

# ---- CIF -------------------------------------------------------------------------------------

HAND_ALPHAS = [0.3, 0.5, 0.4, 0.9, 0.2, 0.6]  # running sums .3 .8 1.2 2.1 2.3 2.9


def _one_hot_frames(t: int) -> torch.Tensor:
    return torch.eye(t)[None]  # frame t's embedding is e_t, so an embedding reads as its frame weights


def test_cif_hand_built_fires_splits_and_tail():
    a = torch.tensor([HAND_ALPHAS])
    n = token_counts(a, threshold=1.0, tail_threshold=0.45)
    assert n.tolist() == [3]  # two fires + a tail of 0.9 >= 0.55
    emb = cif(_one_hot_frames(6), a, int(n), threshold=1.0)[0]
    expected = torch.tensor([
        [0.3, 0.5, 0.2, 0.0, 0.0, 0.0],  # frame 2 split 0.2 / 0.2 at the crossing of 1.0
        [0.0, 0.0, 0.2, 0.8, 0.0, 0.0],  # frame 3 split 0.8 / 0.1 at 2.0
        [0.0, 0.0, 0.0, 0.1, 0.2, 0.6],  # the tail: the residual integration, not rescaled
    ])
    torch.testing.assert_close(emb, expected, atol=1e-6, rtol=0)
    assert fire_frames(a[0].numpy(), int(n)) == [2, 3, 5]


def test_cif_tail_below_threshold_does_not_fire():
    a = torch.tensor([[0.6, 0.7, 0.3]])  # 1.6: one fire, residual 0.6 >= 0.55 fires
    assert token_counts(a).tolist() == [2]
    a = torch.tensor([[0.6, 0.7, 0.2]])  # 1.5: residual 0.5 < 0.55
    assert token_counts(a).tolist() == [1]
    assert token_counts(torch.tensor([[0.1, 0.2]])).tolist() == [0]


def test_cif_several_fires_in_one_frame():
    a = torch.tensor([[2.5, 0.0]])
    assert token_counts(a).tolist() == [2]  # residual 0.5 does not fire
    emb = cif(_one_hot_frames(2), a, 3)[0]
    torch.testing.assert_close(emb, torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.0]]))
    assert fire_frames(a[0].numpy(), 2) == [0, 0]


def test_cif_sum_of_exactly_k_fires_k_despite_rounding():
    a = torch.full((1, 10), 0.1)  # float32 sums to 0.99999994 or 1.0000001
    assert token_counts(a).tolist() == [1]
    a = torch.full((1, 30), 0.1)
    assert token_counts(a).tolist() == [3]


def _cif_loop(h: torch.Tensor, a: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """The textbook sequential integrate-and-fire (at most one fire per frame)."""
    out, acc, integ = [], 0.0, torch.zeros(h.shape[1])
    for t in range(len(a)):
        at = float(a[t])
        if acc + at < beta:
            acc += at
            integ = integ + at * h[t]
        else:
            first = beta - acc
            out.append(integ + first * h[t])
            acc = at - first
            integ = acc * h[t]
    out.append(integ)  # the leftover, which becomes the tail token's embedding when it fires
    return torch.stack(out)


@pytest.mark.parametrize("seed", range(5))
def test_cif_matrix_form_equals_the_sequential_loop(seed):
    g = torch.Generator().manual_seed(seed)
    t, d = 40, 8
    a = torch.rand(t, generator=g) * 0.9
    h = torch.randn(t, d, generator=g)
    ref = _cif_loop(h, a)
    got = cif(h[None], a[None], len(ref))[0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_cif_batch_padding_and_gradients():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(2, 12, generator=g) * 0.8).requires_grad_()
    lens = torch.tensor([12, 7])
    mask = torch.arange(12)[None] < lens[:, None]
    h = torch.randn(2, 12, 4, generator=g)
    target = torch.tensor([4, 2])
    scaled = scale_alphas(a * mask, target)
    torch.testing.assert_close(scaled.sum(1), target.float())
    emb = cif(h, scaled, 4)
    # utterance 2: exactly 2 tokens, the rows after them are empty; padding frames give nothing
    assert emb[1, 2:].abs().max() < 1e-5
    w = cif_weights(scaled, 4)
    assert w[1, :, 7:].abs().max() == 0
    torch.testing.assert_close(w.sum(1), scaled)  # every frame's weight is spent on some token
    (emb.sum() + quantity_loss(a * mask, target)).backward()
    assert torch.isfinite(a.grad).all() and a.grad[0].abs().sum() > 0
    assert a.grad[1, 7:].abs().max() == 0


def test_quantity_loss_value():
    a = torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.2, 0.0]])
    assert quantity_loss(a, torch.tensor([2, 1])).item() == pytest.approx((0.5 + 0.6) / 2)


def test_token_spans_start_at_the_acoustic_onset():
    # silence (small α) before a word: the token's span starts after the previous fire, its onset
    # is where α rises
    a = torch.tensor([[0.5, 0.5, 0.02, 0.02, 0.02, 0.02, 0.4, 0.5, 0.04]])
    n = token_counts(a)
    assert n.tolist() == [2]
    spans = token_spans(a[0].numpy(), int(n))
    assert spans[0] == (0, 1)
    assert spans[1] == (6, 8)


def test_word_times_from_char_and_bpe_pieces():
    spans = [(0, 1), (2, 2), (3, 3), (5, 6), (7, 8)]
    # char pieces: a bare ▁ separates, the next token opens the word
    assert word_times(["h", "i", "\u2581", "y", "o"], spans, 0.04) == [("hi", 0.0, 0.12), ("yo", 0.2, 0.36)]
    assert word_times(["\u2581he", "llo", "\u2581w", "or", "ld"], spans, 0.04) == [("hello", 0.0, 0.12), ("world", 0.12, 0.36)]


# ---- glancing sampler -------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_glancing_replacement_count_follows_ratio_times_distance(ratio):
    g = torch.Generator().manual_seed(1)
    b, n, d = 6, 10, 3
    target = torch.randint(2, 9, (b, n), generator=g)
    lens = torch.tensor([10, 9, 5, 1, 7, 10])
    pred = target.clone()
    wrong_counts = [0, 3, 5, 1, 4, 10]
    for i, w in enumerate(wrong_counts):
        pred[i, :w] = 1  # never a target id
    pred[2, 5:] = 1  # wrong but on padding: must not count
    acoustic, target_emb = torch.zeros(b, n, d), torch.ones(b, n, d)
    mixed, replaced = glancing_sample(acoustic, target_emb, pred, target, lens, ratio, generator=g)
    for i, w in enumerate(wrong_counts):
        w = min(w, int(lens[i]))
        assert int(replaced[i].sum()) == math.floor(ratio * w)
        assert not replaced[i, int(lens[i]):].any()
    torch.testing.assert_close(mixed[..., 0], replaced.float())  # target embeddings exactly where replaced


def test_glancing_positions_are_random_not_a_prefix():
    g = torch.Generator().manual_seed(0)
    target = torch.full((200, 10), 5)
    pred = torch.zeros_like(target)
    _, replaced = glancing_sample(torch.zeros(200, 10, 1), torch.ones(200, 10, 1), pred, target, torch.full((200,), 10), 0.5, g)
    freq = replaced.float().mean(0)
    assert freq.min() > 0.3 and freq.max() < 0.7  # every position is picked about half the time


# ---- MWER ------------------------------------------------------------------------------------

def test_mwer_loss_falls_when_the_best_hypothesis_gets_more_probable():
    errors = torch.tensor([[3.0, 0.0, 1.0, 2.0]])
    lp = torch.tensor([[-1.0, -2.0, -1.5, -1.2]], requires_grad=True)
    loss = mwer_loss(lp, errors)
    loss.backward()
    assert lp.grad[0, 1] < 0  # raising the error-free hypothesis lowers the loss
    assert lp.grad[0, 0] > 0  # raising the worst raises it
    better = lp.detach().clone()
    better[0, 1] += 1.0
    assert mwer_loss(better, errors) < loss
    assert mwer_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])).item() == 0.0  # no signal when all tie


def test_words_and_edit_distance():
    # char pieces: 0 blank, 1 unk, 2 "▁", 3 a, 4 b
    word_start = [False, False, True, False, False]
    separator = [True, False, True, False, False]
    assert split_words([3, 4, 2, 4, 2, 2, 3], word_start, separator) == [(3, 4), (4,), (3,)]
    assert edit_distance([(3, 4), (4,)], [(3, 4), (3,), (4,)]) == 1
    assert edit_distance([], [1, 2]) == 2


# ---- the head on the shared encoder ----------------------------------------------------------

def _tiny_paraformer(mwer: float = 0.0, seed: int = 0):
    from conftest import tiny_paraformer_config
    from speechkit.models.asr.heads import build_asr_model
    from speechkit.text.tokenizer import CharTokenizer

    cfg = tiny_paraformer_config(dropout_rate=0.0, mwer_weight=mwer)
    tok = CharTokenizer(["<blk>", "<unk>", "\u2581", "a", "b", "c"])
    torch.manual_seed(seed)
    return build_asr_model(cfg.model, tok.vocab_size, tok), tok


def _batch():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 60, 20, generator=g)
    feat_lens = torch.tensor([60, 44])
    tokens = torch.tensor([[3, 4, 2, 5, 3], [4, 4, 0, 0, 0]])
    return feats, feat_lens, tokens, torch.tensor([5, 2])


def test_paraformer_trains_with_every_loss_and_overfits():
    model, _ = _tiny_paraformer(mwer=0.5)
    feats, feat_lens, tokens, token_lens = _batch()
    loss, stats = model(feats, feat_lens, tokens, token_lens)
    assert set(stats) == {"qua", "glance", "att", "ctc", "mwer"} and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("decoder.embed"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        model(feats, feat_lens, tokens, token_lens)[0].backward()
        opt.step()
    model.eval()
    out = model.recognize_with_spans(feats, feat_lens)
    assert [ids for ids, _ in out] == [[3, 4, 2, 5, 3], [4, 4]]  # the count from CIF and every token right
    for ids, spans in out:
        assert len(spans) == len(ids) and all(s <= f for s, f in spans)
        assert [f for _, f in spans] == sorted(f for _, f in spans)


def test_paraformer_config_errors_name_the_key():
    from speechkit.errors import ConfigError
    from speechkit.train.config import experiment_config_from_dict

    with pytest.raises(ConfigError, match="head_conf.decoder_layers"):
        experiment_config_from_dict({"head": "paraformer", "head_conf": {"decoder_layers": 2}})
    with pytest.raises(ConfigError, match="unknown head 'rnnt'"):
        experiment_config_from_dict({"head": "rnnt"})


def test_paraformer_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np

    from speechkit.export.paraformer import check_parity, export_paraformer, metadata

    model, tok = _tiny_paraformer()
    model.eval()
    export_paraformer(model, tmp_path / "m.onnx", metadata(model, tok))
    assert not model.training  # export must not leave dropout switched on
    g = np.random.default_rng(0)
    utts = [g.standard_normal((n, 20)).astype(np.float32) for n in (90, 57, 130)]
    report = check_parity(model, tmp_path / "m.onnx", utts)
    assert len(report) == 4 and all(r["same_tokens"] for r in report)
    assert report[-1]["batch"] == 3 and report[-1]["tokens"] > 0


def test_paraformer_starts_from_another_heads_encoder(tmp_path):
    """init_modules: the Paraformer takes CMVN, encoder and CTC from an AR checkpoint, keeps its own head."""
    from conftest import TINY_ENCODER_CONF
    from speechkit.errors import SpeechkitError
    from speechkit.models.asr.heads import build_asr_model
    from speechkit.checkpoint import save_atomic
    from speechkit.train.config import experiment_config_from_dict
    from speechkit.train.asr import load_init

    ar_cfg = experiment_config_from_dict({"frontend_conf": {"num_mel_bins": 20}, "encoder_conf": TINY_ENCODER_CONF, "head": "attention",
                                          "head_conf": {"num_blocks": 1, "attention_heads": 2, "linear_units": 32}})
    torch.manual_seed(5)
    ar = build_asr_model(ar_cfg.model, 6)
    save_atomic({"model": ar.state_dict(), "config": ar_cfg.to_yaml_dict()}, tmp_path / "ar.pt")
    para, _ = _tiny_paraformer()
    head_before = {k: v.clone() for k, v in para.state_dict().items() if k.startswith("decoder.")}
    load_init(para, tmp_path / "ar.pt", ("cmvn", "encoder", "ctc"))
    for k, v in ar.state_dict().items():
        if k.split(".")[0] in ("cmvn", "encoder", "ctc"):
            assert torch.equal(para.state_dict()[k], v), k
    assert all(torch.equal(para.state_dict()[k], v) for k, v in head_before.items())
    with pytest.raises(SpeechkitError, match="init_modules"):
        load_init(para, tmp_path / "ar.pt", ("predictor",))
    other = build_asr_model(ar_cfg.model, 9)  # another vocabulary: the CTC layer cannot fit
    save_atomic({"model": other.state_dict(), "config": ar_cfg.to_yaml_dict()}, tmp_path / "ar9.pt")
    with pytest.raises(SpeechkitError, match="ctc.weight has shape"):
        load_init(para, tmp_path / "ar9.pt", ("cmvn", "encoder", "ctc"))
    with pytest.raises(SpeechkitError, match="decoder.embed.weight has shape"):
        load_init(para, tmp_path / "ar.pt")  # all modules: the AR decoder is not this model's
    ctc_only = {k: v for k, v in ar.state_dict().items() if k.split(".")[0] in ("cmvn", "encoder", "ctc")}
    save_atomic({"model": ctc_only, "config": ar_cfg.to_yaml_dict()}, tmp_path / "enc.pt")
    with pytest.raises(SpeechkitError, match="does not fit"):
        load_init(para, tmp_path / "enc.pt")  # all modules asked for, the head's are missing


def test_paraformer_int8_check_accepts_int8_and_refuses_a_broken_graph(tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from speechkit.errors import SpeechkitError
    from speechkit.export.paraformer import check_int8, export_paraformer, metadata
    from speechkit.export.quantize import quantize_weights_int8

    model, tok = _tiny_paraformer()
    model.eval()
    export_paraformer(model, tmp_path / "fp32.onnx", metadata(model, tok))
    q = quantize_weights_int8(onnx.load(str(tmp_path / "fp32.onnx")), min_elements=100)
    onnx.save(q, str(tmp_path / "int8.onnx"))
    g = np.random.default_rng(0)
    utts = [g.standard_normal((n, 20)).astype(np.float32) for n in (90, 57, 130)]
    report = check_int8(model, tmp_path / "fp32.onnx", tmp_path / "int8.onnx", utts)
    assert report["utterances"] == 3 and report["token_error_rate"] <= 0.05
    for init in q.graph.initializer:  # a broken quantiser: every int8 weight negated
        if init.name.endswith("_int8"):
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(q, str(tmp_path / "bad.onnx"))
    with pytest.raises(SpeechkitError, match="int8 model disagrees"):
        check_int8(model, tmp_path / "fp32.onnx", tmp_path / "bad.onnx", utts)
