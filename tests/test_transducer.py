"""The transducer head: the RNN-T loss against every alignment of tiny lattices (values and
gradients), batching, long and bf16 inputs, the pruned loss against the full one; the hybrid
model overfits two utterances, decodes the same chunk by chunk as over the whole utterance, and
trains and resumes exactly through the ASR task on the engine."""

import dataclasses
import itertools
import json

import pytest
import torch

import speechkit.train.asr as asr_train
from conftest import make_train_dev_dumps
from speechkit.errors import ConfigError, SpeechkitError
from speechkit.models.asr.heads import build_asr_model
from speechkit.models.asr.transducer import HybridTransducerModel, StatelessDecoder, TransducerHeadConfig
from speechkit.nn.transducer_loss import prune_ranges, pruned_rnnt_loss, rnnt_loss
from speechkit.train.config import experiment_config_from_dict, load_experiment_config
from speechkit.train.engine import Engine

pytestmark = pytest.mark.usefixtures("one_thread")

CPU_CONFIG = "egs/synth/asr/conf/train_transducer_cpu.yaml"


def brute_force_nll(logits: torch.Tensor, y: list[int], t: int, u: int) -> torch.Tensor:
    """-log of the summed probability of every alignment: T blanks and U labels, the last a blank."""
    lp = logits.log_softmax(-1)
    scores = []
    for labels_at in itertools.combinations(range(t + u - 1), u):
        ti = ui = 0
        score = lp.new_zeros(())
        for k in range(t + u - 1):
            if k in labels_at:
                score, ui = score + lp[ti, ui, y[ui]], ui + 1
            else:
                score, ti = score + lp[ti, ui, 0], ti + 1
        scores.append(score + lp[t - 1, u, 0])
    return -torch.logsumexp(torch.stack(scores), 0)


