"""CI smoke run of the whole synth ASR recipe: corpus → validate → features → tokenizer → train →
average → decode → score → ONNX export → streaming decode → RESULTS.md → the shipped model on the
same test sets, on a couple of minutes of audio and a tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "synth" / "asr"


def test_synth_asr_recipe_end_to_end(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [str(RECIPE / "run.sh"), "--config", "conf/train_smoke.yaml", "--hours", "0.03", "--nj", "2",
           "--data", str(tmp_path / "data"), "--dump", str(tmp_path / "dump"), "--exp", str(tmp_path / "exp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "per-split WER" in done.stdout
    exp = tmp_path / "exp"
    for split in ("test", "test_unseen"):
        result = json.loads((exp / f"decode_{split}" / "wer.json").read_text())
        assert result["utterances"] > 0 and result["missing"] == 0
        assert f"decode_{split}" in done.stdout
        stream = json.loads((exp / f"decode_{split}.stream" / "wer.json").read_text())  # ONNX runtime, chunk by chunk
        assert stream["utterances"] == result["utterances"] and stream["missing"] == 0
    assert json.loads((exp / "onnx" / "export.json").read_text())["parity"]
    results = (exp / "RESULTS.md").read_text()
    assert "| greedy | test |" in results and "| greedy | test_unseen |" in results
    assert "git revision" in results and "run.sh" in results
    # stage 10: the shipped model of the recipe on the same test sets, printed beside this run
    assert "== what you just trained vs the shipped GPU model" in done.stdout
    assert "this run (CPU, conf/train_smoke.yaml)" in done.stdout and "models/asr-stream-synth (GPU)" in done.stdout
    for split in ("test", "test_unseen"):
        assert json.loads((exp / "shipped" / f"decode_{split}" / "wer.json").read_text())["missing"] == 0
    assert "| models/asr-stream-synth (GPU) | 50.7 h |" in results  # its fine-tune corpus and the first one

    # a second run finds every stage done (or resumable) and still succeeds
    again = subprocess.run(cmd + ["--stage", "1", "--stop_stage", "3"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]


def test_synth_codec_recipe_end_to_end(tmp_path):
    """corpus → validate → train → ONNX export → eval → RESULTS.md for the codec recipe (a tiny
    VAE for a few steps)."""
    codec = RECIPE.parent / "codec"
    conf = (codec / "conf" / "train_vae_cpu.yaml").read_text().replace("max_steps: 150", "max_steps: 8").replace("adv_start_step: 100", "adv_start_step: 4")
    (tmp_path / "vae.yaml").write_text(conf)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [str(codec / "run.sh"), "--config", str(tmp_path / "vae.yaml"), "--hours", "0.02", "--nj", "2", "--eval_utts", "2",
           "--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "exp" / "eval.json").read_text())
    assert set(result["splits"]) == {"test", "test_unseen"} and "stoi" in result["splits"]["test"]["vae"]
    assert json.loads((tmp_path / "exp" / "onnx" / "export.json").read_text())["parity"]
    assert "STOI" in (tmp_path / "exp" / "RESULTS.md").read_text()


def test_synth_tts_recipe_end_to_end(tmp_path):
    """corpus → validate → prepare (phonemes + latents of the shipped VAE) → train → ONNX export →
    zero-shot synthesis with the exported model → ASR judge → RESULTS.md (a tiny CLEAR, a few steps)."""
    tts = RECIPE.parent / "tts"
    conf = (tts / "conf" / "train_clear_cpu.yaml").read_text().replace("max_steps: 150", "max_steps: 6")
    (tmp_path / "clear.yaml").write_text(conf)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [str(tts / "run.sh"), "--config", str(tmp_path / "clear.yaml"), "--hours", "0.03", "--nj", "2", "--eval_utts", "2",
           "--judges", "asr", "--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "exp" / "eval.json").read_text())
    assert result["utterances"] == 2 and "wer_synth" in result["judges"]["asr"]
    assert result["timing"]["utterances"] == 2 and result["timing"]["first_audio_ms_median"] > 0
    export = json.loads((tmp_path / "exp" / "onnx" / "export.json").read_text())
    assert export["model_family"] == "tts-clear" and export["parity"]["max_abs_diff"] < 1e-3
    assert "asr WER" in (tmp_path / "exp" / "RESULTS.md").read_text()
