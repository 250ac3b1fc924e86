"""Run one speech engine (espeak-ng, flite or festival's text2wave) on one normalised sentence
with a per-utterance speaking rate, pitch and level, and return 16 kHz mono float32 samples.

Each call is a subprocess writing a temporary wav; the engines are deterministic, so the same
(voice, text, prosody) always gives the same samples.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from speechkit.audio.io import resample_audio
from speechkit.errors import SpeechkitError
from speechkit.text.espeak import espeak_command

SAMPLE_RATE = 16000
ENGINES = ("espeak-ng", "flite", "festival")
ENGINE_BINARIES = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "text2wave"}
ESPEAK_WPM = 175  # espeak-ng's default speaking rate
TIMEOUT_S = 120


class SynthesisError(SpeechkitError):
    """An engine failed on one sentence (non-zero exit, error message, empty or silent audio)."""


@dataclass(frozen=True)
class Voice:
    engine: str  # one of ENGINES
    name: str  # what the engine is told: "en-us+f3", "slt", "kal_diphone"
    speaker: str  # stable speaker id of [a-z0-9-]: "espeak-en-us-f3"


@dataclass(frozen=True)
class Prosody:
    stretch: float = 1.0  # duration factor; > 1 speaks slower
    pitch: float = 1.0  # f0 factor; festival's HTS voices and flite's rms ignore it
    peak: float = 0.9  # peak amplitude of the returned samples


def _festival_setup(voice: str, p: Prosody) -> list[str]:
    # Diphone voices read Duration_Stretch and int_lr_params; HTS voices take hts_engine's -r speed.
    speed = f"(list (list \"-r\" {1 / p.stretch:.3f}))"
    return [
        "-eval", f"(voice_{voice})",
        "-eval",
        f"(begin (Parameter.set 'Duration_Stretch {p.stretch:.3f})"
        f" (if (symbol-bound? 'hts_engine_params) (set! hts_engine_params (append hts_engine_params {speed})))"
        f" (let ((m (assoc 'target_f0_mean int_lr_params))) (if m (set-car! (cdr m) (* {p.pitch:.3f} (car (cdr m)))))))",
    ]


def _command(voice: Voice, text: str, p: Prosody, wav: str) -> tuple[list[str], str | None]:
    """The engine's command line and what to send on its stdin."""
    if voice.engine == "espeak-ng":
        pitch = min(99, max(0, round(50 + 100 * (p.pitch - 1))))  # -p is 0-99 around 50
        rate = round(ESPEAK_WPM / p.stretch)
        return [*espeak_command(), "-v", voice.name, "-s", str(rate), "-p", str(pitch), "-w", wav, text], None
    if voice.engine == "flite":
        return [
            "flite", "-voice", voice.name,
            "--setf", f"duration_stretch={p.stretch:.3f}", "--setf", f"f0_shift={p.pitch:.3f}",
            "-t", text, "-o", wav,
        ], None
    if voice.engine == "festival":
        return ["text2wave", *_festival_setup(voice.name, p), "-o", wav], text
    raise ValueError(f"unknown engine {voice.engine!r}")


def synthesize_native(voice: Voice, text: str, prosody: Prosody = Prosody()) -> tuple[np.ndarray, int]:
    """The engine's own output: (float32 mono samples, sample rate)."""
    with tempfile.TemporaryDirectory(prefix="speechkit-synth-") as tmp:
        wav = os.path.join(tmp, "out.wav")
        cmd, stdin = _command(voice, text, prosody, wav)
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SynthesisError(f"{voice.speaker}: {e}") from None
        # text2wave exits 0 even when its Scheme fails, so its messages are checked as well.
        message = (proc.stderr.strip().splitlines() or [""])[-1]
        written = os.path.exists(wav) and os.path.getsize(wav) > 44  # more than a bare wav header
        if proc.returncode != 0 or "SIOD ERROR" in proc.stderr or not written:
            raise SynthesisError(f"{voice.speaker}: {cmd[0]} failed (exit {proc.returncode}) {message}".rstrip())
        data, rate = sf.read(wav, dtype="float32", always_2d=True)
    return data.mean(axis=1), rate


def synthesize(voice: Voice, text: str, prosody: Prosody) -> np.ndarray:
    """16 kHz mono float32 samples scaled to ``prosody.peak``; nothing is trimmed."""
    samples, rate = synthesize_native(voice, text, prosody)
    samples = resample_audio(samples, rate, SAMPLE_RATE)
    peak = float(np.abs(samples).max()) if len(samples) else 0.0
    if peak < 1e-4:
        raise SynthesisError(f"{voice.speaker}: silent output for '{text}'")
    return samples * np.float32(prosody.peak / peak)
