"""Text-to-music decoding (``speechkit/decoding/magnet.py``, numpy): MAGNeT's stage loop (the
schedule of masked spans, prompt frames never changed, no MASK left after a stage), rescoring at
weight 0 equal to plain MAGNeT bit for bit, the samplers, the delay-pattern AR loop and the
hybrid; then tiny MAGNeT and AR models trained for a few hundred CPU steps on a toy task (codebook
0 chosen by the caption, higher codebooks functions of codebook 0) learn it and decode it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speechkit.decoding.magnet import (ArOptions, MagnetOptions, apply_delay, ar_generate, hybrid_generate,
                                       magnet_generate, masked_spans, sample_tokens, span_scores)
from speechkit.errors import SpeechkitError
from speechkit.models.audiogen.ar import DelayAR
from speechkit.models.audiogen.config import DelayArConfig, MagnetConfig, TextEncoderConfig
from speechkit.models.audiogen.magnet import Magnet
from speechkit.models.audiogen.text import CaptionTokenizer

K, CARD = 3, 16
MASK = CARD


class RandomModel:
    """A stand-in ``logits_fn``: logits a fixed function of (tokens, stage, null_text), and every
    call's inputs recorded."""

    def __init__(self):
        self.calls: list[tuple[np.ndarray, int, bool]] = []
        self.table = np.random.default_rng(7).standard_normal((2, K, 64, CARD)).astype(np.float32) * 2

    def __call__(self, tokens: np.ndarray, stage: int, null_text: bool) -> np.ndarray:
        self.calls.append((tokens.copy(), stage, null_text))
        seen = (np.where(tokens == MASK, 0, tokens + 1).sum(axis=1) % 5)[..., None].astype(np.float32)  # depends on the tokens
        return self.table[int(null_text), stage, : tokens.shape[2]][None] + 0.3 * seen


def random_rescore(tokens: np.ndarray) -> np.ndarray:
    return -np.abs(np.sin(tokens * 1.7 + np.arange(tokens.shape[2]))).astype(np.float32) * 3


# ---- MAGNeT's loop --------------------------------------------------------------------------------

def test_magnet_follows_the_span_schedule_keeps_the_prompt_and_leaves_no_mask():
    frames, p, span, steps = 40, 7, 3, (6, 3, 2)
    prompt = np.random.default_rng(0).integers(0, CARD, (2, K, p))
    model = RandomModel()
    out = magnet_generate(model, 2, frames, K, CARD, MagnetOptions(steps=steps, span=span, cfg=(3.0, 1.0)), prompt=prompt, rng=1)
    assert out.shape == (2, K, frames) and out.dtype == np.int64 and out.min() >= 0 and out.max() < CARD
    assert np.array_equal(out[:, :, :p], prompt)
    spans = math.ceil((frames - p) / span)
    cond = [(t, s) for t, s, null in model.calls if not null]
    nulls = [(t, s) for t, s, null in model.calls if null]
    assert [s for _, s in cond] == [0] * 6 + [1] * 3 + [2] * 2
    # guidance 3 -> 1 with the mask rate: a null call wherever the scale is still above 1 (all but none here)
    assert len(nulls) == len(cond) and all(np.array_equal(a, b) for (a, _), (b, _) in zip(cond, nulls))
    i = 0
    for stage, n in enumerate(steps):
        expect_masked = [spans] + [masked_spans(spans, s, n) for s in range(n - 1)]
        for step in range(n):
            tokens, _ = cond[i]
            i += 1
            assert np.array_equal(tokens[:, :stage, :], out[:, :stage, :])  # lower codebooks: finished
            assert (tokens[:, stage + 1 :] == MASK).all()  # higher codebooks: masked, prompt frames too
            assert np.array_equal(tokens[:, stage, :p], prompt[:, stage])
            row = tokens[:, stage, p:]
            padded = np.pad(row == MASK, ((0, 0), (0, spans * span - row.shape[1])), constant_values=True)
            per_span = padded.reshape(2, spans, span)
            assert (per_span.all(-1) == per_span.any(-1)).all()  # whole spans are masked
            assert per_span.all(-1).sum(1).tolist() == [expect_masked[step]] * 2
    assert masked_spans(spans, steps[0] - 1, steps[0]) == 0


