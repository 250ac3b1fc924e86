"""`speechkit codec eval` on an exported codec folder: run by the torch-free runtime, the folder
scores as the model.pt it was exported from (the same resynthesised audio within the export's
tolerance, the same metrics, the same JSON), the judge's training sentences are left out and
counted on both paths, and the per-engine rows add up to the whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import make_tiny_data_dir
from speechkit.data.kaldi import read_table, write_table

ROOT = Path(__file__).resolve().parents[1]
JUDGE = ROOT / "models" / "asr-stream-synth"
TINY = {"channels": 4, "strides": [2, 4, 6], "latent_dim": 8, "dilations": [1]}  # hop 48
ENGINES = ("espeak-ng", "piper")

pytestmark = pytest.mark.usefixtures("one_thread")


def _shape(d: dict, prefix: str = "") -> set[str]:
    """Every key path of a nested dict: the JSON's shape."""
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _shape(v, f"{prefix}{k}.")
    return out


def _spread_codebooks(model, wav: np.ndarray) -> None:
    """Codebooks drawn from the encoder's latents and their residuals, so that codes vary (zeroed
    codebooks, before the k-means of training, give one code everywhere)."""
    rng = np.random.default_rng(0)
    with torch.no_grad():
        n = len(wav) // model.cfg.hop * model.cfg.hop
        r = model.encoder(torch.from_numpy(wav[:n]).view(1, 1, n))[0].T  # (F, D)
        for vq in model.quantizer.stages:
            vq.codebook.copy_(r[torch.from_numpy(rng.choice(len(r), vq.codebook.shape[0], replace=False))])
            r = r - vq.codebook[vq.encode(r)]


@pytest.fixture(scope="module")
def codecs(tmp_path_factory):
    """Tiny VAE and RVQ codecs (random weights: the comparison needs no training) saved as model.pt
    and exported, and a 4-utterance data dir whose first utterance reads a sentence of the judge's
    training text, with two engines in utt2synth."""
    from speechkit.export.codec import export_codec
    from speechkit.models.codec.io import save_codec
    from speechkit.models.codec.model import build_codec, codec_config_from_dict
    from speechkit.text.sentences import training_sentences

    root = tmp_path_factory.mktemp("codec_eval_onnx")
    data = root / "data"
    utts = make_tiny_data_dir(data, n_utts=4)
    corpus = json.loads((JUDGE / "card.json").read_text())["corpus"]
    text = read_table(data / "text")
    text[utts[0].utt_id] = next(training_sentences(corpus["seed"], corpus["train_utterances"], corpus.get("sentences", "v1")))
    write_table(data / "text", text)
    write_table(data / "utt2synth", {u.utt_id: f"engine={ENGINES[i % 2]} voice=v{i}" for i, u in enumerate(utts)})
    wavs = [sf.read(u.wav, dtype="float32")[0] for u in utts]
    for kind in ("vae", "rvq"):
        torch.manual_seed(0)
        cfg = codec_config_from_dict({"codec": kind, "encoder_conf": {**TINY, "shortcuts": kind == "vae"},
                                      "rvq_conf": {"n_q": 3, "codebook_size": 16}})
        model = build_codec(cfg).eval()
        if kind == "rvq":
            _spread_codebooks(model, np.concatenate(wavs))
        (root / kind).mkdir()
        save_codec(model.state_dict(), cfg, root / kind / "model.pt")
        export_codec(model, root / f"{kind}_onnx", wavs[:2], chunk_frames=2)
    return root, data


@pytest.mark.parametrize("kind", ["vae", "rvq"])
def test_exported_folder_scores_as_the_model_pt_it_came_from(codecs, kind, tmp_path):
    from speechkit.eval.codec_eval import evaluate_codec

    root, data = codecs
    torch_r = evaluate_codec(root / kind, [data], asr_model=JUDGE, device="cpu", rtf_utts=1, samples_dir=tmp_path / "torch")
    onnx_r = evaluate_codec(root / f"{kind}_onnx", [data], asr_model=JUDGE, rtf_utts=1, samples_dir=tmp_path / "onnx")
    assert torch_r["runtime"] == "torch" and onnx_r["runtime"] == "onnxruntime, 1 thread"
    assert _shape(onnx_r) == {k for k in _shape(torch_r) if not k.startswith("training_usage")}
    for key in ("codec", "sample_rate", "hop", "frame_rate", "latent_dim", "params_m", "device"):
        assert onnx_r[key] == torch_r[key], key
    a, b = torch_r["splits"]["data"], onnx_r["splits"]["data"]
    for split in (a, b):  # the judge read utterance 1 in training: left out and counted
        assert split["judge_heldout"]["dropped"] == 1 and split["utterances"] == 3
    assert a["asr_original"] == b["asr_original"]
    labels = [k for k, v in a.items() if isinstance(v, dict) and "stoi" in v]
    assert labels == (["vae"] if kind == "vae" else ["n_q=3 (4 kbps)", "n_q=1 (1.33333 kbps)"])
    for label in labels:
        ra, rb = a[label], b[label]
        # the export's audio tolerance (1e-4) moves these in the 4th decimal at most (measured: 0 and 2e-4)
        assert abs(ra["stoi"] - rb["stoi"]) < 5e-4 and abs(ra["mcd_db"] - rb["mcd_db"]) < 5e-3, label
        assert abs(ra["pesq_wb"] - rb["pesq_wb"]) < 0.01 and ra["asr_resynth"] == rb["asr_resynth"], label
        assert ra["stoi"] < 0.9  # random weights: not a copy of the input
        assert sum(e["utterances"] for e in rb["by_engine"].values()) == 3 and set(rb["by_engine"]) == set(ENGINES)
        mean = sum(e["stoi"] * e["utterances"] for e in rb["by_engine"].values()) / 3
        assert mean == pytest.approx(rb["stoi"], abs=1e-3)
        if kind == "rvq":
            assert ra["usage"] == rb["usage"] and ra["bitrate_bps"] == rb["bitrate_bps"] and rb["usage"]["mean_perplexity"] > 2
    written = sorted(p.name for p in (tmp_path / "torch").glob("*.flac"))
    assert written == sorted(p.name for p in (tmp_path / "onnx").glob("*.flac")) and len(written) == 3 * (len(labels) + 1)
    for name in written:
        x, y = sf.read(tmp_path / "torch" / name)[0], sf.read(tmp_path / "onnx" / name)[0]
        assert len(x) == len(y) and np.abs(x - y).max() < 1e-3, name


def test_cli_takes_the_folder_threads_and_says_when_cuda_is_missing(codecs, run_cli, monkeypatch):
    root, data = codecs
    code, out, err = run_cli("codec", "eval", root / "vae_onnx", data, "--asr-model", JUDGE, "--max-utts", "2", "--rtf-utts", "1",
                             "--threads", "2", "--json")
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["runtime"] == "onnxruntime, 2 threads" and r["rtf"]["cpu_threads"] == 2 and r["splits"]["data"]["utterances"] == 2
    assert "1 left out as in the ASR judge's training text" in out and "(onnxruntime, 2 threads)" in out
    import onnxruntime as ort

    cpu_only = [p for p in ort.get_available_providers() if p != "CUDAExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: cpu_only)  # as on a machine without onnxruntime-gpu
    code, _, err = run_cli("codec", "eval", root / "vae_onnx", data, "--asr-model", JUDGE, "--device", "cuda")
    assert code == 2 and "CUDAExecutionProvider" in err and "speechkit[gpu]" in err and len(err.strip().splitlines()) == 1

