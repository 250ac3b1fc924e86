"""speechkit/eval/wer.py: the WER of two text lists and the ``wer`` of a wer.json, as every caller uses them."""

import json

import pytest

from speechkit.errors import SpeechkitError
from speechkit.eval.wer import paired_bootstrap, read_wer_json, score_texts, score_to_file, utterance_errors, wer_percent


def test_wer_percent_matches_score_texts_and_normalises_whitespace():
    refs, hyps = ["a b c", "  d  e ", "f g h"], ["a x c", "d e", "f g"]
    assert wer_percent(refs, hyps) == pytest.approx(200 / 8)  # one substitution, one deletion in 8 words
    assert wer_percent(refs, hyps) == score_texts(refs, hyps)["wer"]
    assert wer_percent(refs, hyps, 2) == 25.0
    assert wer_percent(["a b c"], ["a x c"], 2) == 33.33
    assert wer_percent(["a b c"], ["a x c"]) == pytest.approx(100 / 3)
    assert wer_percent(["a  b\tc"], [" a b c "]) == 0.0


def test_wer_percent_leaves_out_empty_references_and_is_none_without_any():
    assert wer_percent(["a b", "", "  "], ["a b", "x y z", "w"]) == 0.0
    assert wer_percent(["", " "], ["x", ""]) is None
    assert wer_percent([], []) is None
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer_percent(["a", "b"], ["a"])


def test_read_wer_json_reads_what_score_writes(tmp_path):
    (tmp_path / "text").write_text("u1 a b c d\nu2 e f\n")
    (tmp_path / "hyp").write_text("u1 a b x d\nu2 e f\n")
    written = score_to_file(tmp_path / "text", tmp_path / "hyp", tmp_path / "wer.json")
    assert read_wer_json(tmp_path / "wer.json") == written["wer"] == pytest.approx(100 / 6)
    assert read_wer_json(str(tmp_path / "wer.json"), missing_ok=True) == written["wer"]


def test_read_wer_json_missing(tmp_path):
    missing = tmp_path / "decode_dev" / "wer.json"
    assert read_wer_json(missing, missing_ok=True) is None
    with pytest.raises(SpeechkitError, match="missing") as e:
        read_wer_json(missing)
    assert str(missing) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text", ['{"cer": 3.0}', "{not json", '{"wer": "high"}', '{"wer": null}', "[12.5]", ""])
def test_read_wer_json_malformed_is_one_line_even_when_missing_is_ok(tmp_path, text):
    bad = tmp_path / "wer.json"
    bad.write_text(text)
    for missing_ok in (False, True):
        with pytest.raises(SpeechkitError, match="not a wer.json with a numeric 'wer'") as e:
            read_wer_json(bad, missing_ok=missing_ok)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_read_wer_json_accepts_an_integer_wer(tmp_path):
    path = tmp_path / "wer.json"
    path.write_text(json.dumps({"wer": 0}))
    assert read_wer_json(path) == 0.0


def test_utterance_errors_count_each_pair_and_skip_empty_references():
    refs = ["the cat sat", "", "a b"]
    hyps = ["the hat sat on", "noise", "a b"]
    assert utterance_errors(refs, hyps) == [2, 0]  # one substitution + one insertion; the empty ref left out
    assert utterance_errors(refs, hyps, "char") == [4, 0]  # c->h, and " on" inserted
    with pytest.raises(ValueError, match="unit"):
        utterance_errors(refs, hyps, "phone")


def test_paired_bootstrap_is_one_when_always_better_and_zero_on_ties():
    assert paired_bootstrap([0, 1, 2], [1, 2, 3]) == 1.0
    assert paired_bootstrap([1, 2, 3], [0, 1, 2]) == 0.0
    assert paired_bootstrap([2, 2], [2, 2]) == 0.0  # never strictly fewer
    mixed = paired_bootstrap([0] * 10 + [5] * 10, [3] * 10 + [3] * 10, draws=4000)  # 50 vs 60 errors in total
    assert 0.6 < mixed < 0.95 and mixed == paired_bootstrap([0] * 10 + [5] * 10, [3] * 20, draws=4000)  # seeded
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap([1, 2], [1])