def test_magnet_is_reproducible_and_rescoring_at_weight_zero_is_plain_magnet():
    opts = MagnetOptions(steps=(5, 3, 2), span=2, temperature=(2.0, 0.5))
    plain = magnet_generate(RandomModel(), 2, 30, K, CARD, opts, rng=3)
    assert np.array_equal(plain, magnet_generate(RandomModel(), 2, 30, K, CARD, opts, rng=3))

    def must_not_run(tokens):
        raise AssertionError("rescore_fn called at weight 0")

    zero = magnet_generate(RandomModel(), 2, 30, K, CARD, opts, rescore_fn=must_not_run, rng=3)
    assert np.array_equal(zero, plain)
    seen = []
    rescored = magnet_generate(RandomModel(), 2, 30, K, CARD, MagnetOptions(steps=(5, 3, 2), span=2, temperature=(2.0, 0.5), rescore_weight=0.7),
                               rescore_fn=lambda t: seen.append(t.copy()) or random_rescore(t), rng=3)
    assert not np.array_equal(rescored, plain)  # the rescorer's confidences changed which spans were kept
    assert len(seen) == 10 and all((t[:, 1:] == MASK).all() for t in seen[:5])  # stage 0: codebooks above unknown
    assert all((t[:, 0] != MASK).all() for t in seen)  # the scored stage is complete


def test_span_scores_mean_and_max():
    conf = np.array([[0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0]])
    starts = np.array([1, 3, 5])
    assert np.allclose(span_scores(conf, starts, "mean"), [[-1.5, -3.5, -5.5]])
    assert np.allclose(span_scores(conf, starts, "max"), [[-1.0, -3.0, -5.0]])
    assert np.allclose(span_scores(conf, np.array([1, 4]), "mean"), [[-2.0, -5.0]])  # a shorter last span


def test_sampler_follows_softmax_top_k_and_top_p():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    n = 40000
    draws = sample_tokens(np.repeat(logits, n, 0), rng.random(n), 1.0, None, None)
    assert np.allclose(np.bincount(draws, minlength=4) / n, [0.5, 0.3, 0.15, 0.05], atol=0.01)
    draws = sample_tokens(np.repeat(logits, n, 0), rng.random(n), 1.0, None, 0.7)  # 0.5 + 0.3 hold 0.7
    assert np.allclose(np.bincount(draws, minlength=4) / n, [0.625, 0.375, 0, 0], atol=0.01)
    draws = sample_tokens(np.repeat(logits, n, 0), rng.random(n), 1.0, 3, None)
    assert np.allclose(np.bincount(draws, minlength=4) / n, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], atol=0.01)
    assert (sample_tokens(np.repeat(logits, 50, 0), rng.random(50), 0.0, None, 0.9) == 0).all()
    assert (sample_tokens(np.repeat(logits, 50, 0), rng.random(50), 1.0, 1, None) == 0).all()


# ---- AR and hybrid --------------------------------------------------------------------------------

class RandomAR:
    """Stand-in init_fn / step_fn with a cache that counts steps; records every step's input."""

    def __init__(self):
        self.inputs: list[np.ndarray] = []
        self.table = np.random.default_rng(3).standard_normal((64, K, CARD)).astype(np.float32) * 2

    def init(self, null_text: bool) -> dict:
        return {"step": 0, "null": null_text}

    def step(self, tokens: np.ndarray, cache: dict) -> tuple[np.ndarray, dict]:
        if not cache["null"]:
            self.inputs.append(tokens.copy())
        logits = self.table[cache["step"]][None].repeat(tokens.shape[0], 0) + (cache["null"] * 0.5)
        return logits, {"step": cache["step"] + 1, "null": cache["null"]}


