"""Benchmark of training speed: a family's config trained for a few steps through the one engine.

After ``--warmup`` steps it times ``--steps`` optimizer steps and reports audio seconds trained per
second, steps/s, achieved TFLOP/s (``torch.utils.flop_counter`` over one step of each timed batch
shape seen first), MFU against the device's bf16 peak, SM-busy % (NVML, sampled every 50 ms),
the share of the time spent waiting for data, peak memory; and the ceiling: the same model's
steps repeated on one batch already on the device (no data cost at all). ``--compare REV`` runs
the code at git revision REV on the same config and data in a subprocess (its own ``bench train``
where it has one, else its training command, timed from its metrics log) and prints the ratio;
``--profile FILE`` writes where a step's time goes (host syncs, the profiler's top operators).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from speechkit.bench import add_output_args, emit
from speechkit.errors import ConfigError, SpeechkitError

BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def add_parser(bench_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = bench_sub.add_parser("train", help="training speed of a config: audio s/s, steps/s, TFLOP/s, MFU, SM busy, data wait",
                             description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a training config (ASR, codec or CLEAR YAML)")
    p.add_argument("--data", nargs="*", default=None, metavar="DIR",
                   help="ASR: a feature dump (default: a random one of realistic lengths, --hours); codec: data dirs; "
                        "CLEAR: prepared dirs")
    p.add_argument("--hours", type=float, default=2.0, help="size of the random ASR dump when --data is not given (default 2)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--steps", type=int, default=100, help="timed optimizer steps (default 100)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (default 20)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train_conf.batch_seconds=1600, --set encoder_conf.num_blocks=6, "
                        "--set model.text_layers=0 (CLEAR) (repeatable)")
    p.add_argument("--compare", default=None, metavar="REV",
                   help="also run git revision REV, or the source tree in directory REV (same config, data, steps), and print the ratio")
    p.add_argument("--no-ceiling", action="store_true", help="skip the repeated-batch ceiling")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="also write where 5 steps on one timed batch spend their time: host syncs (CUDA) and the torch "
                        "profiler's top operators by host and by device time")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: from its name)")
    add_output_args(p)
    p.set_defaults(func=run)
    return p


def family_of(config: dict) -> str:
    if "codec" in config:
        return "codec"
    if "model" in config:
        return "tts"
    return "asr"


def _overrides(pairs: list[str]) -> dict:
    out: dict = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SpeechkitError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. train_conf.batch_seconds=800")
        import yaml

        section, field = key.split(".", 1)
        out.setdefault(section, {})[field] = yaml.safe_load(value)
    return out


def random_dump(out: Path, hours: float, seed: int = 0) -> Path:
    """A feature dump of random fbank with utterance lengths of 1.5-12 s (uniform) and random
    letters for text: the speed of a step depends on shapes, not on what is said."""
    from speechkit.data.kaldi import write_table

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    index, text, offset, i = {}, {}, 0, 0
    with open(out / "feats.bin", "wb") as f:
        while offset < hours * 360000:
            n = int(rng.integers(150, 1200))
            f.write((rng.standard_normal((n, 80)) * 3 + 8).astype(np.float16).tobytes())
            index[f"u{i:07d}"] = f"{offset} {n}"
            text[f"u{i:07d}"] = "".join(rng.choice(list("abcdefghij klmnopqrstuvwxyz"), size=max(1, n // 7))).strip() or "a"
            offset, i = offset + n, i + 1
    write_table(out / "feats.tsv", index)
    write_table(out / "text", text)
    (out / "stats.json").write_text(json.dumps({"frames": offset, "sum": [8.0 * offset] * 80, "sum_sq": [73.0 * offset] * 80}))
    return out


class SmSampler:
    """NVML GPU utilisation (the share of time a kernel was running) sampled on a thread."""

    def __init__(self, device_index: int):
        self.samples: list[int] = []
        self.ok = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(device_index)
            self.ok = True
        except Exception:  # no NVML (CPU run, or the library is missing): the figure is left out
            return
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            time.sleep(0.05)

    def start(self):
        if self.ok:
            self.thread.start()

    def result(self) -> float | None:
        if not self.ok:
            return None
        self.stop.set()
        self.thread.join()
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def build_task(family: str, config_path: str, overrides: dict, data: list[str], exp_dir: Path, device):
    """(task, loop config, optim config) for a config file with ``overrides`` ({section: {field: value}})
    written into its YAML first, so any section can change (``train_conf``, ``encoder_conf``, CLEAR's ``model``)
    and the family's own loader checks the result."""
    import yaml

    from speechkit.config import load_yaml

    raw, _ = load_yaml(config_path)
    for section, fields in overrides.items():
        raw.setdefault(section, {}).update(fields)
    config = exp_dir / "config.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        return _build(family, config, data, exp_dir, device)
    except ConfigError as e:  # name the user's file, not the temporary copy (its line numbers are the copy's)
        raise ConfigError(str(e).replace(str(config), f"{config_path} with --set")) from None


def _build(family: str, config: Path, data: list[str], exp_dir: Path, device):
    if family == "asr":
        from speechkit.data.features import FeatureDump
        from speechkit.train.asr import AsrTask, prepare_tokenizer
        from speechkit.train.config import load_experiment_config

        cfg = load_experiment_config(config)
        prepare_tokenizer(cfg, exp_dir, FeatureDump.open(data[0], cfg.model.frontend_conf.num_mel_bins).texts)
        return AsrTask(cfg, exp_dir, data[0], None, device), cfg.train_conf, cfg.optim_conf
    if family == "codec":
        from speechkit.train.codec import CodecTask, load_codec_experiment

        exp = load_codec_experiment(config)
        return CodecTask(exp, data, exp_dir, device), exp.train_conf, exp.optim_conf
    from speechkit.train.tts import TtsTask, load_tts_experiment

    task = TtsTask(load_tts_experiment(config), data, exp_dir)
    return task, task.exp.train_conf, task.exp.optim_conf


def step_flops(engine, batch) -> float:
    """FLOPs of one training step (forward + backward) on ``batch``, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    import torch

    if isinstance(batch, dict):  # host lengths on the device: the counter's dispatch wants one device (same FLOPs)
        batch = {k: v.to(engine.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    counter = FlopCounterMode(display=False)
    saved = engine._boundary
    engine._boundary = False  # backward only: no optimizer step while counting
    with counter, engine.amp():
        engine.task.step(engine.wrapped, batch, engine._update)
    engine._boundary = saved
    for m in engine.modules.values():
        m.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure(family: str, config: str, overrides: dict, data: list[str], device_name: str | None, steps: int, warmup: int,
            ceiling: bool, peak: float | None, profile: str | None = None) -> dict:
    import dataclasses

    import torch

    from speechkit.train.engine import Engine

    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "exp"
        exp.mkdir()
        torch.manual_seed(0)
        # the step-based families plan as many steps as max_steps says: exactly the ones timed here
        limited = {**overrides, "train_conf": {**overrides.get("train_conf", {}), "max_steps": warmup + steps}}
        task, loop, optim = build_task(family, config, limited, data, exp, device)
        loop = dataclasses.replace(loop, max_epochs=max(1, loop.max_epochs), max_steps=warmup + steps, max_minutes=0.0,
                                   log_interval=10**9, save_interval_steps=10**9)
        if hasattr(task, "end_epoch"):  # one pass, no dev loss, no epoch checkpoints
            task.end_epoch = lambda engine, epoch: {}
        engine = Engine(task, loop, optim, exp, device, progress=False)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        marks: dict = {}
        sm = SmSampler(device.index or 0) if device.type == "cuda" else None

        def on_step(e):
            if e.step == warmup:
                sync()
                marks["t0"], marks["s0"], marks["w0"] = time.perf_counter(), e.audio_seconds, e.data_wait_s
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                if sm:
                    sm.start()
            if e.step == warmup + steps:
                sync()
                marks["t1"], marks["s1"], marks["w1"] = time.perf_counter(), e.audio_seconds, e.data_wait_s

        engine.on_step = on_step
        engine.fit()
        if "t1" not in marks:
            raise SpeechkitError(f"the data gave fewer than {warmup + steps} steps: give more data or fewer --steps")
        span = marks["t1"] - marks["t0"]
        result = {"family": family, "config": config, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "torch": torch.__version__, "steps": steps, "seconds": round(span, 3), "steps_per_s": round(steps / span, 3),
                  "audio_s_per_s": round((marks["s1"] - marks["s0"]) / span, 1) if marks["s1"] > marks["s0"] else None,
                  "data_wait": round((marks["w1"] - marks["w0"]) / span, 4), "sm_busy_pct": sm.result() if sm else None,
                  "peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
                  "params_m": round(sum(p.numel() for p in engine.modules[engine.main].parameters()) / 1e6, 2),
                  "overrides": overrides}
        # FLOPs: the timed batches' mean, estimated from a sample of them
        # (epoch by epoch: a small data set gives the timed steps over several epochs)
        keys, epoch = [], 0
        while len(keys) < warmup + steps:
            more = list(task.plan(epoch, 0, 1))
            if not more:
                break
            keys, epoch = keys + more, epoch + 1
        keys = keys[warmup : warmup + steps]
        sample = keys[:: max(1, len(keys) // 8)][:8]
        flops, secs = [], []
        for k in sample:
            b = task.load(k, device)
            flops.append(step_flops(engine, b))
            secs.append(float(b.get("seconds", 0.0)) if isinstance(b, dict) else 0.0)
        per_step = statistics.mean(flops)
        result["tflops_per_step"] = round(per_step / 1e12, 6)
        result["achieved_tflops"] = round(per_step * steps / span / 1e12, 2)
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            peak = peak or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
            result["peak_tflops"] = peak
            result["mfu_pct"] = round(100 * result["achieved_tflops"] / peak, 2) if peak else None
        b = task.load(sample[len(sample) // 2], device)
        engine._boundary = True

        def repeat(n: int) -> None:
            for _ in range(n):
                with engine.amp():
                    engine.task.step(engine.wrapped, b, engine._update)

        if profile:
            write_profile(profile, repeat, device, sync)
        if ceiling:
            n = max(10, steps // 2)
            repeat(5)
            sync()
            t = time.perf_counter()
            repeat(n)
            sync()
            dt = (time.perf_counter() - t) / n
            result["ceiling"] = {"steps_per_s": round(1 / dt, 3), "tflops": round(step_flops(engine, b) / dt / 1e12, 2),
                                 "audio_s_per_s": round(float(b.get("seconds", 0.0)) / dt, 1) if isinstance(b, dict) and b.get("seconds") else None,
                                 "note": "one batch of the timed ones repeated, already on the device"}
        return result


def write_profile(path: str, repeat, device, sync) -> None:
    """Host syncs in one step (CUDA sync debug mode) and the profiler's tables over five steps, to ``path``."""
    import warnings

    import torch
    from torch.profiler import ProfilerActivity, profile

    repeat(3)
    sync()
    lines = []
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            repeat(1)
            torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        lines.append(f"host syncs in one step: {len(syncs)}")
        lines += [f"  {w.filename}:{w.lineno}" for w in syncs]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        repeat(5)
        sync()
    table = prof.key_averages()
    lines.append(table.table(sort_by="self_cpu_time_total", row_limit=25))
    if device.type == "cuda":
        lines.append(table.table(sort_by="self_cuda_time_total", row_limit=20))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")


def _env_with(src: Path) -> dict:
    """This environment with ``src`` first on the Python path (the rest stays: wheels installed aside)."""
    rest = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(src) + (os.pathsep + rest if rest else "")}


