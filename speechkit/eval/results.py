"""RESULTS.md for a recipe: a table of every ``decode_*/wer.json`` under an experiment, with the
command that produced it, the git revision and the model's size."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path


def git_revision(cwd: Path | None = None) -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def results_table(exp_dir: Path) -> list[str]:
    rows = ["| decode | split | utts | WER % | CER % | sub | del | ins | ref words |", "|---|---|---|---|---|---|---|---|---|"]
    for wer_json in sorted(exp_dir.glob("decode_*/wer.json")):
        r = json.loads(wer_json.read_text())
        name = wer_json.parent.name.removeprefix("decode_")
        split, _, mode = name.partition(".")
        rows.append(f"| {mode or 'greedy'} | {split} | {r['utterances']} | {r['wer']:.2f} | {r['cer']:.2f} | "
                    f"{r['substitutions']} | {r['deletions']} | {r['insertions']} | {r['ref_words']} |")
    return rows


def write_results(exp_dir: str | Path, out: str | Path, command: str, title: str, notes: str = "") -> str:
    exp_dir = Path(exp_dir)
    lines = [f"## {title}", "", f"- command: `{command}`", f"- git revision: `{git_revision(Path(__file__).parent)}`",
             f"- date: {datetime.date.today().isoformat()}", f"- experiment: `{exp_dir}`"]
    info = exp_dir / "model_info.json"
    if info.is_file():
        for k, v in json.loads(info.read_text()).items():
            lines.append(f"- {k}: {v}")
    if notes:
        lines += ["", notes]
    lines += ["", *results_table(exp_dir), ""]
    text = "\n".join(lines)
    Path(out).write_text(text)
    return text
