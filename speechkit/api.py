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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speechkit.errors import SpeechkitError
from speechkit.runtime.asr import OnlineRecognizer, Stream
from speechkit.runtime.console import model_family, read_mono
from speechkit.runtime.events import Result, ResultTracker


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


def _read(audio, sample_rate: int | None) -> tuple[np.ndarray, int | None]:
    """A path → (mono float32, its rate); an array → (float32, the caller's rate or None)."""
    if isinstance(audio, (str, Path)):
        return read_mono(audio, float("inf"))
    return np.asarray(audio, dtype=np.float32), sample_rate


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
    """A cache-aware streaming CTC model (``model_family: ctc-streaming-conformer``)."""

    def __init__(self, model_dir: str | Path, num_threads: int = 1, att_context: tuple[int, int] | None = None, beam: int = 1):
        self.recognizer = OnlineRecognizer(model_dir, num_threads=num_threads, att_context=att_context, beam=beam)
        self.sample_rate = self.recognizer.sample_rate

    def transcribe(self, audio, sample_rate: int | None = None):
        """A path or a float32 mono array → :class:`Transcript`; a list of them → a list,
        decoded as parallel streams in one batch per chunk."""
        if isinstance(audio, Sequence) and not isinstance(audio, (str, Path, np.ndarray)):
            return self._batch(audio, sample_rate)
        with self.stream(sample_rate) as s:
            x, rate = _read(audio, sample_rate)
            s.feed(x, rate)
        return self._transcript(s.stream)

    def _batch(self, audios, sample_rate):
        rec = self.recognizer
        streams = []
        for a in audios:
            x, rate = _read(a, sample_rate)
            st = rec.create_stream()
            st.accept_waveform(x, rate)
            st.input_finished()
            streams.append(st)
        while any(rec.is_ready(st) for st in streams):
            rec.decode_streams(streams)
        return [self._transcript(st) for st in streams]

    def _transcript(self, st: Stream) -> Transcript:
        return Transcript(self.recognizer.text(st), [(seg.text, seg.start, seg.end) for seg in st.finals])

    def stream(self, sample_rate: int | None = None) -> StreamSession:
        """A new live session; audio fed to it is at ``sample_rate`` (default the model's)."""
        return StreamSession(self.recognizer, sample_rate)


class OfflineAsr:
    """A Paraformer (``model_family: paraformer``): whole inputs, batched, word times."""

    def __init__(self, model_dir: str | Path, num_threads: int = 1):
        from speechkit.runtime.paraformer import OfflineRecognizer

        self.recognizer = OfflineRecognizer(model_dir, num_threads=num_threads)
        self.sample_rate = self.recognizer.sample_rate

    def transcribe(self, audio, sample_rate: int | None = None):
        """A path or a float32 mono array → :class:`Transcript`; a list → a list (one padded batch
        per ~60 s of audio). Inputs longer than 30 s are cut at quiet points."""
        many = isinstance(audio, Sequence) and not isinstance(audio, (str, Path, np.ndarray))
        rec = self.recognizer
        xs = [rec.prepare(*_read(a, sample_rate)) for a in (audio if many else [audio])]
        out: list[Transcript | None] = [None] * len(xs)
        short = [i for i, x in enumerate(xs) if len(x) <= rec.max_segment * rec.sample_rate]
        for i, r in zip(short, rec.recognize([xs[i] for i in short])):
            out[i] = Transcript(r.text, [(r.text, 0.0, round(len(xs[i]) / rec.sample_rate, 3))], r.words)
        for i in (i for i, t in enumerate(out) if t is None):
            r = rec.transcribe_long(xs[i])
            out[i] = Transcript(r.text, [], r.words)
        return out if many else out[0]

    def stream(self, sample_rate: int | None = None):
        raise SpeechkitError("this model is offline (Paraformer): use transcribe(); streaming needs a "
                             "streaming model such as models/asr-stream-synth")


def load(model_dir: str | Path, *, num_threads: int = 1, **options):
    """Open an exported model directory (``model.onnx`` + tokenizer + ``export.json``) by its
    family: a streaming model gives :class:`StreamingAsr`, a Paraformer :class:`OfflineAsr`, a
    CLEAR TTS model (``ar_step.onnx`` ...) :class:`speechkit.runtime.tts.Synthesizer`
    (``synthesize(text, prompt)`` → samples, ``stream(text, prompt)`` → a generator of chunks).
    ``options`` go to the recognizer (streaming: ``att_context=(64, 4)``, ``beam=4``)."""
    model_dir = Path(model_dir)
    if (model_dir / "ar_step.onnx").is_file() and model_family(model_dir) == "tts-clear":
        from speechkit.runtime.tts import Synthesizer

        return Synthesizer(model_dir, num_threads=num_threads)
    if not (model_dir / "model.onnx").is_file():
        raise SpeechkitError(f"{model_dir}: not a model directory (no model.onnx; export one with `speechkit export onnx`)")
    family = model_family(model_dir)
    if family == "paraformer":
        return OfflineAsr(model_dir, num_threads=num_threads, **options)
    if family == "ctc-streaming-conformer":
        return StreamingAsr(model_dir, num_threads=num_threads, **options)
    raise SpeechkitError(f"{model_dir}: speechkit.load does not know model family {family!r}")
