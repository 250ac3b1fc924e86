"""Unit tests of the autoregressive transformer decoder on a tiny config: causality and padding,
incremental decoding against teacher forcing, greedy and (batched) beam search, CTC rescoring,
target preparation and the label-smoothed loss."""

from __future__ import annotations

import pytest
import torch

from speechkit.models.asr.attention_decoder import (
    AttentionDecoderConfig,
    TransformerDecoder,
    add_sos_eos,
    beam_search,
    greedy_search,
    label_smoothing_loss,
)

V, D = 12, 32
EOS = SOS = V
TINY = AttentionDecoderConfig(num_blocks=2, attention_heads=4, linear_units=64, dropout_rate=0.0)


def _decoder(seed: int = 0, eos_bias: float = 0.0) -> TransformerDecoder:
    """A random decoder; a positive eos_bias makes its hypotheses end at varied lengths."""
    torch.manual_seed(seed)
    dec = TransformerDecoder(V, D, TINY).eval()
    with torch.no_grad():
        dec.output.weight.mul_(3.0)  # peakier than at init, so near-ties between tokens are rare
        dec.output.bias[EOS] += eos_bias
    return dec


def _enc(lens: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(lens), max(lens), D, generator=g), torch.tensor(lens)


def _teacher_forced_score(dec: TransformerDecoder, enc: torch.Tensor, enc_len: int, tokens: list[int]) -> float:
    ys_in = torch.tensor([[SOS, *tokens]])
    with torch.no_grad():
        logp = dec(enc[None, :enc_len], torch.tensor([enc_len]), ys_in, torch.tensor([ys_in.shape[1]])).log_softmax(-1)
    return float(logp[0].gather(1, torch.tensor([*tokens, EOS])[:, None]).sum())


def test_logits_are_causal_and_ignore_encoder_padding():
    dec = _decoder()
    enc, enc_lens = _enc([7, 4])
    ys = torch.randint(1, V, (2, 6))
    ys_lens = torch.tensor([6, 4])
    with torch.no_grad():
        ref = dec(enc, enc_lens, ys, ys_lens)
        for u in range(5):
            changed = ys.clone()
            changed[:, u + 1 :] = torch.randint(1, V + 1, (2, 5 - u))
            assert torch.allclose(dec(enc, enc_lens, changed, ys_lens)[:, : u + 1], ref[:, : u + 1], atol=1e-6)
        noisy = enc.clone()
        noisy[1, 4:] = 100.0 * torch.randn(3, D)
        out = dec(noisy, enc_lens, ys, ys_lens)
    assert torch.allclose(out[0], ref[0], atol=1e-6)
    assert torch.allclose(out[1, :4], ref[1, :4], atol=1e-5)


def test_forward_one_step_with_cache_matches_teacher_forcing():
    dec = _decoder()
    enc, enc_lens = _enc([7, 3, 5])
    ys = torch.cat([torch.full((3, 1), SOS), torch.randint(1, V, (3, 5))], dim=1)
    enc_mask = (torch.arange(enc.shape[1])[None, :] < enc_lens[:, None]).unsqueeze(1)
    cache = None
    with torch.no_grad():
        full = dec(enc, enc_lens, ys, torch.full((3,), ys.shape[1])).log_softmax(-1)
        for i in range(1, ys.shape[1] + 1):
            logp, cache = dec.forward_one_step(enc, enc_mask, ys[:, :i], cache)
            assert logp.dtype == torch.float32 and [c.shape[1] for c in cache] == [i] * TINY.num_blocks
            torch.testing.assert_close(logp, full[:, i - 1], atol=1e-5, rtol=0)


def test_beam_of_one_is_greedy():
    dec = _decoder(eos_bias=1.0)
    enc, enc_lens = _enc([9, 4, 6])
    greedy = greedy_search(dec, enc, enc_lens, SOS, EOS)
    beam = beam_search(dec, enc, enc_lens, 1, SOS, EOS)
    assert [hyps[0][0] for hyps in beam] == greedy
    assert all(len(hyps) == 1 for hyps in beam)


def test_batched_beam_search_equals_one_utterance_at_a_time():
    dec = _decoder(eos_bias=1.0)
    enc, enc_lens = _enc([9, 3, 6])
    enc[1, 3:] = 50.0  # padding must not matter
    batched = beam_search(dec, enc, enc_lens, 4, SOS, EOS)
    for u, n in enumerate(enc_lens.tolist()):
        alone = beam_search(dec, enc[u : u + 1, :n], enc_lens[u : u + 1], 4, SOS, EOS)[0]
        assert [h for h, _ in batched[u]] == [h for h, _ in alone]
        assert batched[u][0][0] == alone[0][0]
        assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(batched[u], alone))


