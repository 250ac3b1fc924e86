"""espeak-ng for the phonemiser (:mod:`speechkit.text.phonemes`) and the synthetic corpus's speech
engines (:mod:`speechkit.data.synth.engines`): its command line, and a resident phonemiser that
answers one line of words in about a millisecond instead of a process start.

The resident phonemiser runs the espeak-ng shared library in this process (ctypes) when it is the
same release, with the same data, as the ``espeak-ng`` program; else one ``espeak-ng`` process kept
alive behind a pipe. Either makes exactly the calls the program makes for ``PHONEME_OPTIONS``
(initialisation, voice, rate, phoneme trace, ``espeak_Synth`` per input line), so both give the
program's output byte for byte. ``espeak_TextToPhonemes``, the library's faster shortcut, does not:
it skips the intonation pass, which marks the strongest syllable of a clause without a primary
stress (``the`` → ``ð_ə``, not ``ð_ˈə``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from speechkit.errors import SpeechkitError

log = logging.getLogger(__name__)

# The program's options for phonemes: IPA on stdout, phonemes separated by "_" (words by " "),
# UTF-8 input. The phonemes do not depend on the speaking rate, but the synthesis espeak-ng runs
# under -q does: 400 wpm (below the 450 at which its slower "sonic" speed-up starts) halves the time.
PHONEME_OPTIONS = ("-q", "--ipa", "--sep=_", "-b", "1", "-s", "400")
# The same settings as library calls (espeak-ng.c of 1.51: -b 1 adds espeakCHARS_UTF8 to the
# program's espeakPHONEMES | espeakENDPAUSE; --ipa --sep=_ is espeakPHONEMES_SHOW | _IPA with "_").
_SYNTH_FLAGS = 0x1 | 0x100 | 0x1000
_PHONEME_MODE = 0x01 | 0x02 | (ord("_") << 8)
_RATE = 400
_ESPEAK_RATE, _POS_CHARACTER, _SYNCHRONOUS_OUTPUT = 1, 1, 0x0001
_PROGRAM_LINE_BYTES = 999  # the program reads stdin with fgets into 1000 bytes: longer lines come in pieces

NOT_FOUND = ("espeak-ng not found: install it (apt-get install espeak-ng) or put it on PATH"
             " (SPEECHKIT_ESPEAK_DATA names its data dir when it is not installed system-wide)")
BACKENDS = ("library", "process")
RESIDENT_TIMEOUT_S = 20.0  # one line takes milliseconds; a resident engine this late is hung
# After each line the resident process is given this line; its answer (learnt when the process
# starts) closes the line's answer. English voices read Cyrillic letters with "ɛː", a vowel no
# English word has, so no line of the phonemiser's words (ASCII) is answered with the same line.
_MARKER = "ЖЖ"


def espeak_data_path() -> str | None:
    """The folder holding ``espeak-ng-data`` when SPEECHKIT_ESPEAK_DATA or ESPEAK_DATA_PATH names an
    unpacked data dir (either ``espeak-ng-data`` itself or that folder); None: the installed data."""
    data = os.environ.get("SPEECHKIT_ESPEAK_DATA") or os.environ.get("ESPEAK_DATA_PATH")
    if not data:
        return None
    path = Path(data)
    return str(path.parent if path.name == "espeak-ng-data" else path)


def espeak_command() -> list[str]:
    """``espeak-ng``, plus ``--path`` when :func:`espeak_data_path` names a data dir."""
    data = espeak_data_path()
    return ["espeak-ng"] if data is None else ["espeak-ng", f"--path={data}"]


def program_release() -> tuple[str, str]:
    """(release, data dir) of the ``espeak-ng`` program, from ``--version``."""
    try:
        out = subprocess.run([*espeak_command(), "--version"], capture_output=True, encoding="utf-8",
                             timeout=RESIDENT_TIMEOUT_S).stdout
    except FileNotFoundError:
        raise SpeechkitError(NOT_FOUND) from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SpeechkitError(f"espeak-ng --version failed: {e}") from None
    # "eSpeak NG text-to-speech: 1.51  Data at: /usr/lib/x86_64-linux-gnu/espeak-ng-data"
    head, _, data = out.strip().partition("Data at:")
    return head.rpartition(":")[2].strip(), data.strip()


class EspeakFailed(Exception):
    """A resident engine died, hung or answered out of step: restart it (inside this module)."""


class ProcessEspeak:
    """One ``espeak-ng`` process reading lines from a pipe, for one voice: the program flushes its
    answer after every line, and the marker line after each request closes the answer."""

    def __init__(self, voice: str, timeout_s: float = RESIDENT_TIMEOUT_S):
        self.voice, self.timeout_s = voice, timeout_s
        try:
            self.proc = subprocess.Popen([*espeak_command(), *PHONEME_OPTIONS, "-v", voice], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        except FileNotFoundError:
            raise SpeechkitError(NOT_FOUND) from None
        except OSError as e:
            raise EspeakFailed(f"to start: {e}") from None
        self._pending = b""
        try:
            self._send(f"{_MARKER}\n{_MARKER}\n")
            self.marker = self._read_line()
            if not self.marker or self._read_line() != self.marker:
                raise EspeakFailed(f"with voice '{voice}': it reads the marker line {_MARKER!r} as nothing, "
                                   "or twice differently")
        except EspeakFailed:
            self.close()
            raise

    def line(self, line: str) -> str:
        """espeak-ng's IPA for one line of words (its clauses joined by " ")."""
        _check_line(line)
        self._send(f"{line}\n{_MARKER}\n")
        parts = []
        while (answer := self._read_line()) != self.marker:
            if answer:
                parts.append(answer)
        return " ".join(parts)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()

    def _send(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        try:
            while data:
                data = data[os.write(self.proc.stdin.fileno(), data):]
        except OSError:  # BrokenPipeError: it died
            raise EspeakFailed(self._death()) from None

    def _read_line(self) -> str:
        """The next answer line, stripped; waits at most ``timeout_s`` for it."""
        deadline = time.monotonic() + self.timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise EspeakFailed(f"(no answer in {self.timeout_s:g} s) with voice '{self.voice}'")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EspeakFailed(self._death())
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode("utf-8", errors="replace").strip()

    def _death(self) -> str:
        """Why the process stopped: its exit status and the last line it wrote to stderr."""
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return f"(its pipe closed) with voice '{self.voice}'"
        message = (self.proc.stderr.read().decode("utf-8", errors="replace").strip().splitlines() or [""])[-1]
        return f"(exit {code}) with voice '{self.voice}': {message}".rstrip(": ")


def _check_line(line: str) -> None:
    if "\n" in line or "\0" in line:
        raise ValueError("a line for espeak-ng holds no newline or NUL")


def _library_path() -> str | None:
    return ctypes.util.find_library("espeak-ng")


class _VoiceSelector(ctypes.Structure):
    """espeak_VOICE, as ``espeak_ng_SetVoiceByProperties`` reads it."""

    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


class LibraryEspeak:
    """libespeak-ng in this process. The library has one global state, so there is one of these per
    process (:func:`library_espeak`), switched between voices, and callers hold ``lock``. It sets
    LC_CTYPE to a UTF-8 locale (C.UTF-8 first) on start, as the program does."""

    lock = threading.Lock()

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        self.voice: str | None = None
        self._clauses: list[bytes] = []
        # The callbacks must outlive every call into the library: keep them on self.
        self._on_audio = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)(lambda *a: 0)
        self._on_phonemes = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p)(self._clause)
        lib.espeak_ng_InitializePath.argtypes = [ctypes.c_char_p]
        lib.espeak_ng_Initialize.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.espeak_ng_GetStatusCodeMessage.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        lib.espeak_ng_InitializeOutput.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
        lib.espeak_ng_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_ng_SetVoiceByProperties.argtypes = [ctypes.POINTER(_VoiceSelector)]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetPhonemeTrace.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        data = espeak_data_path()
        lib.espeak_ng_InitializePath(None if data is None else data.encode())
        context = ctypes.c_void_p()
        self._status("initialise", lib.espeak_ng_Initialize(ctypes.byref(context)))
        self._status("set up output", lib.espeak_ng_InitializeOutput(_SYNCHRONOUS_OUTPUT, 0, None))
        lib.espeak_SetSynthCallback(self._on_audio)
        lib.espeak_SetPhonemeCallback(self._on_phonemes)
        libc = ctypes.CDLL(None)
        libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
        self._devnull = libc.fopen(b"/dev/null", b"w")  # the trace's copy of each clause (the callback has it)
        if not self._devnull:
            raise SpeechkitError("libespeak-ng: cannot open /dev/null for its phoneme trace")
        lib.espeak_SetPhonemeTrace(_PHONEME_MODE, self._devnull)

    def release(self) -> tuple[str, str]:
        """(release, data dir) of the loaded library."""
        path = ctypes.c_char_p()
        version = self.lib.espeak_Info(ctypes.byref(path))
        return version.decode(), (path.value or b"").decode()

    def use_voice(self, voice: str) -> None:
        """As the program's -v: the voice by name, else the best voice for that language."""
        if voice == self.voice:
            return
        self.voice = None
        if self.lib.espeak_ng_SetVoiceByName(voice.encode()) != 0:
            selector = _VoiceSelector(languages=voice.encode())
            status = self.lib.espeak_ng_SetVoiceByProperties(ctypes.byref(selector))
            if status != 0:
                raise SpeechkitError(f"espeak-ng has no voice '{voice}': {self._message(status)}")
        self.lib.espeak_SetParameter(_ESPEAK_RATE, _RATE, 0)
        self.voice = voice

    def line(self, line: str) -> str:
        """espeak-ng's IPA for one line of words (its clauses joined by " "), in ``self.voice``."""
        _check_line(line)
        data = (line + "\n").encode("utf-8")
        self._clauses = []
        for start in range(0, len(data), _PROGRAM_LINE_BYTES):
            piece = data[start : start + _PROGRAM_LINE_BYTES]
            status = self.lib.espeak_Synth(piece, len(piece) + 1, 0, _POS_CHARACTER, 0, _SYNTH_FLAGS, None, None)
            if status != 0:
                raise SpeechkitError(f"libespeak-ng failed on a line (status {status})")
        return " ".join(c.decode("utf-8", errors="replace").strip() for c in self._clauses if c.strip())

    def _clause(self, phonemes: bytes) -> int:
        self._clauses.append(phonemes or b"")
        return 0

    def _message(self, status: int) -> str:
        buf = ctypes.create_string_buffer(512)
        self.lib.espeak_ng_GetStatusCodeMessage(status, buf, len(buf))
        return buf.value.decode("utf-8", errors="replace").strip() or f"status {status:#x}"

    def _status(self, what: str, status: int) -> None:
        if status != 0:
            raise SpeechkitError(f"libespeak-ng cannot {what}: {self._message(status)}")