def test_loss_and_gradients_equal_brute_force():
    torch.manual_seed(0)
    b, t, u, v = 4, 5, 3, 6
    logits = torch.randn(b, t, u + 1, v, dtype=torch.float64, requires_grad=True)
    y = torch.randint(1, v, (b, u))
    t_lens, u_lens = torch.tensor([5, 3, 1, 4]), torch.tensor([3, 2, 2, 0])  # U > T and U = 0 too
    got = rnnt_loss(logits, y, t_lens, u_lens, reduction="none")
    want = torch.stack([brute_force_nll(logits[i], y[i].tolist(), int(t_lens[i]), int(u_lens[i])) for i in range(b)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    w = torch.rand(b, dtype=torch.float64)  # distinct weights per utterance reach the backward's scaling
    g_got, = torch.autograd.grad((got * w).sum(), logits)
    g_want, = torch.autograd.grad((want * w).sum(), logits)
    torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=0)
    assert g_got[1, 3:].abs().max() == 0 and g_got[0].abs().max() > 0  # padded frames get nothing


def test_batch_equals_each_alone_and_reductions():
    torch.manual_seed(1)
    t_lens, u_lens = torch.tensor([7, 4, 6]), torch.tensor([2, 4, 0])
    logits = torch.randn(3, 7, 5, 9, requires_grad=True)
    y = torch.randint(1, 9, (3, 4))
    batch = rnnt_loss(logits, y, t_lens, u_lens, reduction="none")
    grad, = torch.autograd.grad(batch.sum(), logits)
    for i in range(3):
        t, u = int(t_lens[i]), int(u_lens[i])
        one = logits[i : i + 1, :t, : u + 1].detach().requires_grad_()
        alone = rnnt_loss(one, y[i : i + 1, :u], t_lens[i : i + 1], u_lens[i : i + 1], reduction="sum")
        g, = torch.autograd.grad(alone, one)
        torch.testing.assert_close(batch[i], alone, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(grad[i, :t, : u + 1], g[0], atol=1e-6, rtol=1e-5)
    assert torch.isclose(rnnt_loss(logits, y, t_lens, u_lens, reduction="mean"), batch.mean())
    with pytest.raises(SpeechkitError, match="reduction"):
        rnnt_loss(logits, y, t_lens, u_lens, reduction="max")


def test_long_inputs_and_bf16_autocast_stay_finite():
    torch.manual_seed(2)
    b, t, u, v, d = 2, 300, 60, 40, 16
    enc = torch.randn(b, t, 1, d)
    dec = torch.randn(b, 1, u + 1, d)
    proj = torch.nn.Linear(d, v)
    y = torch.randint(1, v, (b, u))
    lens, u_lens = torch.tensor([300, 211]), torch.tensor([60, 33])
    full = rnnt_loss(proj(torch.tanh(enc + dec)), y, lens, u_lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = proj(torch.tanh(enc + dec))
        assert logits.dtype == torch.bfloat16
        half = rnnt_loss(logits, y, lens, u_lens)
    assert half.dtype == torch.float32 and torch.isfinite(full) and torch.isfinite(half)
    torch.testing.assert_close(half, full, rtol=2e-2, atol=0)
    half.backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in proj.parameters())


def test_pruned_loss_is_the_full_loss_when_the_range_covers_every_label():
    torch.manual_seed(3)
    b, t, u, v, j = 3, 9, 5, 7, 8
    enc, dec = torch.randn(b, t, j), torch.randn(b, u + 1, j)
    am, lm = torch.randn(b, t, v), torch.randn(b, u + 1, v)
    out = torch.nn.Linear(j, v)
    joiner = lambda e, d: out(torch.tanh(e + d))  # noqa: E731
    y = torch.randint(1, v, (b, u))
    t_lens, u_lens = torch.tensor([9, 6, 8]), torch.tensor([5, 3, 0])
    full = rnnt_loss(joiner(enc[:, :, None], dec[:, None]), y, t_lens, u_lens, reduction="none")
    covered, simple = pruned_rnnt_loss(joiner, enc, dec, am, lm, y, t_lens, u_lens, prune_range=u + 1, reduction="none")
    torch.testing.assert_close(covered, full, atol=1e-5, rtol=0)
    narrow, _ = pruned_rnnt_loss(joiner, enc, dec, am, lm, y, t_lens, u_lens, prune_range=2, reduction="none")
    assert torch.isfinite(narrow).all() and (narrow >= full - 1e-5).all() and (narrow > full + 1e-3).any()
    # the simple loss is the RNN-T loss of the factored joiner am[t] + lm[u]
    torch.testing.assert_close(simple, rnnt_loss(am[:, :, None] + lm[:, None], y, t_lens, u_lens, reduction="none"),
                               atol=1e-4, rtol=0)
    (narrow.sum() + simple.sum()).backward()
    assert out.weight.grad.abs().sum() > 0


def test_prune_ranges_form_a_connected_lattice():
    torch.manual_seed(4)
    occupancy = torch.rand(2, 12, 9)
    t_lens, u_lens = torch.tensor([12, 7]), torch.tensor([8, 5])
    r = 3
    s = prune_ranges(occupancy, t_lens, u_lens, r)
    assert (s[:, 0] == 0).all() and (s.diff(dim=1) >= 0).all() and (s.diff(dim=1) <= r - 1).all()
    assert int(s[0, 11]) + r - 1 >= 8 and int(s[1, 6]) + r - 1 >= 5 and int(s.max()) <= 9 - r
    with pytest.raises(SpeechkitError, match="prune_range"):
        prune_ranges(occupancy, t_lens, u_lens, 1)


def test_stateless_decoder_step_equals_training_positions():
    torch.manual_seed(5)
    dec = StatelessDecoder(vocab_size=11, dim=8, context_size=3)
    tokens = torch.tensor([[4, 7, 2, 9, 5]])
    seq = dec.forward_targets(tokens)  # (1, 6, 8)
    history = [0, 0, 0] + tokens[0].tolist()
    for u in range(6):
        step = dec(torch.tensor([history[u : u + 3]]))
        torch.testing.assert_close(step, seq[:, u], atol=1e-6, rtol=0)
    fresh = torch.tensor([[-1, -1, 0]])  # sherpa-onnx's start of a stream
    torch.testing.assert_close(dec(fresh), dec(torch.zeros(1, 3, dtype=torch.int64)))


def test_head_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="loss"):
        TransducerHeadConfig(loss="k2")
    with pytest.raises(ConfigError, match="ctc_weight"):
        TransducerHeadConfig(ctc_weight=1.0)


@pytest.fixture(scope="module")
def one_thread_module():
    """``one_thread`` for the module's shared model (a module fixture is set up before function ones)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = {
    "encoder": "streaming_conformer",
    "encoder_conf": {"output_size": 16, "attention_heads": 2, "linear_units": 32, "num_blocks": 2, "cnn_module_kernel": 5,
                     "dropout_rate": 0.0, "attention_dropout_rate": 0.0, "att_context_size": [[4, 1]]},
    "frontend_conf": {"num_mel_bins": 20},
    "specaug_conf": None,
    "head": "transducer",
}
CONTEXT = (4, 1)


def _tiny_model(**head_conf) -> HybridTransducerModel:
    cfg = experiment_config_from_dict({**TINY, "head_conf": {"decoder_dim": 16, "joiner_dim": 16, **head_conf}})
    torch.manual_seed(0)
    return build_asr_model(cfg.model, vocab_size=9)


@pytest.fixture(scope="module")
def overfit(one_thread_module):
    """A tiny hybrid trained on two utterances of noise until both decoders recite their labels
    (about 250 steps; at most 400)."""
    model = _tiny_model()
    torch.manual_seed(1)
    feats = torch.randn(2, 72, 20)
    feat_lens = torch.tensor([72, 55])
    tokens = torch.tensor([[3, 5, 5, 2], [7, 4, 0, 0]])
    token_lens = torch.tensor([4, 2])
    targets = [[3, 5, 5, 2], [7, 4]]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(1, 401):
        loss, stats = model(feats, feat_lens, tokens, token_lens)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 and step >= 150:
            model.eval()
            recited = all(model.recognize(feats, feat_lens, att_context=CONTEXT, decoder=d) == targets for d in ("transducer", "ctc"))
            model.train()
            if recited:
                break
    return model.eval(), feats, feat_lens, targets, stats


def test_hybrid_overfits_two_utterances(overfit):
    model, feats, feat_lens, targets, stats = overfit
    assert set(stats) == {"transducer", "transducer_per_token", "ctc", "ctc_per_token"}
    assert float(stats["transducer"]) < 0.3 and float(stats["ctc"]) < 0.3
    assert model.recognize(feats, feat_lens, att_context=CONTEXT) == targets
    assert model.recognize(feats, feat_lens, att_context=CONTEXT, decoder="ctc") == targets
    with pytest.raises(SpeechkitError, match="beam"):
        model.recognize(feats, feat_lens, beam=4)


def test_chunked_encoder_then_greedy_equals_whole_utterance(overfit):
    model, feats, feat_lens, targets, _ = overfit
    enc = model.encoder
    step = 4 * (CONTEXT[1] + 1)
    state, context = enc.init_state(2), None
    hyps = [[], []]
    with torch.no_grad():
        x = model.cmvn(feats)
        for start in range(0, feats.shape[1], step):
            chunk = torch.nn.functional.pad(x[:, start : start + step], (0, 0, 0, max(0, start + step - feats.shape[1])))
            y, y_lens, state = enc.forward_chunk(chunk, torch.clamp(feat_lens - start, 0, step), state, CONTEXT)
            new, context = model.greedy(y, y_lens, context)
            for h, n in zip(hyps, new):
                h.extend(n)
    assert hyps == model.recognize(feats, feat_lens, att_context=CONTEXT) == targets


def test_pruned_head_trains_and_logs_the_simple_loss():
    model = _tiny_model(loss="pruned", prune_range=3, ctc_weight=0.0)
    assert model.ctc is None
    torch.manual_seed(2)
    loss, stats = model(torch.randn(2, 40, 20), torch.tensor([40, 31]), torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2]))
    assert set(stats) == {"transducer", "simple", "transducer_per_token"}
    torch.testing.assert_close(loss, stats["transducer"] + 0.5 * stats["simple"])
    loss.backward()
    assert model.simple_am_proj.weight.grad.abs().sum() > 0 and model.joiner.output_linear.weight.grad.abs().sum() > 0
    with pytest.raises(SpeechkitError, match="CTC head"):
        model.recognize(torch.randn(1, 40, 20), torch.tensor([40]), decoder="ctc")


class _Stop(Exception):
    pass


def test_trains_on_the_engine_and_resumes_exactly(tmp_path, monkeypatch):
    """The tiny CPU config through speechkit.train.asr.train; a run stopped right after a mid-epoch
    checkpoint and started again ends with the uninterrupted run's weights."""
    make_train_dev_dumps(tmp_path, n_train=16, seed=3)
    cfg = load_experiment_config(CPU_CONFIG)
    cfg = dataclasses.replace(cfg, train_conf=dataclasses.replace(
        cfg.train_conf, max_epochs=2, batch_seconds=4, log_interval=1, save_interval_steps=2))
    dumps = (tmp_path / "dump_train", tmp_path / "dump_dev")
    asr_train.train(cfg, tmp_path / "full", *dumps)

    class StopAfterCheckpoint(Engine):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.on_step = self._stop

        def _stop(self, engine):
            if engine.step == 3:  # after the checkpoint of step 2, mid-epoch 1
                raise _Stop

    monkeypatch.setattr(asr_train, "Engine", StopAfterCheckpoint)
    with pytest.raises(_Stop):
        asr_train.train(cfg, tmp_path / "cut", *dumps)
    monkeypatch.setattr(asr_train, "Engine", Engine)
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 0 and state["batch"] > 0 and state["step"] == 2, "the stop should land mid-epoch"
    asr_train.train(cfg, tmp_path / "cut", *dumps)

    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) >= 6 and all(k in steps[0] for k in ("transducer", "ctc", "transducer_per_token"))
    assert all(0 < r["transducer"] < 1e3 for r in steps) and any("dev_loss" in r for r in rows)
    full = torch.load(tmp_path / "full" / "epoch_2.pt", weights_only=True)["model"]
    again = torch.load(tmp_path / "cut" / "epoch_2.pt", weights_only=True)["model"]
    assert any(k.startswith("decoder.") for k in full) and full.keys() == again.keys()
    for k in full:
        assert torch.equal(full[k], again[k]), f"{k} differs after resume"


