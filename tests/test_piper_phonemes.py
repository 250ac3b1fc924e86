"""speechkit's phonemiser for Piper voices: text is cut into clauses where espeak-ng cuts it, each
clause's IPA comes from the espeak-ng program, and the ids follow Piper's layout (^ _ s _ s _ $ per
sentence, marks kept, NFD code points, unknown symbols dropped). The clause cases were checked
against piper-tts 1.8.0, whose ids this module reproduces exactly given the same espeak-ng."""

from __future__ import annotations

import shutil

import pytest

from speechkit.errors import SpeechkitError
from speechkit.text import piper_phonemes
from speechkit.text.piper_phonemes import Clause, clause_ipa, phoneme_ids, sentence_ids, sentence_symbols, split_clauses

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the espeak-ng program")

SYMBOLS = "_^$ !',-.:;?abcdefhijklmnopqrstuvwxyzæçðøŋœɐɑɒɔəɚɛɜɡɪɹɾʃʊʌʒʔʲˈˌːθᵻ"
ID_MAP = {s: [i] for i, s in enumerate(SYMBOLS)}
CONFIG = {"espeak": {"voice": "en-us"}, "phoneme_id_map": ID_MAP}


def marks(text: str) -> list[tuple[str, bool]]:
    return [(c.mark, c.ends_sentence) for c in split_clauses(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Hello, world; this is: a test. Is it? Yes! Mr. Smith went",
            [(",", False), (";", False), (":", False), (".", True), ("?", True), ("!", True), (".", True), ("", True)],
        ),
        ("e.g. the cat. The dog", [(".", True), ("", True)]),  # "." before a lower-case word: an abbreviation
        ("Wait — what?! No...", [(";", False), ("?", True), ("", False)]),  # dash, mark run, ellipsis
        ("It costs 3.50, ok", [(",", False), ("", True)]),  # no space after the "." of a number
        ("U.S.A.'s flag", [("", True)]),
        ("Hello.\n\nWorld", [("", True), ("", True)]),  # a blank line: a paragraph, its mark is lost
        ("one\ntwo", [("", True)]),
        ("one\n\ntwo", [("", True), ("", True)]),
        ("\n\nHello", [("", True), ("", True)]),  # an empty first sentence: Piper keeps it too
        ("a... b", [("", False), ("", True)]),
        ("", []),
        ("  \n ", []),
    ],
)
def test_clauses_are_cut_where_espeak_ng_cuts_them(text, expected):
    assert marks(text) == expected


def test_a_clause_keeps_its_mark_and_what_follows_starts_the_next():
    clauses = split_clauses('Hi (there.) Bye,  now')
    assert [c.text for c in clauses] == ["Hi (there.", ") Bye,", "now"]


def test_sentence_ids_are_piper_layout():
    clauses = [Clause("hi,", ",", False), Clause("so?", "?", True), Clause("ok", "", True)]
    sentences = sentence_symbols(clauses, ["hˈaɪ", "sˈoʊ", "ã"])
    assert sentences == [list("hˈaɪ, sˈoʊ?"), ["a", "\u0303"]]  # a space after ","; NFD splits "ã"
    ids = sentence_ids(sentences[0], ID_MAP)
    pad = ID_MAP["_"][0]
    assert ids[:2] == [ID_MAP["^"][0], pad] and ids[-1] == ID_MAP["$"][0]
    assert ids[1:-1:2] == [pad] * ((len(ids) - 1) // 2)  # "_" after every symbol, "^" included
    assert [SYMBOLS[i] for i in ids[2:-1:2]] == sentences[0]
    # "\u0303" is not in the map: dropped with its pad; an entry may hold several ids
    assert sentence_ids(sentences[1], {**ID_MAP, "a": [7, 8]}) == [1, 0, 7, 8, 0, 2]


def test_an_empty_last_sentence_is_dropped_and_clusters_are_merged():
    clauses = [Clause("hi.", ".", True), Clause(")", "", True)]
    assert sentence_symbols(clauses, ["hˈaɪ", ""]) == [list("hˈaɪ.")]
    merged = sentence_symbols(clauses, ["hˈaɪ", ""], {("a", "ɪ")})
    assert merged == [["h", "ˈ", "aɪ", "."]]


def test_espeak_output_lines_up_with_clauses_and_flags_go(monkeypatch):
    # espeak-ng prints one empty line for a clause it cannot say, and several lines for a clause
    # it cut itself; each clause's group ends at the empty line of the blank line after it.
    assert piper_phonemes._parse_groups(["ab", "cd", "", "", "", "ef", ""], 3) == ["abcd", "", "ef"]
    assert piper_phonemes._parse_groups(["ab", "cd", ""], 2) is None
    monkeypatch.setattr(piper_phonemes, "_espeak", lambda lines, voice: ["(fr)bɔ̃ʒˈuʁ(en)", ""])
    assert clause_ipa(["bonjour"], "en-us") == ["bɔ̃ʒˈuʁ"]


@needs_espeak
def test_one_process_for_many_clauses_gives_each_clause_alone():
    clauses = ["Hello,", ")", "", "the museum opened.", "Is it?"]
    together = clause_ipa(clauses, "en-us")
    assert together == [clause_ipa([c], "en-us")[0] for c in clauses]
    assert together[1] == together[2] == "" and together[0].startswith("h") and " " in together[3]


@needs_espeak
def test_phoneme_ids_of_texts():
    texts = ["Hello there, friend. Bye", "", "the museum opened a new hall"]
    batch = phoneme_ids(texts, CONFIG)
    assert batch == [phoneme_ids([t], CONFIG)[0] for t in texts]
    first, empty, _ = batch
    assert len(first) == 2 and empty == []
    ipa = clause_ipa(["Hello there,", "friend.", "Bye"], "en-us")
    decoded = ["".join(SYMBOLS[i] for i in ids if i != 0) for ids in first]
    expected = [f"^{ipa[0]}, {ipa[1]}.$", f"^{ipa[2]}$"]
    assert decoded == ["".join(c for c in s if c in ID_MAP) for s in expected]


def test_text_voices_read_code_points_and_other_kinds_are_refused():
    h, e = ID_MAP["h"][0], ID_MAP["e"][0]  # "é" is "e" and a combining acute accent, not in the map
    assert phoneme_ids(["hé"], {**CONFIG, "phoneme_type": "text"}) == [[[1, 0, h, 0, e, 0, 2]]]
    with pytest.raises(SpeechkitError, match="phoneme_type 'pinyin' are not supported"):
        phoneme_ids(["ni hao"], {**CONFIG, "phoneme_type": "pinyin"})
