"""Training CLEAR: the transformer, the flow head and the stop head in one stage, on prepared data
(:mod:`speechkit.models.tts.data`). bf16 autocast on GPU, AdamW with warm-up and cosine decay,
an optional wall-time budget the schedule is fitted to, exact resume (``checkpoint.pt`` holds the
model, the optimizer, the step and the RNG; batches are a function of (seed, step)).

An experiment dir ends with ``model.pt`` (weights, config, phoneme vocabulary, latent statistics
and the codec it was trained on) and ``phones.txt``.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from speechkit.config import from_dict, load_yaml, to_dict
from speechkit.errors import SpeechkitError
from speechkit.models.tts.clear import ClearConfig, ClearTTS
from speechkit.models.tts.data import TtsBank, load_prepared
from speechkit.train.checkpoint import load_checkpoint, save_atomic
from speechkit.train.engine import OptimConfig
from speechkit.train.engine import lr_at


@dataclass(frozen=True)
class TtsOptimConfig(OptimConfig):
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 500
    final_lr_ratio: float = 0.05


@dataclass(frozen=True)
class TtsTrainConfig:
    max_steps: int = 20000  # the schedule's length
    max_minutes: float = 0.0  # wall-time budget (0: none); the schedule is refitted to the measured speed
    max_tokens: int = 12000  # padded sequence positions per batch
    prompt_seconds: tuple[float, float] = (1.5, 3.0)  # prompt crop length range at training time
    grad_clip: float = 1.0
    seed: int = 0
    log_interval: int = 100
    save_interval_steps: int = 1000
    amp: str = "auto"  # auto (bf16 on GPU) | bf16 | off


@dataclass(frozen=True)
class TtsExperiment:
    model: ClearConfig = field(default_factory=ClearConfig)
    optim_conf: TtsOptimConfig = field(default_factory=TtsOptimConfig)
    train_conf: TtsTrainConfig = field(default_factory=TtsTrainConfig)


def load_tts_experiment(path: str | Path) -> TtsExperiment:
    """YAML with ``model:`` (ClearConfig, ``flow:`` inside), ``optim_conf:``, ``train_conf:``."""
    data, lines = load_yaml(path)
    return from_dict(TtsExperiment, data, source=str(path), lines=lines)


def save_tts(model: ClearTTS, vocab_symbols: list[str], codec: str, path: str | Path) -> None:
    save_atomic({"model": model.state_dict(), "config": to_dict(model.cfg), "phones": vocab_symbols, "codec": codec,
                 "family": "tts-clear"}, path)


def clear_config_from_dict(d: dict) -> ClearConfig:
    return from_dict(ClearConfig, d, source="model.pt")


def load_tts(path: str | Path, device: str | torch.device = "cpu") -> tuple[ClearTTS, list[str], str]:
    """An experiment dir (its model.pt) or a model.pt → (model in eval mode, phoneme symbols, codec dir)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    ck = load_checkpoint(path)
    if ck.get("family") != "tts-clear":
        raise SpeechkitError(f"{path}: not a CLEAR TTS checkpoint")
    model = ClearTTS(clear_config_from_dict(ck["config"]))
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), list(ck["phones"]), ck["codec"]


