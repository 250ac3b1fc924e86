"""Acoustic augmentation of a Kaldi data dir: rooms, added noise and channels, drawn per utterance.

A YAML config (``AugmentConfig``) gives each ingredient a probability and the ranges its
parameters are drawn from; a probability of 0 (the default) turns it off, so a recipe can add
them one at a time. The chain runs rooms → noise → microphone → gain → clipping → codec. Each
ingredient draws from its own generator seeded by (seed, copy, utterance id, ingredient), so an
utterance's result depends on nothing else: not the order, the number of jobs, nor which other
ingredients are on. The signal processing itself is ``speechkit.audio.effects``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from speechkit.audio import effects
from speechkit.audio.io import load_audio, save_audio
from speechkit.config import from_dict, load_yaml, to_dict
from speechkit.data.features import SerialPool
from speechkit.data.kaldi import Utterance, load_data_dir, write_data_dir, write_table
from speechkit.errors import AudioError, ConfigError

NOISE_KINDS = (*effects.NOISE_COLOURS, "babble", "music")
CODEC_KINDS = ("telephone", *effects.CODECS)
MP3_KBPS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)  # MPEG-2 layer III at 16-24 kHz


@dataclass(frozen=True)
class RoomConfig:
    """A shoebox room of random size and reverberation time, talker and microphone placed at random."""

    prob: float = 0.0
    length_m: tuple[float, float] = (3.0, 10.0)
    width_m: tuple[float, float] = (3.0, 8.0)
    height_m: tuple[float, float] = (2.4, 4.0)
    rt60_s: tuple[float, float] = (0.2, 0.8)  # raised to the shortest the room allows (walls absorbing all)
    distance_m: tuple[float, float] = (0.5, 3.0)  # talker to microphone
    wall_margin_m: float = 0.3  # neither comes closer to a wall
    max_order: int = 40  # image-method reflection order cap (cost grows with its cube)


@dataclass(frozen=True)
class NoiseConfig:
    """Noise added at a random SNR; ``kinds`` are relative weights (0 turns one off)."""

    prob: float = 0.0
    snr_db: tuple[float, float] = (5.0, 25.0)
    kinds: dict[str, float] = field(default_factory=lambda: {k: 1.0 for k in NOISE_KINDS})
    babble_talkers: tuple[int, int] = (3, 6)  # other utterances of the data dir, other speakers first


@dataclass(frozen=True)
class MicConfig:
    """A microphone's frequency response: high-pass, low-pass and a few peaking bands."""

    prob: float = 0.0
    highpass_hz: tuple[float, float] = (50.0, 300.0)
    lowpass_hz: tuple[float, float] = (4000.0, 7800.0)
    bands: tuple[int, int] = (1, 4)
    band_gain_db: tuple[float, float] = (-10.0, 10.0)
    band_q: tuple[float, float] = (0.5, 3.0)


@dataclass(frozen=True)
class GainConfig:
    prob: float = 0.0
    gain_db: tuple[float, float] = (-20.0, 6.0)  # a peak past full scale is scaled back to it


@dataclass(frozen=True)
class ClippingConfig:
    prob: float = 0.0
    percent: tuple[int, int] = (1, 5)  # share of samples clipped, half at each end


@dataclass(frozen=True)
class CodecConfig:
    """Transmission: 'telephone' (300-3400 Hz, 8 kHz, μ-law), GSM, MP3 and Opus round trips; a
    codec whose binary is missing is left out with a note."""

    prob: float = 0.0
    kinds: dict[str, float] = field(default_factory=lambda: {k: 1.0 for k in CODEC_KINDS})
    mp3_kbps: tuple[int, int] = (16, 64)
    opus_kbps: tuple[int, int] = (6, 24)


@dataclass(frozen=True)
class ChannelConfig:
    mic: MicConfig = field(default_factory=MicConfig)
    gain: GainConfig = field(default_factory=GainConfig)
    clipping: ClippingConfig = field(default_factory=ClippingConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)