def legacy_rate(rev_dir: Path, family: str, config: str, overrides: dict, data: list[str], steps: int, warmup: int, work: Path) -> dict:
    """Run the training command of an older revision (no ``bench train``) and time it from its metrics log."""
    import yaml

    raw = yaml.safe_load(Path(config).read_text())
    for section, fields in overrides.items():
        raw.setdefault(section, {}).update(fields)
    tc = raw.setdefault("train_conf", {})
    tc.update(log_interval=10, save_interval_steps=10**6)
    if family == "asr":
        tc["max_epochs"] = 1
    else:
        tc["max_steps"] = warmup + steps + 10
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    exp = work / "exp_legacy"
    if family == "asr":
        cmd = ["train", "--config", str(cfg), "--train-dump", data[0], "--dev-dump", data[0], "--exp-dir", str(exp)]
    elif family == "codec":
        cmd = ["codec", "train", "--config", str(cfg), "--data", *data, "--exp-dir", str(exp)]
    else:
        cmd = ["tts", "train", "--config", str(cfg), "--data", *data, "--exp-dir", str(exp)]
    env = _env_with(rev_dir)
    proc = subprocess.Popen([sys.executable, "-m", "speechkit.cli", *cmd], env=env, cwd=rev_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rows: list[dict] = []
    try:
        while proc.poll() is None:
            time.sleep(1)
            log = exp / "metrics.jsonl"
            rows = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
            rows = [r for r in rows if "step" in r and ("elapsed_s" in r or "minutes" in r) and "dev_loss" not in r]
            if rows and rows[-1]["step"] >= warmup + steps:
                break
    finally:
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        proc.wait()
    clock = [(r["step"], r.get("elapsed_s", 60 * r.get("minutes", 0))) for r in rows]
    after = [c for c in clock if c[0] >= warmup]
    if len(after) < 2:
        raise SpeechkitError(f"the run at the other revision logged too few steps: {err.strip().splitlines()[-1:] or 'no error'}")
    (s0, t0), (s1, t1) = after[0], after[-1]
    grain = "0.1 s" if "elapsed_s" in rows[0] else "0.6 s (0.01 min)"
    out = {"steps": s1 - s0, "seconds": round(t1 - t0, 2), "steps_per_s": round((s1 - s0) / (t1 - t0), 3),
           "note": f"timed from the revision's metrics.jsonl (its clock rounded to {grain})"}
    if family == "asr":  # its batches are the same sampler's: add up their audio
        from speechkit.data.features import FeatureDump
        from speechkit.data.sampler import DurationBatchSampler

        c = raw["train_conf"]
        dump = FeatureDump.open(data[0])
        keep = np.flatnonzero((dump.lengths > 0) & (dump.lengths <= c.get("max_utt_seconds", 30.0) * 100))
        batches = DurationBatchSampler(dump.lengths[keep], int(c.get("batch_seconds", 200.0) * 100), seed=c.get("seed", 0)).batches(0)
        seconds = sum(int(dump.lengths[keep[b]].sum()) for b in batches[s0:s1]) / 100.0
        out["audio_s_per_s"] = round(seconds / (t1 - t0), 1)
    return out


def compare(rev: str, args, family: str, overrides: dict, data: list[str], work: Path) -> dict:
    if (Path(rev) / "speechkit").is_dir():  # a source tree already unpacked (a machine without the git history)
        rev_dir = Path(rev).resolve()
    else:
        root = Path(__file__).resolve().parents[2]
        rev_dir = work / f"rev-{rev.replace('/', '_')}"
        rev_dir.mkdir()
        archive = subprocess.run(["git", "-C", str(root), "archive", rev], capture_output=True)
        if archive.returncode:
            raise SpeechkitError(f"--compare {rev}: {archive.stderr.decode().strip() or 'git archive failed'}")
        subprocess.run(["tar", "-x", "-C", str(rev_dir)], input=archive.stdout, check=True)
    if (rev_dir / "speechkit/bench/train.py").is_file():
        cmd = [sys.executable, "-m", "speechkit.cli", "bench", "train", str(Path(args.config).resolve()), "--data", *data,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--json", "--no-ceiling",
               *[f"--set={s}" for s in args.set], *(["--device", args.device] if args.device else [])]
        done = subprocess.run(cmd, env=_env_with(rev_dir), cwd=rev_dir, capture_output=True, text=True)
        if done.returncode:
            raise SpeechkitError(f"--compare {rev}: {done.stderr.strip().splitlines()[-1:] }")
        return json.loads(done.stdout.strip().splitlines()[-1])
    return legacy_rate(rev_dir, family, str(Path(args.config).resolve()), overrides, data, args.steps, args.warmup, work)


def run(args: argparse.Namespace) -> None:
    import yaml

    if not Path(args.config).is_file():
        raise SpeechkitError(f"{args.config}: no such config")
    family = family_of(yaml.safe_load(Path(args.config).read_text()) or {})
    overrides = _overrides(args.set)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = [str(Path(d).resolve()) for d in args.data] if args.data else None
        if not data:
            if family != "asr":
                raise SpeechkitError(f"a {family} config needs --data (codec: data dirs; CLEAR: prepared dirs)")
            data = [str(random_dump(work / "dump", args.hours))]
        result = measure(family, args.config, overrides, data, args.device, args.steps, args.warmup, not args.no_ceiling, args.peak_tflops,
                         args.profile)
        if args.compare:
            ref = compare(args.compare, args, family, overrides, data, work)
            result["compare"] = {"rev": args.compare, **ref}
            for key in ("steps_per_s", "audio_s_per_s"):
                if ref.get(key) and result.get(key):
                    result["compare"][f"{key}_ratio"] = round(result[key] / ref[key], 2)
    lines = [f"{family} {args.config} on {result['device']}: {result['steps_per_s']} steps/s, "
             f"{result['audio_s_per_s']} audio s/s, {result['achieved_tflops']} TFLOP/s"
             + (f" (MFU {result['mfu_pct']} %)" if result.get("mfu_pct") is not None else "")
             + (f", SM busy {result['sm_busy_pct']} %" if result.get("sm_busy_pct") is not None else "")
             + f", data wait {100 * result['data_wait']:.1f} %"]
    if "ceiling" in result:
        c = result["ceiling"]
        lines.append(f"ceiling (one batch on the device, repeated): {c['steps_per_s']} steps/s, {c['tflops']} TFLOP/s")
    if "compare" in result:
        c = result["compare"]
        lines.append(f"revision {c['rev']}: {c.get('steps_per_s')} steps/s, {c.get('audio_s_per_s')} audio s/s -> ratio "
                     f"{c.get('audio_s_per_s_ratio') or c.get('steps_per_s_ratio')}")
    emit(result, lines, args)
