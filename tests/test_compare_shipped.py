"""run.sh's last stage: a tiny experiment and the shipped model decoded on the same tiny test sets,
printed side by side by egs/synth/asr/local/compare_shipped.py and added to RESULTS.md."""

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_data_dir, make_tiny_exp_dir

from speechkit.eval.compare import training_seconds

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "asr-stream-synth"


def test_run_and_shipped_model_side_by_side(tmp_path, run_cli):
    data, exp, splits = tmp_path / "data", tmp_path / "exp", ("test", "test_unseen")
    utts = make_tiny_data_dir(data / "train", n_utts=6, seed=0)
    for i, s in enumerate(splits):
        make_tiny_data_dir(data / s, n_utts=3, seed=i + 1)
    make_tiny_exp_dir(exp, [u.text for u in utts], checkpoint="epoch_1.pt")
    assert run_cli("average", exp, "--last", "1")[0] == 0  # writes model_info.json
    # two runs: 100 s, then resumed for 60 s more (its clock starts again)
    (exp / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"step": 1, "elapsed_s": 40.0}, {"step": 2, "dev_loss": 9.0, "elapsed_s": 100.0}, {"step": 3, "elapsed_s": 60.0})) + "\n")
    for s in splits:
        assert run_cli("decode", exp, data / s, exp / f"decode_{s}", "--device", "cpu")[0] == 0
        assert run_cli("score", data / s / "text", exp / f"decode_{s}" / "hyp", "--out", exp / f"decode_{s}" / "wer.json")[0] == 0
        out = exp / "shipped" / f"decode_{s}"
        assert run_cli("decode-stream", SHIPPED, data / s, out)[0] == 0
        assert run_cli("score", data / s / "text", out / "hyp", "--out", out / "wer.json")[0] == 0
    (exp / "RESULTS.md").write_text("## conformer-CTC\n\n| decode | split |\n")

    cmd = [sys.executable, str(REPO / "egs" / "synth" / "asr" / "local" / "compare_shipped.py"), "--exp", str(exp),
           "--data", str(data), "--decodes", str(exp / "shipped"), "--config", "conf/train_smoke.yaml", "--results", str(exp / "RESULTS.md")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(2):  # a second call replaces the RESULTS.md section instead of adding another
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "== what you just trained vs the shipped GPU model (same recipe, same test sets) =="
    assert re.split(r"\s{2,}", lines[1]) == ["model", "train data", "params", "training", "test WER", "test_unseen WER"]
    hours = sum(u.duration for u in utts) / 3600
    wer = {s: json.loads((exp / f"decode_{s}" / "wer.json").read_text())["wer"] for s in splits}
    params = json.loads((exp / "model_info.json").read_text())["parameters"]
    assert re.split(r"\s{2,}", lines[2]) == ["this run (CPU, conf/train_smoke.yaml)", f"{hours:.2f} h", params,
                                             f"~3 min, {os.cpu_count()} cores", *(f"{wer[s]:.1f} %" for s in splits)]
    shipped = {s: json.loads((exp / "shipped" / f"decode_{s}" / "wer.json").read_text())["wer"] for s in splits}
    assert re.split(r"\s{2,}", lines[3]) == ["models/asr-stream-synth (GPU)", "50.7 h", "11.77 M", "~23 min, 1 H200 (17 min), then 1 H100 (6 min fine-tune)",
                                             *(f"{shipped[s]:.1f} %" for s in splits)]
    notes = " ".join(lines[4:])
    assert "this run through PyTorch" in notes and "smoke test of every stage" in notes and "Careful" not in notes
    results = (exp / "RESULTS.md").read_text()
    assert results.startswith("## conformer-CTC") and results.count("## This run against the shipped model") == 1
    assert "| models/asr-stream-synth (GPU) | 50.7 h | 11.77 M | ~23 min, 1 H200 (17 min), then 1 H100 (6 min fine-tune) |" in results


def test_training_time(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"elapsed_s": 30.5}\n{"dev_loss": 1}\n{"elapsed_s": 480.0}\n')
    assert training_seconds(tmp_path / "m.jsonl") == 480.0


def test_sentence_parts_are_disjoint_and_reproducible():
    from speechkit.text.sentences import is_eval_sentence, iter_sentences

    train = list(itertools.islice(iter_sentences(5, "train"), 400))
    evals = list(itertools.islice(iter_sentences(5, "eval"), 100))
    assert not set(train) & set(evals)
    assert all(is_eval_sentence(t) for t in evals) and not any(is_eval_sentence(t) for t in train)
    assert evals == list(itertools.islice(iter_sentences(5, "eval"), 100))
    # the train part is the v1 stream without eval sentences, in the same order
    assert train == [t for t in itertools.islice(iter_sentences(5), 600) if not is_eval_sentence(t)][:400]


def test_held_out_drops_the_judges_training_sentences(tmp_path):
    from speechkit.eval.heldout import held_out
    from speechkit.text.sentences import iter_sentences, training_sentences

    judge = tmp_path / "judge"
    judge.mkdir()
    keep, record = held_out(["a b c"], judge)
    assert keep == [True] and "unknown" in record["how"]
    (judge / "card.json").write_text(json.dumps({"corpus": {"seed": 7, "train_utterances": 300}}))
    trained = list(training_sentences(7, 300, "v1"))
    fresh = [t for t in itertools.islice(iter_sentences(8, "eval"), 50) if t not in set(trained)][:5]
    keep, record = held_out([trained[0], fresh[0], trained[299], fresh[1]], judge)
    assert keep == [False, True, False, True] and record["dropped"] == 2
    (judge / "card.json").write_text(json.dumps({"corpus": {"seed": 7, "train_utterances": 300, "sentences": "v2"}}))
    v2 = list(training_sentences(7, 300, "v2"))
    keep, record = held_out([v2[5], fresh[2]], judge)
    assert keep == [False, True] and "scheme v2" in record["how"]


def test_held_out_counts_a_fine_tuned_judges_first_corpus_too(tmp_path):
    """A judge fine-tuned from another model trained on both corpora: the card's
    corpus.pretraining names the first, and its sentences are left out as well."""
    from speechkit.eval.heldout import held_out
    from speechkit.text.sentences import iter_sentences, training_sentences

    judge = tmp_path / "judge"
    judge.mkdir()
    first = list(training_sentences(7, 200, "v1"))
    then = list(training_sentences(7, 100, "v2"))
    seen = set(first) | set(then)
    fresh = [t for t in itertools.islice(iter_sentences(8, "eval"), 50) if t not in seen][:2]
    texts = [first[150], then[50], fresh[0], first[0], fresh[1]]
    (judge / "card.json").write_text(json.dumps({"corpus": {"seed": 7, "train_utterances": 100, "sentences": "v2"}}))
    keep, _ = held_out(texts, judge)
    assert keep[1] is False and keep[2] and keep[4]
    assert keep[0] is (first[150] not in set(then))  # without the pretraining corpus, only v2's text counts
    (judge / "card.json").write_text(json.dumps({"corpus": {"seed": 7, "train_utterances": 100, "sentences": "v2",
                                                            "pretraining": {"seed": 7, "train_utterances": 200}}}))
    keep, record = held_out(texts, judge)
    assert keep == [False, False, True, False, True] and record["dropped"] == 3
    assert "200 train sentences, scheme v1; then synth corpus seed 7, 100 train sentences, scheme v2" in record["how"]