@dataclass(frozen=True)
class AugmentConfig:
    sample_rate: int = 16000
    rooms: RoomConfig = field(default_factory=RoomConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)


STAGES = ("rooms", "noise", "mic", "gain", "clipping", "codec")  # the chain, in order


def load_augment_config(path: str | Path) -> AugmentConfig:
    """Read and check a YAML config; a bad key or value is a one-line ``ConfigError``."""
    data, lines = load_yaml(path)
    cfg = from_dict(AugmentConfig, data, source=str(path), lines=lines)
    check_augment_config(cfg, str(path), lines)
    return cfg


def check_augment_config(cfg: AugmentConfig, source: str = "<config>", lines: dict[str, int] | None = None) -> None:
    """Probabilities in [0, 1], ranges low ≤ high within their bounds, known kinds with weights ≥ 0."""
    lines = lines or {}

    def fail(key: str, msg: str) -> None:
        line = lines.get(key)
        raise ConfigError(f"{source}:{line}: '{key}' {msg}" if line else f"{source}: '{key}' {msg}")

    if cfg.sample_rate < 8000:
        fail("sample_rate", f"must be at least 8000, got {cfg.sample_rate}")
    nyquist = cfg.sample_rate / 2
    bounds = {"rt60_s": (0.05, 5.0), "distance_m": (0.05, 50.0), "length_m": (1.0, 100.0), "width_m": (1.0, 100.0),
              "height_m": (1.0, 30.0), "snr_db": (-30.0, 100.0), "babble_talkers": (1, 64), "highpass_hz": (1.0, nyquist),
              "lowpass_hz": (1.0, nyquist), "bands": (0, 16), "band_gain_db": (-40.0, 40.0), "band_q": (0.05, 30.0),
              "gain_db": (-80.0, 40.0), "percent": (0, 100), "mp3_kbps": (8, 160), "opus_kbps": (6, 510)}
    for prefix, block in _blocks(cfg):
        for f in fields(block):
            key, value = f"{prefix}{f.name}", getattr(block, f.name)
            if f.name == "prob" and not 0.0 <= value <= 1.0:
                fail(key, f"must be within [0, 1], got {value}")
            elif f.name in bounds:
                lo, hi = bounds[f.name]
                if not (lo <= value[0] <= value[1] <= hi):
                    fail(key, f"must be [low, high] with {lo:g} <= low <= high <= {hi:g}, got {list(value)}")
            elif f.name == "kinds":
                known = NOISE_KINDS if prefix == "noise." else CODEC_KINDS
                for kind, weight in value.items():
                    if kind not in known:
                        fail(key, f"has unknown kind '{kind}' (known: {', '.join(known)})")
                    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                        fail(f"{key}.{kind}", f"must be a weight >= 0, got {weight!r}")
                if block.prob > 0 and not any(w > 0 for w in value.values()):
                    fail(key, "gives every kind weight 0 while prob > 0")
    if cfg.rooms.wall_margin_m < 0 or cfg.rooms.max_order < 0:
        fail("rooms", "wall_margin_m and max_order must be >= 0")
    if cfg.channel.mic.highpass_hz[1] >= cfg.channel.mic.lowpass_hz[0]:
        fail("channel.mic.highpass_hz", "must stay below channel.mic.lowpass_hz")


