"""English text normalisation for synthesis: raw text → exactly the words a speech engine will say.

Numbers become words (cardinals, years, ordinals, decades, decimals, percentages), hyphens and
dashes become spaces, punctuation goes and letters are lower-cased. A sentence that cannot be
written unambiguously as words (abbreviations, initials, URLs, non-ASCII letters, other symbols)
is rejected with ``None``, so that the transcript always matches the audio word for word.
"""

from __future__ import annotations

import re

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
_IRREGULAR_ORDINALS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth", "twelve": "twelfth",
}
# Sentence-final words that are abbreviations rather than the end of a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc inc co ltd corp no mt ft approx dept gen gov col rev vol pp ed eds fig al ch op cf ca".split()
)

_TYPOGRAPHY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})
_ALLOWED = re.compile(r"[A-Za-z0-9 .,;:!?'\"()\[\]%&-]*")  # ASCII only: anything else is unspeakable
_URL = re.compile(r"https?:|www\.|\.(?:com|org|net|edu|gov)\b", re.IGNORECASE)
_CITATION = re.compile(r"\d ?:")  # "Nature 3: 237", "10:30", "2:1" have no single reading
_RANGE = re.compile(r"(?<=\d) ?- ?(?=\d)")
_PUNCT = "\"'()[],;:!?."
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_NUMBER = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th|s|%)?")
_VOWEL = re.compile(r"[aeiouy]")


def cardinal(n: int) -> str:
    """123 → "one hundred twenty three" (American style, no "and"); n < 10**12."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + cardinal(n % 100))
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            return f"{cardinal(head)} {name}" + ("" if rest == 0 else " " + cardinal(rest))
    raise ValueError(f"{n} is too large")


def year(n: int) -> str:
    """1995 → "nineteen ninety five", 1905 → "nineteen oh five", 1900 → "nineteen hundred",
    2005 → "two thousand five", 2015 → "twenty fifteen"."""
    if 2000 <= n < 2010 or n % 1000 == 0:
        return cardinal(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{cardinal(high)} hundred"
    return f"{cardinal(high)} {'oh ' if low < 10 else ''}{cardinal(low)}"


def ordinal(n: int) -> str:
    """21 → "twenty first", 100 → "one hundredth"."""
    words = cardinal(n).split()
    last = words[-1]
    words[-1] = _IRREGULAR_ORDINALS.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
    return " ".join(words)


def _is_year(digits: str, n: int) -> bool:
    return len(digits) == 4 and (1100 <= n <= 1999 or 2000 <= n <= 2099)


def _spell_number(token: str) -> str | None:
    m = _NUMBER.fullmatch(token)
    if m is None:
        return None
    digits, fraction, suffix = m.groups()
    n = int(digits.replace(",", ""))
    if n >= 10**12 or (len(digits) > 1 and digits[0] == "0"):
        return None
    plain = "," not in digits and fraction is None
    if suffix in ("st", "nd", "rd", "th"):
        return ordinal(n) if plain else None
    if suffix == "s":  # decades and centuries: 1990s, 60s, 1800s
        if not plain or n % 10 != 0:
            return None
        spoken = year(n) if _is_year(digits, n) else cardinal(n)
        return spoken[:-1] + "ies" if spoken.endswith("y") else spoken + "s"
    if plain and _is_year(digits, n):
        spoken = year(n)
    else:
        spoken = cardinal(n)
        if fraction is not None:
            spoken += " point " + " ".join(_ONES[int(d)] for d in fraction)
    return spoken + (" percent" if suffix == "%" else "")


def normalize_text(raw: str) -> str | None:
    """Lower-case words (a-z and apostrophe) separated by single spaces, or ``None`` when ``raw``
    holds something that cannot be spelled out without guessing."""
    text = raw.translate(_TYPOGRAPHY)
    text = " ".join(text.split())
    if not _ALLOWED.fullmatch(text) or _URL.search(text) or _CITATION.search(text):
        return None
    tokens = _RANGE.sub(" to ", text).replace("-", " ").split()
    words: list[str] = []
    for i, token in enumerate(tokens):
        body = token.rstrip(_PUNCT)
        core = body.lstrip(_PUNCT)
        if not core:
            continue
        if "." in token[len(body):]:
            # Within a sentence a full stop marks an abbreviation ("Mr.", "e.g.", "U.S.").
            if i != len(tokens) - 1 or core.lower() in _ABBREVIATIONS:
                return None
        if core == "&":
            words.append("and")
        elif core[0].isdigit():
            spoken = _spell_number(core)
            if spoken is None:
                return None
            words.append(spoken)
        elif _WORD.fullmatch(core):
            if re.search(r"[A-Z]{2}", core):  # acronyms and Roman numerals: NASA, USA, XIV
                return None
            word = core.lower()
            if (len(word) == 1 and word not in ("a", "i")) or not _VOWEL.search(word):
                return None  # initials and unit abbreviations: "F", "km", "mph"
            words.append(word)
        else:
            return None
    return " ".join(words) or None
