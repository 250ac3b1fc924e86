"""The espeak-ng command line, shared by the phonemiser (:mod:`speechkit.text.phonemes`) and the
synthetic corpus's speech engines (:mod:`speechkit.data.synth.engines`)."""

from __future__ import annotations

import os
from pathlib import Path


def espeak_command() -> list[str]:
    """``espeak-ng``, plus ``--path`` when SPEECHKIT_ESPEAK_DATA or ESPEAK_DATA_PATH names an
    unpacked data dir (either ``espeak-ng-data`` itself or the folder holding it)."""
    data = os.environ.get("SPEECHKIT_ESPEAK_DATA") or os.environ.get("ESPEAK_DATA_PATH")
    if not data:
        return ["espeak-ng"]
    path = Path(data)
    return ["espeak-ng", f"--path={path.parent if path.name == 'espeak-ng-data' else path}"]
