"""Split a checkpoint (a dict with a ``model`` state dict) into files under a size limit, and join
them back — how weights come back from the GPU machine (at most 16 MB a file).

    python tools/state_parts.py split exp/model.pt REPORT --max-mb 15 [--half] [--name vae] [--keep-float quantizer]
    python tools/state_parts.py join REPORT exp/model.pt [--stem vae]

``--half`` stores floating-point tensors as float16 (``join`` makes them float32 again), except
those whose names start with a ``--keep-float`` prefix (an RVQ's codebooks). Part
``NAME.partK.pt`` (NAME: the source's stem unless given) holds a slice of the state dict; part 0
also holds every other key.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def split(src: Path, out_dir: Path, max_mb: float, half: bool, name: str | None = None, keep_float: tuple[str, ...] = ()) -> list[Path]:
    ck = torch.load(src, map_location="cpu", weights_only=True)
    state = ck["model"]
    meta = {k: v for k, v in ck.items() if k != "model"}
    parts: list[dict] = [{}]
    size = 0
    for k, v in state.items():
        if half and v.is_floating_point() and not k.startswith(tuple(keep_float)):
            v = v.half()
        nbytes = v.numel() * v.element_size()
        if parts[-1] and size + nbytes > max_mb * 1e6:
            parts.append({})
            size = 0
        parts[-1][k] = v
        size += nbytes
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, p in enumerate(parts):
        path = out_dir / f"{name or src.stem}.part{i}.pt"
        torch.save({"model": p, **(meta if i == 0 else {}), "part": i, "parts": len(parts)}, path)
        paths.append(path)
    return paths


def join(parts_dir: Path, dst: Path, stem: str = "model") -> None:
    files = sorted(parts_dir.glob(f"{stem}.part*.pt"), key=lambda p: int(p.stem.rsplit("part", 1)[1]))
    if not files:
        raise SystemExit(f"{parts_dir}: no {stem}.part*.pt files")
    out: dict = {}
    state: dict = {}
    for f in files:
        ck = torch.load(f, map_location="cpu", weights_only=True)
        if ck["parts"] != len(files):
            raise SystemExit(f"{parts_dir}: {len(files)} part files but {f.name} says {ck['parts']}")
        state.update({k: (v.float() if v.is_floating_point() else v) for k, v in ck.pop("model").items()})
        out.update({k: v for k, v in ck.items() if k not in ("part", "parts")})
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, **out}, dst)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("src", type=Path)
    s.add_argument("out_dir", type=Path)
    s.add_argument("--max-mb", type=float, default=15.0)
    s.add_argument("--half", action="store_true")
    s.add_argument("--name", default=None, help="part file prefix (default: the source's stem)")
    s.add_argument("--keep-float", action="append", default=[], metavar="PREFIX", help="tensors kept float32 under --half")
    j = sub.add_parser("join")
    j.add_argument("parts_dir", type=Path)
    j.add_argument("dst", type=Path)
    j.add_argument("--stem", default="model")
    a = p.parse_args()
    if a.cmd == "split":
        for path in split(a.src, a.out_dir, a.max_mb, a.half, a.name, tuple(a.keep_float)):
            print(path)
    else:
        join(a.parts_dir, a.dst, a.stem)
        print(a.dst)


if __name__ == "__main__":
    main()
