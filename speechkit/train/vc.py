"""The voice-conversion task for the training engine: a ``MeanVC`` (chunk DiT over normalised VAE
latents) trained with the mean-flow loss on a ``speechkit vc prepare`` dump.

A training row is a crop of one utterance (its latents are the target and, teacher-forced, the
clean context; its content features the input) with the timbre of **another utterance of the same
speaker** (a crop of its latents as the reference, its speaker embedding), so the model must take
the voice from the reference and the words from the content, as in conversion. Rows whose speaker
has a single utterance take a crop of the same utterance. With ``flow_conf.cond_drop`` some rows
lose their timbre (nulled), which is what classifier-free guidance folded into the target needs.

Step-based: one long epoch whose micro-batch k is a pure function of (seed, k); ``max_steps`` or the
time budget ends it, and a resumed run carries on exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from speechkit.config import from_dict, load_yaml, to_dict
from speechkit.data.batches import to_device
from speechkit.errors import ConfigError, SpeechkitError
from speechkit.models.vc.io import FAMILY, save_vc
from speechkit.models.vc.model import MeanVC, VcConfig
from speechkit.nn.meanflow import meanflow_loss
from speechkit.train.engine import Engine, LoopConfig, OptimConfig, setup_distributed


@dataclass(frozen=True)
class FlowConfig:
    fm_fraction: float = 0.75  # rows trained as plain flow matching (r = t); the rest mean flow (JVP)
    time_mean: float = 0.4  # logit-normal flow times (data at t = 1)
    time_std: float = 1.0
    cfg_scale: float = 1.0  # guidance folded into the target (1: none)
    cond_drop: float = 0.1  # rows whose timbre (reference + speaker embedding) is dropped
    adaptive_p: float = 1.0  # adaptive loss weight 1 / (err + c) ** p (0: plain MSE)
    adaptive_c: float = 1e-3
    clean_noise: float = 0.0  # std of noise added to the teacher-forced clean context (exposure bias)


@dataclass(frozen=True)
class VcOptimConfig(OptimConfig):
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    final_lr_ratio: float = 0.1


@dataclass(frozen=True)
class VcTrainConfig(LoopConfig):
    max_steps: int = 20000
    log_interval: int = 100
    save_interval_steps: int = 1000
    batch_size: int = 32  # crops per micro-batch (per GPU)
    segment_frames: int = 100  # crop length (4 s at 25 frames/s); shorter utterances are padded
    min_frames: int = 10  # shorter utterances are left out


@dataclass(frozen=True)
class VcExperiment:
    model_conf: VcConfig = field(default_factory=VcConfig)
    flow_conf: FlowConfig = field(default_factory=FlowConfig)
    optim_conf: VcOptimConfig = field(default_factory=VcOptimConfig)
    train_conf: VcTrainConfig = field(default_factory=VcTrainConfig)

    def to_yaml_dict(self) -> dict:
        return to_dict(self)


def load_vc_experiment(path: str | Path) -> VcExperiment:
    """A VC YAML (``model_conf``, ``flow_conf``, ``optim_conf``, ``train_conf``) → typed config; one-line errors."""
    data, lines = load_yaml(path)
    exp = from_dict(VcExperiment, data, source=str(path), lines=lines)
    m = exp.model_conf
    if m.dim % m.heads or (m.dim // m.heads) % 2:
        raise ConfigError(f"{path}: model_conf.dim {m.dim} must split into {m.heads} heads of an even width")
    if exp.train_conf.segment_frames < m.chunk:
        raise ConfigError(f"{path}: train_conf.segment_frames ({exp.train_conf.segment_frames}) is shorter than one chunk ({m.chunk})")
    if not 0.0 <= exp.flow_conf.fm_fraction <= 1.0 or not 0.0 <= exp.flow_conf.cond_drop < 1.0:
        raise ConfigError(f"{path}: flow_conf.fm_fraction must be in [0, 1] and cond_drop in [0, 1)")
    return exp


class VcTask:
    family = FAMILY

    def __init__(self, exp: VcExperiment, dump, device: torch.device, world: int = 1):
        tc, cfg = exp.train_conf, exp.model_conf
        st = dump.stats
        for key, want in (("latent_dim", cfg.latent_dim), ("content_dim", cfg.content_dim), ("spk_dim", cfg.spk_dim)):
            if int(st[key]) != want:
                raise SpeechkitError(f"the dump's {key} is {st[key]}, the config's model_conf.{key} is {want}")
        self.exp, self.dump, self.device = exp, dump, device
        self.config = to_dict(cfg)
        self.model = MeanVC(cfg)
        self.model.set_stats(st["latent_mean"], st["latent_std"])
        self.mean = np.asarray(st["latent_mean"], dtype=np.float32)
        self.std = np.maximum(np.asarray(st["latent_std"], dtype=np.float32), 1e-3)
        frames = np.diff(dump.offsets)
        self.keep = np.flatnonzero(frames >= tc.min_frames)
        if not len(self.keep):
            raise SpeechkitError(f"no utterance of at least {tc.min_frames} frames in the dump")
        w = np.minimum(frames[self.keep], tc.segment_frames).astype(np.float64)
        self.weights = w / w.sum()
        by_spk: dict[str, list[int]] = {}
        for i in self.keep:
            by_spk.setdefault(dump.spk[i], []).append(int(i))
        self.same_spk = {i: by_spk[dump.spk[i]] for i in self.keep}
        self.hours = float(frames[self.keep].sum()) / cfg.frame_rate / 3600
        self.speakers = len(by_spk)
        self.micro_per_step = tc.accum_grad * world
        self.max_steps = tc.max_steps

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def plan(self, epoch: int, rank: int, world: int) -> range:
        # as the codec task: key k is the k-th micro-batch of all ranks; one step more than max_steps
        return range(rank, (self.max_steps + 1) * self.micro_per_step, world)

    def _crop(self, rng: np.random.Generator, i: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        lat, con = self.dump.frames(i)
        at = int(rng.integers(0, max(1, len(lat) - n + 1)))
        return np.asarray(lat[at : at + n], dtype=np.float32), np.asarray(con[at : at + n], dtype=np.float32)

    def batch(self, key: int) -> dict[str, torch.Tensor]:
        """Micro-batch ``key`` on the host: x1 (B, T, D) normalised latents, content (B, T, C),
        lengths (B,), ref (B, R, D) normalised, ref_mask (B, R), spk (B, S)."""
        tc, cfg = self.exp.train_conf, self.exp.model_conf
        rng = np.random.default_rng([tc.seed, key])
        rows = rng.choice(self.keep, size=tc.batch_size, p=self.weights)
        T, R = tc.segment_frames, cfg.ref_frames
        x1 = np.zeros((len(rows), T, cfg.latent_dim), np.float32)
        content = np.zeros((len(rows), T, cfg.content_dim), np.float32)
        ref = np.zeros((len(rows), R, cfg.latent_dim), np.float32)
        ref_mask = np.zeros((len(rows), R), bool)
        spk = np.zeros((len(rows), cfg.spk_dim), np.float32)
        lengths = np.zeros(len(rows), np.int64)
        for b, i in enumerate(rows):
            lat, con = self._crop(rng, int(i), T)
            x1[b, : len(lat)], content[b, : len(con)], lengths[b] = (lat - self.mean) / self.std, con, len(lat)
            others = [j for j in self.same_spk[int(i)] if j != i] or [int(i)]
            j = others[int(rng.integers(len(others)))]
            rl, _ = self._crop(rng, j, R)
            ref[b, : len(rl)], ref_mask[b, : len(rl)] = (rl - self.mean) / self.std, True
            spk[b] = self.dump.spk_emb[j]
        arrays = {"x1": x1, "content": content, "lengths": lengths, "ref": ref, "ref_mask": ref_mask, "spk": spk}
        return {k: torch.from_numpy(v) for k, v in arrays.items()}

    def load(self, key: int, device: torch.device) -> dict:
        b = self.batch(key)
        seconds = float(b["lengths"].sum()) / self.exp.model_conf.frame_rate
        return {**to_device(b, device), "seconds": seconds}

    def step(self, modules, b: dict, update) -> dict[str, torch.Tensor]:
        fc = self.exp.flow_conf
        x1, lengths = b["x1"], b["lengths"]
        clean = x1 + fc.clean_noise * torch.randn_like(x1) if fc.clean_noise else x1
        rows = torch.arange(len(x1), device=x1.device, dtype=torch.float32)
        cond = torch.stack([rows, torch.ones_like(rows)], dim=1)  # (row, timbre kept)

        def make(model):
            def net(x, r, t, c):
                idx, keep = c[:, 0].long(), c[:, 1] > 0.5
                return model(x, clean[idx], b["content"][idx], b["ref"][idx], b["ref_mask"][idx], b["spk"][idx], keep, r, t, lengths[idx])
            return net

        mask = (torch.arange(x1.shape[1], device=x1.device)[None, :] < lengths[:, None])[:, :, None]
        loss, parts = meanflow_loss(make(modules["model"]), x1, cond, mask=mask, fm_fraction=fc.fm_fraction,
                                    time_mean=fc.time_mean, time_std=fc.time_std, cfg_scale=fc.cfg_scale,
                                    null_cond=_drop_timbre, cond_drop=fc.cond_drop, adaptive_p=fc.adaptive_p,
                                    adaptive_c=fc.adaptive_c, target_net=make(self.model))
        update("model", loss)
        return {"mse": parts["mse"], "mse_mf": parts["mse_mf"], "mse_fm": parts["mse_fm"], "loss": parts["loss"],
                "masked": parts["masked"]}


def _drop_timbre(cond: torch.Tensor) -> torch.Tensor:
    return torch.stack([cond[:, 0], torch.zeros_like(cond[:, 1])], dim=1)


def train_vc(exp: VcExperiment, dump_dir: str | Path, exp_dir: str | Path, device: str | None = None) -> dict:
    """Train (or resume) in ``exp_dir`` on the dump in ``dump_dir``; writes checkpoint.pt, model.pt
    and metrics.jsonl and returns {steps, minutes, params_m}."""
    exp_dir = Path(exp_dir)
    tc = exp.train_conf
    rank, world, dev = setup_distributed()
    device = torch.device(device) if device else dev
    from speechkit.data.vc_dump import VcDump

    dump = VcDump.open(dump_dir)
    if rank == 0:
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / "config.yaml").write_text(yaml.safe_dump(exp.to_yaml_dict(), sort_keys=False))
    torch.manual_seed(tc.seed)  # the initial weights
    task = VcTask(exp, dump, device, world)
    params_m = round(sum(p.numel() for p in task.model.parameters()) / 1e6, 2)
    if rank == 0:
        m = exp.model_conf
        print(f"vc: {params_m:.2f} M parameters, chunk {m.chunk} frames ({1000 * m.chunk / m.frame_rate:.0f} ms), "
              f"{task.hours:.2f} h from {task.speakers} speakers, {tc.segment_frames}-frame crops x {tc.batch_size}", flush=True)
    info, state = {"steps": 0, "minutes": 0.0, "params_m": params_m}, task.model.state_dict()
    if tc.max_steps > 0:
        engine = Engine(task, tc, exp.optim_conf, exp_dir, device)
        info, state = engine.fit(), engine.model_state()
    if rank == 0:
        features = {k: dump.stats.get(k) for k in ("codec", "asr", "content_layer", "att_context", "speaker_model", "frame_rate")}
        save_vc(state, exp.model_conf, features, exp_dir / "model.pt")
    return info