def test_ar_generate_feeds_the_delay_pattern_and_keeps_the_prompt():
    frames, p = 10, 4
    prompt = np.random.default_rng(1).integers(0, CARD, (2, K, p))
    ar = RandomAR()
    out = ar_generate(ar.init, ar.step, 2, frames, K, CARD, ArOptions(cfg=2.0, temperature=1.0, top_k=5), prompt=prompt, rng=0)
    assert out.shape == (2, K, frames) and out.min() >= 0 and out.max() < CARD
    assert np.array_equal(out[:, :, :p], prompt)
    fed = np.stack(ar.inputs, axis=2)  # the input of step j is the pattern's step j - 1
    assert fed.shape == (2, K, frames + K - 1)
    pattern = apply_delay(out, CARD + 1)
    assert (fed[:, :, 0] == CARD + 1).all() and np.array_equal(fed[:, :, 1:], pattern[:, :, :-1])


def test_hybrid_continues_the_ar_frames_with_magnet():
    ar, model = RandomAR(), RandomModel()
    opts = MagnetOptions(steps=(4, 2, 2), span=2)
    out = hybrid_generate(model, ar.init, ar.step, 2, 24, K, CARD, ar_frames=8, magnet=opts, ar=ArOptions(top_k=8), rng=5)
    head = ar_generate(RandomAR().init, RandomAR().step, 2, 8, K, CARD, ArOptions(top_k=8), rng=5)  # AR draws first
    assert np.array_equal(out[:, :, :8], head) and out.shape == (2, K, 24) and (out < CARD).all()
    assert all(np.array_equal(t[:, s, :8], head[:, s]) for t, s, _ in model.calls)


def test_bad_decoding_inputs_are_one_line_errors():
    model, ar = RandomModel(), RandomAR()
    cases = [
        lambda: magnet_generate(model, 1, 0, K, CARD, MagnetOptions(steps=(2, 2, 2))),
        lambda: magnet_generate(model, 1, 20, K, CARD, MagnetOptions(steps=(2, 2))),
        lambda: MagnetOptions(span_score="median"),
        lambda: MagnetOptions(steps=(2, 0, 2)),
        lambda: MagnetOptions(top_p=0.0),
        lambda: MagnetOptions(rescore_weight=1.5),
        lambda: magnet_generate(model, 1, 20, K, CARD, MagnetOptions(steps=(2, 2, 2), rescore_weight=0.5)),
        lambda: magnet_generate(model, 1, 20, K, CARD, MagnetOptions(steps=(2, 2, 2)), prompt=np.zeros((1, K, 20), dtype=np.int64)),
        lambda: magnet_generate(model, 1, 20, K, CARD, MagnetOptions(steps=(2, 2, 2)), prompt=np.zeros((1, 2, 5), dtype=np.int64)),
        lambda: ar_generate(ar.init, ar.step, 1, -3, K, CARD),
        lambda: ArOptions(top_k=0),
        lambda: hybrid_generate(model, ar.init, ar.step, 1, 20, K, CARD, ar_frames=20),
    ]
    for case in cases:
        with pytest.raises(SpeechkitError) as e:
            case()
        assert "\n" not in str(e.value) and str(e.value), str(e.value)


# ---- tiny models on a toy task ---------------------------------------------------------------------

T = 24
CAPTIONS = ["calm tune in 1", "fast song in 2", "slow piece in 3", "loud riff in 4"]


def toy_codes(which: torch.Tensor, tunes: torch.Tensor) -> torch.Tensor:
    """[B] caption indices → codes [B, K, T]: codebook 0 the caption's tune, codebooks 1 and 2
    functions of codebook 0 (and 1)."""
    c0 = tunes[which]
    c1 = (c0 * 5 + 1) % CARD
    c2 = (c1 + 3 * c0 + 2) % CARD
    return torch.stack([c0, c1, c2], dim=1)


