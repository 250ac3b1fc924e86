"""The TTS front end at synthesis time: the resident phonemiser (same symbols as a process per call,
no process start per sentence, safe across threads, forks, dead and hung processes), and the checks
on what is said and on the voice prompt (empty text, 10 000 characters, unknown characters, short,
silent or broken prompts)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import threading

import numpy as np
import pytest
import soundfile as sf

from speechkit.decoding.tts_options import (PIECE_PHONEMES, check_prompt, check_text, iter_pieces, read_prompt,
                                            split_text)
from speechkit.errors import SpeechkitError
from speechkit.text import espeak, phonemes
from speechkit.text.espeak import ResidentEspeak
from speechkit.text.phonemes import text_to_phonemes

pytestmark = pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng installed")
BACKENDS = ["library", "process"] if espeak._library_path() else ["process"]

LONG = ("The river ran past the old stone mill, where the miller's children played among the sacks of grain "
        "while their father argued with the merchants about the price of flour and the state of the roads ") * 8
SENTENCES = [  # digits, abbreviations, punctuation, lines past espeak-ng's 999 bytes, unknown characters, empty
    "Hello world.", "In 1999 there were 42 cats and 3.5 dogs on 1,000 acres.",
    "Dr. Smith met Mr. Jones at 10:30 on St. Patrick's Day.", "J. R. R. Tolkien wrote about 12 books, didn't he?",
    "Well, well; we'll see: it's 50% off.", "Wait... what?!", "\"Quoted speech,\" he said, \"is (sometimes) hard.\"",
    "Don’t stop — keep going – please.", "NASA's café sold 3 cakes at 007.", "I love 🍕 and ☕ every morning.",
    "我爱你 means I love you.", "Привет, мир! Hello again.", "", "   ", "...", "🙂", "a", "and,", "The, and, of.",
    LONG, LONG.replace(" ", ", ", 40), "He paid $5.99 for a £3 coffee, €2 less than usual.", "The U.S.A. and the U.K.",
    "C++ and C# are languages; so is Python 3.11.", "x = y + 2 * z", "Tab\tseparated\nnew line text.",
    "A.I. is not AI, is it?", "Supercalifragilisticexpialidocious is a long word.",
]


@pytest.fixture
def resident(monkeypatch):
    """A fresh resident phonemiser of a backend in place of the process's one, closed afterwards."""
    made: list[ResidentEspeak] = []

    def make(backend: str | None, **kw) -> ResidentEspeak:
        r = ResidentEspeak(backend, **kw)
        made.append(r)
        monkeypatch.setattr(phonemes, "RESIDENT", r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture(scope="module")
def per_call() -> list[list[str]]:
    """The symbols of SENTENCES one at a time, one espeak-ng process per call (the path before the
    resident phonemiser)."""
    saved, phonemes.RESIDENT = phonemes.RESIDENT, None
    try:
        return [text_to_phonemes([s])[0] for s in SENTENCES]
    finally:
        phonemes.RESIDENT = saved


@pytest.mark.parametrize("backend", BACKENDS)
def test_resident_gives_the_same_symbols_as_a_process_per_call(resident, per_call, backend):
    r = resident(backend)
    assert [text_to_phonemes([s])[0] for s in SENTENCES] == per_call
    assert r.backend == backend
    assert text_to_phonemes(SENTENCES[::-1]) == per_call[::-1]  # one batch, other order: the same
    assert per_call[SENTENCES.index("I love 🍕 and ☕ every morning.")] == text_to_phonemes(["I love and every morning."])[0]
    assert per_call[SENTENCES.index("🙂")] == [] and len(per_call[SENTENCES.index(LONG)]) > 500


@pytest.mark.parametrize("backend", BACKENDS)
def test_resident_lines_match_the_program_past_one_clause_and_past_999_bytes(resident, backend):
    r = resident(backend)
    words = "river stone music garden window paper candle orange silver winter bottle morning".split()
    lines = [" ".join(words[i % 12] for i in range(n)) for n in (150, 260)]  # ~900 and ~1600 bytes
    program = [" ".join(phonemes._espeak(line + "\n", "en-us").split()) for line in lines]
    assert len(phonemes._espeak(lines[0] + "\n", "en-us").splitlines()) > 1  # espeak-ng cut it into clauses
    assert r.lines(lines, "en-us") == program


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_process_is_started_per_sentence(resident, monkeypatch, backend):
    resident(backend)
    expected = text_to_phonemes(["warm up", "Is it 42?"])[1]

    def no_process(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    monkeypatch.setattr(subprocess, "run", no_process)
    assert [text_to_phonemes(["Is it 42?"])[0] for _ in range(3)] == [expected] * 3


def test_a_large_batch_still_goes_to_a_pool_of_processes(resident, monkeypatch):
    r = resident("process")
    monkeypatch.setattr(r, "lines", lambda lines, voice: pytest.fail("a large batch went to the resident phonemiser"))
    out = text_to_phonemes([f"sentence number {i}" for i in range(200)])
    assert len(out) == 200 and out[7] != out[8]


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_get_their_own_results(resident, backend):
    r = resident(backend)
    texts = [f"The {w} cost {i} coins, didn't it?" for i, w in enumerate("river stone music garden window paper".split())]
    voices = ["en-us", "en-gb"]
    expected = {v: text_to_phonemes(texts, v) for v in voices}
    assert expected["en-us"] != expected["en-gb"]
    got, errors = {}, []

    def worker(k: int) -> None:
        try:
            for j in range(12):
                i, v = (k + j) % len(texts), voices[(k * j) % 2]
                got[(k, j)] = (text_to_phonemes([texts[i]], v)[0], expected[v][i])
        except Exception as e:  # reported below: an assert in a thread would go unseen
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 8 * 12
    assert all(a == b for a, b in got.values())
    assert r.backend == backend


def test_a_dead_process_is_restarted_silently(resident):
    r = resident("process")
    first = text_to_phonemes(["The cat sat on the mat."])[0]
    proc = r.process("en-us").proc
    proc.kill()
    proc.wait()
    assert text_to_phonemes(["The cat sat on the mat."])[0] == first
    assert r.process("en-us").proc.pid != proc.pid


def test_a_hung_process_is_restarted_silently(resident):
    r = resident("process", timeout_s=0.5)
    first = text_to_phonemes(["The cat sat on the mat."])[0]
    proc = r.process("en-us").proc
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        assert text_to_phonemes(["The cat sat on the mat."])[0] == first
        assert proc.poll() is not None  # the hung one was killed, not left behind
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_process_that_fails_again_is_a_one_line_error(resident, monkeypatch):
    resident("process")
    line = espeak.ProcessEspeak.line

    def dies_first(self, text):
        self.proc.kill()
        self.proc.wait()
        return line(self, text)

    monkeypatch.setattr(espeak.ProcessEspeak, "line", dies_first)
    with pytest.raises(SpeechkitError, match="failed twice in a row") as e:
        text_to_phonemes(["hello"])
    assert "\n" not in str(e.value)


def test_only_the_program_installed_means_a_resident_process(resident, monkeypatch, per_call):
    monkeypatch.setattr(espeak, "_library_path", lambda: None)
    monkeypatch.setattr(espeak, "_library", None)
    monkeypatch.setattr(espeak, "_library_tried", False)
    r = resident(None)
    assert text_to_phonemes([SENTENCES[1]])[0] == per_call[1]
    assert r.backend == "process" and r.process("en-us") is not None


@pytest.mark.skipif("library" not in BACKENDS, reason="needs libespeak-ng")
def test_a_library_of_another_release_is_not_used(resident, monkeypatch, per_call):
    monkeypatch.setattr(espeak, "program_release", lambda: ("0.0-other", "/nowhere/espeak-ng-data"))
    r = resident(None)
    assert text_to_phonemes([SENTENCES[1]])[0] == per_call[1] and r.backend == "process"
    with pytest.raises(SpeechkitError, match="not installed as the espeak-ng program's own library"):
        resident("library").lines(["hello"], "en-us")


def _child(text: str) -> list[list[str]]:
    return [text_to_phonemes([text])[0] for _ in range(40)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forked_child_does_not_share_the_parents_phonemiser(resident, backend):
    resident(backend)
    expected = [text_to_phonemes([t])[0] for t in ("the first one", "another sentence, the second")]  # warm in the parent
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply_async(_child, (("another sentence, the second"),))
        parent = [text_to_phonemes(["the first one"])[0] for _ in range(40)]  # at the same time
        assert child.get(timeout=60) == [expected[1]] * 40
    assert parent == [expected[0]] * 40


# What is said.


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_text_is_nothing_to_say(text):
    for call in (check_text, split_text):
        with pytest.raises(SpeechkitError, match="nothing to say") as e:
            call(text)
        assert "\n" not in str(e.value)


def test_a_text_without_a_speakable_word_is_nothing_to_say():
    with pytest.raises(SpeechkitError, match="nothing to say") as e:
        split_text("🙂 ... 我爱你 !!!")
    assert "\n" not in str(e.value)


def test_ten_thousand_characters_become_pieces_under_the_phoneme_budget():
    text = " ".join(s for s in SENTENCES if s.strip())
    text = (text + " ") * (10_000 // len(text) + 1)
    text = text[: text.rindex(" ", 0, 10_000)]
    assert 9_000 < len(text) <= 10_000
    pieces = split_text(text)
    sizes = [len(p) for p in text_to_phonemes(pieces)]
    assert max(sizes) <= PIECE_PHONEMES and min(sizes) > 0
    assert len(pieces) > 50
    said = " ".join(pieces).split()
    dropped = {"Привет,", "мир!", "..."}  # the sentences with nothing to say
    assert said == [w for w in text.split() if w not in dropped]
    assert next(iter_pieces(text)) == pieces[0] == "Hello world."


def test_a_long_sentence_is_cut_at_commas_then_between_words():
    pieces = split_text(LONG, max_phonemes=100)
    sizes = [len(p) for p in text_to_phonemes(pieces)]
    assert max(sizes) <= 100 and " ".join(pieces).split() == LONG.split()
    assert pieces[0].endswith("mill,")  # the first clause fits: cut at its comma
    words = " ".join(["word"] * 120)  # one clause of 120 words: near-equal runs
    runs = split_text(words, max_phonemes=60)
    assert " ".join(runs).split() == words.split()
    assert max(len(r.split()) for r in runs) - min(len(r.split()) for r in runs) <= 1
    assert all(len(p) <= 60 for p in text_to_phonemes(runs))
    short = "One sentence. Another one, short. A third?"
    assert split_text(short) == ["One sentence.", "Another one, short.", "A third?"]


def test_a_word_longer_than_a_piece_is_a_one_line_error():
    with pytest.raises(SpeechkitError, match="phoneme symbols, more than a piece may have") as e:
        split_text("hello " + "a" * 10_000 + " world")
    assert "\n" not in str(e.value) and len(str(e.value)) < 200


def test_unknown_characters_are_dropped_and_the_rest_is_spoken():
    assert split_text("Hello, 🙂, world. 🙂. Bye!") == ["Hello, 🙂, world.", "Bye!"]
    assert text_to_phonemes(["Hello, 🙂, world 我爱你 ☕."]) == text_to_phonemes(["Hello, world."])


def test_the_synthesisers_front_end_refuses_empty_text_in_one_line():
    from speechkit.runtime.tts import phoneme_ids
    from speechkit.text.phonemes import PhonemeVocab

    vocab = PhonemeVocab.build(text_to_phonemes(["hello world"]))
    assert phoneme_ids(vocab, "hello 🙂 world") == phoneme_ids(vocab, "hello world")
    for text in ("", "  ", "🙂"):
        with pytest.raises(SpeechkitError, match="nothing to say") as e:
            phoneme_ids(vocab, text)
        assert "\n" not in str(e.value)


# The voice prompt.

RATE = 16000


def _speechlike(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_a_prompt_shorter_than_half_a_second_is_refused():
    with pytest.raises(SpeechkitError, match=r"0\.20 s long; a voice prompt needs at least 0\.5 s") as e:
        check_prompt(_speechlike(0.2), RATE)
    assert "\n" not in str(e.value)
    assert check_prompt(_speechlike(0.5), RATE).shape == (8000,)


@pytest.mark.parametrize("samples", [np.zeros(3 * RATE, np.float32), 1e-5 * np.ones(3 * RATE, np.float32),
                                     (1e-5 * np.random.default_rng(0).standard_normal(3 * RATE)).astype(np.float32)])
def test_a_silent_prompt_is_refused(samples):
    with pytest.raises(SpeechkitError, match="the prompt is silent") as e:
        check_prompt(samples, RATE)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_prompt_with_nan_or_inf_is_refused(bad):
    x = _speechlike(1.0)
    x[100] = bad
    with pytest.raises(SpeechkitError, match="NaN or infinite"):
        check_prompt(x, RATE)


def test_a_prompt_must_be_mono_floats():
    for x in (np.stack([_speechlike(1.0)] * 2), (_speechlike(1.0) * 32767).astype(np.int16)):
        with pytest.raises(SpeechkitError, match="mono float samples") as e:
            check_prompt(x, RATE)
        assert "\n" not in str(e.value)
    assert check_prompt(_speechlike(1.0).astype(np.float64), RATE).dtype == np.float32


def test_a_prompt_file_at_any_rate_and_channels_is_read_then_checked(tmp_path):
    stereo = tmp_path / "stereo.wav"
    x = _speechlike(1.0, 44100)
    sf.write(stereo, np.stack([x, x], axis=1), 44100)
    y = read_prompt(stereo, RATE)
    assert y.dtype == np.float32 and y.ndim == 1 and abs(len(y) - RATE) <= 1
    short, silent = tmp_path / "short.wav", tmp_path / "silent.wav"
    sf.write(short, _speechlike(0.2, 22050), 22050)
    sf.write(silent, np.zeros(RATE, np.float32), RATE)
    for path, message in ((short, "0.20 s long"), (silent, "is silent")):
        with pytest.raises(SpeechkitError, match=message) as e:
            read_prompt(path, RATE)
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    with pytest.raises(SpeechkitError, match="the prompt is silent"):
        read_prompt(np.zeros(RATE, np.float32), RATE)


def test_the_synthesisers_prompt_path_refuses_a_bad_prompt_in_one_line():
    from speechkit.runtime.tts import prompt_latents

    class Codec:  # what prompt_latents needs of a codec
        sample_rate, hop, latent_dim = RATE, 640, 4

        def encode(self, x: np.ndarray) -> np.ndarray:
            return np.zeros((self.latent_dim, len(x) // self.hop), np.float32)

    assert prompt_latents(Codec(), _speechlike(1.0), 3.0).shape == (25, 4)
    for x in (_speechlike(0.2), np.zeros(RATE, np.float32), np.full(RATE, np.nan, np.float32)):
        with pytest.raises(SpeechkitError) as e:
            prompt_latents(Codec(), x, 3.0)
        assert "\n" not in str(e.value)
