"""Text-to-music models (``speechkit/models/audiogen``): the caption tokenizer, MAGNeT's span masks
(the expected-coverage formula meets the scheduled rate on average), restricted attention (the
band mask, and gradients proving a fine stage sees only its window), the training loss's inputs,
the AR model's delay pattern and KV cache (equal to the full forward), ONNX export of MAGNeT's
forward, and one-line errors. Tiny configs on one thread."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from speechkit.config import from_dict
from speechkit.decoding import magnet as npdec
from speechkit.errors import ConfigError, SpeechkitError
from speechkit.models.audiogen.ar import DelayAR, apply_delay, undo_delay
from speechkit.models.audiogen.config import DelayArConfig, MagnetConfig, TextEncoderConfig
from speechkit.models.audiogen.magnet import Magnet, restricted_attention_mask
from speechkit.models.audiogen.masking import expected_coverage, sample_mask_rate, span_mask
from speechkit.models.audiogen.text import PAD, UNK, CaptionTokenizer, caption_words

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = TextEncoderConfig(vocab_size=20, layers=1, heads=2, ff=64)


def tiny_magnet(layers: int = 2, window: int | None = 2, **kw) -> Magnet:
    torch.manual_seed(0)
    return Magnet(MagnetConfig(codebooks=3, card=16, d_model=32, layers=layers, heads=2, ff=64, text=TEXT, window=window,
                               max_frames=64, **kw))


def tiny_ar() -> DelayAR:
    torch.manual_seed(0)
    return DelayAR(DelayArConfig(codebooks=3, card=16, d_model=32, layers=2, heads=2, ff=64, text=TEXT, max_frames=64))


# ---- captions ---------------------------------------------------------------------------------

def test_caption_tokenizer_splits_digits_drops_punctuation_and_round_trips(tmp_path):
    assert caption_words("An upbeat Pop tune in A minor, at 124 BPM!") == [
        "an", "upbeat", "pop", "tune", "in", "a", "minor", "at", "1", "2", "4", "bpm"]
    tok = CaptionTokenizer.build(["pop tune at 124 bpm", "calm pop piano", "pop"], min_count=2)
    assert tok.words[:2] == ["<pad>", "<unk>"] and {str(d) for d in range(10)} <= set(tok.words)
    assert "pop" in tok.words and "piano" not in tok.words  # seen once: below min_count
    ids = tok.encode("Pop piano at 90 bpm")
    assert ids[1] == UNK and [tok.words[i] for i in ids if i != UNK] == ["pop", "9", "0"]  # 'at', 'bpm' seen once too
    batch = tok.batch(["pop", "pop 1 2"])
    assert batch.shape == (2, 3) and batch[0, 1:].tolist() == [PAD, PAD]
    tok.save(tmp_path / "vocab.json")
    assert CaptionTokenizer.load(tmp_path / "vocab.json").words == tok.words
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SpeechkitError) as e:
        CaptionTokenizer.load(tmp_path / "bad.json")
    assert "bad.json" in str(e.value) and "\n" not in str(e.value)


def test_empty_caption_is_the_null_condition():
    model = tiny_magnet().eval()
    states, mask = model.text(torch.tensor([[3, 4, 5], [PAD, PAD, PAD]]))
    null, null_mask = model.text(torch.tensor([[PAD]]))
    assert mask.tolist() == [[True] * 4, [True, False, False, False]]
    assert torch.allclose(states[1, 0], null[0, 0], atol=1e-5) and null_mask.tolist() == [[True, False]]


# ---- span masks -------------------------------------------------------------------------------

def test_span_mask_meets_the_scheduled_rate_on_average():
    """Many masks at fixed rates: the mean masked fraction is the rate (the expected-coverage
    formula); the naive count rate * T / span, which ignores overlaps, misses it."""
    g = torch.Generator().manual_seed(0)
    span, n = 3, 4000
    naive_misses = 0
    for frames in (12, 50, 150):
        table = expected_coverage(frames, span)
        assert table[0] == 0 and table[-1] == 1 and np.all(np.diff(table) >= 0)
        for rate in (0.1, 0.3, 0.6, 0.9):
            masks = span_mask(torch.full((n,), rate), frames, span, min_spans=0, generator=g)
            assert abs(masks.float().mean().item() - rate) < 0.015, (frames, rate)
            naive = table[min(frames, round(rate * frames / span))]
            naive_misses += abs(naive - rate) > 0.05
            # masked runs are whole spans, except one cut by the end of the clip
            for row in masks[:50].tolist():
                runs = [len(r) for r in "".join("x" if v else "." for v in row).rstrip("x").split(".") if r]
                assert all(r >= span for r in runs)
    assert naive_misses >= 4
    rates = sample_mask_rate(20000, generator=g)
    assert abs(rates.mean().item() - 2 / math.pi) < 0.01  # E[cos(pi u / 2)], u ~ U(0, 1)
    assert span_mask(torch.zeros(5), 30, span).sum(1).min() >= 1  # min_spans=1: every item has a loss


# ---- restricted attention -----------------------------------------------------------------------

def test_restricted_attention_mask_is_the_band_for_fine_stages():
    frames, window = 9, 2
    mask = restricted_attention_mask(frames, window, torch.tensor([0, 1, 3]))
    i = torch.arange(frames)
    band = (i[:, None] - i[None, :]).abs() <= window
    assert mask.shape == (3, 1, frames, frames)
    assert mask[0, 0].all() and torch.equal(mask[1, 0], band) and torch.equal(mask[2, 0], band)
    assert restricted_attention_mask(frames, None, torch.tensor([1, 2])).all()
    padded = restricted_attention_mask(frames, window, torch.tensor([0, 2]), lengths=torch.tensor([5, 9]))
    # keys past an item's length: only as a frame's own key (no empty rows)
    assert torch.equal(padded[0, 0, :, 5:], torch.eye(frames, dtype=torch.bool)[:, 5:])
    assert padded[0, 0, :, :5].all() and torch.equal(padded[1, 0], band)


@pytest.mark.parametrize("layers", [1, 2])
def test_fine_stages_depend_only_on_frames_in_the_window(layers):
    """d logits[t] / d input[j] is nonzero exactly for |t - j| <= layers * window at stages >= 1
    (each layer widens the receptive field by one window), and for every j at stage 0."""
    window, frames, t = 2, 16, 7
    model = tiny_magnet(layers=layers, window=window).eval()
    with torch.no_grad():
        states, mask = model.text(torch.tensor([[3, 4]]))
    tokens = torch.randint(0, 17, (1, 3, frames), generator=torch.Generator().manual_seed(0))
    reach = layers * window
    for stage in range(3):
        x = model.embed_codes(tokens).detach().requires_grad_(True)
        st = torch.tensor([stage])
        model.head(model.hidden(x, states, mask, st), st)[0, t].sum().backward()
        seen = (x.grad[0].abs().sum(-1) > 0).tolist()
        expect = [True] * frames if stage == 0 else [abs(j - t) <= reach for j in range(frames)]
        assert seen == expect, (stage, seen)


# ---- MAGNeT's training loss ----------------------------------------------------------------------

def test_magnet_loss_sees_lower_codebooks_and_not_higher_ones():
    model = tiny_magnet().eval()
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (4, 3, 20), generator=g)
    text = torch.randint(2, 20, (4, 5), generator=g)

    def loss_at(c: torch.Tensor, stage: int) -> float:
        torch.manual_seed(5)  # the same span masks
        return model.loss(c, text, stage=stage)[0].item()

    higher, lower = codes.clone(), codes.clone()
    higher[:, 2] = (higher[:, 2] + 1) % 16
    lower[:, 0] = (lower[:, 0] + 1) % 16
    assert loss_at(higher, 1) == loss_at(codes, 1)  # codebook 2 is fully masked at stage 1
    assert loss_at(lower, 1) != loss_at(codes, 1)  # codebook 0 is an input at stage 1
    loss, metrics = model.loss(codes, text)
    assert loss.dim() == 0 and loss.requires_grad and set(metrics) == {"acc", "masked", "acc_q0", "acc_q1", "acc_q2"}
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())
    spans = torch.zeros(1, 20, dtype=torch.bool)
    spans[0, 3:6] = True
    inp = model.mask_for_stage(codes[:1], torch.tensor([1]), spans)
    assert torch.equal(inp[0, 0], codes[0, 0]) and (inp[0, 2] == 16).all()
    assert (inp[0, 1, 3:6] == 16).all() and torch.equal(inp[0, 1, 6:], codes[0, 1, 6:])


# ---- delay pattern and the AR model's cache ---------------------------------------------------------

def test_delay_pattern_round_trips_in_torch_and_numpy():
    codes = torch.randint(0, 16, (2, 4, 7), generator=torch.Generator().manual_seed(0))
    delayed = apply_delay(codes, 17)
    assert delayed.shape == (2, 4, 10)
    for k in range(4):
        assert torch.equal(delayed[:, k, k : k + 7], codes[:, k])
        assert (delayed[:, k, :k] == 17).all() and (delayed[:, k, k + 7 :] == 17).all()
    assert torch.equal(undo_delay(delayed), codes)
    assert np.array_equal(npdec.apply_delay(codes.numpy(), 17), delayed.numpy())
    assert np.array_equal(npdec.undo_delay(delayed.numpy()), codes.numpy())


def test_ar_cached_steps_equal_the_full_forward():
    model = tiny_ar().eval()
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (2, 3, 9), generator=g)
    text = torch.tensor([[3, 4, 5, 6], [7, PAD, PAD, PAD]])
    with torch.no_grad():
        states, mask = model.text(text)
        inputs = model.inputs(codes)
        full = model(inputs, states, mask)
        cache = model.init_cache(states, mask)
        steps = []
        for j in range(inputs.shape[2]):
            logits, cache = model.step(inputs[:, :, j], cache)
            steps.append(logits)
        assert cache.keys.shape[3] == inputs.shape[2]
        assert (torch.stack(steps, dim=2) - full).abs().max().item() < 1e-5
        cache = model.init_cache(states, mask)  # a prompt as one block, then single steps
        first, cache = model.step(inputs[:, :, :5], cache)
        sixth, cache = model.step(inputs[:, :, 5], cache)
        assert (torch.cat([first, sixth[:, :, None]], dim=2) - full[:, :, :6]).abs().max().item() < 1e-5
        logp = model.score(codes, text)
        want = full.log_softmax(-1).gather(-1, apply_delay(codes, 0)[..., None])[..., 0]
        assert torch.allclose(logp, undo_delay(want), atol=1e-5)
        partial = codes.clone()
        partial[:, 2] = model.mask_id
        scored = model.score(partial, text)
        assert (scored[:, 2] == 0).all() and (scored[:, :2] < 0).all()


def test_ar_loss_trains_every_real_slot():
    model = tiny_ar().train()
    codes = torch.randint(0, 16, (4, 3, 12), generator=torch.Generator().manual_seed(0))
    loss, metrics = model.loss(codes, torch.randint(2, 20, (4, 3)), lengths=torch.tensor([12, 12, 8, 5]))
    loss.backward()
    assert math.isfinite(loss.item()) and set(metrics) == {"acc", "acc_q0", "acc_q1", "acc_q2"}
    assert model.heads.weight.grad.abs().sum() > 0 and model.text.embed.weight.grad.abs().sum() > 0


# ---- ONNX -----------------------------------------------------------------------------------------

def test_magnet_forward_exports_one_graph_for_every_stage_and_length():
    ort = pytest.importorskip("onnxruntime")
    model = tiny_magnet().eval()
    g = torch.Generator().manual_seed(0)
    states, mask = model.text(torch.tensor([[3, 4, 5], [6, PAD, PAD]]))
    states = states.detach()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (torch.randint(0, 17, (2, 3, 20), generator=g), states, mask, torch.tensor([1, 2])), buf,
                          input_names=["tokens", "text_states", "text_mask", "stage"], output_names=["logits"],
                          dynamic_axes={"tokens": {0: "B", 2: "T"}, "text_states": {0: "B", 1: "L"}, "text_mask": {0: "B", 1: "L"},
                                        "stage": {0: "S"}, "logits": {0: "B", 1: "T"}}, opset_version=18, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for frames, stage in ((20, [0]), (33, [1]), (7, [2]), (33, [0, 2])):  # one stage for all, or one per item
        tokens = torch.randint(0, 17, (2, 3, frames), generator=g)
        want = model(tokens, states, mask, torch.tensor(stage)).detach().numpy()
        got = sess.run(None, {"tokens": tokens.numpy(), "text_states": states.numpy(), "text_mask": mask.numpy(),
                              "stage": np.array(stage, dtype=np.int64)})[0]
        assert np.abs(got - want).max() < 1e-4, (frames, stage)
    states3, mask3 = (t.detach() for t in model.text(torch.tensor([[3, PAD], [4, 5], [6, 7]])))  # another batch
    tokens = torch.randint(0, 17, (3, 3, 11), generator=g)
    got = sess.run(None, {"tokens": tokens.numpy(), "text_states": states3.numpy(), "text_mask": mask3.numpy(),
                          "stage": np.array([1], dtype=np.int64)})[0]
    assert np.abs(got - model(tokens, states3, mask3, 1).detach().numpy()).max() < 1e-4


# ---- errors -----------------------------------------------------------------------------------

def test_bad_configs_and_inputs_are_one_line_errors():
    cases = [
        lambda: MagnetConfig(span=0),
        lambda: MagnetConfig(window=-1),
        lambda: MagnetConfig(d_model=250, heads=4),
        lambda: DelayArConfig(mask_higher_prob=1.5),
        lambda: from_dict(MagnetConfig, {"layers": 2, "spam": 3}, source="conf/magnet.yaml"),
        lambda: tiny_magnet().loss(torch.zeros(1, 2, 10, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)),
        lambda: tiny_magnet().loss(torch.zeros(1, 3, 65, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)),
        lambda: tiny_ar().loss(torch.zeros(1, 4, 10, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)),
        lambda: Magnet(MagnetConfig()),  # no caption vocabulary
    ]
    for case in cases:
        with pytest.raises(SpeechkitError) as e:
            case()
        assert "\n" not in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match="spam"):
        cases[4]()
