"""Throughput probe for conf/train_gpu.yaml on the lent GPU, before the real run: random fbank
dumps of realistic lengths, one short epoch through the real trainer, audio seconds per second.

    python3 egs/synth/asr/local/gpu_probe.py [--hours 3]
"""

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from speechkit.data.kaldi import write_table
from speechkit.train.config import load_experiment_config
from speechkit.train.asr import train


def fake_dump(out: Path, hours: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = ["".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=random.Random(-i).randint(2, 9))) for i in range(3000)]
    out.mkdir(parents=True, exist_ok=True)
    index, text, offset = {}, {}, 0
    total = np.zeros(80)
    with open(out / "feats.bin", "wb") as f:
        i = 0
        while offset < hours * 360000:
            n = int(rng.integers(150, 1200))
            f.write((rng.standard_normal((n, 80)) * 3 + 8).astype(np.float16).tobytes())
            key = f"u{i:07d}"
            index[key] = f"{offset} {n}"
            text[key] = " ".join(rng.choice(words, size=max(1, n // 35)))
            offset += n
            i += 1
    write_table(out / "feats.tsv", index)
    write_table(out / "text", text)
    (out / "stats.json").write_text(json.dumps({"frames": offset, "sum": (total + 8 * offset).tolist(), "sum_sq": [offset * 73.0] * 80}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=3.0)
    ap.add_argument("--work", default="/tmp/gpu_probe")
    args = ap.parse_args()
    work = Path(args.work)
    fake_dump(work / "train", args.hours, 0)
    fake_dump(work / "dev", 0.05, 1)
    cfg = load_experiment_config(Path(__file__).parents[1] / "conf" / "train_gpu.yaml")
    import dataclasses
    cfg = dataclasses.replace(cfg, train_conf=dataclasses.replace(cfg.train_conf, max_epochs=1))
    t0 = time.time()
    train(cfg, work / "exp", work / "train", work / "dev")
    dt = time.time() - t0
    print(json.dumps({"hours": args.hours, "seconds": round(dt, 1), "audio_s_per_s": round(args.hours * 3600 / dt, 1)}))
