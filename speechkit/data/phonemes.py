"""A Kaldi ``text`` table phonemised with the TTS front end (:mod:`speechkit.text.phonemes`)."""

from __future__ import annotations

from pathlib import Path

from speechkit.data.kaldi import read_table, write_table
from speechkit.text.phonemes import text_to_phonemes


def phonemize_corpus(text_file: str | Path, out_file: str | Path, voice: str = "en-us") -> int:
    """A Kaldi ``text`` file ("utt_id word word ...") → "utt_id p1 p2 ..." with the same keys
    (sorted, an empty transcript gives a bare key); returns the number of utterances."""
    table = read_table(Path(text_file), allow_empty_value=True)
    phonemes = text_to_phonemes(list(table.values()), voice)
    write_table(Path(out_file), {key: " ".join(p) for key, p in zip(table, phonemes)})
    return len(table)
