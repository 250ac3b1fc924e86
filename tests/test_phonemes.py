"""The TTS text front end (`speechkit.text.phonemes`) with the real espeak-ng: numbers spoken,
one "|" per word gap, punctuation kept, batches aligned with their input; the phoneme vocabulary."""

from __future__ import annotations

import shutil

import pytest

from speechkit.data.phonemes import phonemize_corpus
from speechkit.errors import SpeechkitError
from speechkit.text import espeak, phonemes
from speechkit.text.espeak import ResidentEspeak
from speechkit.text.normalize import normalize_text
from speechkit.text.phonemes import WORD_BOUNDARY, PhonemeVocab, text_to_phonemes

needs_espeak = pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng installed")

WORDS = "river stone music garden window paper candle orange silver winter bottle morning".split()


def _one(text: str) -> list[str]:
    return text_to_phonemes([text])[0]


@needs_espeak
def test_output_is_deterministic_and_ipa():
    texts = ["The quick brown fox jumps over the lazy dog.", "She sells sea shells by the sea shore"]
    first = text_to_phonemes(texts)
    assert first == text_to_phonemes(texts)
    fox = first[0]
    assert "ˈ" in fox and "ð" in fox and "dʒ" in fox  # stress, IPA, an affricate kept whole
    assert all(" " not in s and s for s in fox)


@needs_espeak
def test_one_boundary_between_every_two_words():
    text = "the quick brown fox jumps over the lazy dog"
    tokens = _one(text)
    assert tokens.count(WORD_BOUNDARY) == len(text.split()) - 1
    # espeak-ng on its own would join the clitic groups "of the" and "that the" into one word.
    assert _one("one of the best ideas that the town had").count(WORD_BOUNDARY) == 8
    assert tokens[-1] == "."
    # No empty words: every boundary sits between two phonemes.
    groups = " ".join(tokens[:-1]).split(WORD_BOUNDARY)
    assert len(groups) == 9 and all(g.strip() for g in groups)


@needs_espeak
def test_numbers_are_spoken_as_words():
    assert _one("42") == _one("forty two")
    assert _one("In 1999 there were 42 cats.") == _one("in nineteen ninety nine there were forty two cats")
    # The corpus normaliser rejects this one (clock time, slash, acronym, accent): the lighter fallback
    # still speaks the numbers, years as the corpus does (espeak-ng alone says "nineteen hundred
    # and ninety nine").
    raw = "At 10:30 in 1999/2000 NASA's café sold 3 cakes"
    assert normalize_text(raw) is None
    assert _one(raw) == _one("at ten thirty in nineteen ninety nine two thousand nasa's cafe sold three cakes")


@needs_espeak
def test_punctuation_is_kept_and_every_text_ends_a_sentence():
    tokens = _one("Hello, world. How are you?")
    assert [t for t in tokens if t in phonemes.PUNCTUATION] == [",", ".", "?"]
    assert tokens[-1] == "?" and tokens.count(WORD_BOUNDARY) == 4
    # Punctuation replaces no boundary: it attaches to the word before it.
    assert tokens[tokens.index(",") + 1] == WORD_BOUNDARY
    assert _one("What a day!")[-1] == "!"
    assert _one("a sentence ending without punctuation")[-1] == "."
    assert _one("a sentence ending without punctuation") == _one("A sentence ending without punctuation.")
    # "Mr." is an abbreviation, not a sentence end; ";" reads as a comma.
    assert [t for t in _one("Mr. Smith came; we left.") if t in phonemes.PUNCTUATION] == [",", "."]


