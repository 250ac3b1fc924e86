"""Find the English voices of the speech engines installed on this machine.

espeak-ng gives accents × voice variants, flite its 16 kHz voices, festival the voices under its
voices folder. Every voice gets a stable speaker id of [a-z0-9-], e.g. ``espeak-en-us-f3``,
``flite-slt``, ``festival-kal-diphone``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from speechkit.data.synth.engines import ENGINE_BINARIES, ENGINES, SAMPLE_RATE, SynthesisError, Voice, synthesize_native
from speechkit.errors import SpeechkitError
from speechkit.text.espeak import espeak_command

FESTIVAL_VOICES_DIR = Path("/usr/share/festival/voices")
# Novelty espeak-ng variants that are not plausible human speech.
_ESPEAK_NOVELTY = re.compile(r"whisper|robo|demonic|announcer|croak|fast", re.IGNORECASE)
# A line of `espeak-ng --voices`: Pty, Language, Age/Gender, VoiceName, File (may hold a space), Other.
_ESPEAK_LINE = re.compile(r"\s*\d+\s+(\S+)\s+\S+\s+\S+\s+(.+?)\s*(?:\(.*\))?\s*")


def speaker_id(*parts: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        hint = " (set SPEECHKIT_ESPEAK_DATA to its espeak-ng-data dir)" if cmd[0] == "espeak-ng" else ""
        raise SpeechkitError(f"'{' '.join(cmd)}' failed (exit {proc.returncode}){hint}: {proc.stderr.strip()}")
    return proc.stdout


def _espeak_list(which: str) -> list[tuple[str, str]]:
    """(language, file) of each voice that ``espeak-ng --voices=WHICH`` lists."""
    out = _run([*espeak_command(), f"--voices={which}"])
    return [m.groups() for line in out.splitlines()[1:] if (m := _ESPEAK_LINE.fullmatch(line))]


def espeak_voices() -> list[Voice]:
    accents = sorted({lang for lang, file in _espeak_list("en") if not file.startswith(("mb/", "!v/"))})
    variants = sorted(
        file.removeprefix("!v/") for _, file in _espeak_list("variant") if not _ESPEAK_NOVELTY.search(file)
    )
    voices = {}
    for accent in accents:
        for variant in variants:
            voice = Voice("espeak-ng", f"{accent}+{variant}", speaker_id("espeak", accent, variant))
            voices.setdefault(voice.speaker, voice)  # variants differing only in case would collide
    return list(voices.values())


def _works(voice: Voice) -> bool:
    """The voice speaks, at 16 kHz or more (flite's 8 kHz ``kal`` does not)."""
    try:
        return synthesize_native(voice, "hello there")[1] >= SAMPLE_RATE
    except SynthesisError:
        return False


def flite_voices() -> list[Voice]:
    out = _run(["flite", "-lv"])
    names = out.split(":", 1)[-1].split()
    # *_time voices are limited-domain: they can only say the time.
    return [Voice("flite", n, speaker_id("flite", n)) for n in sorted(names) if not n.endswith("_time")]


def festival_voices() -> list[Voice]:
    dirs = sorted(d for d in FESTIVAL_VOICES_DIR.glob("*/*") if d.is_dir())
    return [Voice("festival", d.name, speaker_id("festival", d.name)) for d in dirs]


def discover_voices(engines: str = ",".join(ENGINES)) -> list[Voice]:
    """Voices of the comma-separated ``engines`` that are installed; engines that are missing are
    skipped, but at least one must be present."""
    wanted = [e.strip() for e in engines.split(",") if e.strip()]
    unknown = [e for e in wanted if e not in ENGINES]
    if unknown:
        raise SpeechkitError(f"unknown engine '{unknown[0]}'; choose from {', '.join(ENGINES)}")
    present = [e for e in wanted if shutil.which(ENGINE_BINARIES[e])]
    if not present:
        looked_for = ", ".join(ENGINE_BINARIES[e] for e in wanted)
        raise SpeechkitError(f"no speech engine found on PATH (looked for {looked_for})")
    espeak = espeak_voices() if "espeak-ng" in present else []
    others = (flite_voices() if "flite" in present else []) + (festival_voices() if "festival" in present else [])
    probed = espeak[:1] + others  # espeak-ng voices share one data dir: one probe answers for all
    with ThreadPoolExecutor(max_workers=8) as pool:
        works = dict(zip(probed, pool.map(_works, probed)))
    voices = [v for v in espeak if works[espeak[0]]] + [v for v in others if works[v]]
    if not voices:
        raise SpeechkitError(f"no working English voice found for {', '.join(present)}")
    return voices
