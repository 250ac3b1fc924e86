"""Where one training step of an ASR config spends its time on a GPU: host syncs (CUDA sync debug
mode) and the torch profiler's top operators by host and device time, on one random batch.

    python3 egs/synth/asr/local/profile_step.py conf/train_gpu.yaml [--batch 40 --frames 1000] > profile.txt
"""

import argparse
import warnings

import torch

from speechkit.models.asr.heads import build_asr_model
from speechkit.train.config import load_experiment_config
from speechkit.train.engine import make_optimizer

p = argparse.ArgumentParser()
p.add_argument("config")
p.add_argument("--batch", type=int, default=40)
p.add_argument("--frames", type=int, default=1000)
args = p.parse_args()
cfg = load_experiment_config(args.config)
dev = torch.device("cuda")
model = build_asr_model(cfg.model, 30).to(dev).train()
opt = make_optimizer(model.parameters(), cfg.optim_conf, dev)
feats = torch.randn(args.batch, args.frames, 80, device=dev)
lens = torch.full((args.batch,), args.frames, dtype=torch.long).pin_memory()
tokens = torch.randint(1, 30, (args.batch, args.frames // 8), device=dev)
tok_lens = torch.full((args.batch,), args.frames // 8, dtype=torch.long)


def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = model(feats, lens, tokens, tok_lens)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.found_inf = (~torch.isfinite(norm)).float()
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(5):
    step()
torch.cuda.synchronize()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    step()
    torch.cuda.set_sync_debug_mode(0)
print(f"host syncs in one step: {len(caught)}")
for w in caught[:20]:
    print("  sync:", str(w.message).splitlines()[0][:100], f"{w.filename}:{w.lineno}")
from torch.profiler import ProfilerActivity, profile

with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20))