def to_device(batch: dict, device: torch.device | str) -> dict:
    """A collated batch's tensors on ``device`` (its ints stay)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def train_tts(exp: TtsExperiment, prep_dirs: list[str | Path], exp_dir: str | Path, device: str | None = None) -> dict:
    """Train (or resume) in ``exp_dir`` on prepared dirs; writes checkpoint.pt, model.pt,
    phones.txt and metrics.jsonl."""
    from speechkit.text.phonemes import PhonemeVocab

    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    tc, oc = exp.train_conf, exp.optim_conf
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    utts, info = [], None
    for d in prep_dirs:
        u, i = load_prepared(d)
        if info and (i["latent_dim"], i["frame_rate"]) != (info["latent_dim"], info["frame_rate"]):
            raise SpeechkitError(f"{d}: prepared with another codec than {prep_dirs[0]}")
        utts, info = utts + u, info or i
    if (exp_dir / "phones.txt").is_file():  # resuming: the vocabulary must not change
        vocab = PhonemeVocab.load(exp_dir / "phones.txt")
    else:
        vocab = PhonemeVocab.build([u.phones for u in utts])
        vocab.save(exp_dir / "phones.txt")
    cfg = replace(exp.model, vocab_size=len(vocab), latent_dim=info["latent_dim"], frame_rate=info["frame_rate"])
    exp = replace(exp, model=cfg)
    (exp_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(exp), sort_keys=False))
    prompt = tuple(max(1, int(round(s * cfg.frame_rate))) for s in tc.prompt_seconds)
    bank = TtsBank(utts, vocab, prompt)
    mean, std = bank.stats()
    torch.manual_seed(tc.seed)
    model = ClearTTS(cfg)
    model.latent_mean.copy_(torch.from_numpy(mean))
    model.latent_std.copy_(torch.from_numpy(std))
    model = model.to(device).train()
    groups: dict[bool, list] = {True: [], False: []}  # weight decay on matrices, not on embeddings, biases, norms
    for n, p in model.named_parameters():
        groups[p.dim() >= 2 and not n.startswith(("phone.", "kind."))].append(p)
    opt = torch.optim.AdamW([{"params": groups[True], "weight_decay": oc.weight_decay}, {"params": groups[False], "weight_decay": 0.0}],
                            lr=oc.lr, betas=oc.betas)
    step = 0
    if (exp_dir / "checkpoint.pt").is_file():
        ck = load_checkpoint(exp_dir / "checkpoint.pt")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        torch.set_rng_state(ck["rng"])
        if "cuda_rng" in ck and device.type == "cuda":
            torch.cuda.set_rng_state(ck["cuda_rng"], device)
    use_amp = tc.amp == "bf16" or (tc.amp == "auto" and device.type == "cuda")
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if use_amp else nullcontext()
    params = sum(p.numel() for p in model.parameters())
    print(f"CLEAR: {params / 1e6:.2f} M parameters ({sum(p.numel() for p in model.head.parameters()) / 1e6:.2f} M flow head), "
          f"{len(vocab)} phoneme symbols, {len(bank.examples)} examples of {len(utts)} utterances "
          f"({info['hours']:.2f} h, {cfg.frame_rate:g} latents/s x {cfg.latent_dim}), {tc.max_tokens} positions per batch", flush=True)
    codec = info["codec"]

    def checkpoint() -> None:
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "rng": torch.get_rng_state()}
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        save_atomic(state, exp_dir / "checkpoint.pt")

    start, sums, n = time.monotonic(), {}, 0
    total, first, mark = tc.max_steps, step, (step, start)
    bar = tqdm(total=tc.max_steps, initial=step, desc="train CLEAR", unit="step", mininterval=5)
    with open(exp_dir / "metrics.jsonl", "a") as log:
        while step < total and not (tc.max_minutes and time.monotonic() - start > 60 * tc.max_minutes):
            if tc.max_minutes and step - first >= 100 and step % tc.log_interval == 0:
                now = time.monotonic()
                per_step = (now - mark[1]) / max(1, step - mark[0])
                total = min(tc.max_steps, step + int((60 * tc.max_minutes - (now - start)) / per_step))
                mark = (step, now)
            batch = to_device(bank.batch(tc.max_tokens, tc.seed, step, mean, std), device)
            lr = lr_at(step, oc.lr, oc.warmup_steps, total, oc.final_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            with amp:
                loss, parts = model(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            step += 1
            bar.update(1)
            for k, v in {**parts, "grad_norm": gn}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            n += 1
            if step % tc.log_interval == 0 or step == total:
                row = {"step": step, "lr": lr, "minutes": round((time.monotonic() - start) / 60, 2),
                       **{k: round(float(v) / n, 5) for k, v in sums.items()}}
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(flow=row["flow"], stop=row["stop"], refresh=False)
                sums, n = {}, 0
            if step % tc.save_interval_steps == 0:
                checkpoint()
    bar.close()
    checkpoint()
    save_tts(model, vocab.symbols, codec, exp_dir / "model.pt")
    return {"steps": step, "minutes": round((time.monotonic() - start) / 60, 2), "params_m": round(params / 1e6, 2)}

