"""`speechkit bench train`: a tiny ASR config trained for a few timed steps through the engine on
the CPU reports consistent figures, and `--compare` runs another source tree side by side."""

import shutil
from pathlib import Path

import pytest

from conftest import bench_args, run_bench
from speechkit.bench import train as train_bench
from speechkit.errors import SpeechkitError

CONFIG = """\
encoder: conformer
encoder_conf: {output_size: 16, attention_heads: 2, linear_units: 32, num_blocks: 1, cnn_module_kernel: 5}
tokenizer_conf: {type: char}
optim_conf: {lr: 0.002, warmup_steps: 2}
train_conf: {max_epochs: 1, batch_seconds: 20, num_workers: 0}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_train")
    (root / "conf.yaml").write_text(CONFIG)
    train_bench.random_dump(root / "dump", hours=0.05, seed=1)
    return root


def test_asr_figures_are_consistent(setup, capsys, tmp_path):
    args = bench_args(train_bench.add_parser, ["train", setup / "conf.yaml", "--data", setup / "dump", "--steps", 6, "--warmup", 2,
                                               "--device", "cpu", "--json", "--out", tmp_path / "r.json", "--profile", tmp_path / "p.txt"])
    lines, r = run_bench(args, capsys)
    assert r["family"] == "asr" and r["steps"] == 6 and r["device"] == "cpu"
    assert r["steps_per_s"] > 0 and abs(r["seconds"] * r["steps_per_s"] - 6) < 0.05
    # audio seconds per step: the timed batches are the sampler's, 20 s of padded frames at most each
    assert 0 < r["audio_s_per_s"] / r["steps_per_s"] <= 20.0
    assert r["tflops_per_step"] > 0 and r["achieved_tflops"] >= 0 and 0 <= r["data_wait"] < 1
    assert r["ceiling"]["steps_per_s"] > 0
    assert "asr" in lines[0] and "ceiling" in lines[1]
    assert "aten::" in (tmp_path / "p.txt").read_text(), "the profile names the operators"


def test_overrides_reach_the_config(setup, capsys):
    small = bench_args(train_bench.add_parser, ["train", setup / "conf.yaml", "--data", setup / "dump", "--steps", 3, "--warmup", 1,
                                                "--device", "cpu", "--json", "--no-ceiling", "--set", "train_conf.batch_seconds=5",
                                                "--set", "train_conf.max_utt_seconds=5"])
    _, r = run_bench(small, capsys)
    assert r["overrides"] == {"train_conf": {"batch_seconds": 5, "max_utt_seconds": 5}}
    assert r["audio_s_per_s"] / r["steps_per_s"] <= 5.0


def test_compare_runs_another_tree(setup, capsys, tmp_path):
    """--compare DIR runs that tree's own bench in a subprocess: this tree against a copy of itself."""
    repo = Path(__file__).resolve().parents[1]
    copy = tmp_path / "src"
    shutil.copytree(repo / "speechkit", copy / "speechkit", ignore=shutil.ignore_patterns("__pycache__"))
    args = bench_args(train_bench.add_parser, ["train", setup / "conf.yaml", "--data", setup / "dump", "--steps", 4, "--warmup", 1,
                                               "--device", "cpu", "--json", "--no-ceiling", "--compare", copy])
    lines, r = run_bench(args, capsys)
    c = r["compare"]
    assert c["steps"] == 4 and c["steps_per_s"] > 0 and c["steps_per_s_ratio"] > 0
    assert "ratio" in lines[-1]


def test_errors_are_one_line(setup, tmp_path):
    with pytest.raises(SpeechkitError, match="no such config"):
        train_bench.run(bench_args(train_bench.add_parser, ["train", tmp_path / "missing.yaml"]))
    with pytest.raises(SpeechkitError, match="SECTION.FIELD=VALUE"):
        train_bench.run(bench_args(train_bench.add_parser, ["train", setup / "conf.yaml", "--set", "batch_seconds=3"]))
    with pytest.raises(SpeechkitError, match=r"conf.yaml with --set.*unknown key 'train_conf.no_such_field'"):
        train_bench.run(bench_args(train_bench.add_parser, ["train", setup / "conf.yaml", "--data", setup / "dump",
                                                            "--set", "train_conf.no_such_field=1", "--device", "cpu"]))
    with pytest.raises(SpeechkitError, match="fewer than"):
        train_bench.run(bench_args(train_bench.add_parser, ["train", setup / "conf.yaml", "--data", setup / "dump",
                                                            "--steps", 10000, "--device", "cpu", "--no-ceiling"]))


def test_codec_and_clear_configs_bench_too(tmp_path, capsys):
    """The bench builds every family's task from its config: an RVQ codec on wav dirs, CLEAR on prepared dirs."""
    from conftest import make_tiny_data_dir
    from test_codec_engine import CONFIG as CODEC_CONFIG
    from test_tts_engine import CONFIG as TTS_CONFIG, make_prepared

    make_tiny_data_dir(tmp_path / "wavs", n_utts=4)
    (tmp_path / "codec.yaml").write_text(CODEC_CONFIG)
    args = bench_args(train_bench.add_parser, ["train", tmp_path / "codec.yaml", "--data", tmp_path / "wavs", "--steps", 14,
                                               "--warmup", 1, "--device", "cpu", "--json", "--no-ceiling"])
    _, r = run_bench(args, capsys)  # more steps than the config's max_steps (12): the bench plans its own
    assert r["family"] == "codec" and r["steps"] == 14 and r["audio_s_per_s"] > 0 and r["tflops_per_step"] > 0

    make_prepared(tmp_path / "prep")
    (tmp_path / "tts.yaml").write_text(TTS_CONFIG)
    args = bench_args(train_bench.add_parser, ["train", tmp_path / "tts.yaml", "--data", tmp_path / "prep", "--steps", 3,
                                               "--warmup", 1, "--device", "cpu", "--json", "--no-ceiling"])
    _, r = run_bench(args, capsys)
    assert r["family"] == "tts" and r["steps"] == 3 and r["steps_per_s"] > 0 and r["tflops_per_step"] > 0
    # any section of the config can change, the model's too: no text encoder, fewer FLOPs on the same batches
    args = bench_args(train_bench.add_parser, ["train", tmp_path / "tts.yaml", "--data", tmp_path / "prep", "--steps", 3,
                                               "--warmup", 1, "--device", "cpu", "--json", "--no-ceiling", "--set", "model.text_layers=0"])
    _, plain = run_bench(args, capsys)
    assert plain["overrides"] == {"model": {"text_layers": 0}} and plain["tflops_per_step"] < r["tflops_per_step"]


def test_timed_steps_past_the_first_epoch(setup, capsys):
    """A warm-up longer than one epoch (13 batches) of the small data set: the FLOPs sample comes from the epochs
    the timed steps ran in (it was an empty sample, statistics.StatisticsError)."""
    args = bench_args(train_bench.add_parser, ["train", setup / "conf.yaml", "--data", setup / "dump", "--steps", 2, "--warmup", 14,
                                               "--device", "cpu", "--json", "--no-ceiling", "--set", "train_conf.max_epochs=4"])
    _, r = run_bench(args, capsys)
    assert r["steps"] == 2 and r["tflops_per_step"] > 0
