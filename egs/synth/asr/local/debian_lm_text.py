#!/usr/bin/env python3
"""English text for a word language model from Debian packages, fetched with `apt-get download`
(nothing installed): the quotations of `fortunes-min` and `fortunes`, and the glosses and examples
of `wordnet-base`. One sentence per line, 3 to 40 words, in OUT/fortunes.txt and OUT/wordnet.txt, for
`speechkit lm train LM.arpa --text OUT/fortunes.txt OUT/wordnet.txt [--sentences 200000]`.

    python3 egs/synth/asr/local/debian_lm_text.py OUT
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGES = ("fortunes-min", "fortunes", "wordnet-base")  # fortunes-min holds the "fortunes" file itself
MIN_WORDS, MAX_WORDS = 3, 40


def _fetch(tmp: Path) -> Path:
    """The packages' files unpacked under ``tmp/root``; a package apt cannot fetch is a one-line error."""
    for package in PACKAGES:
        r = subprocess.run(["apt-get", "download", "-qq", package], cwd=tmp, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"debian_lm_text: apt-get download {package} failed: {r.stderr.strip().splitlines()[-1:] or r.returncode}")
    for deb in tmp.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], check=True)
    return tmp / "root"


def _keep(sentence: str) -> bool:
    return MIN_WORDS <= len(sentence.split()) <= MAX_WORDS


def fortunes(root: Path) -> list[str]:
    out = []
    for f in sorted((root / "usr/share/games/fortunes").iterdir()):
        if f.suffix or f.is_symlink() or not f.is_file():  # .dat indexes and .u8 links
            continue
        for entry in f.read_text(encoding="latin-1").split("\n%\n"):
            entry = re.sub(r"\s+", " ", entry).strip()
            out += [s for s in re.split(r"(?<=[.!?])\s+", entry) if _keep(s)]
    return out


def wordnet(root: Path) -> list[str]:
    out = []
    for f in sorted((root / "usr/share/wordnet").glob("data.*")):
        for line in f.read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:  # the licence header
                continue
            for part in line.split("|", 1)[1].split(";"):
                part = part.strip().strip('"').strip()
                if _keep(part):
                    out.append(part)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder for fortunes.txt and wordnet.txt")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = _fetch(Path(tmp))
        for name, sentences in (("fortunes", fortunes(root)), ("wordnet", wordnet(root))):
            (out / f"{name}.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
            print(f"{out / name}.txt: {len(sentences)} sentences, {sum(len(s.split()) for s in sentences)} words")


if __name__ == "__main__":
    main()
