"""Find the English voices of the speech engines installed on this machine.

espeak-ng gives accents × voice variants, flite its 16 kHz voices, festival the voices under its
voices folder, piper one speaker per (pitch, vtlp) setting of each single-speaker neural voice (and
one per speaker of a multi-speaker one). Every voice gets a stable speaker id of [a-z0-9-], e.g.
``espeak-en-us-f3``, ``flite-slt``, ``festival-kal-diphone``, ``piper-en-us-joe-medium-p120-v109``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from speechkit.data.synth import piper_engine
from speechkit.data.synth.engines import ENGINE_BINARIES, ENGINES, SAMPLE_RATE, SynthesisError, Voice, synthesize_native
from speechkit.errors import SpeechkitError
from speechkit.text.espeak import espeak_command

FESTIVAL_VOICES_DIR = Path("/usr/share/festival/voices")
# One single-speaker piper voice becomes len(PIPER_PITCHES) x len(PIPER_VTLPS) speakers. The packaged
# voice (joe) is a man at ~105 Hz; 1.75 x pitch with 1.18 x formants is near a woman's range. Formants
# moved down (vtlp < 1) or past 1.2, and pitch below 0.9, cost intelligibility (pocketsphinx WER
# 40-65 % against ~30 % unperturbed). To a speaker embedding (resemblyzer cosine) neighbours in this
# grid are ~0.8 alike and far corners ~0.6, against ~0.7 for espeak-ng's en-us and en-us+f3.
PIPER_PITCHES = (0.9, 1.0, 1.2, 1.45, 1.75)
PIPER_VTLPS = (1.0, 1.09, 1.18)
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


def _english(config: dict) -> bool:
    return str(config.get("espeak", {}).get("voice", "")).lower().startswith("en")


def piper_voices() -> list[Voice]:
    """English piper voices: each single-speaker model as a grid of (pitch, vtlp) speakers, each
    speaker of a multi-speaker model as itself."""
    voices = []
    for stem, model in sorted(piper_engine.voice_files().items()):
        config = piper_engine.voice_config(model)
        if not _english(config):
            continue
        if int(config.get("num_speakers", 1)) > 1:
            for sid in range(int(config["num_speakers"])):
                voices.append(Voice("piper", f"{stem}:{sid}", speaker_id("piper", stem, f"s{sid}")))
            continue
        for pitch in PIPER_PITCHES:
            for vtlp in PIPER_VTLPS:
                speaker = speaker_id("piper", stem, f"p{round(pitch * 100)}", f"v{round(vtlp * 100)}")
                voices.append(Voice("piper", stem, speaker, pitch, vtlp))
    return voices


def _model(voice: Voice) -> str:
    """The piper model file stem of a piper voice."""
    return piper_engine.split_name(voice.name)[0]


def _piper_missing() -> str | None:
    """Why the piper engine cannot run here, or None: it needs onnx, onnxruntime, the espeak-ng
    program (its phonemiser) and a voice."""
    for module in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            return f"the {module} package is not installed (pip install onnx onnxruntime)"
    if not shutil.which(espeak_command()[0]):
        return "espeak-ng is not on PATH (apt-get install espeak-ng)"
    if not piper_engine.voice_files():
        return f"no Piper voice is installed (nor in ${piper_engine.VOICES_ENV}): {piper_engine.INSTALL_HINT}"
    return None


def _missing(engine: str) -> str | None:
    if engine == "piper":
        return _piper_missing()
    return None if shutil.which(ENGINE_BINARIES[engine]) else f"{ENGINE_BINARIES[engine]} is not on PATH"


def discover_voices(engines: str = ",".join(ENGINES)) -> list[Voice]:
    """Voices of the comma-separated ``engines`` that are installed; an engine that is missing is
    skipped with a one-line note on stderr, but at least one must be present."""
    wanted = [e.strip() for e in engines.split(",") if e.strip()]
    unknown = [e for e in wanted if e not in ENGINES]
    if unknown:
        raise SpeechkitError(f"unknown engine '{unknown[0]}'; choose from {', '.join(ENGINES)}")
    missing = {e: why for e in wanted if (why := _missing(e))}
    present = [e for e in wanted if e not in missing]
    if not present:
        raise SpeechkitError(f"no speech engine found ({'; '.join(f'{e}: {why}' for e, why in missing.items())})")
    for engine, why in missing.items():
        print(f"note: {engine} skipped: {why}; building from {', '.join(present)}", file=sys.stderr)
    espeak = espeak_voices() if "espeak-ng" in present else []
    others = (flite_voices() if "flite" in present else []) + (festival_voices() if "festival" in present else [])
    piper = piper_voices() if "piper" in present else []
    # espeak-ng voices share one data dir, and a piper model's speakers one model: one probe each.
    first_of_model = {_model(v): v for v in reversed(piper)}
    probed = espeak[:1] + others + list(first_of_model.values())
    with ThreadPoolExecutor(max_workers=8) as pool:
        works = dict(zip(probed, pool.map(_works, probed)))
    voices = [v for v in espeak if works[espeak[0]]] + [v for v in others if works[v]]
    voices += [v for v in piper if works[first_of_model[_model(v)]]]
    if not voices:
        raise SpeechkitError(f"no working English voice found for {', '.join(present)}")
    return voices