def test_clause_texts_cut_where_the_phonemiser_cuts():
    for text in ("Hello, world. How are you?", "Mr. Smith came; we left.", '"Quoted speech," he said, "is hard."',
                 "It's 3:15 p.m. on Jan. 5th, 2024.", "Wait... what?!", "no punctuation at all", "...", ""):
        pieces = phonemes.clause_texts(text)
        assert "".join(p for p, _ in pieces) == text
        clauses = phonemes._clauses(text)
        if clauses[-1][1] is None and not clauses[-1][0].strip(' "'):  # nothing but closers after the last mark
            clauses.pop()
        assert [mark for _, mark in pieces] == [mark for _, mark in clauses]
        assert all(p.strip(' "').startswith(c.strip(' "')) for (c, _), (p, _) in zip(clauses, pieces))  # + punctuation
    assert phonemes.clause_texts('"Hi," he said.') == [('"Hi,"', ","), (" he said.", ".")]
    assert phonemes.clause_texts("Mr. Smith came; we left") == [("Mr. Smith came;", ","), (" we left", None)]


@needs_espeak
def test_apostrophes_stay_inside_the_word():
    dont = _one("don't")
    assert WORD_BOUNDARY not in dont and dont[-1] == "." and {"oʊ", "n", "t"} <= set(dont)
    assert _one("Don’t") == dont  # typographic apostrophe


@needs_espeak
def test_empty_and_unspeakable_texts_give_empty_sequences_in_place():
    out = text_to_phonemes(["", "hello", "   ", "...", "world"])
    assert out[0] == out[2] == out[3] == []
    assert out[1] == _one("hello") and out[4] == _one("world")
    assert text_to_phonemes([]) == []


@needs_espeak
def test_a_batch_keeps_its_order_across_processes(monkeypatch):
    texts = [
        f"the {WORDS[i % 12]} and the {WORDS[(i * 5 + 1) % 12]} cost {i + 3} coins" + ("." if i % 3 else "?")
        for i in range(200)
    ]
    texts[7] = ""
    texts[50] = "Well, well. Is it the same?"
    monkeypatch.setattr(phonemes, "_workers", lambda n_lines: 3)  # slices on any machine
    out = text_to_phonemes(texts)
    assert len(out) == 200 and out[7] == []
    for i in (0, 1, 50, 66, 133, 199):
        assert out[i] == _one(texts[i]), i
    assert out[0] != out[1]


@needs_espeak
def test_a_long_clause_stays_one_text_with_every_word_whole():
    # 150 words: espeak-ng would both split the clause and cut its input line inside a word.
    long = " ".join(WORDS[i % 12] for i in range(150))
    assert len(phonemes._espeak(long + "\n", "en-us").splitlines()) > 1
    out = text_to_phonemes([long, "hello there"])
    assert out[0].count(WORD_BOUNDARY) == 149
    words = " ".join(out[0][:-1]).split(f" {WORD_BOUNDARY} ")
    assert words[9] == words[93] == " ".join(_one("winter")[:-1])
    assert out[1] == _one("hello there")


@needs_espeak
def test_lines_with_no_output_are_realigned():
    # espeak-ng answers a lone apostrophe with an empty line, which breaks the blank-line framing.
    hello, quote, world = phonemes._espeak_lines(["hello", "'", "world"], "en-us")
    assert quote == "" and hello == phonemes._espeak_lines(["hello"], "en-us")[0] != ""
    assert world == phonemes._espeak_lines(["world"], "en-us")[0]


@needs_espeak
def test_phonemize_corpus_keeps_utterance_ids(tmp_path):
    text = tmp_path / "text"
    text.write_text("utt1 in 2020 we met\nutt2\nutt3 hello world\n", encoding="utf-8")
    assert phonemize_corpus(text, tmp_path / "phonemes") == 3
    lines = (tmp_path / "phonemes").read_text(encoding="utf-8").splitlines()
    assert [line.split(" ")[0] for line in lines] == ["utt1", "utt2", "utt3"]
    assert lines[0].split()[1:] == _one("in twenty twenty we met")
    assert lines[1].strip() == "utt2"
    assert lines[2].split()[1:] == _one("hello world")


# A process starting fresh: no resident phonemiser yet, of either kind (None: the library where it
# is the program's own, the "library" kind still requires the program to check that).
BACKENDS = [None, "process"] + (["library"] if espeak._library_path() else [])


