"""User-facing errors: one line that names the file (and line or key) at fault.

The CLI prints ``SpeechkitError`` as ``speechkit: error: <message>`` and exits 2, never a
traceback; anything else is a bug and keeps its traceback.
"""


class SpeechkitError(Exception):
    """An error caused by the user's input, explained in one line."""


class AudioError(SpeechkitError):
    """An audio file that cannot be used: unreadable, empty, wrong rate, multichannel, NaN."""


class DataDirError(SpeechkitError):
    """A Kaldi data directory that breaks the format (unsorted, duplicated or missing keys)."""


class ConfigError(SpeechkitError):
    """A YAML config with an unknown key, a wrong type or a missing value."""
