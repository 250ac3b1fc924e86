"""The Python API: ``speechkit.load(MODEL_DIR)`` opens an exported model (no torch needed) and
gives back an object that transcribes files or arrays and, for streaming models, opens live
sessions that report partial and final results as audio arrives.

    >>> import speechkit
    >>> asr = speechkit.load("models/asr-stream-synth")
    >>> print(asr.transcribe("some.wav").text)                     # a path, an array, or a list of them
    >>> with asr.stream() as s:                                   # audio as it arrives, any rate
    ...     for block in blocks:                                  # float32 mono
    ...         for r in s.feed(block, sample_rate=48000):
    ...             print(r.kind, r.text)                         # "partial" ... then "final"
    >>> print(s.text)

An exported text-to-music model generates: ``music = speechkit.load("exp/audiogen/onnx")``,
``music.generate("calm piano in c major", seconds=10)`` → samples at ``music.sample_rate`` (a list
of captions → a list of clips, generated as one batch).

An exported voice-conversion model converts the same way: ``vc = speechkit.load("exp/vc/onnx")``,
``vc.convert("source.wav", "reference.wav")`` → samples at ``vc.sample_rate``, and
``live = vc.stream("reference.wav", sample_rate=48000)`` → ``live.accept(block)`` ... ``live.finish()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speechkit.errors import AudioError, SpeechkitError
from speechkit.runtime.asr import OnlineRecognizer, Stream, array_blocks
from speechkit.runtime.console import file_blocks, model_family, open_recognizer
from speechkit.runtime.events import Result, ResultTracker
from speechkit.runtime.transducer import CTC_FAMILY, TRANSDUCER_FAMILY


@dataclass
class Transcript:
    """What a model heard in one input. ``segments``: (text, start s, end s) per endpointed segment
    (streaming models) or per long-audio piece; ``words``: (word, start s, end s) where the model
    gives word times (Paraformer, from its CIF weights)."""

    text: str
    segments: list[tuple[str, float, float]] = field(default_factory=list)
    words: list[tuple[str, float, float]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text


def _inputs(audio) -> tuple[list, bool]:
    """``transcribe``'s argument → (the inputs, whether it was a list of them)."""
    many = isinstance(audio, Sequence) and not isinstance(audio, (str, Path, np.ndarray))
    return (list(audio) if many else [audio]), many


def _source(audio, sample_rate: int) -> Iterable[tuple[np.ndarray, int]]:
    """A path → its blocks, read as they are decoded (a file is never held whole); an array → views
    of it at ``sample_rate``."""
    if isinstance(audio, (str, Path)):
        return file_blocks(audio)
    return array_blocks(audio, sample_rate)


class StreamSession:
    """A live stream on a streaming model. ``feed`` audio as it arrives and get back the results
    it produced; ``finish`` flushes the end. Usable as a context manager (finishes on exit)."""

    def __init__(self, rec: OnlineRecognizer, sample_rate: int | None):
        self.rec, self.sample_rate = rec, sample_rate or rec.sample_rate
        self.stream: Stream = rec.create_stream()
        self.tracker = ResultTracker(rec)
        self.results: list[Result] = []

    def feed(self, samples, sample_rate: int | None = None) -> list[Result]:
        """Add mono float32 samples (at ``sample_rate``, default the session's); decode every full
        chunk; return the new partial/final results."""
        self.stream.accept_waveform(samples, sample_rate or self.sample_rate)
        return self._decode()

    def finish(self) -> list[Result]:
        """No more audio: decode what is left and return the last results."""
        self.stream.input_finished()
        return self._decode()

    def _decode(self) -> list[Result]:
        while self.rec.is_ready(self.stream):
            self.rec.decode_streams([self.stream])
        self.rec.is_done(self.stream)  # closes the last segment once the input is finished
        new = self.tracker.update(self.stream)
        self.results.extend(new)
        return new

    @property
    def text(self) -> str:
        """Final segments then the current partial."""
        return self.rec.text(self.stream)

    @property
    def partial(self) -> str:
        return self.stream.partial

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None and not self.stream.finished:
            self.finish()


class StreamingAsr:
    """A cache-aware streaming model: CTC in our layout (``model_family: ctc-streaming-conformer``),
    or in sherpa-onnx's formats a transducer (``transducer-streaming-conformer``) or a zipformer2
    CTC (``ctc-streaming-conformer-sherpa``)."""

    def __init__(self, model_dir: str | Path, num_threads: int = 1, att_context: tuple[int, int] | None = None, beam: int = 1,
                 device: str = "cpu", **options):
        self.recognizer = open_recognizer(model_dir, num_threads=num_threads, att_context=att_context, beam=beam, device=device,
                                          **options)
        self.sample_rate = self.recognizer.sample_rate

    def transcribe(self, audio, sample_rate: int | None = None):
        """A path or a float32 mono array → :class:`Transcript`; a list of them → a list,
        decoded as parallel streams in one batch per chunk. Files are read a block at a time as
        the model needs them, so a file of any length is fine."""
        items, many = _inputs(audio)
        streams = self.recognizer.run_streams([_source(a, sample_rate or self.sample_rate) for a in items])
        out = [self._transcript(st) for st in streams]
        return out if many else out[0]

    def _transcript(self, st: Stream) -> Transcript:
        return Transcript(self.recognizer.text(st), [(seg.text, seg.start, seg.end) for seg in st.finals])

    def stream(self, sample_rate: int | None = None) -> StreamSession:
        """A new live session; audio fed to it is at ``sample_rate`` (default the model's)."""
        return StreamSession(self.recognizer, sample_rate)


