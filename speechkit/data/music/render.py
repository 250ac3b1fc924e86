"""Render a ``pretty_midi.PrettyMIDI`` to mono audio with a General-MIDI soundfont through
tinysoundfont, event by event on a fresh synthesiser (no fluidsynth, no real-time sequencer, no
randomness), so a MIDI file and a soundfont give the same samples every time.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from speechkit.data.music import require
from speechkit.errors import SpeechkitError

if TYPE_CHECKING:
    import pretty_midi

DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")  # Debian's timgm6mb-soundfont
PEAK_LEVEL = 0.89  # every clip peaks here (-1 dBFS)
FADE_SECONDS = 0.05  # a ramp over the last samples, for sounds whose release outlasts the clip
DRUM_CHANNEL = 9  # General MIDI's channel 10
DRUM_BANK = 128  # where SoundFont 2 keeps the drum kits


@functools.lru_cache(maxsize=4)
def load_soundfont(path: str) -> bytes:
    """The bytes of a SoundFont 2 file, read once per process; a missing file or one that is not
    a RIFF ``sfbk`` is a one-line ``SpeechkitError``."""
    p = Path(path)
    if not p.is_file():
        raise SpeechkitError(f"{p}: soundfont not found (install timgm6mb-soundfont or pass --soundfont)")
    data = p.read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise SpeechkitError(f"{p}: not a SoundFont 2 file (no RIFF sfbk header)")
    return data


def soundfont_sha256(path: str | Path) -> str:
    return hashlib.sha256(load_soundfont(str(path))).hexdigest()


def _synth(soundfont: str | Path, sample_rate: int):
    """A fresh tinysoundfont synthesiser with the soundfont loaded; returns (synth, soundfont id)."""
    tsf = require("tinysoundfont")
    data = load_soundfont(str(soundfont))
    synth = tsf.Synth(samplerate=sample_rate)
    try:
        return synth, synth.sfload(data)
    except RuntimeError as e:
        raise SpeechkitError(f"{soundfont}: unreadable soundfont ({e})") from None


def check_soundfont(soundfont: str | Path, programs: Iterable[int], sample_rate: int) -> None:
    """Stop with one line unless the soundfont loads and has every General-MIDI ``program`` (bank
    0) and a drum kit (bank 128, preset 0)."""
    synth, sfid = _synth(soundfont, sample_rate)
    for bank, preset in [(0, p) for p in sorted(set(programs))] + [(DRUM_BANK, 0)]:
        if synth.sfpreset_name(sfid, bank, preset) is None:
            raise SpeechkitError(f"{soundfont}: no preset for bank {bank}, program {preset}")


def _events(midi: pretty_midi.PrettyMIDI, sample_rate: int) -> tuple[list[tuple], dict[int, tuple[int, bool]]]:
    """The MIDI's events as (sample, order, kind, channel, a, b), sorted, and each channel's
    (program, is_drum). At one sample, controllers come first and note-offs before note-ons, so a
    repeated note is struck again."""
    events, channels = [], {}
    pitched = [c for c in range(16) if c != DRUM_CHANNEL]
    for inst in midi.instruments:
        if inst.is_drum:
            chan = DRUM_CHANNEL
        elif pitched:
            chan = pitched.pop(0)
        else:
            raise SpeechkitError("the MIDI has more than 15 pitched instruments; tinysoundfont renders 15 channels")
        channels[chan] = (inst.program, inst.is_drum)
        for cc in inst.control_changes:
            events.append((round(cc.time * sample_rate), 0, "cc", chan, cc.number, cc.value))
        for bend in inst.pitch_bends:
            events.append((round(bend.time * sample_rate), 0, "bend", chan, bend.pitch + 8192, 0))
        for n in inst.notes:
            events.append((round(n.start * sample_rate), 2, "on", chan, n.pitch, n.velocity))
            events.append((round(n.end * sample_rate), 1, "off", chan, n.pitch, 0))
    events.sort()
    return events, channels


def render_midi(midi: pretty_midi.PrettyMIDI, soundfont: str | Path, sample_rate: int, seconds: float) -> np.ndarray:
    """Samples (N,) float32, N = round(seconds * sample_rate): the MIDI played by the soundfont,
    stereo averaged to mono, cut or padded to N, faded over the last ``FADE_SECONDS`` and scaled
    to peak at ``PEAK_LEVEL``. Events after the end are dropped; a silent result is an error."""
    n = round(seconds * sample_rate)
    synth, sfid = _synth(soundfont, sample_rate)
    events, channels = _events(midi, sample_rate)
    for chan, (program, is_drum) in channels.items():
        synth.program_select(chan, sfid, DRUM_BANK if is_drum else 0, 0 if is_drum else program, is_drum)
    blocks, done = [], 0
    for sample, _, kind, chan, a, b in events:
        if sample >= n:
            break
        if sample > done:
            blocks.append(np.frombuffer(synth.generate(sample - done), dtype=np.float32))
            done = sample
        if kind == "on":
            synth.noteon(chan, a, b)
        elif kind == "off":
            synth.noteoff(chan, a)
        elif kind == "cc":
            synth.control_change(chan, a, b)
        else:
            synth.pitchbend(chan, a)
    if n > done:
        blocks.append(np.frombuffer(synth.generate(n - done), dtype=np.float32))
    stereo = np.concatenate(blocks).reshape(-1, 2) if blocks else np.zeros((0, 2), np.float32)
    mono = stereo.mean(axis=1, dtype=np.float64)
    fade = min(n, round(FADE_SECONDS * sample_rate))
    if fade:
        mono[n - fade:] *= np.linspace(1.0, 0.0, fade)
    peak = float(np.abs(mono).max()) if n else 0.0
    if peak < 1e-6:
        raise SpeechkitError("the MIDI renders to silence (no notes sound before the end)")
    return (mono * (PEAK_LEVEL / peak)).astype(np.float32)
