"""The text-to-music corpus (``speechkit corpus music``): random but musical MIDI pieces
(``compose``), rendered with a General-MIDI soundfont (``render``), captioned from their labels
(``captions``) and written as Kaldi data dirs (``corpus``).

pretty_midi and tinysoundfont are imported through :func:`require`, so a machine without them
gets one line naming the install command instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from speechkit.errors import SpeechkitError

# tinysoundfont declares pyaudio, which only its real-time playback uses: tools/setup.sh installs
# it with --no-deps.
INSTALL_COMMANDS = {
    "tinysoundfont": "pip install --no-deps tinysoundfont==0.3.7",
    "pretty_midi": "pip install pretty_midi==0.2.11.post0 mido==1.3.3",
}


def require(module: str) -> ModuleType:
    """Import ``module`` (one of ``INSTALL_COMMANDS``) or stop with the line that says how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SpeechkitError(
            f"the music corpus needs {module}, which is not installed; run tools/setup.sh or `{INSTALL_COMMANDS[module]}`"
        ) from None
