"""Judges of synthesised speech that owe nothing to speechkit's own models: pocketsphinx (CMU Sphinx
en-us HMM/GMM recogniser with its 3-gram LM) for intelligibility WER, resemblyzer (GE2E d-vectors,
Wan et al. 2018) for speaker similarity, and DNSMOS P.835 (Reddy et al. 2022) for quality.

Every model ships inside its wheel; nothing is downloaded. The packages come with the ``tts-eval``
extra plus ``resemblyzer`` installed with ``--no-deps`` (tools/setup.sh does both) and are imported
only when a judge is built. Each judge takes mono float samples at any rate and resamples to 16 kHz.
"""

from __future__ import annotations

import importlib
import itertools
import multiprocessing
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Iterable

import numpy as np

from speechkit.audio.io import resample_audio
from speechkit.errors import AudioError, SpeechkitError

JUDGE_RATE = 16000  # pocketsphinx's en-us model, resemblyzer and DNSMOS are all 16 kHz models
INSTALL_EXTRA = "run tools/setup.sh, or pip install -e '.[tts-eval]'"
INSTALL_RESEMBLYZER = "run tools/setup.sh, or pip install -e '.[tts-eval]' && pip install --no-deps resemblyzer==0.1.4"

# pocketsphinx decoder settings on top of its defaults. maxhmmpf caps the active HMMs per frame
# (default 30000): on 116 utterances of the synthetic corpus it halved the decoding CPU time and
# moved the WER by less than 2 points either way.
POCKETSPHINX_CONFIG = {"loglevel": "FATAL", "maxhmmpf": 3000}
SPEAKER_TORCH_THREADS = 1
_HYP_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def _import(module: str, judge: str, install: str) -> ModuleType:
    try:
        with warnings.catch_warnings():  # resemblyzer imports scipy.ndimage.morphology, deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(module)
    except ImportError as e:
        raise SpeechkitError(f"{judge} needs the '{e.name or module}' package, which is missing: {install}") from None


def _mono_16k(samples: np.ndarray, sample_rate: int, judge: str) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"{judge}: expected mono 1-D samples, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise AudioError(f"{judge}: audio contains NaN or infinite samples")
    return resample_audio(x, sample_rate, JUDGE_RATE)


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def hypothesis_words(hypstr: str) -> str:
    """pocketsphinx's best path → lower-case words without fillers (``<sil>``, ``[NOISE]``),
    alternate-pronunciation marks (``read(2)``) or punctuation (``d.'s`` → ``d s``)."""
    words = []
    for token in hypstr.lower().split():
        if token.startswith(("<", "[", "+")):
            continue
        words.extend(_HYP_WORD.findall(re.sub(r"\(\d+\)$", "", token)))
    return " ".join(words)


class PocketsphinxJudge:
    """Offline English ASR that shares no data or code with speechkit's models, so its WER on
    synthesised speech is an independent intelligibility score (compare with its WER on the
    ground-truth recordings of the same sentences, never with another recogniser's)."""

    def __init__(self) -> None:
        pocketsphinx = _import("pocketsphinx", "the pocketsphinx judge", INSTALL_EXTRA)
        self._decoder = pocketsphinx.Decoder(**POCKETSPHINX_CONFIG)  # bundled en-us model, dictionary and LM

    def transcribe(self, samples: np.ndarray, sample_rate: int) -> str:
        """(N,) mono float samples in [-1, 1] at ``sample_rate`` → lower-case words separated by
        single spaces, "" when nothing was recognised."""
        pcm = _pcm16(_mono_16k(samples, sample_rate, "pocketsphinx judge"))
        if not pcm:
            return ""  # the decoder raises IndexError on an empty buffer
        # Noise-removal and CMN statistics otherwise carry over from the previous utterance, which
        # changed 8 of 30 transcripts: reset them so each result is independent of order and worker.
        self._decoder.reinit_feat()
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, full_utt=True)  # one block: batch CMN over the whole utterance
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return hypothesis_words(hyp.hypstr) if hyp is not None else ""

    def transcribe_many(self, clips: Iterable[np.ndarray], sample_rate: int, jobs: int = 1) -> list[str]:
        """``transcribe`` of each clip, in order. The decoder is single-threaded: ``jobs`` > 1
        decodes in that many worker processes, each loading its own decoder (about 0.5 s)."""
        clips = list(clips)
        if jobs <= 1 or len(clips) < 2:
            return [self.transcribe(c, sample_rate) for c in clips]
        # spawn, not fork: forking a process that holds torch's or ORT's thread pools can hang
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(clips)), mp_context=context, initializer=_start_worker) as pool:
            return list(pool.map(_transcribe_in_worker, clips, itertools.repeat(sample_rate), chunksize=4))