@pytest.fixture
def fresh_resident(monkeypatch):
    made = []

    def make(backend):
        made.append(ResidentEspeak(backend))
        monkeypatch.setattr(phonemes, "RESIDENT", made[-1])

    yield make
    for r in made:
        r.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_espeak_is_a_one_line_error(monkeypatch, tmp_path, fresh_resident, backend):
    fresh_resident(backend)
    monkeypatch.setenv("PATH", str(tmp_path))
    for batch in (["hello"], [f"sentence {i}" for i in range(200)]):  # the resident phonemiser, the pool
        with pytest.raises(SpeechkitError, match="espeak-ng not found") as e:
            text_to_phonemes(batch)
        assert "\n" not in str(e.value)


@needs_espeak
@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_voice_is_a_one_line_error(fresh_resident, backend):
    fresh_resident(backend)
    for batch in (["hello"], [f"sentence {i}" for i in range(200)]):
        with pytest.raises(SpeechkitError, match="xx-nope") as e:
            text_to_phonemes(batch, voice="xx-nope")
        assert "\n" not in str(e.value)
    assert text_to_phonemes(["hello"]) == text_to_phonemes(["hello"], voice="en-us") != []  # still good for others


SEQS = [["h", "ə", "l", "ˈ", "oʊ", "|", "w", "ˈ", "ɜː", "l", "d", "."], ["ˈ", "oʊ", "|", "n", "oʊ", "!"]]


def test_vocab_round_trip_and_reserved_ids(tmp_path):
    vocab = PhonemeVocab.build(SEQS)
    assert vocab.symbols[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2, 3)
    assert len(vocab) == 4 + len({s for seq in SEQS for s in seq})
    for seq in SEQS:
        ids = vocab.encode(seq)
        assert min(ids) >= 4 and vocab.decode(ids) == seq
    assert vocab.decode([vocab.bos_id, *vocab.encode(SEQS[1]), vocab.eos_id, 0, 0]) == SEQS[1]
    vocab.save(tmp_path / "phonemes.txt")
    assert (tmp_path / "phonemes.txt").read_text(encoding="utf-8").splitlines() == vocab.symbols
    loaded = PhonemeVocab.load(tmp_path / "phonemes.txt")
    assert loaded.symbols == vocab.symbols and loaded.encode(SEQS[0]) == vocab.encode(SEQS[0])
    assert PhonemeVocab.build(list(reversed(SEQS))).symbols == vocab.symbols  # order-independent ids


def test_unknown_symbols_map_to_unk():
    vocab = PhonemeVocab.build(SEQS)
    ids = vocab.encode(["h", "ʒ", "oʊ", "<bos>x"])
    assert ids[1] == ids[3] == vocab.unk_id and vocab.unk_id not in (ids[0], ids[2])
    assert vocab.decode(ids)[1] == "<unk>"
    rare = PhonemeVocab.build(SEQS, min_count=2)
    assert rare.encode(["h"]) == [rare.unk_id] and rare.encode(["oʊ"]) != [rare.unk_id]


def test_a_broken_vocab_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "phonemes.txt"
    path.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(SpeechkitError, match="must start with"):
        PhonemeVocab.load(path)
    path.write_text("<pad>\n<unk>\n<bos>\n<eos>\na\na\n", encoding="utf-8")
    with pytest.raises(SpeechkitError, match="duplicated"):
        PhonemeVocab.load(path)
    with pytest.raises(SpeechkitError, match="no phoneme vocabulary"):
        PhonemeVocab.load(tmp_path / "missing.txt")


@needs_espeak
def test_vocab_covers_phonemised_text():
    seqs = text_to_phonemes(["The cat sat on the mat.", "Is it 42?"])
    vocab = PhonemeVocab.build(seqs)
    assert vocab.unk_id not in vocab.encode(seqs[1]) and vocab.decode(vocab.encode(seqs[0])) == seqs[0]
