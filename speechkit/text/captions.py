"""How a music caption splits into words, for the caption vocabulary of the text-to-music family
(``models/audiogen/text.py`` builds and trains on it; ``runtime/audiogen.py`` encodes with it)."""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z]+|[0-9]")  # words of letters, digits one by one; everything else separates


def caption_words(caption: str) -> list[str]:
    """'An upbeat tune at 124 BPM!' → ['an', 'upbeat', 'tune', 'at', '1', '2', '4', 'bpm']."""
    return _WORD.findall(caption.lower().replace("'", ""))
