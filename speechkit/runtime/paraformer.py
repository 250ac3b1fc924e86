"""Offline recognition with an exported Paraformer, with no torch: kaldi-native-fbank features,
one ONNX Runtime call per padded batch (encoder, CIF and the one-pass decoder are all in the
graph), word times from the CIF weights.

    rec = OfflineRecognizer("models/asr-paraformer-synth")
    for r in rec.recognize([samples_a, samples_b]):   # float32 in [-1, 1] at rec.sample_rate
        print(r.text, r.words)
    print(rec.recognize_file("two_hours.wav").text)   # read and decoded a block at a time

Audio of any length is cut into pieces of at most ``max_segment`` seconds at the quietest 100 ms
near each cut, and ONNX Runtime only ever sees a batch of at most ``max_batch_seconds`` of
pieces, so memory stays bounded whatever the input's length. A speech-activity gate
(speechkit.audio.vad) skips pieces without speech and drops tokens with no speech around them:
silence, steady noise and tones give no text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speechkit.audio.fbank import compute_fbank, pad_feats
from speechkit.audio.vad import GateConfig, SpeechGate
from speechkit.decoding.cif_times import token_spans, word_times
from speechkit.errors import AudioError
from speechkit.runtime.asr import decoding_error
from speechkit.runtime.session import open_model
from speechkit.text.tokenizer import load_tokenizer

TOKEN_SPEECH_MARGIN = 0.5  # seconds either side of a token's CIF span where the gate looks for speech
QUIET_SECONDS = 0.1  # the stretch whose energy picks a cut


@dataclass
class OfflineResult:
    text: str
    words: list[tuple[str, float, float]]  # (word, start s, end s)
    token_ids: list[int]
    segments: list[tuple[str, float, float]] = field(default_factory=list)  # (text, start s, end s) per piece


@dataclass
class _Piece:
    start: int  # first sample, from the input's start
    samples: np.ndarray
    gate: SpeechGate | None


class OfflineRecognizer:
    def __init__(self, model_dir: str | Path, *, num_threads: int = 1, model_file: str = "model.onnx",
                 max_batch_seconds: float = 60.0, max_segment: float = 30.0, gate: GateConfig | None = GateConfig(),
                 memory_arena: bool = True, device: str = "cpu"):
        model_dir = Path(model_dir)
        self.session, self.meta, self.fbank_cfg = open_model(model_dir, model_file, "paraformer", "Paraformer", num_threads,
                                                             memory_arena, device)
        meta = self.meta
        self.sample_rate = self.fbank_cfg.sample_rate
        self.subsampling = int(meta["subsampling"])
        self.frame_seconds = self.subsampling * self.fbank_cfg.frame_shift_ms / 1000.0
        self.threshold = float(meta["cif_threshold"])
        self.tokenizer = load_tokenizer(model_dir)
        self.max_batch_frames = int(max_batch_seconds * 1000.0 / self.fbank_cfg.frame_shift_ms)
        self.max_segment = max_segment
        self.gate = gate  # None: every piece is decoded and every token kept

    def prepare(self, samples: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """Mono float32 at the model's rate (other rates are resampled, as in the streaming runtime)."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise AudioError(f"audio must be mono (N,), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise AudioError("audio contains NaN or infinite samples")
        if sample_rate is not None and sample_rate != self.sample_rate and x.size:
            import soxr

            x = soxr.resample(x, sample_rate, self.sample_rate).astype(np.float32)
        return x

    def recognize(self, waveforms: list[np.ndarray], sample_rate: int | None = None) -> list[OfflineResult]:
        """Waveforms of any length → one result each. Long ones are cut into pieces; all pieces
        are decoded shortest first in padded batches, one graph call per batch."""
        by_source: list[list[_Piece]] = []
        for w in waveforms:
            x = self.prepare(w, sample_rate)
            gate = self._gate()
            if gate is not None:
                gate.accept(x)
            by_source.append([_Piece(start, p, gate) for start, p in self.segments(x)])
        results: dict[int, OfflineResult] = {}
        for batch in self._batches(sorted((p for ps in by_source for p in ps), key=lambda p: len(p.samples)), self.max_batch_frames):
            results.update(zip(map(id, batch), self._decode(batch)))
        return [_join([(p.start, len(p.samples), results[id(p)]) for p in ps], self.sample_rate) for ps in by_source]

    def recognize_blocks(self, blocks: Iterable[np.ndarray]) -> OfflineResult:
        """One input of any length given as consecutive float32 mono blocks at the model's rate
        (``speechkit.audio.io.read_blocks``): holds at most one piece being cut and one batch."""
        gate = self._gate()

        def feed():
            for b in blocks:
                if gate is not None:
                    gate.accept(b)
                yield b

        pieces = (_Piece(start, p, gate) for start, p in cut_at_quiet_points(feed(), self._max_samples(), self._quiet_samples()))
        done = []  # (start, length, result): a piece's samples are dropped once it is decoded
        one_piece = int(self.max_segment * self.fbank_cfg.frames_per_second) + 1  # a piece per call: the smallest peak, no slower
        for batch in self._batches(pieces, min(one_piece, self.max_batch_frames)):
            done += [(p.start, len(p.samples), r) for p, r in zip(batch, self._decode(batch))]
        return _join(done, self.sample_rate)

    def recognize_file(self, path: str | Path, block_seconds: float = 1.0, convert: bool = True) -> OfflineResult:
        """A file of any length, read a block at a time. ``convert``: resample another rate and
        average channels (else such a file is an ``AudioError``)."""
        from speechkit.audio.io import read_blocks

        blocks = read_blocks(path, block_seconds, self.sample_rate, resample=convert, downmix=convert)
        return self.recognize_blocks(b for b, _ in blocks)

    def transcribe_batch(self, waveforms: list[np.ndarray]) -> list[str]:
        return [r.text for r in self.recognize(waveforms)]

    def transcribe_long(self, samples: np.ndarray, sample_rate: int | None = None) -> OfflineResult:
        """Any length (what :meth:`recognize` does for one input)."""
        return self.recognize([samples], sample_rate)[0]

    def segments(self, samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Cut a waveform at the quietest 100 ms in the last third of each ``max_segment`` window
        → (start sample, piece); the pieces are views of ``samples``."""
        return list(cut_at_quiet_points([samples], self._max_samples(), self._quiet_samples()))

    def _max_samples(self) -> int:
        return int(self.max_segment * self.sample_rate)

    def _quiet_samples(self) -> int:
        return int(QUIET_SECONDS * self.sample_rate)

    def _gate(self) -> SpeechGate | None:
        return SpeechGate(self.sample_rate, self.gate) if self.gate is not None else None

    def _batches(self, pieces: Iterable[_Piece], max_frames: int) -> Iterator[list[_Piece]]:
        """Consecutive pieces grouped while the padded batch stays within ``max_frames`` fbank frames."""
        batch: list[_Piece] = []
        longest = 0
        frames_per_sample = self.fbank_cfg.frames_per_second / self.sample_rate
        for p in pieces:
            n = max(longest, int(len(p.samples) * frames_per_sample) + 1)
            if batch and n * (len(batch) + 1) > max_frames:
                yield batch
                batch, n = [], int(len(p.samples) * frames_per_sample) + 1
            batch.append(p)
            longest = n
        if batch:
            yield batch

    def _decode(self, batch: list[_Piece]) -> list[OfflineResult]:
        """One graph call over the pieces the gate lets through; the others give empty results."""
        speech = [p for p in batch if p.gate is None or p.gate.is_speech(*self._span(p))]
        found = dict(zip(map(id, speech), self._tokens([compute_fbank(p.samples, self.fbank_cfg) for p in speech]))) if speech else {}
        return [self._result(*self._keep_speech(p, *found[id(p)])) if id(p) in found else OfflineResult("", [], []) for p in batch]

    def _span(self, p: _Piece) -> tuple[float, float]:
        return p.start / self.sample_rate, (p.start + len(p.samples)) / self.sample_rate

    def _keep_speech(self, p: _Piece, ids: list[int], spans: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
        """The tokens with speech within ``TOKEN_SPEECH_MARGIN`` of their CIF span (looking only
        inside the piece, so the answer does not depend on how the input was read)."""
        if p.gate is None:
            return ids, spans
        lo, hi = self._span(p)
        sec, m = self.frame_seconds, TOKEN_SPEECH_MARGIN
        keep = [p.gate.is_speech(max(lo, lo + s * sec - m), min(hi, lo + (f + 1) * sec + m)) for s, f in spans]
        return [i for i, k in zip(ids, keep) if k], [sp for sp, k in zip(spans, keep) if k]

    def _result(self, ids: list[int], spans: list[tuple[int, int]]) -> OfflineResult:
        words = word_times([self.tokenizer.id_to_piece(i) for i in ids], spans, self.frame_seconds)
        return OfflineResult(self.tokenizer.decode(ids), words, ids)

    def _run(self, feats: list[np.ndarray]) -> list[OfflineResult]:
        """Fbank arrays → one ungated result each, in one graph call."""
        return [self._result(ids, spans) for ids, spans in self._tokens(feats)]

    def _tokens(self, feats: list[np.ndarray]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Fbank arrays → (token ids, (start, fire) encoder frame of each token) per array."""
        short = [len(f) < 7 for f in feats]  # fewer fbank frames than one encoder frame needs
        x, lens = pad_feats(feats, min_frames=7)
        tokens, token_lens, _, alphas, alphas_len = self.session.run(
            ["tokens", "token_lens", "log_probs", "alphas", "alphas_len"], {"x": x, "x_lens": lens})
        out = []
        for b in range(len(feats)):
            n = 0 if short[b] else int(token_lens[b])
            out.append((tokens[b, :n].tolist(), token_spans(alphas[b, : int(alphas_len[b])], n, self.threshold)))
        return out


def cut_at_quiet_points(blocks: Iterable[np.ndarray], max_samples: int, quiet: int) -> Iterator[tuple[int, np.ndarray]]:
    """Consecutive blocks of one waveform → (start sample, piece), each piece at most
    ``max_samples`` long and cut at the quietest ``quiet`` samples in the last third of its
    window. Holds at most one window and one block; a single block passed whole is cut into views."""
    buf: list[np.ndarray] = []
    held, start = 0, 0
    for block in blocks:
        buf.append(np.asarray(block, dtype=np.float32))
        held += len(buf[-1])
        if held <= max_samples:
            continue
        x = buf[0] if len(buf) == 1 else np.concatenate(buf)
        at = 0
        while len(x) - at > max_samples:
            window = x[at + 2 * max_samples // 3 : at + max_samples]
            energy = np.add.reduceat(window.astype(np.float64) ** 2, np.arange(0, len(window), quiet))
            cut = at + 2 * max_samples // 3 + int(np.argmin(energy)) * quiet + quiet // 2
            yield start, x[at:cut]
            start += cut - at
            at = cut
        buf, held = [x[at:]], len(x) - at
    if held:
        yield start, buf[0] if len(buf) == 1 else np.concatenate(buf)


def _join(pieces: list[tuple[int, int, OfflineResult]], sample_rate: int) -> OfflineResult:
    """(start sample, length, result) of one input's pieces → one result: texts joined in order,
    word times shifted."""
    words, ids, texts, segments = [], [], [], []
    for start, length, r in sorted(pieces, key=lambda piece: piece[0]):
        offset = start / sample_rate
        words += [(w, s + offset, e + offset) for w, s, e in r.words]
        ids += r.token_ids
        texts += [r.text] if r.text else []
        segments.append((r.text, round(offset, 3), round((start + length) / sample_rate, 3)))
    return OfflineResult(" ".join(texts), words, ids, segments)


def recognize_paths(rec: OfflineRecognizer, paths: list[str], batch: int = 16, convert: bool = True
                    ) -> Iterator[tuple[str, OfflineResult | AudioError]]:
    """Files → (path, result or the one-line error that stopped it), in the order given. Files of
    at most ``max_segment`` seconds are read whole and decoded ``batch`` at a time in padded
    batches; longer ones a block at a time. ``convert``: resample and downmix; without it a file
    at another rate or with several channels is an error. One file's failure, in reading or in
    decoding, costs no other file its result."""
    from speechkit.audio.io import audio_duration, load_audio

    for at in range(0, len(paths), batch):
        group = paths[at : at + batch]
        out: dict[str, OfflineResult | AudioError] = {}
        short: dict[str, np.ndarray] = {}
        for path in group:
            try:
                if audio_duration(path) <= rec.max_segment:
                    short[path] = load_audio(path, rec.sample_rate, resample=convert, downmix=convert)[0]
            except AudioError as e:
                out[path] = e
        try:
            out.update(zip(short, rec.recognize(list(short.values()))))
        except Exception:  # noqa: BLE001 - find the file at fault: decode them one by one
            for path, x in short.items():
                out[path] = _guarded(path, lambda: rec.recognize([x])[0])
        for path in group:
            if path not in out:
                out[path] = _guarded(path, lambda: rec.recognize_file(path, convert=convert))
            yield path, out[path]


def _guarded(path: str, work) -> OfflineResult | AudioError:
    """``work()``, or the one-line error that stopped it, in reading or in the model."""
    try:
        return work()
    except Exception as e:  # noqa: BLE001 - one file's failure must not stop a batch job
        return decoding_error(path, e)