_library: LibraryEspeak | None = None
_library_tried = False


def library_espeak(program: tuple[str, str]) -> LibraryEspeak | None:
    """This process's :class:`LibraryEspeak` when libespeak-ng is installed and is the ``program``'s
    own release (:func:`program_release`) reading the same data, so that the two cannot disagree;
    None otherwise. The library is loaded and started once per process."""
    global _library, _library_tried
    with LibraryEspeak.lock:
        if not _library_tried:
            _library_tried = True
            path = _library_path()
            try:
                _library = LibraryEspeak(ctypes.CDLL(path)) if path else None
            except (OSError, AttributeError, SpeechkitError) as e:
                log.info("libespeak-ng unusable (%s)", e)
        if _library is None:
            return None
        release, data = _library.release()
        if release != program[0] or os.path.realpath(data) != os.path.realpath(program[1]):
            log.info("libespeak-ng %s (%s) is not the espeak-ng program's %s (%s)", release, data, *program)
            return None
        return _library


def _reset_library_lock() -> None:
    LibraryEspeak.lock = threading.Lock()  # a lock held by another thread at a fork stays held in the child


os.register_at_fork(after_in_child=_reset_library_lock)


class ResidentEspeak:
    """Lines → IPA without a process start per call, safe across threads (one lock: one request at
    a time). ``backend``: "library", "process" or None (SPEECHKIT_ESPEAK_BACKEND when this is made,
    else the library where :func:`library_espeak` allows it). A resident process that dies, hangs or answers out of
    step is restarted silently; a second failure in a row is a one-line SpeechkitError."""

    def __init__(self, backend: str | None = None, timeout_s: float = RESIDENT_TIMEOUT_S):
        backend = backend or os.environ.get("SPEECHKIT_ESPEAK_BACKEND") or None
        if backend is not None and backend not in BACKENDS:
            raise SpeechkitError(f"espeak-ng backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.backend, self.timeout_s = backend, timeout_s
        self._processes: dict[str, ProcessEspeak] = {}
        self._library: LibraryEspeak | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def lines(self, lines: list[str], voice: str) -> list[str]:
        """espeak-ng's IPA for each line of words, in order (as one ``espeak-ng`` process gives it)."""
        self._after_fork()
        with self._lock:
            if self._library is None and self.backend != "process":
                self._library = library_espeak(program_release())
                if self._library is None and self.backend == "library":
                    raise SpeechkitError("libespeak-ng is not installed as the espeak-ng program's own library")
                self.backend = "library" if self._library is not None else "process"
            if self._library is not None:
                with LibraryEspeak.lock:
                    self._library.use_voice(voice)
                    return [self._library.line(line) for line in lines]
            return self._retry(voice, lambda proc: [proc.line(line) for line in lines])

    def close(self) -> None:
        """Stop the resident processes (the next call starts them again)."""
        with self._lock:
            for proc in self._processes.values():
                proc.close()
            self._processes.clear()

    def process(self, voice: str) -> ProcessEspeak | None:
        """The running process for ``voice``, if any (tests kill it)."""
        return self._processes.get(voice)

    def _retry(self, voice: str, work: Callable[[ProcessEspeak], list[str]]) -> list[str]:
        for attempt in (1, 2):
            proc = self._processes.get(voice)
            if proc is None:
                try:
                    proc = self._processes[voice] = ProcessEspeak(voice, self.timeout_s)
                except EspeakFailed as e:  # a fresh process that cannot answer: a bad voice, a broken install
                    raise SpeechkitError(f"espeak-ng failed {e}") from None
            try:
                return work(proc)
            except EspeakFailed as e:
                stale = self._processes.pop(voice, None)
                if stale is not None:
                    stale.close()
                if attempt == 2:
                    raise SpeechkitError(f"espeak-ng failed twice in a row ({e})") from None
                log.debug("resident espeak-ng restarted after: %s", e)
        raise AssertionError("unreachable")

    def _after_fork(self) -> None:
        """A forked child must not share its parent's pipes (nor a lock held at the fork)."""
        if os.getpid() == self._pid:
            return
        for proc in self._processes.values():
            for pipe in (proc.proc.stdin, proc.proc.stdout, proc.proc.stderr):
                pipe.close()
        self._processes = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
