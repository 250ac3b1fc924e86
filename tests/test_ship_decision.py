"""egs/synth/asr/local/ship_decision.py: a retrained model replaces the shipped one when it is better
on the real-speech dev set and no worse than the tolerance on the synth test set."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from speechkit.errors import SpeechkitError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "egs" / "synth" / "asr" / "local" / "ship_decision.py"
_spec = importlib.util.spec_from_file_location("ship_decision", SCRIPT)
ship = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ship)


def _decide(new_real, new_test, old_real, old_test, tolerance=0.5):
    return ship.decide({"real_dev": new_real, "test": new_test}, {"real_dev": old_real, "test": old_test}, tolerance)


@pytest.mark.parametrize("new_real, new_test, verdict", [
    (40.0, 13.13, "replace"),  # better on real dev, equal on test
    (40.0, 12.00, "replace"),  # better on both
    (40.0, 13.50, "replace"),  # worse on test within the tolerance
    (40.0, 13.63, "replace"),  # exactly at the tolerance (13.63 - 13.13 is 0.5000000000000018 in floats)
    (40.0, 13.64, "keep"),  # just over the tolerance
    (40.0, 20.00, "keep"),  # far over
    (48.0, 13.13, "keep"),  # equal on real dev: not better
    (48.01, 10.0, "keep"),  # worse on real dev, however good on test
])
def test_rule(new_real, new_test, verdict):
    d = _decide(new_real, new_test, 48.0, 13.13)
    assert d["verdict"] == verdict, d["why"]
    assert d["delta"] == {"real_dev": round(new_real - 48.0, 2), "test": round(new_test - 13.13, 2)}


def test_tolerance_is_a_parameter():
    assert _decide(40.0, 14.0, 48.0, 13.13, tolerance=1.0)["verdict"] == "replace"
    assert _decide(40.0, 13.2, 48.0, 13.13, tolerance=0.0)["verdict"] == "keep"
    with pytest.raises(SpeechkitError, match="--tolerance"):
        _decide(40.0, 13.0, 48.0, 13.13, tolerance=-0.1)


def _wer_json(path: Path, wer: float) -> Path:
    path.write_text(json.dumps({"wer": wer, "cer": wer / 3, "utterances": 10}))
    return path


def _run(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)


def test_cli_prints_and_writes_the_verdict(tmp_path):
    files = {k: _wer_json(tmp_path / f"{k}.json", w) for k, w in
             (("new_rd", 41.5), ("new_t", 13.4), ("old_rd", 48.25), ("old_t", 13.13))}
    out = tmp_path / "sub" / "decision.json"
    done = _run("--new-real-dev", files["new_rd"], "--new-test", files["new_t"], "--shipped-real-dev", files["old_rd"],
                "--shipped-test", files["old_t"], "--label", "models/asr-stream-synth", "--out", out)
    assert done.returncode == 0, done.stderr
    d = json.loads(out.read_text())
    assert d["verdict"] == "replace" and d["label"] == "models/asr-stream-synth" and d["tolerance"] == 0.5
    assert d["new"] == {"real_dev": 41.5, "test": 13.4} and d["shipped"] == {"real_dev": 48.25, "test": 13.13}
    assert d["delta"] == {"real_dev": -6.75, "test": 0.27}
    assert done.stdout.splitlines()[-1].startswith("VERDICT: REPLACE the shipped model")
    # over the tolerance: keep, and say why
    _wer_json(files["new_t"], 14.0)
    done = _run("--new-real-dev", files["new_rd"], "--new-test", files["new_t"], "--shipped-real-dev", files["old_rd"],
                "--shipped-test", files["old_t"], "--out", out)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["verdict"] == "keep"
    assert "VERDICT: KEEP" in done.stdout and "over the +0.5 tolerance" in done.stdout


def test_cli_missing_or_bad_file_is_a_one_line_error(tmp_path):
    good = _wer_json(tmp_path / "good.json", 10.0)
    missing = tmp_path / "nope" / "wer.json"
    done = _run("--new-real-dev", good, "--new-test", good, "--shipped-real-dev", missing, "--shipped-test", good,
                "--out", tmp_path / "d.json")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and str(missing) in done.stderr and "missing" in done.stderr
    assert not (tmp_path / "d.json").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cer": 3.0}))
    done = _run("--new-real-dev", good, "--new-test", bad, "--shipped-real-dev", good, "--shipped-test", good)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and str(bad) in done.stderr


def test_cli_paired_counts_utterances_and_bootstraps(tmp_path):
    files = {k: _wer_json(tmp_path / f"{k}.json", w) for k, w in
             (("new_rd", 40.0), ("new_t", 13.0), ("old_rd", 60.0), ("old_t", 13.0))}
    (tmp_path / "text").write_text("u1 the cat sat\nu2 a dog ran\nu3 hello there\n")
    (tmp_path / "new").write_text("u1 the cat sat\nu2 a dog run\nu3 hello there\n")  # u3 right, u2 one word wrong
    (tmp_path / "old").write_text("u1 the hat sat\nu2 a dog ran\n")  # u3 missing: both words deleted
    out = tmp_path / "d.json"
    done = _run("--new-real-dev", files["new_rd"], "--new-test", files["new_t"], "--shipped-real-dev", files["old_rd"],
                "--shipped-test", files["old_t"], "--out", out,
                "--paired", tmp_path / "text", tmp_path / "new", tmp_path / "old")
    assert done.returncode == 0, done.stderr
    p = json.loads(out.read_text())["paired"]
    assert p["utterances"] == 3 and p["word"]["fewer"] == 2 and p["word"]["more"] == 1
    assert (p["word"]["errors_new"], p["word"]["errors_shipped"]) == (1, 3)
    assert 0.5 < p["word"]["p_fewer"] < 1.0
    assert "fewer on 2 of 3 utterances, more on 1" in done.stdout
    # a reference with no words to compare on: a one-line error
    (tmp_path / "empty").write_text("u1\nu2\n")
    done = _run("--new-real-dev", files["new_rd"], "--new-test", files["new_t"], "--shipped-real-dev", files["old_rd"],
                "--shipped-test", files["old_t"], "--paired", tmp_path / "empty", tmp_path / "new", tmp_path / "old")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "non-empty reference" in done.stderr
