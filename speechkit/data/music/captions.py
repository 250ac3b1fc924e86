"""Captions of the music corpus, made from a piece's labels alone: style, mood, key, tempo (whole
bpm), the instruments and whether there are drums, in one of several phrasings drawn by a random
generator of the caller's, so a model sees varied wording for the same facts.
"""

from __future__ import annotations

import random

MOOD_WORDS = {
    "calm": ("mellow", "calm", "relaxed", "gentle"),
    "moderate": ("steady", "mid-tempo", "easygoing"),
    "upbeat": ("upbeat", "energetic", "lively", "driving"),
}
STYLE_PHRASES = {
    "pop": ("pop song", "pop tune"),
    "rock": ("rock song", "rock track"),
    "jazz": ("jazz tune", "jazz piece"),
    "blues": ("blues", "blues tune"),
    "folk": ("folk tune", "folk song"),
    "ambient": ("ambient piece", "ambient track"),
    "electronic": ("electronic track", "electronic dance track"),
    "waltz": ("waltz",),
}
TEMPLATES = (
    "{a_mood} {style} in {key} at {bpm} bpm with {instruments}",
    "{mood} {style}, {key}, {bpm} bpm: {instruments}",
    "{style} in {key} at {bpm} bpm, {roles}",
    "{bpm} bpm {mood} {style} in {key} featuring {instruments}",
    "{a_style} in the key of {key}, {mood} at {bpm} bpm, played on {instruments}",
)


def _article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _roles(labels: dict) -> str:
    """``flute melody over chords on synth pad with synth bass and drums``: who plays what."""
    by_role = {i["role"]: i["name"] for i in labels["instruments"]}
    chords = f"chords on {by_role['chords']}"
    text = f"{by_role['melody']} melody over {chords}" if "melody" in by_role else chords
    extra = [by_role["bass"]] if "bass" in by_role else []
    extra += ["drums"] if labels["drums"] else []
    text += f" with {_join(extra)}" if extra else ""
    return text + ("" if labels["drums"] else ", no drums")


def make_caption(labels: dict, rng: random.Random) -> str:
    """One caption of ``labels`` (as ``compose_piece`` writes them), phrasing drawn from ``rng``."""
    names = [i["name"] for i in labels["instruments"]]
    instruments = _join(names + ["drums"]) if labels["drums"] else _join(names) + ", no drums"
    mood = rng.choice(MOOD_WORDS[labels["mood"]])
    style = rng.choice(STYLE_PHRASES[labels["style"]])
    fields = {
        "mood": mood,
        "a_mood": _article(mood),
        "style": style,
        "a_style": _article(style),
        "key": labels["key"],
        "bpm": round(labels["tempo"]),
        "instruments": instruments,
        "roles": _roles(labels),
    }
    return rng.choice(TEMPLATES).format(**fields)