def _blocks(obj, prefix: str = ""):
    """(dotted prefix, block) for every dataclass block holding a field ``prob``."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            if any(g.name == "prob" for g in fields(value)):
                yield f"{prefix}{f.name}.", value
            yield from _blocks(value, f"{prefix}{f.name}.")


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def stage_rng(seed: int, utt_id: str, copy: int, stage: str) -> np.random.Generator:
    """The generator of one ingredient for one copy of one utterance (a pure function of these)."""
    return np.random.default_rng([seed, copy, _digest(utt_id), _digest(stage)])


def _pick(weights: dict[str, float], rng: np.random.Generator) -> str:
    kinds = sorted(k for k, w in weights.items() if w > 0)
    p = np.array([weights[k] for k in kinds], dtype=np.float64)
    return kinds[int(rng.choice(len(kinds), p=p / p.sum()))]


class Augmenter:
    """The configured chain. ``pool`` (the data dir's utterances) is where babble comes from;
    ``notes`` says which configured codecs were left out for a missing binary."""

    def __init__(self, cfg: AugmentConfig, seed: int = 0, pool: list[Utterance] | tuple = ()):
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.cfg, self.seed, self.sr = cfg, seed, cfg.sample_rate
        self.pool = sorted(pool, key=lambda u: u.utt_id)
        self.notes: list[str] = []
        codec = cfg.channel.codec
        self.codecs = {k: w for k, w in codec.kinds.items() if w > 0}
        if codec.prob > 0:
            tools = effects.codec_tools()
            for k in sorted(self.codecs):
                if k != "telephone" and tools[k] is None:
                    self.notes.append(f"codec '{k}' left out: needs {effects.CODEC_NEEDS[k]}, which is not installed")
                    del self.codecs[k]
            if not self.codecs:
                self.notes.append("channel.codec is off: none of its codecs can run here")
        self._by_speaker: dict[str, list[Utterance]] = {}

    def _conf(self, stage: str):
        return getattr(self.cfg, stage) if stage in ("rooms", "noise") else getattr(self.cfg.channel, stage)

    def __call__(self, samples: np.ndarray, utt_id: str, speaker: str | None = None, copy: int = 1) -> tuple[np.ndarray, list[str]]:
        """samples (N,) float32 at ``cfg.sample_rate`` → (augmented (N,) float32 in [-1, 1], what was
        applied: one 'ingredient:key=value,...' item per ingredient)."""
        y = effects.fit_range(samples)
        applied = []
        for stage in STAGES:
            conf = self._conf(stage)
            if conf.prob <= 0 or (stage == "codec" and not self.codecs):
                continue
            rng = stage_rng(self.seed, utt_id, copy, stage)
            if rng.random() >= conf.prob:
                continue
            y, desc = getattr(self, f"_{stage}")(y, rng, utt_id, speaker)
            applied.append(desc)
        return effects.fit_range(y), applied

    def _rooms(self, x, rng, utt_id, speaker):
        c = self.cfg.rooms
        size = np.array([rng.uniform(*c.length_m), rng.uniform(*c.width_m), rng.uniform(*c.height_m)])
        volume, surface = np.prod(size), 2 * (size[0] * size[1] + size[0] * size[2] + size[1] * size[2])
        shortest = 24 * np.log(10) / effects.SPEED_OF_SOUND * volume / surface  # Sabine, walls absorbing all
        rt60 = max(rng.uniform(*c.rt60_s), 1.05 * shortest)
        source, mic = _place(size, c, rng)
        h, delay = effects.room_impulse_response(tuple(size), rt60, source, mic, self.sr, c.max_order)
        dist = float(np.linalg.norm(source - mic))
        return effects.reverberate(x, h, delay), f"room:size={size[0]:.1f}x{size[1]:.1f}x{size[2]:.1f},rt60={rt60:.2f},dist={dist:.2f}"

    def _noise(self, x, rng, utt_id, speaker):
        c = self.cfg.noise
        weights = dict(c.kinds)
        talkers = self._babble_candidates(utt_id, speaker)
        if not talkers:
            weights["babble"] = 0.0
        if not any(w > 0 for w in weights.values()):
            return x, "noise:none"
        kind = _pick(weights, rng)
        snr = rng.uniform(*c.snr_db)
        desc = f"noise:kind={kind},snr={snr:.1f}"
        if kind in effects.NOISE_COLOURS:
            noise = effects.coloured_noise(len(x), kind, rng)
        elif kind == "music":
            noise = effects.synth_music(len(x), self.sr, rng)
        else:
            k = int(rng.integers(c.babble_talkers[0], c.babble_talkers[1] + 1))
            chosen = rng.choice(len(talkers), size=min(k, len(talkers)), replace=False)
            sources = [s for s in (self._load(talkers[i]) for i in sorted(chosen)) if s is not None]
            noise = effects.babble(sources, len(x), rng)
            desc += f",talkers={len(sources)}"
        return effects.add_at_snr(x, noise, snr), desc

    def _babble_candidates(self, utt_id: str, speaker: str | None) -> list[Utterance]:
        if speaker not in self._by_speaker:
            self._by_speaker[speaker] = [u for u in self.pool if u.speaker != speaker]
        return self._by_speaker[speaker] or [u for u in self.pool if u.utt_id != utt_id]

    def _load(self, utt: Utterance) -> np.ndarray | None:
        try:
            return load_audio(utt.wav, self.sr)[0]
        except AudioError:  # a broken file is reported when it is the one being augmented
            return None

    def _mic(self, x, rng, utt_id, speaker):
        c = self.cfg.channel.mic
        hp, lp = rng.uniform(*c.highpass_hz), rng.uniform(*c.lowpass_hz)
        n = int(rng.integers(c.bands[0], c.bands[1] + 1))
        centres = np.exp(rng.uniform(np.log(hp), np.log(lp), size=n))  # even on a log-frequency axis
        bands = [(float(f), float(rng.uniform(*c.band_gain_db)), float(rng.uniform(*c.band_q))) for f in centres]
        return effects.mic_response(x, self.sr, hp, lp, bands), f"mic:hp={hp:.0f},lp={lp:.0f},bands={n}"

    def _gain(self, x, rng, utt_id, speaker):
        db = rng.uniform(*self.cfg.channel.gain.gain_db)
        return effects.fit_range(x * 10.0 ** (db / 20.0)), f"gain:db={db:.1f}"

    def _clipping(self, x, rng, utt_id, speaker):
        percent = int(rng.integers(self.cfg.channel.clipping.percent[0], self.cfg.channel.clipping.percent[1] + 1))
        return effects.clip_samples(x, percent), f"clip:percent={percent}"

    def _codec(self, x, rng, utt_id, speaker):
        c = self.cfg.channel.codec
        kind = _pick(self.codecs, rng)
        if kind == "telephone":
            return effects.telephone(x, self.sr), "codec:kind=telephone"
        kbps = 0
        if kind == "mp3":
            kbps = int(rng.choice([b for b in MP3_KBPS if c.mp3_kbps[0] <= b <= c.mp3_kbps[1]] or [32]))
        elif kind == "opus":
            kbps = int(rng.integers(c.opus_kbps[0], c.opus_kbps[1] + 1))
        return effects.codec_roundtrip(x, self.sr, kind, kbps), f"codec:kind={kind}" + (f",kbps={kbps}" if kbps else "")


def _place(size: np.ndarray, c: RoomConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Talker and microphone inside the walls' margin, at a distance within ``c.distance_m`` when
    the room allows (else the last try)."""
    margin = np.minimum(c.wall_margin_m, size / 4)
    for _ in range(100):
        source = margin + rng.random(3) * (size - 2 * margin)
        mic = margin + rng.random(3) * (size - 2 * margin)
        if c.distance_m[0] <= np.linalg.norm(source - mic) <= c.distance_m[1]:
            break
    return source, mic


# ---- a whole data dir -----------------------------------------------------------------------

@dataclass
class AugmentReport:
    written: int
    skipped: list[str]
    notes: list[str]


_WORKER: dict = {}


def _init_worker(augmenter: Augmenter, wav_dir: Path, copies: int) -> None:
    _WORKER.update(augmenter=augmenter, wav_dir=wav_dir, copies=copies)


def _augment_one(utt: Utterance) -> tuple[Utterance, list[tuple[Utterance, str]], str | None, int]:
    """One input utterance → its copies written as wavs (utterance, what was applied), or an error."""
    aug, wav_dir, copies = _WORKER["augmenter"], _WORKER["wav_dir"], _WORKER["copies"]
    try:
        x, _ = load_audio(utt.wav, aug.sr)
        outs = []
        for k in range(1, copies + 1):
            y, applied = aug(x, utt.utt_id, utt.speaker, k)
            outs.append((augmented_id(utt.utt_id, k), y, " ".join(applied) or "none"))
    except AudioError as e:
        return utt, [], str(e), 0
    written = []
    for new_id, y, desc in outs:
        path = wav_dir / f"{new_id}.wav"
        save_audio(path, y, aug.sr)
        written.append((Utterance(new_id, utt.speaker, str(path), utt.text, len(y) / aug.sr), desc))
    return utt, written, None, len(x)


def augmented_id(utt_id: str, copy: int) -> str:
    """Copies keep the speaker prefix, so utt2spk and spk2utt still sort alike."""
    return f"{utt_id}-aug{copy}"


def augment_data_dir(data_dir: str | Path, out_dir: str | Path, cfg: AugmentConfig, *, seed: int = 0, copies: int = 1,
                     nj: int | None = None, keep_clean: bool = False) -> AugmentReport:
    """Write ``copies`` augmented copies of every readable utterance as a new data dir: wavs in
    OUT/wav, the Kaldi tables, ``utt2aug`` (what was applied), ``skipped.txt`` (bad input files)
    and ``augment.json`` (config, seed, codec tools). ``keep_clean`` adds the originals as they are."""
    if copies < 1:
        raise ConfigError(f"--copies must be >= 1, got {copies}")
    utts = load_data_dir(data_dir)
    out_dir = Path(out_dir).resolve()
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    augmenter = Augmenter(cfg, seed, utts)
    nj = max(1, min(nj or os.cpu_count() or 1, len(utts)))
    if nj > 1:
        _warm_up(cfg)  # import once here, not in every forked job
    out_utts: list[Utterance] = []
    utt2aug: dict[str, str] = {}
    skipped: list[str] = []
    init = (augmenter, wav_dir, copies)
    with mp.get_context("fork").Pool(nj, _init_worker, init) if nj > 1 else SerialPool(_init_worker, init) as pool:
        results = pool.imap(_augment_one, utts, chunksize=4)
        for utt, written, err, n in tqdm(results, total=len(utts), desc=f"augment {Path(data_dir).name}", unit="utt", file=sys.stderr):
            if err is not None:
                tqdm.write(f"skipped: {err}", file=sys.stderr)
                skipped.append(err)
                continue
            for u, desc in written:
                out_utts.append(u)
                utt2aug[u.utt_id] = desc
            if keep_clean:
                out_utts.append(Utterance(utt.utt_id, utt.speaker, str(Path(utt.wav).resolve()), utt.text, n / cfg.sample_rate))
                utt2aug[utt.utt_id] = "none"
    _WORKER.clear()
    (out_dir / "skipped.txt").write_text("".join(s + "\n" for s in skipped))
    if not out_utts:
        raise AudioError(f"{data_dir}: no readable utterance to augment (see {out_dir / 'skipped.txt'})")
    write_data_dir(out_dir, out_utts)
    write_table(out_dir / "utt2aug", utt2aug)
    info = {"config": to_dict(cfg), "seed": seed, "copies": copies, "keep_clean": keep_clean, "notes": augmenter.notes,
            "codec_tools": effects.codec_tools()}
    (out_dir / "augment.json").write_text(json.dumps(info, indent=1) + "\n")
    return AugmentReport(len(out_utts), skipped, augmenter.notes)


def _warm_up(cfg: AugmentConfig) -> None:
    if cfg.rooms.prob > 0:
        import pyroomacoustics  # noqa: F401
    if cfg.channel.mic.prob > 0 or cfg.channel.clipping.prob > 0:
        import audiomentations  # noqa: F401