_worker_judge: PocketsphinxJudge | None = None


def _start_worker() -> None:
    global _worker_judge
    _worker_judge = PocketsphinxJudge()


def _transcribe_in_worker(samples: np.ndarray, sample_rate: int) -> str:
    assert _worker_judge is not None
    return _worker_judge.transcribe(samples, sample_rate)


class SpeakerJudge:
    """resemblyzer's GE2E speaker encoder (3-layer LSTM over 40-band mels, 256-dim d-vectors, the
    encoder of Real-Time-Voice-Cloning): cosine similarity of utterance embeddings. Compare a synthesised
    utterance's similarity to its prompt with that of ground-truth pairs of the same speakers."""

    def __init__(self) -> None:
        resemblyzer = _import("resemblyzer", "the speaker judge", INSTALL_RESEMBLYZER)
        self._resemblyzer = resemblyzer
        self._torch = importlib.import_module("torch")  # resemblyzer's own dependency
        # The bundled pretrained.pt holds a plain state dict: torch's default weights_only=True loads it.
        self._encoder = resemblyzer.VoiceEncoder("cpu", verbose=False)

    def embed(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """(N,) mono float samples → (256,) float32 embedding of unit length. Volume is raised to
        resemblyzer's -30 dBFS and long pauses are cut by its WebRTC VAD; when the VAD finds no
        speech at all the whole clip is embedded, so that a failed synthesis still gets a score."""
        x = _mono_16k(samples, sample_rate, "speaker judge")
        if not np.any(x):
            raise AudioError(f"speaker judge: silent audio ({len(x)} samples of zeros)")
        wav = self._resemblyzer.preprocess_wav(x)
        if len(wav) == 0:
            hp = self._resemblyzer.hparams
            wav = self._resemblyzer.normalize_volume(x, hp.audio_norm_target_dBFS, increase_only=True)
        # A few 1.6 s windows through a small LSTM: one thread is several times faster than
        # torch's default pool (which spins against itself on a busy machine).
        threads = self._torch.get_num_threads()
        self._torch.set_num_threads(SPEAKER_TORCH_THREADS)
        try:
            return self._encoder.embed_utterance(wav.astype(np.float32))
        finally:
            self._torch.set_num_threads(threads)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity of two embeddings, in [-1, 1] (resemblyzer's are non-negative, so
        in practice [0, 1])."""
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class DnsmosJudge:
    """Non-intrusive MOS prediction: DNSMOS P.835 (speech signal SIG, background BAK, overall
    OVRL, each about 1 to 5) and the P.808 overall MOS, with Microsoft's ONNX models as shipped in
    ``speechmos`` and scored by its code, as in the DNS Challenge's scorer: a clip is scored in
    9.01 s windows one second apart, averaged, after a clip shorter than that has been doubled until
    it is not (so a 4.4 s clip becomes 17.6 s and costs 9 windows, a 4.6 s one 1 window)."""

    def __init__(self, personalized: bool = False) -> None:
        dnsmos = _import("speechmos.dnsmos", "the DNSMOS judge", INSTALL_EXTRA)
        models = Path(dnsmos.__file__).parent
        primary = models / ("pdnsmos_models" if personalized else "dnsmos_models") / "sig_bak_ovr.onnx"
        self._model = dnsmos.DNSMOS(str(primary), str(models / "dnsmos_models" / "model_v8.onnx"))
        self._personalized = personalized

    def score(self, samples: np.ndarray, sample_rate: int) -> dict[str, float]:
        """(N,) mono float samples → {"sig", "bak", "ovrl", "p808"} MOS values."""
        x = np.clip(_mono_16k(samples, sample_rate, "DNSMOS judge"), -1.0, 1.0)
        if len(x) == 0:  # speechmos would loop for ever doubling an empty clip up to 9 s
            raise AudioError("DNSMOS judge: empty audio (0 samples)")
        r = self._model(x, JUDGE_RATE, self._personalized)
        return {"sig": float(r["sig_mos"]), "bak": float(r["bak_mos"]), "ovrl": float(r["ovrl_mos"]),
                "p808": float(r["p808_mos"])}
