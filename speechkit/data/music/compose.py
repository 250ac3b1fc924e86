"""Random but musical pieces for the text-to-music corpus: a style, a key, a diatonic chord
progression and up to four parts (a phrase-built melody, chords, bass on the roots, General-MIDI
drums), as a ``pretty_midi.PrettyMIDI`` and the labels its caption is made from.

Every pitched note lies on the labelled key's major or natural-minor scale and every onset on a
grid of twelve steps a beat (sixteenths and swung eighths alike), so what a caption names is
regular enough for a small model to learn. The style sets the tempo range, progressions,
instruments, accompaniment and drum pattern, so the style word in a caption carries signal.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from speechkit.data.music import require

if TYPE_CHECKING:
    import pretty_midi

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}  # minor: natural (aeolian)
ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII")
STEPS_PER_BEAT = 12  # sixteenths are 3 steps, swung eighths 8 + 4
MIDI_RESOLUTION = 480  # ticks per beat, a multiple of STEPS_PER_BEAT: every onset is a whole tick
RELEASE_SECONDS = 0.5  # no note sounds in a clip's last half second, so the render ends on releases
MOODS = ((96, "calm"), (124, "moderate"), (math.inf, "upbeat"))  # (tempo below, mood)
CHORD_RANGE = (52, 74)  # MIDI notes of the chord voicings
BASS_ROOTS = 33  # bass roots lie in A1..G#2 (33..44); fifths, octaves and walking steps around them
BASS_RANGE = (28, 55)
ROLES = ("melody", "chords", "bass")
# The mix: each role's level against the melody's, in dB, set with the expression controller (CC 11)
# after the channel volume (CC 7) has evened out the instruments' loudness. tinysoundfont's gain is
# (volume x expression / 127^2) cubed, i.e. 60 log10(value / 127) dB.
ROLE_LEVELS_DB = {"melody": 0.0, "chords": -5.0, "bass": -8.0, "drums": -9.0}

Note = tuple[int, int, int, int]  # (MIDI pitch, velocity, start step, end step)


@dataclass(frozen=True)
class Instrument:
    name: str  # the word a caption uses
    program: int  # General MIDI, 0-based
    low: int  # the melody's range, MIDI notes
    high: int
    loudness: float  # dB above the others in the same role at the same velocities (TimGM6mb, measured)


INSTRUMENTS = (
    Instrument("piano", 0, 60, 84, -3.9),
    Instrument("electric piano", 4, 60, 84, 2.0),
    Instrument("organ", 16, 60, 84, 3.6),
    Instrument("acoustic guitar", 25, 55, 79, -1.1),
    Instrument("electric guitar", 27, 57, 81, -1.5),
    Instrument("overdriven guitar", 29, 55, 79, 0.3),
    Instrument("acoustic bass", 32, *BASS_RANGE, -0.5),
    Instrument("electric bass", 33, *BASS_RANGE, 2.1),
    Instrument("synth bass", 38, *BASS_RANGE, 1.3),
    Instrument("violin", 40, 67, 91, 7.9),
    Instrument("strings", 48, 60, 84, -1.4),
    Instrument("trumpet", 56, 60, 82, 6.5),
    Instrument("saxophone", 65, 58, 82, 9.5),
    Instrument("flute", 73, 67, 91, 11.5),
    Instrument("synth lead", 81, 60, 84, 0.2),
    Instrument("synth pad", 89, 55, 79, 6.2),
)
BY_NAME = {i.name: i for i in INSTRUMENTS}

# General MIDI percussion keys (channel 10)
KICK, SIDE_STICK, SNARE, CLAP, CLOSED_HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE, TAMBOURINE = 36, 37, 38, 39, 42, 44, 46, 49, 51, 54


@dataclass(frozen=True)
class DrumPattern:
    meter: int  # beats per bar
    hits: tuple[tuple[int, float, int], ...]  # (percussion key, beat within the bar, velocity)
    crash: bool = False  # a crash cymbal on the first downbeat


def _hits(key: int, beats: tuple[float, ...], velocity: int) -> tuple[tuple[int, float, int], ...]:
    return tuple((key, b, velocity) for b in beats)


_ON = (0, 1, 2, 3)
_OFF = (0.5, 1.5, 2.5, 3.5)
_SWUNG = (2 / 3, 5 / 3, 8 / 3, 11 / 3)  # the swung "and"s: two thirds into each beat
DRUM_PATTERNS = {
    "pop": DrumPattern(4, (*_hits(KICK, (0, 2, 2.5), 100), *_hits(SNARE, (1, 3), 95),
                           *_hits(CLOSED_HAT, _ON, 75), *_hits(CLOSED_HAT, _OFF, 55)), crash=True),
    "half-time": DrumPattern(4, (*_hits(KICK, (0, 1.5), 100), *_hits(SNARE, (2,), 95),
                                 *_hits(CLOSED_HAT, _ON, 70), *_hits(CLOSED_HAT, _OFF, 50))),
    "rock": DrumPattern(4, (*_hits(KICK, (0, 1.5, 2, 2.5), 110), *_hits(SNARE, (1, 3), 110),
                            *_hits(CLOSED_HAT, _ON, 90), *_hits(CLOSED_HAT, _OFF, 75)), crash=True),
    "four-on-the-floor": DrumPattern(4, (*_hits(KICK, _ON, 110), *_hits(CLAP, (1, 3), 90),
                                         *_hits(OPEN_HAT, _OFF, 70), *_hits(CLOSED_HAT, _ON, 45)), crash=True),
    "swing": DrumPattern(4, (*_hits(RIDE, _ON, 80), *_hits(RIDE, (5 / 3, 11 / 3), 60),
                             *_hits(PEDAL_HAT, (1, 3), 70), *_hits(KICK, (0,), 55))),
    "shuffle": DrumPattern(4, (*_hits(KICK, (0, 2), 95), *_hits(SNARE, (1, 3), 90),
                               *_hits(CLOSED_HAT, _ON, 75), *_hits(CLOSED_HAT, _SWUNG, 55))),
    "folk": DrumPattern(4, (*_hits(KICK, (0, 2), 85), *_hits(SIDE_STICK, (1, 3), 80),
                            *_hits(TAMBOURINE, _OFF, 55))),
    "waltz": DrumPattern(3, (*_hits(KICK, (0,), 85), *_hits(CLOSED_HAT, (1, 2), 60))),
}


@dataclass(frozen=True)
class Style:
    name: str
    tempo: tuple[int, int]  # bpm, both ends included
    meter: int  # beats per bar
    progressions: dict[str, tuple[str, ...]]  # mode → Roman-numeral progressions ("I-V-vi-IV")
    minor_share: float
    melody: tuple[str, ...]  # instrument names each role draws from
    chords: tuple[str, ...]
    bass: tuple[str, ...]
    comping: tuple[str, ...]  # how the chords are played (see _comp)
    bass_lines: tuple[str, ...]  # how the bass moves (see _bass_line)
    drum_patterns: tuple[str, ...]
    drums_share: float
    beats_per_chord: tuple[int, ...]
    density: float  # 0..1: how often a melody beat splits into eighths
    melody_share: float = 1.0
    bass_share: float = 1.0
    sevenths: bool = False
    swing: bool = False


_BLUES = "I-I-I-I-IV-IV-I-I-V-IV-I-V"
_MINOR_BLUES = "i-i-i-i-iv-iv-i-i-v-iv-i-v"
STYLES = (
    Style("pop", (88, 128), 4,
          {"major": ("I-V-vi-IV", "vi-IV-I-V", "I-vi-IV-V", "I-IV-vi-V"),
           "minor": ("i-VI-III-VII", "i-VII-VI-VII", "i-iv-VI-v", "VI-VII-i-i")}, 0.35,
          melody=("piano", "electric piano", "synth lead", "flute", "electric guitar"),
          chords=("piano", "electric piano", "electric guitar", "strings", "synth pad"),
          bass=("electric bass", "synth bass"), comping=("quarters", "half", "eighths", "arpeggio"),
          bass_lines=("root-fifth", "eighths"), drum_patterns=("pop", "half-time"), drums_share=0.9,
          beats_per_chord=(4, 4, 2), density=0.45),
    Style("rock", (108, 160), 4,
          {"major": ("I-IV-V-IV", "I-IV-V-I", "vi-IV-I-V", _BLUES),
           "minor": ("i-VII-VI-VII", "i-VI-III-VII", "i-iv-VII-i", "i-III-VII-iv")}, 0.4,
          melody=("overdriven guitar", "electric guitar", "synth lead", "organ"),
          chords=("overdriven guitar", "electric guitar", "organ", "piano"),
          bass=("electric bass",), comping=("eighths", "quarters"), bass_lines=("eighths", "root-fifth"),
          drum_patterns=("rock",), drums_share=1.0, beats_per_chord=(4, 2), density=0.5),
    Style("jazz", (80, 150), 4,
          {"major": ("ii-V-I-I", "I-vi-ii-V", "iii-vi-ii-V", "I-IV-iii-vi"),
           "minor": ("ii°-v-i-i", "i-iv-v-i", "i-VI-ii°-v")}, 0.3,
          melody=("saxophone", "trumpet", "piano", "flute"), chords=("piano", "electric piano", "electric guitar"),
          bass=("acoustic bass",), comping=("charleston", "half"), bass_lines=("walking",),
          drum_patterns=("swing",), drums_share=0.85, beats_per_chord=(4, 2), density=0.55,
          sevenths=True, swing=True),
    Style("blues", (70, 130), 4, {"major": (_BLUES, "I-IV-I-I-IV-IV-I-I-V-IV-I-V"), "minor": (_MINOR_BLUES,)}, 0.3,
          melody=("saxophone", "electric guitar", "piano", "trumpet"), chords=("piano", "organ", "electric guitar"),
          bass=("electric bass", "acoustic bass"), comping=("quarters", "half"), bass_lines=("walking", "root-fifth"),
          drum_patterns=("shuffle",), drums_share=0.9, beats_per_chord=(4, 2), density=0.45, swing=True),
    Style("folk", (80, 124), 4,
          {"major": ("I-IV-V-I", "I-IV-I-V", "I-vi-IV-V", "I-V-vi-IV"),
           "minor": ("i-iv-v-i", "i-VII-VI-VII", "i-III-VII-i")}, 0.35,
          melody=("violin", "flute"), chords=("acoustic guitar", "piano"), bass=("acoustic bass",),
          comping=("arpeggio", "quarters"), bass_lines=("root-fifth",), drum_patterns=("folk",),
          drums_share=0.5, beats_per_chord=(4,), density=0.4),
    Style("ambient", (70, 96), 4,
          {"major": ("I-IV-I-IV", "I-vi-IV-I", "IV-I-V-vi", "I-iii-IV-I"),
           "minor": ("i-VI-i-VI", "i-iv-VI-v", "i-VI-III-VII")}, 0.5,
          melody=("flute", "piano", "electric piano"), chords=("synth pad", "strings"), bass=("synth bass",),
          comping=("sustain",), bass_lines=("root",), drum_patterns=(), drums_share=0.0,
          beats_per_chord=(4, 8), density=0.1, melody_share=0.7, bass_share=0.5),
    Style("electronic", (118, 140), 4,
          {"major": ("vi-IV-I-V", "I-V-vi-IV", "IV-V-vi-vi"),
           "minor": ("i-VI-III-VII", "i-VII-VI-VII", "i-iv-i-VI")}, 0.6,
          melody=("synth lead", "piano"), chords=("synth pad", "electric piano"), bass=("synth bass",),
          comping=("offbeat", "sustain"), bass_lines=("octave", "eighths"), drum_patterns=("four-on-the-floor",),
          drums_share=1.0, beats_per_chord=(4, 8), density=0.5),
    Style("waltz", (84, 156), 3,
          {"major": ("I-IV-V-I", "I-V-V-I", "I-ii-V-I", "I-vi-IV-V"), "minor": ("i-iv-v-i", "i-VI-iv-v")}, 0.3,
          melody=("violin", "flute", "piano"), chords=("piano", "strings", "acoustic guitar"), bass=("acoustic bass",),
          comping=("waltz",), bass_lines=("waltz",), drum_patterns=("waltz",), drums_share=0.3,
          beats_per_chord=(3, 6), density=0.35),
)
BY_STYLE = {s.name: s for s in STYLES}


def numeral_degree(numeral: str) -> int:
    """The scale degree (0 = tonic) of a Roman numeral such as ``vi``, ``ii°`` or ``V7``."""
    letters = numeral.rstrip("°ø7maj").upper()
    return ROMAN.index(letters)


def chord_symbol(degree: int, mode: str, seventh: bool = False) -> str:
    """The Roman numeral of the diatonic chord on ``degree``: upper case major, lower case minor,
    ``°`` diminished; with ``seventh``: ``maj7``, ``7`` (dominant or minor seventh) or ``ø7``."""
    scale = SCALES[mode]
    third, fifth, sev = ((scale[(degree + k) % 7] - scale[degree]) % 12 for k in (2, 4, 6))
    numeral = ROMAN[degree] if third == 4 else ROMAN[degree].lower()
    if fifth == 6:
        return numeral + ("ø7" if seventh else "°")
    if not seventh:
        return numeral
    return numeral + ("maj7" if sev == 11 else "7")


def scale_pitch(base: int, mode: str, degree: int) -> int:
    """The MIDI note of scale ``degree`` (any integer) counted from ``base``, a note on the tonic."""
    return base + 12 * (degree // 7) + SCALES[mode][degree % 7]


def _tonic_at_or_above(tonic: int, low: int) -> int:
    return low + (tonic - low) % 12


def _is_chord_tone(degree: int, root: int, seventh: bool) -> bool:
    return (degree - root) % 7 in ((0, 2, 4, 6) if seventh else (0, 2, 4))


def _nearest_chord_tone(degree: int, root: int, lo: int, hi: int, seventh: bool = False) -> int:
    candidates = [d for d in range(degree - 3, degree + 4) if lo <= d <= hi and _is_chord_tone(d, root, seventh)]
    return min(candidates, key=lambda d: (abs(d - degree), d))


@dataclass(frozen=True)
class Span:
    """One chord: [start, end) in steps, its root degree."""
    start: int
    end: int
    root: int


def _bar_rhythm(rng: random.Random, meter: int, density: float, swing: bool) -> list[tuple[int, int]]:
    """One bar of melody rhythm: (onset, length) in steps from the bar's start; rests are gaps."""
    s = STEPS_PER_BEAT
    eighths = ((0, 8), (8, 4)) if swing else ((0, 6), (6, 6))
    cells = {
        "rest": ((), 0.08),
        "quarter": (((0, s),), (1 - density) * 0.6),
        "half": (((0, 2 * s),), (1 - density) * 0.3),
        "eighths": (eighths, density * 0.8),
        "pickup": (eighths[1:], density * 0.1),
        "sixteenths": (((0, 3), (3, 3), (6, 3), (9, 3)), 0.0 if swing else density * 0.05),
        "dotted": (((0, 9), (9, 3)), 0.0 if swing else density * 0.05),
    }
    rhythm, beat = [], 0
    while beat < meter:
        names = [n for n in cells if n != "half" or (beat % 2 == 0 and beat + 1 < meter)]
        name = rng.choices(names, [cells[n][1] for n in names])[0]
        rhythm += [(beat * s + on, length) for on, length in cells[name][0]]
        beat += 2 if name == "half" else 1
    return rhythm or [(0, s)]


