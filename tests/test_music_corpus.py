"""``speechkit corpus music``: reproducible for any number of jobs, captions and labels that say
what the MIDI plays (read back from the written .mid), audio of the right length that is music,
consistent Kaldi tables, and one-line errors for bad input."""

from __future__ import annotations

import json
import random
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from speechkit.cli import main
from speechkit.data.kaldi import load_data_dir, read_table, validate_data_dir
from speechkit.data.music.captions import TEMPLATES, make_caption
from speechkit.data.music.compose import (
    BY_NAME, DRUM_PATTERNS, INSTRUMENTS, RELEASE_SECONDS, SCALES, STYLES, chord_symbol, compose_piece, numeral_degree,
)
from speechkit.data.music.corpus import SPLITS
from speechkit.data.music.render import DEFAULT_SOUNDFONT, PEAK_LEVEL, render_midi

CLIP = 2.0
SR = 16000
ARGS = ("corpus", "music", "--hours", "0.02", "--clip-seconds", str(CLIP))  # 36 clips


def _build(out: Path, seed: int, nj: int) -> Path:
    assert main([*ARGS, "--seed", str(seed), "--nj", str(nj), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """seed 3 with one job, seed 3 with two, seed 4."""
    root = tmp_path_factory.mktemp("music")
    return _build(root / "a", 3, 1), _build(root / "b", 3, 2), _build(root / "c", 4, 2)


def _labels(corpus: Path) -> list[dict]:
    return [json.loads(line) for split in SPLITS for line in (corpus / split / "labels.jsonl").read_text().splitlines()]


def _files(corpus: Path, pattern: str) -> dict[str, bytes]:
    return {p.relative_to(corpus).as_posix(): p.read_bytes() for p in sorted(corpus.glob(pattern))}


def test_same_seed_same_corpus_for_any_number_of_jobs(corpora):
    a, b, _ = corpora
    for split in SPLITS:
        for name in ("labels.jsonl", "text", "utt2dur", "utt2spk"):
            assert (a / split / name).read_bytes() == (b / split / name).read_bytes(), f"{split}/{name} differs"
    for pattern in ("midi/*.mid", "audio/*/*.flac"):
        files_a, files_b = _files(a, pattern), _files(b, pattern)
        assert len(files_a) == 36 and files_a == files_b, pattern
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()


def test_other_seed_other_corpus(corpora):
    a, _, c = corpora
    captions_a, captions_c = ([x["caption"] for x in _labels(d)] for d in (a, c))
    assert sum(x != y for x, y in zip(captions_a, captions_c)) > 30
    audio_a, audio_c = _files(a, "audio/*/*.flac"), _files(c, "audio/*/*.flac")
    assert all(audio_a[k] != audio_c[k] for k in audio_a)


def _scale(labels: dict) -> set[int]:
    return {(labels["tonic"] + i) % 12 for i in SCALES[labels["mode"]]}


def _vocabulary_words_in(caption: str) -> set[str]:
    found = set()
    for name in sorted(BY_NAME, key=len, reverse=True):  # "electric piano" before "piano"
        if name in caption:
            found.add(name)
            caption = caption.replace(name, "")
    return found


def test_midi_and_caption_say_what_the_labels_say(corpora):
    styles = Counter()
    for labels in _labels(corpora[0]):
        midi = pretty_midi.PrettyMIDI(str(corpora[0] / "midi" / f"{labels['utt']}.mid"))
        caption = labels["caption"]
        styles[labels["style"]] += 1
        # tempo, key, time signature
        _, tempi = midi.get_tempo_changes()
        assert len(tempi) == 1 and abs(tempi[0] - labels["tempo"]) < 1.0
        assert f"{round(labels['tempo'])} bpm" in caption and labels["key"] in caption
        ts = midi.time_signature_changes[0]
        assert f"{ts.numerator}/{ts.denominator}" == labels["time_signature"]
        # instruments: one track per role, the labelled program, named in the caption and no others
        by_role = {inst.name: inst for inst in midi.instruments}
        assert {i["role"]: i["program"] for i in labels["instruments"]} == {
            role: inst.program for role, inst in by_role.items() if not inst.is_drum}
        assert _vocabulary_words_in(caption) == {i["name"] for i in labels["instruments"]}
        assert all(by_role[i["role"]].notes for i in labels["instruments"])
        # drums
        has_drums = any(inst.is_drum and inst.notes for inst in midi.instruments)
        assert has_drums == labels["drums"] == ("drums" in by_role)
        assert "drums" in caption and (("no drums" in caption) != labels["drums"])
        # pitched notes on the key's scale, nothing sounding in the last RELEASE_SECONDS
        pitched = [n for inst in midi.instruments if not inst.is_drum for n in inst.notes]
        in_scale = sum(n.pitch % 12 in _scale(labels) for n in pitched) / len(pitched)
        assert in_scale >= 0.9, (labels["utt"], in_scale)
        assert max(n.end for inst in midi.instruments for n in inst.notes) <= CLIP - RELEASE_SECONDS + 1e-3
    assert len(styles) >= 5, styles


def test_bass_and_chords_follow_the_labelled_progression(corpora):
    checked = 0
    for labels in _labels(corpora[0]):
        midi = pretty_midi.PrettyMIDI(str(corpora[0] / "midi" / f"{labels['utt']}.mid"))
        tracks = {inst.name: inst for inst in midi.instruments}
        scale = SCALES[labels["mode"]]
        span = labels["beats_per_chord"] * 60.0 / labels["tempo"]
        for k in range(int((CLIP - RELEASE_SECONDS) / span) + 1):
            start = k * span
            degree = numeral_degree(labels["progression"][k % len(labels["progression"])])
            chord = {(labels["tonic"] + scale[(degree + i) % 7]) % 12 for i in (0, 2, 4, 6)}
            root = (labels["tonic"] + scale[degree]) % 12
            at = lambda role: [n.pitch % 12 for n in tracks[role].notes if abs(n.start - start) < 1e-3]  # noqa: E731
            if "bass" in tracks and at("bass"):
                assert at("bass") == [root], (labels["utt"], k)
                checked += 1
            if at("chords"):  # an arpeggio starts on one voice, not always the root
                assert set(at("chords")) <= chord, (labels["utt"], k)
                assert root in at("chords") or len(at("chords")) == 1, (labels["utt"], k)
    assert checked >= 20


def test_audio_is_music_of_the_clip_length(corpora):
    for u in load_data_dir(corpora[0] / "train"):
        samples, sr = sf.read(u.wav, dtype="float32")
        assert sr == SR and samples.ndim == 1 and len(samples) == round(CLIP * SR)
        assert abs(np.abs(samples).max() - PEAK_LEVEL) < 1e-3
        body = samples[: round((CLIP - RELEASE_SECONDS) * SR)]
        assert np.sqrt(np.mean(body**2)) > 0.02, f"{u.wav}: nearly silent"
        assert abs(samples[-1]) < 1e-3  # faded out, no click at the cut


def test_rendering_the_midi_file_gives_the_flac(corpora):
    for utt in ("music-0000000", "music-0000005"):
        split = "dev" if utt.endswith("0") else "train"
        midi = pretty_midi.PrettyMIDI(str(corpora[0] / "midi" / f"{utt}.mid"))
        again = render_midi(midi, DEFAULT_SOUNDFONT, SR, CLIP)
        stored, _ = sf.read(corpora[0] / "audio" / split / f"{utt}.flac", dtype="float32")
        assert np.abs(again - stored).max() <= 1.5 / 32768


def test_kaldi_dirs_are_consistent(corpora):
    manifest = json.loads((corpora[0] / "manifest.json").read_text())
    seen: set[str] = set()
    for split in SPLITS:
        report = validate_data_dir(corpora[0] / split)
        assert report.bad_audio == [] and report.num_utts == manifest["clips"][split] >= 1
        keys = set(read_table(corpora[0] / split / "wav.scp"))
        labels = _labels_of(corpora[0] / split)
        assert [x["utt"] for x in labels] == sorted(keys)
        assert read_table(corpora[0] / split / "text") == {x["utt"]: x["caption"] for x in labels}
        assert set(read_table(corpora[0] / split / "utt2dur").values()) == {f"{CLIP:.3f}"}
        assert not keys & seen
        seen |= keys
    assert manifest["clips"] == {"train": 32, "dev": 2, "test": 2}
    assert manifest["soundfont"] == str(DEFAULT_SOUNDFONT) and len(manifest["soundfont_sha256"]) == 64
    assert {p.stem for p in (corpora[0] / "midi").glob("*.mid")} == seen


def _labels_of(split_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (split_dir / "labels.jsonl").read_text().splitlines()]


def test_rerun_with_same_settings_is_skipped(corpora, capsys):
    assert main([*ARGS, "--seed", "3", "--nj", "1", "--out", str(corpora[0])]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_style_tables_are_diatonic_and_in_the_vocabulary():
    for style in STYLES:
        for mode, progressions in style.progressions.items():
            for progression in progressions:
                for numeral in progression.split("-"):
                    assert chord_symbol(numeral_degree(numeral), mode) == numeral, (style.name, mode, numeral)
        assert all(DRUM_PATTERNS[p].meter == style.meter for p in style.drum_patterns)
        assert set(style.melody + style.chords + style.bass) <= set(BY_NAME)
    assert len({i.program for i in INSTRUMENTS}) == len(INSTRUMENTS)
    assert chord_symbol(1, "major", seventh=True) == "ii7" and chord_symbol(4, "major", True) == "V7"
    assert chord_symbol(0, "major", True) == "Imaj7" and chord_symbol(1, "minor", True) == "iiø7"


def test_captions_vary_in_phrasing_not_in_facts():
    pieces = [compose_piece(0, i, 10.0)[1] for i in range(150)]
    captions = [make_caption(labels, random.Random(i)) for i, labels in enumerate(pieces)]
    assert len(set(captions)) == len(captions)
    starts = {c.split(" in ")[0].split(",")[0] for c in captions}
    assert len(starts) > 20
    assert {labels["style"] for labels in pieces} == {s.name for s in STYLES}
    assert len({labels["key"] for labels in pieces}) >= 20
    same = [make_caption(pieces[0], random.Random(k)) for k in range(40)]
    assert len(set(same)) >= len(TEMPLATES)
    assert all(pieces[0]["key"] in c and f"{round(pieces[0]['tempo'])} bpm" in c for c in same)


def _error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("speechkit: error: "), err
    return err


def test_help_and_one_line_errors(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["corpus", "music", "--help"])
    assert exit_.value.code == 0 and "--clip-seconds" in capsys.readouterr().out
    out = str(tmp_path / "out")
    for hours in ("0", "-1", "nan"):
        assert "--hours" in _error_line(capsys, ["corpus", "music", "--out", out, "--hours", hours])
    assert "--clip-seconds" in _error_line(capsys, ["corpus", "music", "--out", out, "--clip-seconds", "0.5"])
    assert "--nj" in _error_line(capsys, ["corpus", "music", "--out", out, "--nj", "0"])
    assert "not found" in _error_line(capsys, ["corpus", "music", "--out", out, "--soundfont", str(tmp_path / "no.sf2")])
    not_sf2 = tmp_path / "not.sf2"
    not_sf2.write_bytes(b"hello" * 100)
    assert "not a SoundFont" in _error_line(capsys, ["corpus", "music", "--out", out, "--soundfont", str(not_sf2)])
    broken = tmp_path / "broken.sf2"
    broken.write_bytes(b"RIFF" + struct.pack("<I", 1000) + b"sfbk" + b"LIST" + bytes(996))
    assert "unreadable soundfont" in _error_line(capsys, ["corpus", "music", "--out", out, "--soundfont", str(broken)])
    monkeypatch.setitem(sys.modules, "tinysoundfont", None)  # as if it were not installed
    assert "pip install --no-deps tinysoundfont" in _error_line(capsys, ["corpus", "music", "--out", out])
    assert not (tmp_path / "out" / "manifest.json").exists()