@pytest.fixture(scope="module")
def toy():
    """A MAGNeT (200 steps) and an AR model (100 steps) trained on the toy task, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = CaptionTokenizer.build(CAPTIONS)
        text = TextEncoderConfig(vocab_size=len(tok), layers=1, heads=2, ff=128)
        tunes = torch.randint(0, CARD, (len(CAPTIONS), T), generator=torch.Generator().manual_seed(1))
        captions = tok.batch(CAPTIONS)
        torch.manual_seed(0)
        magnet = Magnet(MagnetConfig(codebooks=K, card=CARD, d_model=64, layers=2, heads=2, ff=128, dropout=0.0, text=text,
                                     cond_dropout=0.1, span=2, window=3, max_frames=T))
        ar = DelayAR(DelayArConfig(codebooks=K, card=CARD, d_model=64, layers=2, heads=2, ff=128, dropout=0.0, text=text,
                                   cond_dropout=0.1, max_frames=T))
        losses = {}
        for name, model, steps in (("magnet", magnet, 200), ("ar", ar, 100)):
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
            history = []
            for _ in range(steps):
                which = torch.randint(0, len(CAPTIONS), (16,))
                loss, metrics = model.loss(toy_codes(which, tunes), captions[which])
                opt.zero_grad()
                loss.backward()
                opt.step()
                history.append(loss.item())
            losses[name] = (history[0], float(np.mean(history[-20:])))
            model.eval()
        yield {"magnet": magnet, "ar": ar, "captions": captions, "target": toy_codes(torch.arange(4), tunes).numpy(), "losses": losses}
    finally:
        torch.set_num_threads(threads)


def test_tiny_magnet_learns_the_toy_task_and_decodes_it(toy):
    chance = math.log(CARD)
    first, last = toy["losses"]["magnet"]
    assert first > 0.8 * chance and last < 0.25 * chance, toy["losses"]
    logits_fn = toy["magnet"].logits_fn(toy["captions"])
    opts = MagnetOptions(steps=(6, 3, 3), span=2, cfg=(2.0, 1.0), temperature=(1.0, 0.0))
    out = magnet_generate(logits_fn, 4, T, K, CARD, opts, rng=0)
    assert (out == toy["target"]).mean() > 0.85, (out == toy["target"]).mean(axis=(0, 2))
    prompted = magnet_generate(logits_fn, 4, T, K, CARD, opts, prompt=toy["target"][:, :, :6], rng=0)
    assert np.array_equal(prompted[:, :, :6], toy["target"][:, :, :6]) and (prompted == toy["target"]).mean() > 0.85
    rescored = magnet_generate(logits_fn, 4, T, K, CARD, MagnetOptions(steps=(6, 3, 3), span=2, cfg=(2.0, 1.0), temperature=(1.0, 0.0),
                                                                       rescore_weight=0.5),
                               rescore_fn=toy["ar"].rescore_fn(toy["captions"]), rng=0)
    assert (rescored == toy["target"]).mean() > 0.85


def test_tiny_ar_learns_the_toy_task_and_decodes_it(toy):
    first, last = toy["losses"]["ar"]
    assert first > 0.8 * math.log(CARD) and last < 0.25 * math.log(CARD), toy["losses"]
    init_fn, step_fn = toy["ar"].decoding_fns(toy["captions"])
    out = ar_generate(init_fn, step_fn, 4, T, K, CARD, ArOptions(cfg=2.0, temperature=0.5, top_k=4), rng=0)
    assert (out == toy["target"]).mean() > 0.85, (out == toy["target"]).mean(axis=(0, 2))
    both = hybrid_generate(toy["magnet"].logits_fn(toy["captions"]), init_fn, step_fn, 4, T, K, CARD, ar_frames=8,
                           magnet=MagnetOptions(steps=(6, 3, 3), span=2, cfg=(2.0, 1.0), temperature=(1.0, 0.0)),
                           ar=ArOptions(cfg=2.0, temperature=0.5, top_k=4), rng=0)
    assert (both == toy["target"]).mean() > 0.85
