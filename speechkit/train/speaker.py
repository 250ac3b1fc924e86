"""The speaker-encoder task for the training engine: an ECAPA-TDNN and its AAM-softmax head trained
on random fixed-length fbank crops of Kaldi data dirs whose ``utt2spk`` names the classes.

Each data dir's fbank is dumped once into ``EXP_DIR/fbank/`` and memory-mapped. Step-based: one
long epoch whose micro-batch k (speakers drawn uniformly, then one of their utterances, a random
crop of it, optional frequency and time masks) is a pure function of (seed, k), so a killed run
resumes exactly; ``max_steps`` or the time budget ends it. With ``eval_data``, the EER of the
final model on those dirs is written to ``eer.json`` (``speechkit.models.speaker.scoring``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from speechkit.audio.fbank import FbankConfig
from speechkit.checkpoint import load_checkpoint
from speechkit.config import from_dict, load_yaml, to_dict
from speechkit.data.batches import to_device
from speechkit.data.features import FeatureDump, compute_dump
from speechkit.data.kaldi import read_table
from speechkit.errors import ConfigError, SpeechkitError
from speechkit.models.speaker.ecapa import ENCODERS, AamConfig, EcapaConfig, SpeakerClassifier
from speechkit.models.speaker.io import FAMILY, load_speaker_encoder, save_speaker_encoder
from speechkit.models.speaker.scoring import evaluate_data_dir
from speechkit.train.engine import Engine, LoopConfig, OptimConfig, setup_distributed


@dataclass(frozen=True)
class SpeakerOptimConfig(OptimConfig):
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 500


@dataclass(frozen=True)
class SpeakerTrainConfig(LoopConfig):
    """The engine's loop fields (``LoopConfig``) with speaker defaults, plus the crops' and the margin's."""

    max_steps: int = 20000  # the lr schedule's length; 0 trains nothing (model.pt gets the initial weights)
    log_interval: int = 100
    save_interval_steps: int = 1000
    batch_size: int = 64  # crops per micro-batch (per GPU)
    segment_seconds: float = 2.0  # crop length; shorter utterances are repeated to fill it
    min_utt_seconds: float = 0.5  # shorter utterances are left out
    margin_warmup_steps: int = 2000  # the AAM margin grows linearly from 0 to head_conf.margin over these steps
    freq_masks: int = 1  # per crop, bands of up to freq_mask_width bins set to the crop's mean
    freq_mask_width: int = 8
    time_masks: int = 1  # per crop, spans of up to time_mask_frames frames set to the crop's mean
    time_mask_frames: int = 20
    nj: int = 0  # feature extraction processes (0: all cores)


@dataclass(frozen=True)
class SpeakerExperiment:
    encoder: str = "ecapa"
    encoder_conf: EcapaConfig = field(default_factory=EcapaConfig)
    head_conf: AamConfig = field(default_factory=AamConfig)
    optim_conf: SpeakerOptimConfig = field(default_factory=SpeakerOptimConfig)
    train_conf: SpeakerTrainConfig = field(default_factory=SpeakerTrainConfig)

    def to_yaml_dict(self) -> dict:
        return to_dict(self)


def load_speaker_experiment(path: str | Path) -> SpeakerExperiment:
    """A speaker YAML (``encoder: ecapa``, ``encoder_conf``, ``head_conf``, ``optim_conf``,
    ``train_conf``) → typed config; one-line errors naming the file and line."""
    data, lines = load_yaml(path)
    exp = from_dict(SpeakerExperiment, data, source=str(path), lines=lines)

    def where(key: str) -> str:
        return f"{path}:{lines[key]}" if key in lines else str(path)

    if exp.encoder not in ENCODERS:
        raise ConfigError(f"{where('encoder')}: unknown encoder '{exp.encoder}' (known: {', '.join(ENCODERS)})")
    ec = exp.encoder_conf
    if ec.channels % ec.res2_scale:
        raise ConfigError(f"{where('encoder_conf.channels')}: encoder_conf.channels ({ec.channels}) must be a multiple "
                          f"of res2_scale ({ec.res2_scale})")
    if exp.train_conf.segment_seconds <= 0 or exp.train_conf.batch_size < 1:
        raise ConfigError(f"{where('train_conf')}: train_conf.segment_seconds and batch_size must be positive")
    return exp


