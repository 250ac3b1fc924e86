"""``speechkit corpus synth``: reproducible, held-out voices, disjoint sentences, valid audio; and
the text normaliser that makes each transcript exactly what the engine said."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import soundfile as sf

from speechkit.cli import main
from speechkit.data.kaldi import load_data_dir, validate_data_dir
from speechkit.text.normalize import cardinal, normalize_text, ordinal, year

SPLITS = ("train", "dev", "test", "test_unseen")
ARGS = ("corpus", "synth", "--hours", "0.05", "--seed", "1", "--nj", "2")

needs_engine = pytest.mark.skipif(
    not (shutil.which("espeak-ng") or shutil.which("flite")), reason="needs espeak-ng or flite installed"
)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """The same small corpus built twice into different dirs."""
    dirs = [tmp_path_factory.mktemp("synth") / "corpus" for _ in range(2)]
    for d in dirs:
        assert main([*ARGS, "--out", str(d)]) == 0
    return dirs


@needs_engine
def test_same_seed_gives_identical_text_and_speakers(corpora):
    a, b = corpora
    for split in SPLITS:
        for name in ("text", "utt2spk"):
            assert (a / split / name).read_bytes() == (b / split / name).read_bytes(), f"{split}/{name} differs"


@needs_engine
def test_unseen_voices_and_sentences_are_held_out(corpora):
    utts = {split: load_data_dir(corpora[0] / split) for split in SPLITS}
    speakers = {split: {u.speaker for u in us} for split, us in utts.items()}
    assert not speakers["test_unseen"] & (speakers["train"] | speakers["dev"] | speakers["test"])
    held_out = {v["speaker"] for v in json.loads((corpora[0] / "voices.json").read_text())["voices"] if v["held_out"]}
    assert speakers["test_unseen"] <= held_out
    assert not held_out & (speakers["train"] | speakers["dev"] | speakers["test"])
    sentences = {split: {u.text for u in us} for split, us in utts.items()}
    for i, s1 in enumerate(SPLITS):
        for s2 in SPLITS[i + 1 :]:
            assert not sentences[s1] & sentences[s2], f"{s1} and {s2} share sentences"
    # train from the train part, dev and tests from the eval part: disjoint from any corpus's training text
    from speechkit.text.sentences import is_eval_sentence

    assert not any(is_eval_sentence(t) for t in sentences["train"])
    assert all(is_eval_sentence(t) for split in ("dev", "test", "test_unseen") for t in sentences[split])
    assert json.loads((corpora[0] / "voices.json").read_text())["sentences"] == "v2"


@needs_engine
def test_data_dirs_are_valid_16k_mono_with_normalised_text(corpora):
    for split in SPLITS:
        report = validate_data_dir(corpora[0] / split)
        assert report.bad_audio == [] and report.num_utts >= 15
        for u in load_data_dir(corpora[0] / split):
            info = sf.info(u.wav)
            assert (info.samplerate, info.channels) == (16000, 1)
            assert re.fullmatch(r"[a-z']+( [a-z']+)*", u.text)
            assert u.utt_id.startswith(f"{u.speaker}-{split}-")


@needs_engine
def test_rerun_with_same_settings_is_skipped(corpora, capsys):
    assert main([*ARGS, "--out", str(corpora[0])]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_unknown_engine_is_a_user_error(tmp_path, capsys):
    assert main([*ARGS, "--out", str(tmp_path), "--engines", "sam"]) == 2
    assert "unknown engine 'sam'" in capsys.readouterr().err


def test_number_words():
    assert cardinal(0) == "zero"
    assert cardinal(115) == "one hundred fifteen"
    assert cardinal(2_000_040) == "two million forty"
    assert year(1995) == "nineteen ninety five"
    assert year(1905) == "nineteen oh five"
    assert year(1900) == "nineteen hundred"
    assert year(2007) == "two thousand seven"
    assert year(2019) == "twenty nineteen"
    assert ordinal(21) == "twenty first"
    assert ordinal(12) == "twelfth"


@pytest.mark.parametrize(
    "raw, spoken",
    [
        ("In 1995, the well-known band sold 1,200 records.", "in nineteen ninety five the well known band sold one thousand two hundred records"),
        ("The war lasted 1939\u20131945.", "the war lasted nineteen thirty nine to nineteen forty five"),
        ("Prices rose 3.5% in the 1990s.", "prices rose three point five percent in the nineteen nineties"),
        ("It's the 21st century (so they say)!", "it's the twenty first century so they say"),
        ("\u201cDon\u2019t go,\u201d she said.", "don't go she said"),
    ],
)
def test_normalize_spells_out(raw, spoken):
    assert normalize_text(raw) == spoken


@pytest.mark.parametrize(
    "raw",
    [
        "NASA launched it.",  # acronym
        "He visited the U.S. last year.",  # dotted abbreviation
        "Mr. Smith arrived.",  # abbreviation
        "John F. Kennedy spoke.",  # initial
        "Henry VIII had six wives.",  # Roman numeral
        "It is 10 km long.",  # unit
        "See www.example.com for more.",  # URL
        "The caf\u00e9 opened.",  # non-ASCII letter
        "It cost $5 and 2 + 2 = 4.",  # symbols
        "Call 007 now.",  # leading zero
    ],
)
def test_normalize_rejects_what_it_cannot_spell(raw):
    assert normalize_text(raw) is None