def test_a_new_head_trains_on_a_frozen_encoder(tmp_path):
    """train_conf.freeze_modules: the hybrid head trains on a CTC run's encoder and CTC layer, which
    come out bit for bit as loaded; the optimizer holds the head's parameters only; frozen modules
    compute in eval mode; unknown names and a model frozen whole are one-line errors."""
    import yaml

    make_train_dev_dumps(tmp_path, n_train=12, seed=3)
    dumps = (tmp_path / "dump_train", tmp_path / "dump_dev")
    raw = yaml.safe_load(open(CPU_CONFIG))
    raw["train_conf"].update(max_epochs=1, batch_seconds=4, log_interval=1)
    ctc_raw = {**raw, "head": "ctc"}
    ctc_raw.pop("head_conf")
    asr_train.train(experiment_config_from_dict(ctc_raw), tmp_path / "ctc", *dumps)
    init = torch.load(tmp_path / "ctc" / "epoch_1.pt", weights_only=True)["model"]

    raw["train_conf"].update(init_checkpoint=str(tmp_path / "ctc" / "epoch_1.pt"), init_modules=["cmvn", "encoder", "ctc"],
                             freeze_modules=["encoder", "ctc"])
    asr_train.train(experiment_config_from_dict(raw), tmp_path / "head", *dumps)
    ck = torch.load(tmp_path / "head" / "checkpoint.pt", weights_only=True)
    got = torch.load(tmp_path / "head" / "epoch_1.pt", weights_only=True)["model"]
    for k, v in init.items():
        assert torch.equal(got[k], v), f"{k} changed though frozen"
    model = build_asr_model(experiment_config_from_dict(raw).model, init["ctc.bias"].numel())
    head = sum(1 for n, _ in model.named_parameters() if n.split(".")[0] in ("decoder", "joiner"))
    assert len(ck["optimizers"]["model"]["state"]) == head > 0

    frozen = asr_train.freeze(model, ("encoder", "ctc"))
    model.train()
    asr_train.hold_frozen(frozen)
    assert model.joiner.training and model.encoder.training  # the streaming encoder still draws a look-ahead per batch
    raw["encoder_conf"].update(dropout_rate=0.5, attention_dropout_rate=0.5)
    noisy = build_asr_model(experiment_config_from_dict(raw).model, 5).train()
    x, lens = torch.randn(2, 40, 80), torch.tensor([40, 31])
    with torch.no_grad():
        assert not torch.equal(noisy.encoder(x, lens, (16, 3))[0], noisy.encoder(x, lens, (16, 3))[0])
        asr_train.hold_frozen(asr_train.freeze(noisy, ("encoder",)))
        assert torch.equal(noisy.encoder(x, lens, (16, 3))[0], noisy.encoder(x, lens, (16, 3))[0]), "dropout in a frozen encoder"
    assert not any(p.requires_grad for p in model.encoder.parameters()) and model.joiner.output_linear.weight.requires_grad
    with pytest.raises(SpeechkitError, match="freeze_modules: this model has no module predictor"):
        asr_train.freeze(model, ("predictor",))
    with pytest.raises(SpeechkitError, match="nothing of the model is left to train"):
        asr_train.freeze(model, ("encoder", "ctc", "decoder", "joiner"))