class OfflineAsr:
    """A Paraformer (``model_family: paraformer``): whole inputs, batched, word times."""

    def __init__(self, model_dir: str | Path, num_threads: int = 1, device: str = "cpu", **options):
        from speechkit.runtime.paraformer import OfflineRecognizer

        self.recognizer = OfflineRecognizer(model_dir, num_threads=num_threads, device=device, **options)
        self.sample_rate = self.recognizer.sample_rate

    def transcribe(self, audio, sample_rate: int | None = None):
        """A path or a float32 mono array → :class:`Transcript`; a list → a list (one padded batch
        per ~60 s of audio). Inputs longer than 30 s are cut at quiet points; files that long are
        read a block at a time. ``segments``: (text, start s, end s) per piece decoded."""
        from speechkit.runtime.paraformer import recognize_paths

        items, many = _inputs(audio)
        results: dict[int, object] = {}
        paths = [i for i, a in enumerate(items) if isinstance(a, (str, Path))]
        for i, (_, r) in zip(paths, recognize_paths(self.recognizer, [items[i] for i in paths])):
            if isinstance(r, AudioError):
                raise r
            results[i] = r
        arrays = [i for i in range(len(items)) if i not in results]
        results.update(zip(arrays, self.recognizer.recognize([items[i] for i in arrays], sample_rate)))
        out = [Transcript(r.text, r.segments, r.words) for r in (results[i] for i in range(len(items)))]
        return out if many else out[0]

    def stream(self, sample_rate: int | None = None):
        raise SpeechkitError("this model is offline (Paraformer): use transcribe(); streaming needs a "
                             "streaming model such as models/asr-stream-synth")


def _mono(samples, where: str) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise AudioError(f"{where}: expected mono samples of shape (N,), got shape {x.shape}")
    return x


def _audio(audio, sample_rate: int, where: str) -> tuple[np.ndarray, int]:
    """A path (any rate, downmixed) or a mono array at ``sample_rate`` → (float32 samples, their rate)."""
    if isinstance(audio, (str, Path)):
        from speechkit.audio.io import load_audio

        return load_audio(audio, downmix=True)
    return _mono(audio, where), sample_rate


class VcSession:
    """A live conversion of one source into one voice: ``accept`` source audio as it arrives and
    get back the converted audio of every chunk it completed (often none); ``finish`` gives the
    rest. Audio out is at the model's rate (:attr:`VoiceConversion.sample_rate`)."""

    def __init__(self, stream, sample_rate: int):
        self.stream, self.sample_rate = stream, sample_rate

    def accept(self, samples, sample_rate: int | None = None) -> np.ndarray:
        """Mono float32 samples (at ``sample_rate``, default the session's) → converted samples."""
        return self.stream.accept(_mono(samples, "source"), sample_rate or self.sample_rate)

    def finish(self) -> np.ndarray:
        """No more source audio → the converted rest."""
        return self.stream.finish()


class VoiceConversion:
    """An exported MeanVC (``step.onnx`` + ``vc.json``): zero-shot conversion into the voice of a
    reference of at least a second. Sources and references are paths (any rate, downmixed) or mono
    float32 arrays at ``sample_rate`` (default: the model's, 16 kHz for the shipped models); audio
    comes back at :attr:`sample_rate`."""

    def __init__(self, model_dir: str | Path, num_threads: int = 1, device: str = "cpu", **options):
        from speechkit.runtime.vc import VoiceConverter

        self.converter = VoiceConverter(model_dir, num_threads=num_threads, device=device, **options)
        self.sample_rate = self.converter.sample_rate

    def target(self, reference, sample_rate: int | None = None):
        """A reference (path or array) → the target voice (:class:`speechkit.runtime.vc.Target`),
        which ``convert`` and ``stream`` also take in its place, to skip encoding it again."""
        from speechkit.runtime.vc import Target

        if isinstance(reference, Target):
            return reference
        x, rate = _audio(reference, sample_rate or self.sample_rate, "reference")
        return self.converter.target(x, rate)

    def convert(self, source, reference, sample_rate: int | None = None, seed: int = 0) -> np.ndarray:
        """The words of ``source`` in the voice of ``reference`` → float32 samples at :attr:`sample_rate`,
        the same as streaming the source through :meth:`stream` in any blocks with the same ``seed``."""
        target = self.target(reference, sample_rate)
        x, rate = _audio(source, sample_rate or self.sample_rate, "source")
        return self.converter.convert(x, target, rate, seed=seed)

    def stream(self, reference, sample_rate: int | None = None, seed: int = 0) -> VcSession:
        """A live session into the voice of ``reference``; source audio fed to it is at
        ``sample_rate`` (default the model's)."""
        return VcSession(self.converter.stream(self.target(reference, sample_rate), seed=seed), sample_rate or self.sample_rate)


