"""``speechkit corpus synth``: the embedded default corpus (DESIGN.md, "The embedded default corpus").

All utterances are planned in this process from the seed's two disjoint sentence parts (train
for ``train``, eval for dev and the test splits; ``speechkit.text.sentences``), so no sentence is
in two splits, no corpus of any size trains on another's test sentences, and the same seed gives
the same ``text`` and ``utt2spk``; a pool of
workers then synthesises them. ``test_unseen`` uses voices held out of every other split.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import sys
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

from speechkit.audio.io import save_audio
from speechkit.data.kaldi import Utterance, write_data_dir, write_table
from speechkit.data.synth.engines import (
    ENGINES, SAMPLE_RATE, Prosody, SynthesisError, Voice, synth_settings, synthesize,
)
from speechkit.data.synth.voices import PIPER_PITCHES, PIPER_VTLPS, discover_voices
from speechkit.errors import SpeechkitError
from speechkit.text.sentences import SENTENCE_SCHEME, iter_sentences

SPLIT_SHARES = {"train": 0.91, "dev": 0.03, "test": 0.03, "test_unseen": 0.03}
MIN_UTTS_PER_SPLIT = 15
# Share of each split's audio per engine, split equally among that engine's voices; an engine that
# is not installed gives its share to the others in proportion. piper's neural voice is the only
# one with a real voice's spectrum and coarticulation, and a model trained on formant voices alone
# cannot read a real voice, so it gets half the audio although it is the slowest (~7x realtime on
# one core); the formant voices keep the breadth of accents and timbres. festival is ~10x realtime
# against espeak-ng's ~180x and flite's ~45x, so its share is kept small.
ENGINE_SHARES = {"piper": 0.5, "espeak-ng": 0.3, "flite": 0.15, "festival": 0.05}
HELD_OUT_ESPEAK_VARIANTS = 0.2
HELD_OUT_PIPER_SPEAKERS = 0.2  # of a piper model's (pitch, vtlp) speakers, when fewer than 3 models
# piper, per utterance: the formant factor on top of the speaker's, and the model's sampling
# spread around Piper's defaults (noise_scale 0.667, noise_w 0.8).
PIPER_VTLP_JITTER = (0.98, 1.02)
NOISE_SCALE_RANGE = (0.45, 0.85)
NOISE_W_RANGE = (0.5, 1.0)
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
    timbre is new), one voice of flite and of festival where that engine has three or more, and
    one piper model where there are three or more, else 20% of the piper speakers (the model is
    then heard in training, under other pitch and vtlp settings)."""
    variants = sorted({v.name.split("+", 1)[1] for v in voices if v.engine == "espeak-ng"})
    held_variants = set(rng.sample(variants, round(HELD_OUT_ESPEAK_VARIANTS * len(variants))))
    unseen = [v for v in voices if v.engine == "espeak-ng" and v.name.split("+", 1)[1] in held_variants]
    for engine in ("flite", "festival"):
        of_engine = [v for v in voices if v.engine == engine]
        if len(of_engine) >= 3:
            unseen.append(rng.choice(of_engine))
    piper = [v for v in voices if v.engine == "piper"]
    models = sorted({v.name.partition(":")[0] for v in piper})
    if len(models) >= 3:
        held_model = rng.choice(models)
        unseen += [v for v in piper if v.name.partition(":")[0] == held_model]
    elif piper:
        unseen += rng.sample(piper, max(1, round(HELD_OUT_PIPER_SPEAKERS * len(piper))))
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
    # train from the train part of the seed's sentences, dev and test from the eval part: no corpus
    # of any size trains on another's test sentences (speechkit.text.sentences)
    parts = {"train": iter_sentences(seed, "train"), "eval": iter_sentences(seed, "eval")}
    plan = {}
    for split, share in SPLIT_SHARES.items():
        voices = unseen if split == "test_unseen" else seen
        weights = _voice_weights(voices)
        utts: list[PlannedUtt] = []
        estimate = 0.0
        while estimate < hours * 3600 * share or len(utts) < MIN_UTTS_PER_SPLIT:
            text = next(parts["train" if split == "train" else "eval"])
            voice = rng.choices(voices, weights)[0]
            prosody = Prosody(*(round(rng.uniform(*r), 3) for r in (STRETCH_RANGE, PITCH_RANGE, PEAK_RANGE)))
            if voice.engine == "piper":  # drawn for piper only, so other engines' plans stay as they were
                prosody = replace(
                    prosody, **{k: round(rng.uniform(*r), 3) for k, r in (
                        ("vtlp", PIPER_VTLP_JITTER), ("noise_scale", NOISE_SCALE_RANGE), ("noise_w", NOISE_W_RANGE))},
                    seed=rng.getrandbits(31),
                )
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
        "sentences": SENTENCE_SCHEME,
        "hours": hours,
        "split_shares": SPLIT_SHARES,
        "engine_shares": ENGINE_SHARES,
        "prosody_ranges": {"stretch": STRETCH_RANGE, "pitch": PITCH_RANGE, "peak": PEAK_RANGE},
        "piper": {
            "speaker_pitches": PIPER_PITCHES, "speaker_vtlps": PIPER_VTLPS, "vtlp_jitter": PIPER_VTLP_JITTER,
            "noise_scale": NOISE_SCALE_RANGE, "noise_w": NOISE_W_RANGE,
        },
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
    out: str | Path, hours: float = 1.0, seed: int = 0, nj: int | None = None, engines: str = ",".join(ENGINES)
) -> None:
    """Write Kaldi dirs ``out/{train,dev,test,test_unseen}`` (with ``utt2synth``: the engine and
    settings of each utterance), audio under ``out/wav/<split>/`` and ``out/voices.json``; skipped
    when ``out`` already holds the same corpus."""
    if hours <= 0:
        raise SpeechkitError(f"--hours must be positive, got {hours}")
    out = Path(out).resolve()
    voices = discover_voices(engines)
    rng = random.Random(f"speechkit-corpus-{seed}")
    seen, unseen = split_voices(voices, rng)
    plan = plan_corpus(out, hours, seed, seen, unseen, rng)
    manifest = _manifest(hours, seed, seen, unseen, plan)
    manifest_path = out / "voices.json"
    built = all((out / split / name).is_file() for split in plan for name in ("wav.scp", "utt2synth"))
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
        done, settings = [], {}
        for u in utts:
            result = durations[u.utt_id]
            if isinstance(result, str):
                print(f"warning: {u.utt_id} skipped: {result}", file=sys.stderr)
            else:
                done.append(Utterance(u.utt_id, u.voice.speaker, u.wav, u.text, result))
                settings[u.utt_id] = synth_settings(u.voice, u.prosody)
        if not done:
            raise SpeechkitError(f"{out / split}: every utterance failed to synthesise (see the warnings above)")
        write_data_dir(out / split, done)
        write_table(out / split / "utt2synth", settings)
        speakers.update(u.speaker for u in done)
        hours_done = sum(u.duration for u in done) / 3600
        summary.append(f"{split} {hours_done:.2f} h ({len(done)} utts, {len({u.speaker for u in done})} spk)")
    manifest_path.write_text(manifest)
    words = {w for u in plan["train"] for w in u.text.split()}
    print(f"{out}: {', '.join(summary)}; {len(speakers)} speakers; {len(words)} distinct words in train")
