"""A recipe run set beside the shipped model of the same recipe: one row each (training hours,
parameters, training time and hardware, WER per test split), read from the files the run leaves
(data dir, ``model_info.json``, ``metrics.jsonl``, ``wer.json``) and from the model's ``card.json``."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

from speechkit.data.kaldi import read_table
from speechkit.errors import SpeechkitError
from speechkit.eval.heldout import corpora, training_text
from speechkit.eval.wer import read_wer_json

RESULTS_HEADING = "## This run against the shipped model"


@dataclass(frozen=True)
class Row:
    model: str
    hours: float  # audio in the training split
    parameters: str  # "1.62 M", as model_info.json writes it
    training: str  # "~8 min, 2 cores"
    wer: dict[str, float | None]  # split -> WER %, None where it was not decoded


def data_hours(data_dir: str | Path) -> float:
    """Hours of audio in a Kaldi data dir, from its ``utt2dur``."""
    return sum(float(d) for d in read_table(Path(data_dir) / "utt2dur").values()) / 3600


def training_seconds(metrics_jsonl: str | Path) -> float:
    """Training time in an experiment's ``metrics.jsonl``: its last ``elapsed_s``, plus the last one
    before each resume (a resumed run starts its clock again)."""
    total = last = 0.0
    for line in Path(metrics_jsonl).read_text().splitlines():
        elapsed = json.loads(line).get("elapsed_s") if line.strip() else None
        if elapsed is None:
            continue
        if elapsed < last:
            total += last
        last = elapsed
    return total + last


def _duration(seconds: float) -> str:
    return f"~{seconds / 60:.0f} min" if seconds >= 90 else f"~{seconds:.0f} s"


def run_row(label: str, exp_dir: str | Path, train_dir: str | Path, hardware: str, splits: list[str]) -> Row:
    """The row of a recipe run. Its WER is the ONNX streaming decode (``decode_<split>.stream``,
    the runtime the shipped model goes through) where the run made one, else the PyTorch decode."""
    exp_dir = Path(exp_dir)
    info = exp_dir / "model_info.json"
    if not info.is_file():
        raise SpeechkitError(f"{info}: missing; `speechkit average` writes it (stage 5)")
    wer = {}
    for s in splits:
        stream = exp_dir / f"decode_{s}.stream" / "wer.json"
        wer[s] = read_wer_json(stream if stream.is_file() else exp_dir / f"decode_{s}" / "wer.json", missing_ok=True)
    return Row(label, data_hours(train_dir), json.loads(info.read_text())["parameters"],
               f"{_duration(training_seconds(exp_dir / 'metrics.jsonl'))}, {hardware}", wer)


def load_card(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "card.json"
    if not path.is_file():
        raise SpeechkitError(f"{path}: missing; a shipped model needs its card to be compared")
    return json.loads(path.read_text())


def card_row(label: str, card: dict, decodes: str | Path, splits: list[str]) -> Row:
    """The row of a shipped model: figures from its card, WER from ``decodes/decode_<split>/wer.json``."""
    t = card["training"]
    wer = {s: read_wer_json(Path(decodes) / f"decode_{s}" / "wer.json", missing_ok=True) for s in splits}
    hours = sum(c["train_hours"] for c in corpora(card["corpus"]))  # a fine-tuned model's first corpus too
    return Row(label, round(hours, 2), f"{card['parameters_m']:.2f} M",
               f"~{t['minutes']:.0f} min, {t['hardware']}", wer)


def compare(exp_dir: str | Path, data_dir: str | Path, model_dir: str | Path, decodes: str | Path, run_label: str,
            hardware: str, splits: list[str], device: str = "CPU") -> tuple[str, list[Row], list[str]]:
    """(title, [this run, the shipped model], notes). Where ``data_dir`` is a synth corpus
    (``voices.json``), a note counts the test sentences that the shipped model trained on."""
    data_dir, card = Path(data_dir), load_card(model_dir)
    shipped_label = f"{card['name']} ({card['training']['device']})"
    rows = [run_row(run_label, exp_dir, data_dir / "train", hardware, splits),
            card_row(shipped_label, card, decodes, splits)]
    title = f"what you just trained vs the shipped {card['training']['device']} model (same recipe, same test sets)"
    utts = {s: len(read_table(data_dir / s / "text", allow_empty_value=True)) for s in splits}
    counts = " + ".join(str(utts[s]) for s in splits)
    if all((Path(exp_dir) / f"decode_{s}.stream").is_dir() for s in splits):
        notes = [f"WER: greedy CTC on {counts} utterances, both models through the torch-free streaming runtime "
                 f"(this run's ONNX export; the shipped {card['format']})."]
    else:
        notes = [f"WER: greedy CTC on {counts} utterances; this run through PyTorch, the shipped model "
                 f"({card['format']}) through the torch-free streaming runtime."]
    if rows[0].hours < 0.1 * rows[1].hours:
        notes.append(f"The {device} run is a smoke test of every stage; the recipe at scale is the second line.")
    if (data_dir / "voices.json").is_file():
        corpus = card["corpus"]
        trained = training_text(corpus)  # with the corpus a fine-tuned model was first trained on
        seen = {s: sum(t in trained for t in read_table(data_dir / s / "text", allow_empty_value=True).values())
                for s in splits}
        if any(seen.values()):
            own = card["results"]
            commands = "; ".join(c["command"] for c in corpora(corpus) if "command" in c)
            notes.append(f"Careful: {', '.join(f'{seen[s]} of {utts[s]} {s}' for s in splits)} sentences are in the "
                         f"shipped model's training text ({commands}): not a held-out score for it. On its own "
                         f"held-out test sets it gets " + " / ".join(f"{own[s]['wer']:.1f} % ({own[s]['utterances']} utts)"
                                                                     for s in splits if s in own) + ".")
    return title, rows, notes


def _cells(row: Row, splits: list[str]) -> list[str]:
    hours = f"{row.hours:.1f} h" if row.hours >= 10 else f"{row.hours:.2f} h"
    return [row.model, hours, row.parameters, row.training,
            *(f"{row.wer[s]:.1f} %" if row.wer[s] is not None else "-" for s in splits)]


def console_lines(title: str, rows: list[Row], notes: list[str], splits: list[str]) -> list[str]:
    table = [["model", "train data", "params", "training", *(f"{s} WER" for s in splits)],
             *(_cells(r, splits) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
    return [f"== {title} ==", *lines, *(w for n in notes for w in textwrap.wrap(n, 110))]


def markdown_lines(title: str, rows: list[Row], notes: list[str], splits: list[str]) -> list[str]:
    head = ["model", "train data", "params", "training", *(f"{s} WER" for s in splits)]
    return [RESULTS_HEADING, "", title[0].upper() + title[1:] + ".", "",
            "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(_cells(r, splits)) + " |" for r in rows), "", *(f"- {n}" for n in notes), ""]


def write_results_section(results_md: str | Path, lines: list[str]) -> None:
    """Put the section at the end of RESULTS.md, in place of the one an earlier call wrote."""
    path = Path(results_md)
    text = path.read_text() if path.is_file() else ""
    text = text.split(RESULTS_HEADING)[0].rstrip("\n")
    path.write_text((text + "\n\n" if text else "") + "\n".join(lines))