@pytest.mark.parametrize("eos_bias", [0.0, 1.5])
def test_nbest_is_sorted_and_scores_are_teacher_forced_log_probs(eos_bias):
    dec = _decoder(seed=2, eos_bias=eos_bias)
    enc, enc_lens = _enc([8, 5])
    nbest = beam_search(dec, enc, enc_lens, 5, SOS, EOS)
    for u, hyps in enumerate(nbest):
        assert 1 <= len(hyps) <= 5
        scores = [s for _, s in hyps]
        assert scores == sorted(scores, reverse=True) and scores[0] == max(scores)
        assert len({tuple(h) for h, _ in hyps}) == len(hyps)
        for tokens, score in hyps:
            assert len(tokens) <= int(enc_lens[u]) and 0 not in tokens and EOS not in tokens
            assert abs(score - _teacher_forced_score(dec, enc[u], int(enc_lens[u]), tokens)) < 1e-4


def test_length_bonus_is_added_per_token():
    dec = _decoder(seed=3, eos_bias=1.0)
    enc, enc_lens = _enc([6])
    for tokens, score in beam_search(dec, enc, enc_lens, 3, SOS, EOS, length_bonus=0.5)[0]:
        assert abs(score - _teacher_forced_score(dec, enc[0], 6, tokens) - 0.5 * len(tokens)) < 1e-4


def test_more_beams_than_hypotheses_and_max_len():
    dec = _decoder(eos_bias=1.0)
    enc, enc_lens = _enc([1, 5])
    nbest = beam_search(dec, enc, enc_lens, 30, SOS, EOS, max_len=2)
    assert all(1 <= len(hyps) <= 30 and all(len(h) <= 2 for h, _ in hyps) for hyps in nbest)
    assert all(len(h) <= 1 for h, _ in nbest[0])
    assert all(len(h) <= 2 for h in greedy_search(dec, enc, enc_lens, SOS, EOS, max_len=2))


def test_decoder_overfits_two_utterances():
    targets = [[3, 5, 7, 2], [9, 4, 4, 11, 6]]
    torch.manual_seed(0)
    dec = TransformerDecoder(V, D, TINY)
    enc, enc_lens = _enc([8, 6], seed=5)
    tokens = torch.tensor([targets[0] + [0], targets[1]])
    ys_in, ys_out, ys_in_lens = add_sos_eos(tokens, torch.tensor([4, 5]), SOS, EOS)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    for _ in range(150):
        loss = label_smoothing_loss(dec(enc, enc_lens, ys_in, ys_in_lens), ys_out, lsm_weight=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval()
    assert greedy_search(dec, enc, enc_lens, SOS, EOS) == targets
    assert [hyps[0][0] for hyps in beam_search(dec, enc, enc_lens, 3, SOS, EOS)] == targets


def _ctc_log_probs_preferring(tokens: list[int], num_frames: int) -> torch.Tensor:
    """(1, T, V) log-probs whose frames spell ``tokens`` (two frames each, blanks between)."""
    logits = torch.randn(num_frames, V, generator=torch.Generator().manual_seed(7))
    labels = [0] * num_frames
    for j, tok in enumerate(tokens):
        labels[3 * j : 3 * j + 2] = [tok, tok]
    logits[torch.arange(num_frames), torch.tensor(labels[:num_frames])] += 12.0
    return logits.log_softmax(-1)[None]


def test_ctc_rescoring_with_full_weight_orders_by_ctc_score():
    dec = _decoder(seed=4, eos_bias=1.0)
    enc, enc_lens = _enc([10])
    plain = beam_search(dec, enc, enc_lens, 4, SOS, EOS, max_len=3)[0]
    assert len(plain) >= 2
    preferred = plain[-1][0]
    ctc = _ctc_log_probs_preferring(preferred, 10)
    rescored = beam_search(dec, enc, enc_lens, 4, SOS, EOS, ctc_log_probs=ctc, ctc_weight=1.0, max_len=3)[0]
    assert rescored[0][0] == preferred
    assert sorted(h for h, _ in rescored) == sorted(h for h, _ in plain)
    for tokens, score in rescored:
        nll = torch.nn.functional.ctc_loss(ctc[0], torch.tensor(tokens, dtype=torch.long), (10,), (len(tokens),), reduction="sum")
        assert abs(score + float(nll)) < 1e-4
    assert [s for _, s in rescored] == sorted((s for _, s in rescored), reverse=True)


def test_add_sos_eos():
    tokens = torch.tensor([[3, 4, 5], [6, 7, -1], [8, 99, 99]])
    ys_in, ys_out, ys_in_lens = add_sos_eos(tokens, torch.tensor([3, 2, 1]), SOS, EOS)
    assert ys_in.tolist() == [[12, 3, 4, 5], [12, 6, 7, 12], [12, 8, 12, 12]]
    assert ys_out.tolist() == [[3, 4, 5, 12], [6, 7, 12, -1], [8, 12, -1, -1]]
    assert ys_in_lens.tolist() == [4, 3, 2]


def test_label_smoothing_loss_without_smoothing_is_cross_entropy_over_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, V + 1)
    ys_out = torch.randint(1, V + 1, (3, 5))
    ys_out[1, 3:] = -1
    ys_out[2, 1:] = -1
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ys_out.flatten(), ignore_index=-1, reduction="sum") / 3
    torch.testing.assert_close(label_smoothing_loss(logits, ys_out, 0.0), ce)
    assert label_smoothing_loss(logits, ys_out, 0.1) > 0