class FbankBank:
    """The fbank frames of every utterance of some data dirs, memory-mapped from their dumps, with
    speaker labels from ``utt2spk``; cut into random fixed-length crops."""

    def __init__(self, data_dirs: list[str | Path], dump_root: Path, cfg: FbankConfig, min_frames: int, nj: int,
                 rank: int = 0, world: int = 1):
        dumps = [dump_root / f"{i}-{Path(d).resolve().name}" for i, d in enumerate(data_dirs)]
        if rank == 0:
            for d, dump in zip(data_dirs, dumps):
                source = str(Path(d).resolve())
                marker = dump / "source.txt"  # written last: a dump of this dir is complete
                if not (marker.is_file() and marker.read_text() == source):
                    marker.unlink(missing_ok=True)
                    compute_dump(d, dump, cfg, nj=nj or None)
                    marker.write_text(source)
        if world > 1:
            dist.barrier()
        self.frames, utt_speakers, self.offsets, self.lengths = [], [], [], []
        for d, dump in zip(data_dirs, dumps):
            fd = FeatureDump.open(dump, cfg.num_mel_bins)
            utt2spk = read_table(Path(d) / "utt2spk")
            keep = [i for i in range(len(fd)) if fd.lengths[i] >= min_frames]
            self.frames.append(fd.frames)
            utt_speakers += [utt2spk[fd.utt_ids[i]] for i in keep]
            self.offsets += [(len(self.frames) - 1, int(fd.offsets[i])) for i in keep]
            self.lengths += [int(fd.lengths[i]) for i in keep]
        if not self.lengths:
            raise SpeechkitError(f"no utterance of at least {min_frames / cfg.frames_per_second:.2f} s in "
                                 f"{', '.join(map(str, data_dirs))}")
        self.speakers = sorted(set(utt_speakers))
        index = {s: k for k, s in enumerate(self.speakers)}
        self.labels = np.array([index[s] for s in utt_speakers], dtype=np.int64)
        self.utts_of = [np.flatnonzero(self.labels == k) for k in range(len(self.speakers))]
        self.seconds = sum(self.lengths) / cfg.frames_per_second
        self.dim = cfg.num_mel_bins

    def crop(self, u: int, frames: int, rng: np.random.Generator) -> np.ndarray:
        """A random ``frames``-long crop of utterance u (a shorter one repeated to fill it) → (frames, F)."""
        dump, offset = self.offsets[u]
        n = self.lengths[u]
        at = int(rng.integers(0, n - frames + 1)) if n >= frames else 0
        x = np.asarray(self.frames[dump][offset + at : offset + at + min(n, frames)], dtype=np.float32)
        return np.resize(x, (frames, self.dim)) if n < frames else x  # np.resize repeats rows

    def batch(self, size: int, frames: int, seed: int, index: int, tc: SpeakerTrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(crops (size, frames, F), labels (size,)), the same for the same (seed, index)."""
        rng = np.random.default_rng([seed, index])
        feats = np.empty((size, frames, self.dim), dtype=np.float32)
        labels = rng.integers(0, len(self.speakers), size=size)
        for b, k in enumerate(labels):
            feats[b] = self.crop(int(rng.choice(self.utts_of[k])), frames, rng)
            mean = feats[b].mean(axis=0)  # masked cells take the crop's mean: zero after the model's normalisation
            for _ in range(tc.freq_masks):
                w = int(rng.integers(0, tc.freq_mask_width + 1))
                at = int(rng.integers(0, self.dim - w + 1))
                feats[b, :, at : at + w] = mean[at : at + w]
            for _ in range(tc.time_masks):
                w = int(rng.integers(0, min(tc.time_mask_frames, frames // 4) + 1))
                at = int(rng.integers(0, frames - w + 1))
                feats[b, at : at + w] = mean
        return torch.from_numpy(feats), torch.from_numpy(labels)


class SpeakerTask:
    """The ECAPA-TDNN with its AAM head (one module, ``model``) on crops of an ``FbankBank``."""

    family = FAMILY

    def __init__(self, exp: SpeakerExperiment, data_dirs: list[str | Path], exp_dir: str | Path, device: torch.device,
                 rank: int = 0, world: int = 1):
        tc, ec = exp.train_conf, exp.encoder_conf
        self.exp = exp
        fbank = FbankConfig(num_mel_bins=ec.num_mel_bins)
        self.frames = int(round(tc.segment_seconds * fbank.frames_per_second))
        self.bank = FbankBank(data_dirs, Path(exp_dir) / "fbank", fbank, int(tc.min_utt_seconds * fbank.frames_per_second),
                              tc.nj, rank, world)
        self.model = SpeakerClassifier(ec, exp.head_conf, len(self.bank.speakers))
        self.config = {**exp.to_yaml_dict(), "num_speakers": len(self.bank.speakers)}
        self.micro_per_step = tc.accum_grad * world  # micro-batches of all ranks in one optimizer step
        self.seconds = tc.batch_size * tc.segment_seconds

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def plan(self, epoch: int, rank: int, world: int) -> range:
        # Key k is the k-th micro-batch of all ranks together. One step more than max_steps: the
        # step limit, never the end of the plan, ends a run, so a run given more steps carries on.
        return range(rank, (self.exp.train_conf.max_steps + 1) * self.micro_per_step, world)

    def load(self, key: int, device: torch.device) -> dict:
        """feats [B, T, F] and labels [B] on the device, the optimizer step they belong to, their audio seconds."""
        tc = self.exp.train_conf
        feats, labels = self.bank.batch(tc.batch_size, self.frames, tc.seed, key, tc)
        return {"feats": to_device(feats, device), "labels": to_device(labels, device), "step": key // self.micro_per_step,
                "seconds": self.seconds}

    def step(self, modules, b: dict, update) -> dict[str, torch.Tensor]:
        warm = self.exp.train_conf.margin_warmup_steps
        margin = self.exp.head_conf.margin * min(1.0, b["step"] / warm if warm > 0 else 1.0)
        loss, accuracy = modules["model"](b["feats"], b["labels"], margin)
        update("model", loss)
        return {"loss": loss.detach(), "acc": accuracy.detach(), "margin": torch.tensor(margin)}


def _check_resume(exp_dir: Path, num_speakers: int) -> None:
    """A checkpoint of another speaker set would fail deep inside ``load_state_dict``; say so in one line."""
    path = exp_dir / "checkpoint.pt"
    if path.is_file():
        saved = load_checkpoint(path).get("config", {}).get("num_speakers")
        if saved is not None and saved != num_speakers:
            raise SpeechkitError(f"{path}: trained on {saved} speakers, these data dirs have {num_speakers}; "
                                 "move it away to start afresh")


def train_speaker(exp: SpeakerExperiment, data_dirs: list[str | Path], exp_dir: str | Path, device: str | None = None,
                  eval_dirs: list[str | Path] = ()) -> dict:
    """Train (or resume) in ``exp_dir``; writes checkpoint.pt, model.pt (the encoder alone),
    speakers.txt, metrics.jsonl and, with ``eval_dirs``, eer.json; returns {steps, minutes,
    params_m} and the EER of each eval dir."""
    exp_dir = Path(exp_dir)
    tc = exp.train_conf
    rank, world, dev = setup_distributed()
    device = torch.device(device) if device else dev
    if rank == 0:
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / "config.yaml").write_text(yaml.safe_dump(exp.to_yaml_dict(), sort_keys=False))
    torch.manual_seed(tc.seed)  # the initial weights
    task = SpeakerTask(exp, data_dirs, exp_dir, device, rank, world)
    _check_resume(exp_dir, len(task.bank.speakers))
    params_m = round(sum(p.numel() for p in task.model.encoder.parameters()) / 1e6, 2)
    if rank == 0:
        (exp_dir / "speakers.txt").write_text("".join(s + "\n" for s in task.bank.speakers))
        print(f"speaker {exp.encoder}: {params_m:.2f} M parameters (encoder), {len(task.bank.speakers)} speakers, "
              f"{len(task.bank.lengths)} utterances, {task.bank.seconds / 3600:.2f} h, "
              f"{tc.segment_seconds:g} s crops x {tc.batch_size}", flush=True)
    info, state = {"steps": 0, "minutes": 0.0, "params_m": params_m}, task.model.state_dict()
    if tc.max_steps > 0:
        engine = Engine(task, tc, exp.optim_conf, exp_dir, device)
        info, state = engine.fit(), engine.model_state()
        info["params_m"] = params_m
    if rank != 0:
        return info
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    save_speaker_encoder(encoder, exp.encoder_conf, exp_dir / "model.pt")
    if eval_dirs:
        model = load_speaker_encoder(exp_dir / "model.pt", device)
        results = [evaluate_data_dir(model, d) for d in eval_dirs]
        (exp_dir / "eer.json").write_text(json.dumps({"step": info["steps"], "results": results}, indent=1) + "\n")
        info["eer"] = {r["data"]: r["eer"] for r in results}
    return info
