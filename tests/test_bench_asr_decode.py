"""The attention model's ONNX pair against PyTorch (greedy and beam tokens, the first step's empty
cache), and the ``bench asr-decode`` run on tiny random Paraformer and attention experiments: the
figures it reports, its refusal of a wrong head and of a data dir with no readable audio. No timing
thresholds are asserted."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_ENCODER_CONF, bench_args, make_tiny_data_dir, run_bench
from speechkit.bench.asr_decode import DECODERS, add_parser
from speechkit.errors import SpeechkitError

pytest.importorskip("onnxruntime")

HEAD_CONFS = {
    "paraformer": {"decoder_blocks": 1, "attention_heads": 2, "linear_units": 32, "dropout_rate": 0.0},
    "attention": {"num_blocks": 2, "attention_heads": 2, "linear_units": 32, "dropout_rate": 0.0},
}


def _config(head: str, num_mel_bins: int = 80):
    from speechkit.train.config import experiment_config_from_dict

    return experiment_config_from_dict({
        "frontend_conf": {"num_mel_bins": num_mel_bins}, "specaug_conf": None, "encoder": "conformer",
        "encoder_conf": TINY_ENCODER_CONF, "head": head, "head_conf": HEAD_CONFS[head], "tokenizer_conf": {"type": "char"},
    })


def _exp_dir(path: Path, head: str, texts: list[str], seed: int) -> Path:
    from speechkit.models.asr.heads import build_asr_model
    from speechkit.text.tokenizer import train_tokenizer
    from speechkit.checkpoint import save_atomic

    path.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer("char", texts, path)
    cfg = _config(head)
    torch.manual_seed(seed)
    model = build_asr_model(cfg.model, tok.vocab_size, tok)
    save_atomic({"model": model.state_dict(), "config": cfg.to_yaml_dict()}, path / "model_avg.pt")
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench_decode")
    utts = make_tiny_data_dir(root / "data", n_utts=6, seed=3)
    texts = [u.text for u in utts]
    return {"data": root / "data", "paraformer": _exp_dir(root / "para", "paraformer", texts, 0),
            "attention": _exp_dir(root / "att", "attention", texts, 1)}


# ---- the attention model's ONNX export -------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from speechkit.export.attention import OnnxAttentionModel, export_attention
    from speechkit.models.asr.heads import build_asr_model
    from speechkit.text.tokenizer import CharTokenizer

    tok = CharTokenizer(["<blk>", "<unk>", "\u2581", "a", "b", "c"])
    torch.manual_seed(0)
    model = build_asr_model(_config("attention", num_mel_bins=20).model, tok.vocab_size, tok).eval()
    out = export_attention(model, tmp_path_factory.mktemp("att_onnx"))
    assert not model.training  # the export's wrapper must not switch the model back to training
    return model, OnnxAttentionModel(out)


@pytest.mark.parametrize("lens", [[60], [80, 45, 13], [31, 30]])
def test_onnx_greedy_and_beam_tokens_equal_pytorch(exported, lens):
    model, onnx_model = exported
    g = torch.Generator().manual_seed(sum(lens))
    feats, feat_lens = torch.randn(len(lens), max(lens), 20, generator=g), torch.tensor(lens)
    for beam in (1, 4):
        assert onnx_model.recognize(feats, feat_lens, beam) == model.recognize(feats, feat_lens, beam), beam


def test_onnx_decoder_step_from_an_empty_cache_and_on(exported):
    """Step 1 (cache (L, N, 0, D)) and step 2 against ``TransformerDecoder.forward_one_step``."""
    model, onnx_model = exported
    g = torch.Generator().manual_seed(7)
    enc = torch.randn(3, 9, model.decoder.d_model, generator=g)
    enc_mask = (torch.arange(9)[None, :] < torch.tensor([[9], [5], [1]]))[:, None, :]
    ys = torch.full((3, 1), model.sos)
    ref_cache = got_cache = None
    for step in range(2):
        with torch.no_grad():
            ref, ref_cache = model.decoder.forward_one_step(enc, enc_mask, ys, ref_cache)
        got, got_cache = onnx_model.decoder.forward_one_step(enc, enc_mask, ys, got_cache)
        assert len(got_cache) == len(ref_cache) and got_cache[0].shape == (3, step + 1, model.decoder.d_model)
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        for a, b in zip(got_cache, ref_cache):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        ys = torch.cat([ys, ref.argmax(-1, keepdim=True)], dim=1)


def test_encoder_without_ctc_has_no_ctc_output(tmp_path):
    import dataclasses

    from speechkit.export.attention import OnnxEncoder, export_attention
    from speechkit.models.asr.heads import build_asr_model

    cfg = _config("attention", num_mel_bins=20).model
    cfg = dataclasses.replace(cfg, head_conf=dataclasses.replace(cfg.head_conf, ctc_weight=0.0))
    model = build_asr_model(cfg, 6).eval()
    assert model.ctc is None
    enc, enc_lens, ctc = OnnxEncoder(export_attention(model, tmp_path))(torch.randn(1, 40, 20), torch.tensor([40]))
    assert ctc is None and enc.shape == (1, int(enc_lens[0]), model.decoder.d_model)


# ---- the bench ---------------------------------------------------------------------------------

def _args(dirs, *extra: str) -> argparse.Namespace:
    return bench_args(
        add_parser, ["asr-decode", "--paraformer", str(dirs["paraformer"]), "--attention", str(dirs["attention"]), "--data", str(dirs["data"]),
         "--device", "cpu", "--utts", "4", "--cpu-utts", "2", "--beam", "2", "--batch", "2", "--repeats", "1", *extra])


def test_the_command_prints_a_table_then_one_json_line(dirs, tmp_path, capsys):
    lines, r = run_bench(_args(dirs, "--json", "--out", str(tmp_path / "res" / "bench.json")), capsys)
    assert any("cpu onnx 1 thread" in line for line in lines)
    json.dumps(r, allow_nan=False)

    assert r["torch_device"] == "cpu" and r["torch"] == torch.__version__ and r["onnxruntime"]
    assert (r["utts"], r["cpu_utts"], r["beam"], r["batch"], r["repeats"]) == (4, 2, 2, 2, 1)
    assert r["audio_seconds"] > r["cpu_audio_seconds"] > 0 and r["skipped"] == []
    assert set(r["timings"]) == {"torch_batch1", "torch_batched", "cpu_onnx"}
    for mode, per_decoder in r["timings"].items():
        assert set(per_decoder) == set(DECODERS), mode
        utts = r["cpu_utts"] if mode == "cpu_onnx" else r["utts"]
        for d, t in per_decoder.items():
            assert math.isfinite(t["total_ms"]) and t["total_ms"] > 0, (mode, d)
            assert t["ms_per_utt"] == pytest.approx(t["total_ms"] / utts)
            assert t["calls"] == (2 if mode == "torch_batched" else utts)
        if mode != "torch_batched":
            assert all(t["utt_ms_median"] > 0 for t in per_decoder.values())
    for d in ("ar_beam", "ar_greedy"):
        speedups = r[f"speedup_{d}_over_paraformer"]
        assert set(speedups) == set(r["timings"])
        for mode, ratio in speedups.items():
            assert ratio == pytest.approx(r["timings"][mode][d]["total_ms"] / r["timings"][mode]["paraformer"]["total_ms"])
    for key in ("wer", "wer_cpu_onnx"):
        assert set(r[key]) == set(DECODERS) and all(v >= 0 for v in r[key].values()), key
    # the same model through ONNX Runtime and on its own: the same tokens
    assert r["onnx_same_tokens"] == {d: 1.0 for d in DECODERS}


def test_a_wrong_head_is_refused(dirs):
    swapped = dict(dirs, paraformer=dirs["attention"], attention=dirs["paraformer"])
    args = _args(swapped)
    with pytest.raises(SpeechkitError, match="--paraformer .*head is 'attention', not 'paraformer'"):
        args.func(args)


def test_a_data_dir_without_readable_audio_is_refused(dirs, tmp_path):
    data = tmp_path / "data"
    utts = make_tiny_data_dir(data, n_utts=2, seed=5)
    for u in utts:
        Path(u.wav).write_bytes(b"not a wav")
    args = _args(dict(dirs, data=data), "--cpu-utts", "0")
    with pytest.raises(SpeechkitError, match="no readable utterance .*unreadable audio"):
        args.func(args)


def test_the_cpu_run_can_be_skipped(dirs, capsys):
    _, r = run_bench(_args(dirs, "--cpu-utts", "0", "--utts", "2", "--json"), capsys)
    assert set(r["timings"]) == {"torch_batch1", "torch_batched"} and r["wer_cpu_onnx"] == {}
    assert set(r["speedup_ar_beam_over_paraformer"]) == {"torch_batch1", "torch_batched"}
    assert np.isfinite(r["speedup_ar_greedy_over_paraformer"]["torch_batched"])
