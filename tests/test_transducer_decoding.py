"""Transducer search (``speechkit/decoding/transducer.py``, numpy) on small random networks:
greedy equals a beam of one, streams batched equal streams alone, chunk by chunk equals whole,
one joiner call per frame for all streams, beam hypotheses scored exactly (checked against the
forward algorithm when nothing is pruned), a hand-built case whose best path greedy misses, unk
treated as blank, and one-line errors for bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from speechkit.decoding.transducer import (BLANK_ID, PAD_ID, BeamState, GreedyState, Hypothesis, greedy_search,
                                           modified_beam_search, start_context)
from speechkit.errors import SpeechkitError


class RandomTransducer:
    """A stateless decoder (embeddings of the last C tokens, PAD_ID → zeros, one tanh layer) and
    an icefall-style joiner (tanh(enc W + dec) W_out + bias) with fixed random weights; every
    call's row count is recorded."""

    def __init__(self, seed: int, vocab: int = 6, dim: int = 8, context: int = 2, blank_bias: float = 0.0, scale: float = 3.0):
        rng = np.random.default_rng(seed)
        self.vocab, self.dim, self.context = vocab, dim, context
        self.emb = rng.standard_normal((vocab, dim))
        self.w_dec = rng.standard_normal((context * dim, dim)) / math.sqrt(context * dim)
        self.w_enc = rng.standard_normal((dim, dim)) / math.sqrt(dim)
        self.w_out = rng.standard_normal((dim, vocab)) * scale / math.sqrt(dim)
        self.bias = np.zeros(vocab)
        self.bias[BLANK_ID] = blank_bias
        self.decoder_rows: list[int] = []
        self.joiner_rows: list[int] = []

    def decoder(self, contexts: np.ndarray) -> np.ndarray:
        assert contexts.dtype == np.int64 and contexts.shape[1] == self.context
        self.decoder_rows.append(len(contexts))
        e = np.where((contexts >= 0)[..., None], self.emb[np.clip(contexts, 0, None)], 0.0)
        return np.tanh(e.reshape(len(contexts), -1) @ self.w_dec)

    def joiner(self, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
        self.joiner_rows.append(len(enc))
        return np.tanh(enc @ self.w_enc + dec) @ self.w_out + self.bias

    def frames(self, seed: int, t: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((t, self.dim))


def log_softmax(x: np.ndarray) -> np.ndarray:
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def sequence_log_prob(net: RandomTransducer, enc: np.ndarray, tokens: list[int]) -> float:
    """log P(tokens | enc) summed over every alignment with at most one symbol per frame (the
    forward algorithm over (frame, tokens emitted)): an oracle independent of the beam search."""
    ys = list(start_context(net.context)) + list(tokens)
    dec = net.decoder(np.array([ys[u : u + net.context] for u in range(len(tokens) + 1)], dtype=np.int64))
    alpha = np.full(len(tokens) + 1, -np.inf)
    alpha[0] = 0.0
    for frame in enc:
        lp = log_softmax(net.joiner(np.repeat(frame[None], len(dec), 0), dec))
        nxt = alpha + lp[:, BLANK_ID]
        nxt[1:] = np.logaddexp(nxt[1:], alpha[:-1] + lp[np.arange(len(tokens)), tokens])
        alpha = nxt
    return float(alpha[-1])


def run_greedy(net, encs, chunks=None, **kw) -> list[GreedyState]:
    """Each stream's frames through greedy_search, all streams in every call, in calls of the
    given frame counts (default: whole)."""
    states = [GreedyState.start(net.context) for _ in encs]
    return _run(greedy_search, net, encs, states, chunks, **kw)


def run_beam(net, encs, chunks=None, **kw) -> list[BeamState]:
    states = [BeamState.start(net.context) for _ in encs]
    return _run(modified_beam_search, net, encs, states, chunks, **kw)


def _run(search, net, encs, states, chunks, **kw):
    chunks = chunks or [max(len(e) for e in encs)]
    at = 0
    for n in chunks:
        states = search([e[at : at + n] for e in encs], states, net.decoder, net.joiner, **kw)
        at += n
    return states


def test_start_context_is_icefalls():
    assert start_context(2) == (PAD_ID, BLANK_ID) == (-1, 0)
    assert start_context(1) == (0,)
    assert GreedyState.start(3).context == (-1, -1, 0)


@pytest.mark.parametrize("seed", range(6))
def test_greedy_equals_beam_of_one(seed):
    net = RandomTransducer(seed, blank_bias=0.5)
    encs = [net.frames(seed, 30)]
    g = run_greedy(net, encs)[0]
    b = run_beam(net, encs, beam=1)[0]
    tokens, frames, _ = b.best()
    assert len(g.tokens) >= 3, "the random network should emit something"
    assert list(g.tokens) == tokens and list(g.frames) == frames
    assert sorted(g.frames) == list(g.frames) and len(set(g.frames)) == len(g.frames)  # at most one symbol per frame
    assert g.frame == 30 and b.frame == 30


def test_batched_streams_equal_streams_alone_and_share_calls():
    net = RandomTransducer(1, blank_bias=0.5)
    encs = [net.frames(10 + i, n) for i, n in enumerate([17, 0, 25, 9])]
    net.joiner_rows.clear()
    together = run_greedy(net, encs)
    assert len(net.joiner_rows) == 25  # one joiner call per frame for all streams ...
    assert net.joiner_rows[:9] == [3] * 9 and net.joiner_rows[-1] == 1  # ... holding the streams that have it
    alone = [run_greedy(net, [e])[0] for e in encs]
    assert [(s.tokens, s.frames, s.frame) for s in together] == [(s.tokens, s.frames, s.frame) for s in alone]
    assert together[1].tokens == () and together[1].frame == 0
    beams = run_beam(net, encs, beam=3)
    for b, e in zip(beams, encs):
        solo = run_beam(net, [e], beam=3)[0]
        assert [(h.ys, h.frames) for h in b.hyps] == [(h.ys, h.frames) for h in solo.hyps]
        np.testing.assert_allclose([h.log_prob for h in b.hyps], [h.log_prob for h in solo.hyps], rtol=1e-9)


@pytest.mark.parametrize("chunks", [[1] * 21, [5, 0, 7, 9], [20, 1], [3, 3, 3, 3, 3, 3, 3]])
def test_chunk_by_chunk_equals_whole(chunks):
    net = RandomTransducer(2, blank_bias=0.3)
    encs = [net.frames(3, 21), net.frames(4, 15)]
    whole, parts = run_greedy(net, encs), run_greedy(net, encs, chunks)
    assert [(s.tokens, s.frames, s.context, s.frame) for s in whole] == [(s.tokens, s.frames, s.context, s.frame) for s in parts]
    whole_b, parts_b = run_beam(net, encs, beam=4), run_beam(net, encs, chunks, beam=4)
    for a, b in zip(whole_b, parts_b):
        assert [(h.ys, h.frames) for h in a.hyps] == [(h.ys, h.frames) for h in b.hyps]
        np.testing.assert_allclose([h.log_prob for h in a.hyps], [h.log_prob for h in b.hyps], rtol=1e-9)
        assert a.frame == b.frame


def test_states_are_not_changed_by_a_call():
    net = RandomTransducer(3, blank_bias=0.3)
    enc = [net.frames(5, 12)]
    start = [GreedyState.start()]
    first = greedy_search(enc, start, net.decoder, net.joiner)
    again = greedy_search(enc, start, net.decoder, net.joiner)
    assert start[0] == GreedyState.start() and first[0].tokens == again[0].tokens


def test_beam_without_pruning_scores_every_sequence_exactly():
    """T=4, V=3: a beam of 100 keeps every token sequence, so the hypotheses' probabilities sum
    to one and each equals the forward algorithm's total over its alignments."""
    net = RandomTransducer(4, vocab=3, blank_bias=0.0, scale=1.5)
    enc = net.frames(6, 4)
    state = run_beam(net, [enc], beam=100)[0]
    assert len(state.hyps) == sum(2**u for u in range(5))  # every sequence of 0..4 symbols from 2
    assert abs(np.logaddexp.reduce([h.log_prob for h in state.hyps])) < 1e-9
    for h in state.hyps:
        assert h.log_prob == pytest.approx(sequence_log_prob(net, enc, list(h.ys[2:])), abs=1e-9)


def path_log_prob(net: RandomTransducer, enc: np.ndarray, state: GreedyState) -> float:
    """log P of the one alignment greedy took (its tokens at its frames, blank elsewhere)."""
    ys, total, at = list(start_context(net.context)), 0.0, dict(zip(state.frames, state.tokens))
    for t, frame in enumerate(enc):
        y = at.get(t, BLANK_ID)
        total += log_softmax(net.joiner(frame[None], net.decoder(np.array([ys[-net.context :]]))))[0, y]
        ys += [y] if y != BLANK_ID else []
    return total


@pytest.mark.parametrize("seed", range(12))
def test_beam_scores_at_least_greedys_path(seed):
    """The beam's best hypothesis (its log-prob summed over the alignments the beam kept) is at
    least as likely as greedy's single path, and no more likely than its sequence's exact total."""
    net = RandomTransducer(100 + seed, vocab=5, blank_bias=0.8)
    enc = net.frames(200 + seed, 14)
    greedy = run_greedy(net, [enc])[0]
    tokens, _, score = run_beam(net, [enc], beam=4)[0].best()
    assert score >= path_log_prob(net, enc, greedy) - 1e-9
    assert score <= sequence_log_prob(net, enc, tokens) + 1e-9


class TableTransducer:
    """A hand-built case: the encoder frame is a one-hot of t, the decoder a one-hot of the last
    token, and the joiner reads P(next | t, last) from a table. Token 1 looks best at t=0 but
    leaves every continuation uncertain; token 2 is slightly less likely and then certain."""

    context = 2
    table = np.empty((3, 3, 3))
    table[:, 0] = [0.90, 0.05, 0.05]  # nothing said yet (t > 0)
    table[0, 0] = [0.10, 0.50, 0.40]  # t = 0
    table[:, 1] = [0.34, 0.33, 0.33]  # after token 1
    table[:, 2] = [0.98, 0.01, 0.01]  # after token 2

    def decoder(self, contexts):
        return np.eye(3)[contexts[:, -1]]

    def joiner(self, enc, dec):
        return np.log(self.table[enc.argmax(1), dec.argmax(1)])


def test_hand_built_case_greedy_misses_the_best_path_the_beam_finds():
    net = TableTransducer()
    enc = np.eye(3)
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(3), repeat=3):  # every alignment, summed per token sequence
        last, p, seq = 0, 1.0, ()
        for t, y in enumerate(path):
            p *= net.table[t, last, y]
            if y:
                last, seq = y, seq + (y,)
        totals[seq] = totals.get(seq, 0.0) + p
    best = max(totals, key=totals.get)
    assert best == (2,) and math.isclose(sum(totals.values()), 1.0)
    g = run_greedy(net, [enc])[0]
    assert g.tokens == (1,) and g.frames == (0,)
    tokens, frames, score = run_beam(net, [enc], beam=2)[0].best()
    assert tokens == [2] and frames == [0]
    assert score <= math.log(totals[(2,)]) + 1e-12 and score == pytest.approx(math.log(0.4 * 0.98 * 0.98), abs=1e-12)  # blank-first pruned at t=0
    assert run_beam(net, [enc], beam=1)[0].best()[0] == [1]


def test_unk_is_treated_as_blank_when_named():
    net = RandomTransducer(5, vocab=4)
    net.bias[1] = 10.0  # the network says unk (id 1) everywhere
    enc = [net.frames(7, 10)]
    assert set(run_greedy(net, enc)[0].tokens) == {1}
    assert run_greedy(net, enc, unk_id=1)[0].tokens == ()
    assert run_beam(net, enc, beam=3, unk_id=1)[0].best()[0] == []


def test_length_norm_picks_by_score_per_token():
    state = BeamState((Hypothesis((-1, 0, 3, 4, 5), (0, 1, 2), -3.0), Hypothesis((-1, 0), (), -2.5)), 2)
    assert state.best()[0] == []  # -2.5 > -3.0
    assert state.best(length_norm=True)[0] == [3, 4, 5]  # -3/5 > -2.5/2


def test_bad_inputs_give_one_line_errors():
    net = RandomTransducer(0)
    g, b = [GreedyState.start()], [BeamState.start()]
    enc = [net.frames(0, 3)]
    cases = [
        lambda: greedy_search([np.zeros(8)], g, net.decoder, net.joiner),  # (D,) instead of (T, D)
        lambda: greedy_search(enc * 2, g, net.decoder, net.joiner),  # two streams, one state
        lambda: greedy_search([np.zeros((2, 8)), np.zeros((2, 4))], g * 2, net.decoder, net.joiner),  # two D
        lambda: greedy_search(enc, b, net.decoder, net.joiner),  # a beam state
        lambda: modified_beam_search(enc, g, net.decoder, net.joiner),  # a greedy state
        lambda: modified_beam_search(enc, b, net.decoder, net.joiner, beam=0),
        lambda: greedy_search(enc, g, lambda c: net.decoder(c)[:1].repeat(3, 0), net.joiner),  # wrong rows
        lambda: greedy_search(enc, g, net.decoder, lambda e, d: net.joiner(e, d)[:, 0]),  # 1-D logits
        lambda: greedy_search(enc * 2, [GreedyState.start(2), GreedyState.start(3)], net.decoder, net.joiner),
        lambda: GreedyState.start(0),
    ]
    for case in cases:
        with pytest.raises(SpeechkitError) as e:
            case()
        assert "\n" not in str(e.value)
