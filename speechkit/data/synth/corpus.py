"""``speechkit corpus synth``: the embedded default corpus (DESIGN.md, "The embedded default corpus").

All utterances are planned in this process from one seeded stream of distinct sentences, so no
sentence is in two splits and the same seed gives the same ``text`` and ``utt2spk``; a pool of
workers then synthesises them. ``test_unseen`` uses voices held out of every other split.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from speechkit.audio.io import save_audio
from speechkit.data.kaldi import Utterance, write_data_dir
from speechkit.data.synth.engines import SAMPLE_RATE, Prosody, SynthesisError, Voice, synthesize
from speechkit.data.synth.voices import discover_voices
from speechkit.errors import SpeechkitError
from speechkit.text.sentences import iter_sentences

SPLIT_SHARES = {"train": 0.91, "dev": 0.03, "test": 0.03, "test_unseen": 0.03}
MIN_UTTS_PER_SPLIT = 15
# Share of each split's audio per engine, split equally among that engine's voices. festival is
# ~10x realtime against espeak-ng's ~180x and flite's ~45x, so its share is kept small.
ENGINE_SHARES = {"espeak-ng": 0.6, "flite": 0.3, "festival": 0.1}
HELD_OUT_ESPEAK_VARIANTS = 0.2
STRETCH_RANGE = (0.85, 1.2)
PITCH_RANGE = (0.88, 1.12)
PEAK_RANGE = (0.5, 0.95)
# Duration at stretch 1 is about 0.3 s a word plus 0.9 s of edges, alike for the three engines.
SECONDS_PER_WORD = 0.3
SECONDS_PER_UTT = 0.9


@dataclass(frozen=True)
class PlannedUtt:
    utt_id: str
    voice: Voice
    prosody: Prosody
    text: str
    wav: str


def split_voices(voices: list[Voice], rng: random.Random) -> tuple[list[Voice], list[Voice]]:
    """(seen, unseen) voices. Unseen: 20% of the espeak-ng variants (in every accent, so their
    timbre is new) and one voice of flite and of festival where that engine has three or more."""
    variants = sorted({v.name.split("+", 1)[1] for v in voices if v.engine == "espeak-ng"})
    held_variants = set(rng.sample(variants, round(HELD_OUT_ESPEAK_VARIANTS * len(variants))))
    unseen = [v for v in voices if v.engine == "espeak-ng" and v.name.split("+", 1)[1] in held_variants]
    for engine in ("flite", "festival"):
        of_engine = [v for v in voices if v.engine == engine]
        if len(of_engine) >= 3:
            unseen.append(rng.choice(of_engine))
    if not unseen:
        if len(voices) < 2:
            raise SpeechkitError("only one voice found; test_unseen needs a second one (install espeak-ng or flite)")
        unseen = [rng.choice(voices)]
    return [v for v in voices if v not in unseen], unseen


def _voice_weights(voices: list[Voice]) -> list[float]:
    per_engine = Counter(v.engine for v in voices)
    return [ENGINE_SHARES[v.engine] / per_engine[v.engine] for v in voices]


def plan_corpus(
    out: Path, hours: float, seed: int, seen: list[Voice], unseen: list[Voice], rng: random.Random
) -> dict[str, list[PlannedUtt]]:
    """Every utterance of every split: sentence, voice, prosody, id and wav path."""
    sentences = iter_sentences(seed)
    plan = {}
    for split, share in SPLIT_SHARES.items():
        voices = unseen if split == "test_unseen" else seen
        weights = _voice_weights(voices)
        utts: list[PlannedUtt] = []
        estimate = 0.0
        while estimate < hours * 3600 * share or len(utts) < MIN_UTTS_PER_SPLIT:
            text = next(sentences)
            voice = rng.choices(voices, weights)[0]
            prosody = Prosody(*(round(rng.uniform(*r), 3) for r in (STRETCH_RANGE, PITCH_RANGE, PEAK_RANGE)))
            utt_id = f"{voice.speaker}-{split}-{len(utts):06d}"
            utts.append(PlannedUtt(utt_id, voice, prosody, text, str(out / "wav" / split / f"{utt_id}.wav")))
            estimate += prosody.stretch * (SECONDS_PER_WORD * (text.count(" ") + 1) + SECONDS_PER_UTT)
        plan[split] = utts
    return plan


def _manifest(hours: float, seed: int, seen: list[Voice], unseen: list[Voice], plan: dict[str, list[PlannedUtt]]) -> str:
    """``voices.json``: the settings, then one line per voice with its planned utterances per split."""
    counts = Counter((u.voice.speaker, split) for split, utts in plan.items() for u in utts)
    header = {
        "seed": seed,
        "hours": hours,
        "split_shares": SPLIT_SHARES,
        "engine_shares": ENGINE_SHARES,
        "prosody_ranges": {"stretch": STRETCH_RANGE, "pitch": PITCH_RANGE, "peak": PEAK_RANGE},
    }
    records = []
    for v in (*seen, *unseen):
        utts = {split: counts[v.speaker, split] for split in SPLIT_SHARES if counts[v.speaker, split]}
        records.append(json.dumps({**asdict(v), "held_out": v in unseen, "utterances": utts}))
    # One voice per line keeps the file short enough to read.
    return json.dumps(header)[:-1] + ',\n "voices": [\n  ' + ",\n  ".join(records) + "\n ]\n}\n"


def _synthesize_one(utt: PlannedUtt) -> float | str:
    """The duration in seconds, or the error message."""
    try:
        samples = synthesize(utt.voice, utt.text, utt.prosody)
    except SynthesisError as e:
        return str(e)
    save_audio(utt.wav, samples, SAMPLE_RATE)
    return len(samples) / SAMPLE_RATE


def build_synth_corpus(
    out: str | Path, hours: float = 1.0, seed: int = 0, nj: int | None = None, engines: str = "espeak-ng,flite,festival"
) -> None:
    """Write Kaldi dirs ``out/{train,dev,test,test_unseen}``, audio under ``out/wav/<split>/`` and
    ``out/voices.json``; skipped when ``out`` already holds the same corpus."""
    if hours <= 0:
        raise SpeechkitError(f"--hours must be positive, got {hours}")
    out = Path(out).resolve()
    voices = discover_voices(engines)
    rng = random.Random(f"speechkit-corpus-{seed}")
    seen, unseen = split_voices(voices, rng)
    plan = plan_corpus(out, hours, seed, seen, unseen, rng)
    manifest = _manifest(hours, seed, seen, unseen, plan)
    manifest_path = out / "voices.json"
    built = all((out / split / "wav.scp").is_file() for split in plan)
    if built and manifest_path.is_file() and manifest_path.read_text() == manifest:
        print(f"{out}: corpus already built for seed {seed}, {hours:g} h; nothing to do")
        return

    todo = [u for utts in plan.values() for u in utts]
    for split in plan:
        (out / "wav" / split).mkdir(parents=True, exist_ok=True)
    engine_counts = ", ".join(f"{e} {n}" for e, n in Counter(v.engine for v in voices).items())
    nj = nj or os.cpu_count() or 1
    print(f"{len(voices)} voices ({engine_counts}); synthesising {len(todo)} utterances with {nj} jobs")
    with mp.Pool(nj) as pool:
        results = list(tqdm(pool.imap(_synthesize_one, todo, chunksize=4), total=len(todo), desc="synth", unit="utt"))
    durations = dict(zip((u.utt_id for u in todo), results))

    summary, speakers = [], set()
    for split, utts in plan.items():
        done = []
        for u in utts:
            result = durations[u.utt_id]
            if isinstance(result, str):
                print(f"warning: {u.utt_id} skipped: {result}", file=sys.stderr)
            else:
                done.append(Utterance(u.utt_id, u.voice.speaker, u.wav, u.text, result))
        if not done:
            raise SpeechkitError(f"{out / split}: every utterance failed to synthesise (see the warnings above)")
        write_data_dir(out / split, done)
        speakers.update(u.speaker for u in done)
        hours_done = sum(u.duration for u in done) / 3600
        summary.append(f"{split} {hours_done:.2f} h ({len(done)} utts, {len({u.speaker for u in done})} spk)")
    manifest_path.write_text(manifest)
    words = {w for u in plan["train"] for w in u.text.split()}
    print(f"{out}: {', '.join(summary)}; {len(speakers)} speakers; {len(words)} distinct words in train")
