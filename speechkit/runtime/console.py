"""The streaming recognizer from the command line: transcribe files, stream a file (optionally
at real-time pace) or the microphone, printing partial results as they change. No torch.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from speechkit.audio.io import read_blocks
from speechkit.errors import AudioError, SpeechkitError
from speechkit.runtime.asr import OnlineRecognizer, Stream, decoding_error
from speechkit.runtime.events import ResultTracker
from speechkit.runtime.transducer import CTC_FAMILY as SHERPA_CTC_FAMILY
from speechkit.runtime.transducer import TRANSDUCER_FAMILY, SherpaCtcRecognizer, TransducerRecognizer

BLOCK_SECONDS = 1.0  # files are read in blocks so a two-hour file never sits in memory


def file_blocks(path: str | Path, block_seconds: float = BLOCK_SECONDS):
    """Yield (float32 mono block, the file's rate); mono downmix of multichannel files; one-line errors."""
    return read_blocks(path, block_seconds, downmix=True)


def _drain(rec: OnlineRecognizer, s: Stream) -> None:
    while rec.is_ready(s):
        rec.decode_streams([s])
    rec.is_done(s)  # closes the last segment once the input is finished


def transcribe_file(rec: OnlineRecognizer, path: str | Path) -> str:
    s = rec.create_stream()
    for block, rate in file_blocks(path):
        s.accept_waveform(block, rate)
        _drain(rec, s)
    s.input_finished()
    _drain(rec, s)
    return rec.text(s)


def model_family(model_dir: str | Path) -> str:
    """The exported model's family from its export.json (streaming CTC when it does not say)."""
    info = Path(model_dir) / "export.json"
    if info.is_file():
        return json.loads(info.read_text()).get("model_family", "ctc-streaming-conformer")
    return "ctc-streaming-conformer"


def refuse_lm(model_dir: str | Path, family: str) -> None:
    """The one-line error for a language model given to a family whose search takes none."""
    raise SpeechkitError(f"{model_dir}: a language model (--lm) is fused into the streaming CTC models' beam search only, "
                         f"not a {family} model's")


def open_recognizer(model_dir: str | Path, **options) -> OnlineRecognizer:
    """The streaming recognizer for an exported folder, by its family: a sherpa-format transducer
    or CTC model (``speechkit export sherpa``; the CTC one refuses ``beam`` > 1) or our streaming
    CTC graph; ``options`` go to its constructor."""
    family = model_family(model_dir)
    if options.get("lm") is None:
        options.pop("lm", None)
    elif family in (TRANSDUCER_FAMILY, SHERPA_CTC_FAMILY):
        refuse_lm(model_dir, family)
    if family == TRANSDUCER_FAMILY:
        return TransducerRecognizer(model_dir, **options)
    if family == SHERPA_CTC_FAMILY:
        return SherpaCtcRecognizer(model_dir, **options)
    return OnlineRecognizer(model_dir, **options)


def _skipped(path: str, e: AudioError) -> None:
    msg = str(e) if str(e).startswith(str(path)) else f"{path}: {e}"
    print(f"speechkit: skipped: {msg}", file=sys.stderr)


def transcribe_files_offline(model_dir: str, files: list[str], threads: int = 1, batch_files: int = 16,
                             device: str = "cpu") -> int:
    """Paraformer: short files recognised ``batch_files`` at a time in one padded batch; long ones
    a block at a time, cut at quiet points. Prints ``<path> <text>`` in the order given."""
    from speechkit.runtime.paraformer import OfflineRecognizer, recognize_paths

    rec = OfflineRecognizer(model_dir, num_threads=threads, device=device)
    failed = 0
    for path, r in recognize_paths(rec, files, batch_files):
        if isinstance(r, AudioError):
            _skipped(path, r)
            failed += 1
        else:
            print(f"{path} {r.text}", flush=True)
    return failed


def transcribe_files(model_dir: str, files: list[str], threads: int = 1, att_context=None, beam: int = 1, lm=None,
                     device: str = "cpu") -> int:
    """Print ``<path> <text>`` per file; a file that cannot be read or decoded is reported on
    stderr and skipped. Returns the number of files that failed."""
    if model_family(model_dir) == "paraformer":
        if lm is not None:
            refuse_lm(model_dir, "paraformer")
        return transcribe_files_offline(model_dir, files, threads, device=device)
    rec = open_recognizer(model_dir, num_threads=threads, att_context=att_context, beam=beam, device=device, lm=lm)
    failed = 0
    for path in files:
        try:
            print(f"{path} {transcribe_file(rec, path)}", flush=True)
        except Exception as e:  # noqa: BLE001 - one file's failure, in reading or in the model, must not stop the others
            _skipped(path, decoding_error(path, e))
            failed += 1
    return failed


class _Printer:
    """Partials on one rewritten line on a terminal, one line per change otherwise."""

    def __init__(self, rec: OnlineRecognizer, out=sys.stdout):
        self.tracker, self.out, self.tty = ResultTracker(rec), out, out.isatty()

    def update(self, s: Stream) -> None:
        for r in self.tracker.update(s):
            if r.kind == "final":
                self._line(f"final [{r.start:.2f}-{r.end:.2f} s]: {r.text}", final=True)
            else:
                self._line(f"partial: {r.text}", final=False)

    def _line(self, text: str, final: bool) -> None:
        if self.tty:
            self.out.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()


def stream_file(model_dir: str, wav: str, realtime: bool = False, threads: int = 1, att_context=None, beam: int = 1, lm=None,
                device: str = "cpu") -> str:
    rec = open_recognizer(model_dir, num_threads=threads, att_context=att_context, beam=beam, device=device, lm=lm)
    s, printer = rec.create_stream(), _Printer(rec)
    piece = rec.chunk_ms / 1000.0
    start = time.monotonic()
    fed = 0.0
    for block, rate in file_blocks(wav, piece):
        if realtime:  # hand audio over no faster than a microphone would
            time.sleep(max(0.0, start + fed - time.monotonic()))
        s.accept_waveform(block, rate)
        fed += len(block) / rate
        _drain(rec, s)
        printer.update(s)
    s.input_finished()
    _drain(rec, s)
    printer.update(s)
    text = rec.text(s)
    print(f"text: {text}")
    return text


def stream_mic(model_dir: str, threads: int = 1, att_context=None, audio_device=None, device: str = "cpu", beam: int = 1,
               lm=None) -> None:
    """``audio_device``: sounddevice's input name or index (None: the system's); ``device``: where the model runs."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:  # OSError: the package is there but PortAudio is not
        raise SpeechkitError(f"--mic needs sounddevice and PortAudio (pip install 'speechkit[mic]'): {e}") from None
    try:
        info = sd.query_devices(audio_device, kind="input")
    except Exception as e:  # sounddevice raises PortAudioError / ValueError when nothing is there
        raise SpeechkitError(f"no audio input device ({str(e).splitlines()[0] if str(e) else type(e).__name__}); use --wav FILE") from None
    rec = open_recognizer(model_dir, num_threads=threads, att_context=att_context, device=device, beam=beam, lm=lm)
    s, printer = rec.create_stream(), _Printer(rec)
    print(f"listening on {info['name']} at {rec.sample_rate} Hz; Ctrl-C to stop", file=sys.stderr)
    block = int(rec.sample_rate * rec.chunk_ms / 1000)
    try:
        with sd.InputStream(device=audio_device, channels=1, samplerate=rec.sample_rate, dtype="float32", blocksize=block) as mic:
            while True:
                data, _ = mic.read(block)
                s.accept_waveform(data[:, 0])
                _drain(rec, s)
                printer.update(s)
    except KeyboardInterrupt:
        s.input_finished()
        _drain(rec, s)
        printer.update(s)
        print(f"text: {rec.text(s)}")