class TextToMusic:
    """An exported text-to-music model (``audiogen.json``: MAGNeT, optionally the delay-pattern AR
    model, and the RVQ codec). Clips come back as float32 mono at :attr:`sample_rate`."""

    def __init__(self, model_dir: str | Path, num_threads: int = 1, device: str = "cpu"):
        from speechkit.runtime.audiogen import MusicGenerator

        self.generator = MusicGenerator(model_dir, num_threads=num_threads, device=device)
        self.sample_rate = self.generator.sample_rate

    @property
    def modes(self) -> tuple[str, ...]:
        """The decoding modes this export can run (``hybrid`` and ``ar`` need the AR model)."""
        return self.generator.modes

    def generate(self, texts, seconds: float, mode: str = "magnet", rescore: float = 0.0, seed: int = 0,
                 steps: Sequence[int] | None = None, cfg=None, temperature=None, top_p: float | None = None):
        """A caption → one clip of ``seconds``; a list of captions → a list of clips (one batch).
        ``mode``: ``magnet``, ``hybrid`` or ``ar``; ``rescore``: the AR model's weight in MAGNeT's
        confidences; ``cfg``/``temperature``: a number, or MAGNeT's (start, end); ``steps``: MAGNeT's
        per codebook; None keeps the model's defaults (:meth:`speechkit.runtime.audiogen.MusicGenerator.generate`).
        The same seed gives the same clips."""
        one = isinstance(texts, str)
        clips = self.generator.generate([texts] if one else texts, seconds, mode, rescore, seed, steps, cfg, temperature, top_p)
        return clips[0] if one else clips


def load(model_dir: str | Path, *, num_threads: int = 1, device: str = "cpu", **options):
    """Open an exported model directory (``model.onnx`` + tokenizer + ``export.json``) by its
    family: a streaming model (CTC, or a transducer exported by ``speechkit export sherpa``) gives :class:`StreamingAsr`, a Paraformer :class:`OfflineAsr`, a
    CLEAR TTS model (``ar_step.onnx`` ...) :class:`speechkit.runtime.tts.Synthesizer`
    (``synthesize(text, prompt)`` → samples, ``stream(text, prompt)`` → a generator of chunks), a
    voice-conversion model (``step.onnx`` + ``vc.json``) :class:`VoiceConversion`
    (``convert(source, reference)`` → samples, ``stream(reference)`` → ``accept``/``finish``; its
    ``options``: ``codec_dir``, ``asr_dir``), a text-to-music model (``audiogen.json``, its graphs
    and ``codec/``) :class:`TextToMusic` (``generate(texts, seconds, mode="magnet"|"hybrid"|"ar",
    rescore=0.0, seed=0, ...)`` → a clip per caption, one clip for a single caption string; only
    ``num_threads`` and ``device`` apply). ``device``: ``cpu``, ``cuda[:N]`` or ``tensorrt[:N]`` (the ``gpu`` extra; a
    one-line error, never a silent CPU fallback, when CUDA cannot start). ``options`` go to the
    recognizer (streaming: ``att_context=(64, 4)``, ``beam=4``, ``lm="lm.arpa"`` with a beam, or
    ``lm=LmConfig(path, weight, bonus)`` from :mod:`speechkit.decoding.ngram`; both families: ``gate=None`` keeps
    tokens the speech-activity gate would drop as silence or noise)."""
    model_dir = Path(model_dir)
    if (model_dir / "audiogen.json").is_file():
        return TextToMusic(model_dir, num_threads=num_threads, device=device)
    if (model_dir / "ar_step.onnx").is_file() and model_family(model_dir) == "tts-clear":
        from speechkit.runtime.tts import Synthesizer

        return Synthesizer(model_dir, num_threads=num_threads, device=device)
    if (model_dir / "step.onnx").is_file() and (model_dir / "vc.json").is_file():
        return VoiceConversion(model_dir, num_threads=num_threads, device=device, **options)
    if model_family(model_dir) in (TRANSDUCER_FAMILY, CTC_FAMILY):  # sherpa-onnx's layouts (speechkit export sherpa)
        return StreamingAsr(model_dir, num_threads=num_threads, device=device, **options)
    if not (model_dir / "model.onnx").is_file():
        raise SpeechkitError(f"{model_dir}: not a model directory (no model.onnx; export one with `speechkit export onnx`)")
    family = model_family(model_dir)
    if family == "paraformer":
        return OfflineAsr(model_dir, num_threads=num_threads, device=device, **options)
    if family == "ctc-streaming-conformer":
        return StreamingAsr(model_dir, num_threads=num_threads, device=device, **options)
    raise SpeechkitError(f"{model_dir}: speechkit.load does not know model family {family!r}")
