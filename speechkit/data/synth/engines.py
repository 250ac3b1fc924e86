"""Run one speech engine on one normalised sentence with a per-utterance speaking rate, pitch and
level, and return 16 kHz mono float32 samples.

espeak-ng, flite and festival's text2wave run as subprocesses writing a temporary wav; piper runs
a neural (VITS) voice in this process (``piper_engine``). All are deterministic: the same (voice,
text, prosody) always gives the same samples. A piper voice becomes many speakers through its
speaker-level ``pitch`` and ``vtlp`` (vocal-tract length), which the utterance's prosody varies a
little further.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from speechkit.audio.io import resample_audio
from speechkit.audio.vtlp import warp_formants
from speechkit.data.synth.piper_engine import SentenceError, synthesize_piper
from speechkit.errors import SpeechkitError
from speechkit.text.espeak import espeak_command

SAMPLE_RATE = 16000
ENGINES = ("espeak-ng", "flite", "festival", "piper")
ENGINE_BINARIES = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "text2wave"}  # piper: see voices._piper_missing
ESPEAK_WPM = 175  # espeak-ng's default speaking rate
TIMEOUT_S = 120


class SynthesisError(SpeechkitError):
    """An engine failed on one sentence (non-zero exit, error message, empty or silent audio)."""


@dataclass(frozen=True)
class Voice:
    engine: str  # one of ENGINES
    name: str  # what the engine is told: "en-us+f3", "slt", "kal_diphone", "en_US-joe-medium"
    speaker: str  # stable speaker id of [a-z0-9-]: "espeak-en-us-f3", "piper-en-us-joe-medium-p120-v109"
    pitch: float = 1.0  # piper: the speaker's f0 factor
    vtlp: float = 1.0  # piper: the speaker's formant (vocal-tract length) factor; > 1 sounds shorter


@dataclass(frozen=True)
class Prosody:
    stretch: float = 1.0  # duration factor; > 1 speaks slower
    pitch: float = 1.0  # f0 factor; festival's HTS voices and flite's rms ignore it
    peak: float = 0.9  # peak amplitude of the returned samples
    # piper only: the utterance's formant factor (on top of the voice's), the spread of the
    # model's prior and durations (Piper's defaults), and the seed of its noise.
    vtlp: float = 1.0
    noise_scale: float = 0.667
    noise_w: float = 0.8
    seed: int = 0


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


def _piper_pitch(voice: Voice, p: Prosody) -> float:
    return voice.pitch * p.pitch


def _piper_native(voice: Voice, text: str, p: Prosody) -> tuple[np.ndarray, float]:
    """Pitch by resampling: the model speaks ``pitch`` times slower, and its samples, declared at
    ``pitch`` times its rate, come back to the intended length with f0 and formants raised alike
    (``synthesize`` then moves the formants back to the voice's ``vtlp``)."""
    pitch = _piper_pitch(voice, p)
    try:
        # A sentence-final period gives the model's falling intonation; the transcript is unchanged.
        samples, rate = synthesize_piper(
            voice.name, f"{text}.", length_scale=p.stretch * pitch, noise_scale=p.noise_scale, noise_w=p.noise_w,
            seed=p.seed,
        )
    except SentenceError as e:
        raise SynthesisError(f"{voice.speaker}: {e}") from None
    return samples, rate * pitch


def synth_settings(voice: Voice, p: Prosody) -> str:
    """What made an utterance, as ``key=value`` words (a line of ``utt2synth``): the engine, the
    voice and the settings it applied. A space in a voice's name (espeak-ng has a variant "Mr
    serious") is written ``%20``, so the line stays whitespace-separated words."""
    common = f"engine={voice.engine} voice={voice.name.replace(' ', '%20')}"
    if voice.engine != "piper":
        return f"{common} stretch={p.stretch:.3f} pitch={p.pitch:.3f} peak={p.peak:.3f}"
    pitch = _piper_pitch(voice, p)
    return (
        f"{common} length_scale={p.stretch * pitch:.3f} noise_scale={p.noise_scale:.3f} noise_w={p.noise_w:.3f}"
        f" seed={p.seed} pitch={pitch:.3f} vtlp={voice.vtlp * p.vtlp:.3f} stretch={p.stretch:.3f} peak={p.peak:.3f}"
    )


def synthesize_native(voice: Voice, text: str, prosody: Prosody = Prosody()) -> tuple[np.ndarray, float]:
    """The engine's own output: (float32 mono samples, sample rate)."""
    if voice.engine == "piper":
        return _piper_native(voice, text, prosody)
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
    if voice.engine == "piper":  # resampling moved the formants by the pitch factor: put them at vtlp
        samples = warp_formants(samples, SAMPLE_RATE, voice.vtlp * prosody.vtlp / _piper_pitch(voice, prosody))
    peak = float(np.abs(samples).max()) if len(samples) else 0.0
    if peak < 1e-4:
        raise SynthesisError(f"{voice.speaker}: silent output for '{text}'")
    return samples * np.float32(prosody.peak / peak)
