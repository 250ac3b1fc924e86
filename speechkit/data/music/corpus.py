"""``speechkit corpus music``: the embedded text-to-music corpus the audio-generation family
trains on. Clip ``i`` is a pure function of (seed, i): a piece composed by ``compose``, written as
``midi/<utt>.mid``, read back and rendered from that file by ``render``, and captioned from its
labels; so labels, MIDI and audio are the same for any number of jobs.

Kaldi dirs ``train``, ``dev`` and ``test`` (``wav.scp`` with FLAC under ``audio/<split>/``,
``text`` = caption, ``utt2spk`` = the clip itself, ``utt2dur``, ``labels.jsonl``) and
``manifest.json`` (the soundfont and its sha256, settings, counts, instrument vocabulary).
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from speechkit.audio.io import save_audio
from speechkit.data.kaldi import Utterance, write_data_dir
from speechkit.data.music import require
from speechkit.data.music.captions import make_caption
from speechkit.data.music.compose import DRUM_PATTERNS, INSTRUMENTS, RELEASE_SECONDS, STYLES, compose_piece
from speechkit.data.music.render import DEFAULT_SOUNDFONT, PEAK_LEVEL, check_soundfont, render_midi, soundfont_sha256
from speechkit.errors import SpeechkitError

SPLITS = ("train", "dev", "test")
# Of every 20 clips, the first is dev and the second test (90/5/5): a clip keeps its split as the
# corpus grows, and the smallest corpus (MIN_CLIPS) has all three.
SPLIT_CYCLE = 20
MIN_CLIPS = 3
MIN_CLIP_SECONDS = 2 * RELEASE_SECONDS
LABELS_SCHEME = "v1"  # bump when compose or captions change what a (seed, index) gives


def split_of(index: int) -> str:
    return {0: "dev", 1: "test"}.get(index % SPLIT_CYCLE, "train")


def utt_id(index: int) -> str:
    return f"music-{index:07d}"


@dataclass(frozen=True)
class ClipJob:
    index: int
    seed: int
    out: Path
    soundfont: str
    seconds: float
    sample_rate: int


def make_clip(job: ClipJob) -> tuple[dict, float]:
    """Compose, write the MIDI and the FLAC of one clip; returns (its labels line, seconds spent
    rendering)."""
    pm_lib = require("pretty_midi")
    utt, split = utt_id(job.index), split_of(job.index)
    midi, labels = compose_piece(job.seed, job.index, job.seconds)
    buffer = io.BytesIO()
    midi.write(buffer)
    (job.out / "midi" / f"{utt}.mid").write_bytes(buffer.getvalue())
    # rendered from the file's own bytes, so re-rendering the .mid gives these samples exactly
    played = pm_lib.PrettyMIDI(io.BytesIO(buffer.getvalue()))
    start = time.process_time()
    samples = render_midi(played, job.soundfont, job.sample_rate, job.seconds)
    render_seconds = time.process_time() - start
    save_audio(job.out / "audio" / split / f"{utt}.flac", samples, job.sample_rate)
    caption = make_caption(labels, random.Random(f"speechkit-music-caption-{job.seed}-{job.index}"))
    return {"utt": utt, "caption": caption, **labels}, render_seconds


def _manifest(hours: float, seed: int, soundfont: Path, clips: int, clip_seconds: float, sample_rate: int) -> str:
    counts = {split: sum(split_of(i) == split for i in range(clips)) for split in SPLITS}
    return json.dumps({
        "labels_scheme": LABELS_SCHEME,
        "seed": seed,
        "hours": hours,
        "clip_seconds": clip_seconds,
        "sample_rate": sample_rate,
        "peak_level": PEAK_LEVEL,
        "soundfont": str(soundfont),
        "soundfont_sha256": soundfont_sha256(soundfont),
        "clips": counts,
        "instruments": {i.name: i.program for i in INSTRUMENTS},  # caption word: General-MIDI program
        "styles": [s.name for s in STYLES],
        "drum_patterns": list(DRUM_PATTERNS),
    }, indent=1) + "\n"


def _check_args(hours: float, clip_seconds: float, sample_rate: int, nj: int | None) -> None:
    if not math.isfinite(hours) or hours <= 0:
        raise SpeechkitError(f"--hours must be a positive number, got {hours}")
    if not math.isfinite(clip_seconds) or clip_seconds < MIN_CLIP_SECONDS:
        raise SpeechkitError(f"--clip-seconds must be at least {MIN_CLIP_SECONDS:g}, got {clip_seconds}")
    if sample_rate < 8000:
        raise SpeechkitError(f"--sample-rate must be at least 8000, got {sample_rate}")
    if nj is not None and nj < 1:
        raise SpeechkitError(f"--nj must be at least 1, got {nj}")


def build_music_corpus(
    out: str | Path, hours: float = 1.0, seed: int = 0, soundfont: str | Path | None = None, nj: int | None = None,
    clip_seconds: float = 10.0, sample_rate: int = 16000,
) -> None:
    """Write ``out/{train,dev,test}`` of ``ceil(hours * 3600 / clip_seconds)`` clips (at least
    MIN_CLIPS), ``out/audio``, ``out/midi`` and ``out/manifest.json``; skipped when ``out``
    already holds the same corpus. ``nj`` worker processes (default: all cores) change nothing
    in the output."""
    _check_args(hours, clip_seconds, sample_rate, nj)
    out = Path(out).resolve()
    soundfont = Path(soundfont or DEFAULT_SOUNDFONT).resolve()
    require("pretty_midi")
    check_soundfont(soundfont, (i.program for i in INSTRUMENTS), sample_rate)
    clips = max(MIN_CLIPS, math.ceil(round(hours * 3600 / clip_seconds, 6)))
    manifest = _manifest(hours, seed, soundfont, clips, clip_seconds, sample_rate)
    manifest_path = out / "manifest.json"
    built = all((out / split / "labels.jsonl").is_file() for split in SPLITS)
    if built and manifest_path.is_file() and manifest_path.read_text() == manifest:
        print(f"{out}: music corpus already built for seed {seed}, {hours:g} h; nothing to do")
        return

    for sub in ("midi", *(f"audio/{split}" for split in SPLITS)):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [ClipJob(i, seed, out, str(soundfont), clip_seconds, sample_rate) for i in range(clips)]
    nj = min(nj or os.cpu_count() or 1, clips)
    print(f"composing and rendering {clips} clips of {clip_seconds:g} s with {nj} jobs ({soundfont.name})")
    start = time.perf_counter()
    progress = dict(total=clips, desc="music", unit="clip")
    if nj == 1:
        results = [make_clip(job) for job in tqdm(jobs, **progress)]
    else:
        with mp.Pool(nj) as pool:
            results = list(tqdm(pool.imap(make_clip, jobs, chunksize=4), **progress))
    wall = time.perf_counter() - start

    summary = []
    for split in SPLITS:
        lines = [labels for labels, _ in results if split_of(labels["index"]) == split]
        write_data_dir(out / split, [
            Utterance(x["utt"], x["utt"], str(out / "audio" / split / f"{x['utt']}.flac"), x["caption"], x["seconds"])
            for x in lines
        ])
        with open(out / split / "labels.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(x) + "\n" for x in sorted(lines, key=lambda x: x["utt"]))
        summary.append(f"{split} {len(lines)} clips ({len(lines) * clip_seconds / 3600:.2f} h)")
    manifest_path.write_text(manifest)
    audio = clips * clip_seconds
    render_cpu = sum(r for _, r in results)
    print(f"{out}: {', '.join(summary)}; rendering ran at {audio / render_cpu:.0f} s of audio per CPU second, "
          f"{audio / wall:.0f}x real time over {nj} jobs in all")
