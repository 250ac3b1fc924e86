"""LibriSpeech preparation (``speechkit data prepare-librispeech``) on a tiny corpus in
LibriSpeech's own layout: valid data dirs with the right text and speakers, a one-line error
naming the expected layout when the download is not laid out that way, and the recipe's stage 0-1."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechkit.data.kaldi import read_table, validate_data_dir
from speechkit.data.librispeech import prepare_librispeech

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "librispeech" / "asr"
# subset → speaker → chapter → transcripts of its utterances 0000, 0001...
CORPUS = {
    "train-clean-100": {"19": {"198": ["NORTHANGER ABBEY", "THIS LITTLE WORK WAS FINISHED"]}, "103": {"1240": ["CHAPTER ONE"]}},
    "dev-clean": {"84": {"121123": ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES"], "121550": ["IT'S THE SEA"]}},
    "test-clean": {"1089": {"134686": ["HE HOPED THERE WOULD BE STEW FOR DINNER"]}},
}


def _write_corpus(root: Path, corpus: dict = CORPUS) -> None:
    rng = np.random.default_rng(0)
    for subset, speakers in corpus.items():
        for spk, chapters in speakers.items():
            for chap, texts in chapters.items():
                d = root / subset / spk / chap
                d.mkdir(parents=True)
                lines = []
                for i, text in enumerate(texts):
                    utt = f"{spk}-{chap}-{i:04d}"
                    t = np.arange(int(16000 * rng.uniform(0.3, 0.6))) / 16000
                    audio = 0.3 * np.sin(2 * np.pi * (150 + 10 * i) * t) + 0.01 * rng.standard_normal(len(t))
                    sf.write(str(d / f"{utt}.flac"), audio.astype(np.float32), 16000, format="FLAC", subtype="PCM_16")
                    lines.append(f"{utt} {text}\n")
                (d / f"{spk}-{chap}.trans.txt").write_text("".join(lines))


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "LibriSpeech"
    _write_corpus(root)
    return root


def test_prepared_dirs_validate_and_carry_text_and_speakers(corpus, tmp_path):
    out = tmp_path / "data"
    counts = prepare_librispeech(corpus, out, ["train-clean-100", "dev-clean"], combine={"train_all": ["train-clean-100", "dev-clean"]})
    assert counts == {"train_clean_100": 3, "dev_clean": 3, "train_all": 6}
    assert not (out / "test_clean").exists()
    for name, n in counts.items():
        report = validate_data_dir(out / name)
        assert (report.num_utts, report.bad_audio) == (n, [])
    text = read_table(out / "dev_clean" / "text")
    assert text == {"84-121123-0000": "go do you hear", "84-121123-0001": "but in less than five minutes", "84-121550-0000": "it's the sea"}
    assert set(read_table(out / "train_clean_100" / "utt2spk").values()) == {"19", "103"}
    assert read_table(out / "dev_clean" / "spk2utt") == {"84": "84-121123-0000 84-121123-0001 84-121550-0000"}
    wav = read_table(out / "train_clean_100" / "wav.scp")["103-1240-0000"]
    assert Path(wav) == (corpus / "train-clean-100" / "103" / "1240" / "103-1240-0000.flac").resolve()
    assert len(read_table(out / "train_all" / "text")) == 6


def test_cli_finds_every_subset_under_the_download_folder(corpus, tmp_path, run_cli):
    rc, out, err = run_cli("data", "prepare-librispeech", "--corpus-dir", corpus.parent, "--out", tmp_path / "data")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["dev_clean", "test_clean", "train_clean_100"]
    assert f"{tmp_path / 'data'}/test_clean: 1 utterances" in out


def error_lines(err: str) -> list[str]:
    """stderr without progress bars (tqdm redraws with carriage returns) → its non-empty lines."""
    lines = (ln.strip() for ln in re.split(r"[\r\n]", err))
    return [ln for ln in lines if ln and not re.search(r"\d+%\||\d+/\d+ \[", ln)]


def _break(corpus: Path, how: str) -> tuple[Path, list[str], str]:
    """Damage the corpus; returns (--corpus-dir, extra args, a phrase the error must contain)."""
    chap = corpus / "dev-clean" / "84" / "121123"
    if how == "no-dir":
        return corpus / "nowhere", [], "no such directory; expected a LibriSpeech download"
    if how == "not-librispeech":
        return corpus / "dev-clean" / "84", [], "none of the subsets"
    if how == "missing-subset":
        return corpus, ["--subsets", "dev-clean,test-other"], "test-other: subset missing; expected"
    if how == "unknown-subset":
        return corpus, ["--subsets", "dev-cleen"], "unknown LibriSpeech subset 'dev-cleen'"
    if how == "no-trans":
        (chap / "84-121123.trans.txt").unlink()
        return corpus, [], "84-121123.trans.txt: missing; expected"
    if how == "missing-flac":
        (chap / "84-121123-0001.flac").unlink()
        return corpus, [], "84-121123.trans.txt:2: 84-121123-0001.flac is missing"
    if how == "extra-flac":
        shutil.copy(chap / "84-121123-0000.flac", chap / "84-121123-0007.flac")
        return corpus, [], "84-121123-0007.flac: not in 84-121123.trans.txt"
    if how == "flat":  # flac files straight in the subset folder, no speaker/chapter folders
        for f in list((corpus / "test-clean").rglob("*.*")):
            f.rename(corpus / "test-clean" / f.name)
        shutil.rmtree(corpus / "test-clean" / "1089")
        return corpus, [], "test-clean: no speaker folders; expected <subset>/<speaker>/<chapter>/"
    raise ValueError(how)


@pytest.mark.parametrize("how", ["no-dir", "not-librispeech", "missing-subset", "unknown-subset", "no-trans", "missing-flac",
                                 "extra-flac", "flat"])
def test_broken_layout_is_one_line_error(corpus, tmp_path, run_cli, how):
    corpus_dir, extra, phrase = _break(corpus, how)
    rc, _, err = run_cli("data", "prepare-librispeech", "--corpus-dir", corpus_dir, "--out", tmp_path / "data", *extra)
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("speechkit: error: ") and "Traceback" not in err, err
    assert phrase in lines[0], lines[0]


def test_recipe_prepares_and_validates(corpus, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    data = tmp_path / "data"
    cmd = [str(RECIPE / "run.sh"), "--corpus_dir", str(corpus.parent), "--data", str(data), "--stop_stage", "1", "--nj", "1",
           "--train_subsets", "train-clean-100 dev-clean", "--dev_subset", "dev-clean", "--test_subsets", "test-clean"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("train", "train_clean_100", "dev_clean", "test_clean"):
        assert (data / name / "text").is_file()
    for name in ("train", "dev_clean", "test_clean"):  # stage 1 validated the sets the recipe uses
        assert (data / name / ".validated").is_file()
    assert len(read_table(data / "train" / "text")) == 6
    bad = subprocess.run([str(RECIPE / "run.sh"), "--data", str(tmp_path / "other")], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--corpus_dir is required" in bad.stderr
