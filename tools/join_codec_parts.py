"""Join the per-module fp16 weight files a codec GPU run sends back (``vae_encoder.pt``,
``vae_decoder.pt`` [, ``rvq_quantizer.pt``]) into one float32 ``model.pt`` that every `speechkit
codec` command (and ``train_conf.init_checkpoint``) reads.

    python tools/join_codec_parts.py REPORT_DIR vae egs/synth/codec/exp/vae_gpu/model.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from speechkit.models.codec.model import build_codec, codec_config_from_dict
from speechkit.models.codec.train import save_codec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report_dir", type=Path)
    p.add_argument("codec", choices=["vae", "rvq"])
    p.add_argument("out", type=Path)
    args = p.parse_args()
    parts = sorted(args.report_dir.glob(f"{args.codec}_*.pt"))
    if not parts:
        raise SystemExit(f"{args.report_dir}: no {args.codec}_*.pt files")
    state, config = {}, None
    for f in parts:
        ck = torch.load(f, map_location="cpu", weights_only=True)
        state.update({k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()})
        config = ck["config"]
    cfg = codec_config_from_dict(config, str(parts[0]))
    model = build_codec(cfg)
    model.load_state_dict(state)  # strict: every module's file must be there
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_codec(model, cfg, args.out)
    print(f"{args.out}: {args.codec} codec from {len(parts)} files")


if __name__ == "__main__":
    main()