def _cadence(rhythm: list[tuple[int, int]], meter: int) -> list[tuple[int, int]]:
    """A phrase's last bar: the motif's first beat, then one note held to the bar's end."""
    head = [(on, length) for on, length in rhythm if on + length <= STEPS_PER_BEAT]
    return head + [(STEPS_PER_BEAT, (meter - 1) * STEPS_PER_BEAT)]


def _walk(rng: random.Random, degree: int, lo: int, hi: int) -> int:
    step = rng.choices((-1, 1, -2, 2, 0, -3, 3), (0.32, 0.32, 0.12, 0.12, 0.08, 0.02, 0.02))[0]
    centre = (lo + hi) // 2
    if (degree - centre) * step > 0 and abs(degree - centre) > 3 and rng.random() < 0.5:
        step = -step  # lean back towards the middle of the range
    nxt = degree + step
    return nxt if lo <= nxt <= hi else degree - step


def _chord_at(spans: list[Span], step: int) -> Span:
    return spans[min(step // (spans[0].end - spans[0].start), len(spans) - 1)]


def _melody(rng: random.Random, style: Style, spans: list[Span], bars: int, mode: str, base: int,
            lo: int, hi: int) -> list[Note]:
    """Four-bar phrases: a motif (A), its contour again from the next chord (A'), a new bar (B)
    and a cadence ending on a root; chord tones on every downbeat and chord change, mostly steps
    in between. Degrees are counted from ``base`` and kept in [lo, hi]."""
    bar_steps = style.meter * STEPS_PER_BEAT
    degree = _nearest_chord_tone((lo + hi) // 2, spans[0].root, lo, hi)
    notes: list[Note] = []
    rhythm_a: list[tuple[int, int]] = []
    motif: list[int] = []  # the intervals between A's notes
    for phrase in range(0, bars, 4):
        if not rhythm_a or rng.random() < 0.5:
            rhythm_a = _bar_rhythm(rng, style.meter, style.density, style.swing)
        plan = (rhythm_a, rhythm_a, _bar_rhythm(rng, style.meter, style.density, style.swing),
                _cadence(rhythm_a, style.meter))
        for i, rhythm in enumerate(plan[: bars - phrase]):
            bar_start = (phrase + i) * bar_steps
            intervals = []
            for k, (on, length) in enumerate(rhythm):
                start = bar_start + on
                chord = _chord_at(spans, start)
                prev = degree
                if i == 1 and 0 < k <= len(motif):
                    degree = min(max(degree + motif[k - 1], lo), hi)
                else:
                    degree = _walk(rng, degree, lo, hi)
                if on == 0 or start == chord.start:
                    degree = _nearest_chord_tone(degree, chord.root, lo, hi, style.sevenths)
                if i == 3 and k == len(rhythm) - 1:
                    degree = min((d for d in range(lo, hi + 1) if (d - chord.root) % 7 == 0),
                                 key=lambda d: (abs(d - degree), d))
                intervals.append(degree - prev)
                accent = 8 if on % STEPS_PER_BEAT == 0 else 0
                notes.append((scale_pitch(base, mode, degree), 88 + accent + rng.randint(-5, 5), start, start + length))
            if i == 0:
                motif = intervals[1:]
    return notes


def _voicing(pcs: list[int], previous: list[int] | None) -> list[int]:
    """A close-position voicing of the pitch classes ``pcs`` (root first) inside CHORD_RANGE,
    the inversion nearest the previous chord (smooth voice leading)."""
    lo, hi = CHORD_RANGE
    candidates = []
    for inv in range(len(pcs)):
        order = pcs[inv:] + pcs[:inv]
        for bottom in range(lo, lo + 12):
            if bottom % 12 != order[0]:
                continue
            voicing = [bottom]
            for pc in order[1:]:
                voicing.append(voicing[-1] + (pc - voicing[-1]) % 12)
            if voicing[-1] <= hi:
                candidates.append(voicing)
    if previous is None:
        return min(candidates, key=lambda v: (abs(sum(v) / len(v) - (lo + hi) / 2), v))
    return min(candidates, key=lambda v: (sum(abs(a - b) for a, b in zip(v, sorted(previous))), v))


def _comp(pattern: str, span: Span, pitches: list[int], style: Style, rng: random.Random) -> list[Note]:
    """The chord part over one span, played as ``pattern``."""
    s, length = STEPS_PER_BEAT, span.end - span.start
    beats = length // s
    eighth = 8 if style.swing else 6
    if pattern == "sustain":
        hits = [(0, length, None)]
    elif pattern == "half":
        hits = [(b * s, 2 * s - 1, None) for b in range(0, beats, 2)]
    elif pattern == "quarters":
        hits = [(b * s, s - 2, None) for b in range(beats)]
    elif pattern == "eighths":
        hits = [(b * s + o, 5, None) for b in range(beats) for o in (0, 6)]
    elif pattern == "offbeat":
        hits = [(b * s + 6, 4, None) for b in range(beats)]
    elif pattern == "charleston":  # beat one and the (swung) and of two, each four beats
        hits = [(b * s + o, d, None) for b in range(0, beats, 4) for o, d in ((0, s), (s + eighth, s)) if b * s + o < length]
    elif pattern == "waltz":  # the "pah pah" on beats two and three of each bar
        hits = [(b * s, s - 2, None) for b in range(beats) if b % 3]
    elif pattern == "arpeggio":  # eighths up and down the voicing, each left to ring a beat
        order = (0, 1, 2, 1) if len(pitches) == 3 else (0, 1, 2, 3)
        hits = [(b * s + o, s, order[(2 * b + j) % len(order)]) for b in range(beats) for j, o in enumerate((0, eighth))]
    else:
        raise ValueError(f"unknown comping pattern {pattern!r}")
    notes = []
    for on, dur, which in hits:
        velocity = (72 if on % (2 * s) == 0 else 62) + rng.randint(-4, 4)
        end = min(span.start + on + dur, span.end)
        for k, pitch in enumerate(pitches):
            if which is None or which == k:
                notes.append((pitch, velocity, span.start + on, end))
    return notes


def _bass_degree(root: int, base: int, mode: str) -> int:
    """The degree of the chord root placed in A1..G#2 (``base`` is the tonic's note there)."""
    return root if scale_pitch(base, mode, root) < BASS_ROOTS + 12 else root - 7


def _bass_line(line: str, span: Span, following: Span, style: Style, base: int, mode: str,
               rng: random.Random) -> list[Note]:
    """The bass over one span: always the chord's root on its first beat."""
    s, length = STEPS_PER_BEAT, span.end - span.start
    beats = length // s
    root = _bass_degree(span.root, base, mode)

    def pitch(degree: int) -> int:
        return scale_pitch(base, mode, degree)

    if line == "root":
        hits = [(0, length, pitch(root))]
    elif line == "root-fifth":
        hits = [(b * s, 2 * s - 1, pitch(root if b % 4 == 0 else root + 4)) for b in range(0, beats, 2)]
    elif line == "eighths":
        hits = [(b * s + o, 5, pitch(root)) for b in range(beats) for o in (0, 6)]
    elif line == "octave":
        hits = [(b * s + o, 5, pitch(root) + (12 if o else 0)) for b in range(beats) for o in (0, 6)]
    elif line == "waltz":
        hits = [(b * s, s, pitch(root if b % 6 == 0 else root + 4)) for b in range(0, beats, 3)]
    elif line == "walking":  # quarter notes stepping through the scale towards the next root
        target = _bass_degree(following.root, base, mode)
        target = min((target - 7, target, target + 7), key=lambda t: abs(t - root))
        degrees, d = [root], root
        for b in range(1, beats):
            want = (target - d) / (beats - b + 1)  # the step per beat that lands on the next root
            if abs(want) < 0.5:  # at the target already: step off it, to come back as an approach note
                step = rng.choice((-1, 1))
            else:
                step = max(-2, min(2, round(want))) or (1 if want > 0 else -1)
            if not BASS_RANGE[0] <= pitch(d + step) <= BASS_RANGE[1]:
                step = -step
            d += step
            degrees.append(d)
        hits = [(b * s, s - 1, pitch(deg)) for b, deg in enumerate(degrees)]
    else:
        raise ValueError(f"unknown bass line {line!r}")
    return [(p, 90 + (6 if on % (2 * s) == 0 else 0) + rng.randint(-5, 5), span.start + on, span.start + on + dur)
            for on, dur, p in hits]


def _drums(pattern: DrumPattern, bars: int, rng: random.Random) -> list[Note]:
    notes = []
    bar_steps = pattern.meter * STEPS_PER_BEAT
    for bar in range(bars):
        hits = pattern.hits + (((CRASH, 0, 90),) if pattern.crash and bar == 0 else ())
        for key, beat, velocity in hits:
            start = bar * bar_steps + round(beat * STEPS_PER_BEAT)
            notes.append((key, max(1, min(127, velocity + rng.randint(-6, 6))), start, start + 3))
    return notes


def _cut(notes: list[Note], limit: int) -> list[Note]:
    """Drop what starts at or after ``limit`` and end the rest by it."""
    return sorted(((p, v, a, min(b, limit)) for p, v, a, b in notes if a < limit), key=lambda n: (n[2], n[0]))


def compose_piece(seed: int, index: int, seconds: float) -> tuple[pretty_midi.PrettyMIDI, dict]:
    """Piece ``index`` of the corpus of ``seed``: a ``PrettyMIDI`` whose notes all end
    ``RELEASE_SECONDS`` before ``seconds``, and its labels (tempo, key, style, progression,
    instruments by role, drums). A pure function of (seed, index, seconds)."""
    rng = random.Random(f"speechkit-music-{seed}-{index}")
    style = rng.choice(STYLES)
    mode = "minor" if rng.random() < style.minor_share else "major"
    tonic = rng.randrange(12)
    tempo = rng.randint(*style.tempo)
    degrees = [numeral_degree(n) for n in rng.choice(style.progressions[mode]).split("-")]
    beats_per_chord = rng.choice(style.beats_per_chord)
    wanted = {"melody": rng.random() < style.melody_share, "chords": True, "bass": rng.random() < style.bass_share}
    chosen: dict[str, Instrument] = {}
    for role in ROLES:
        options = [n for n in getattr(style, role) if n not in {i.name for i in chosen.values()}]
        if wanted[role] and options:
            chosen[role] = BY_NAME[rng.choice(options)]
    drum_name = rng.choice(style.drum_patterns) if style.drum_patterns and rng.random() < style.drums_share else None
    comping, bass_line = rng.choice(style.comping), rng.choice(style.bass_lines)

    steps_per_second = tempo * STEPS_PER_BEAT / 60.0
    bar_steps = style.meter * STEPS_PER_BEAT
    bars = math.ceil(seconds * steps_per_second / bar_steps)
    chord_steps = beats_per_chord * STEPS_PER_BEAT
    spans = [Span(k * chord_steps, (k + 1) * chord_steps, degrees[k % len(degrees)])
             for k in range(math.ceil(bars * bar_steps / chord_steps) + 1)]
    parts: dict[str, list[Note]] = {}
    if "melody" in chosen:
        inst = chosen["melody"]
        base = _tonic_at_or_above(tonic, inst.low)
        lo = next(d for d in range(-7, 1) if scale_pitch(base, mode, d) >= inst.low)
        hi = max(d for d in range(lo, lo + 16) if scale_pitch(base, mode, d) <= inst.high)
        lo += max(0, hi - lo - 11) // 2  # at most twelve degrees (an octave and a half), centred
        hi = min(hi, lo + 11)
        parts["melody"] = _melody(rng, style, spans, bars, mode, base, lo, hi)
    chord_notes, voicing = [], None
    for span in spans:
        pcs = [(tonic + SCALES[mode][(span.root + k) % 7]) % 12 for k in ((0, 2, 4, 6) if style.sevenths else (0, 2, 4))]
        voicing = _voicing(pcs, voicing)
        chord_notes += _comp(comping, span, voicing, style, rng)
    parts["chords"] = chord_notes
    if "bass" in chosen:
        base = _tonic_at_or_above(tonic, BASS_ROOTS)
        parts["bass"] = [n for a, b in zip(spans, spans[1:]) for n in _bass_line(bass_line, a, b, style, base, mode, rng)]
    if drum_name:
        parts["drums"] = _drums(DRUM_PATTERNS[drum_name], bars, rng)
    limit = math.floor((seconds - RELEASE_SECONDS) * steps_per_second)
    parts = {role: _cut(notes, limit) for role, notes in parts.items()}

    labels = {
        "seconds": float(seconds),
        "tempo": float(tempo),
        "key": f"{NOTE_NAMES[tonic]} {mode}",
        "tonic": tonic,
        "mode": mode,
        "style": style.name,
        "mood": next(mood for below, mood in MOODS if tempo < below),
        "time_signature": f"{style.meter}/4",
        "progression": [chord_symbol(d, mode, style.sevenths) for d in degrees],
        "beats_per_chord": beats_per_chord,
        "instruments": [{"program": i.program, "name": i.name, "role": role} for role, i in chosen.items()],
        "drums": drum_name is not None,
        "drum_pattern": drum_name,
        "comping": comping,
        "bass_line": bass_line if "bass" in chosen else None,
        "swing": style.swing,
        "seed": seed,
        "index": index,
    }
    return _to_midi(parts, chosen, tempo, style.meter, tonic, mode), labels


def _controller_value(db: float) -> int:
    """The CC 7 or CC 11 value that scales tinysoundfont's output by ``db`` (<= 0)."""
    return max(1, min(127, round(127 * 10 ** (db / 60))))


def _to_midi(parts: dict[str, list[Note]], chosen: dict[str, Instrument], tempo: int, meter: int,
             tonic: int, mode: str) -> pretty_midi.PrettyMIDI:
    """One track per role, named after it (``melody``, ``chords``, ``bass``, ``drums``)."""
    pm_lib = require("pretty_midi")
    pm = pm_lib.PrettyMIDI(resolution=MIDI_RESOLUTION, initial_tempo=float(tempo))
    pm.time_signature_changes.append(pm_lib.TimeSignature(meter, 4, 0.0))
    pm.key_signature_changes.append(pm_lib.KeySignature(tonic + (12 if mode == "minor" else 0), 0.0))
    seconds_per_step = 60.0 / (tempo * STEPS_PER_BEAT)
    quietest = min(i.loudness for i in INSTRUMENTS)
    for role, notes in parts.items():
        drums = role == "drums"
        track = pm_lib.Instrument(program=0 if drums else chosen[role].program, is_drum=drums, name=role)
        trim_db = 0.0 if drums else quietest - chosen[role].loudness
        track.control_changes = [pm_lib.ControlChange(number, _controller_value(db), 0.0)
                                 for number, db in ((7, trim_db), (11, ROLE_LEVELS_DB[role]))]
        track.notes = [pm_lib.Note(velocity=v, pitch=p, start=a * seconds_per_step, end=b * seconds_per_step)
                       for p, v, a, b in notes]
        pm.instruments.append(track)
    return pm
