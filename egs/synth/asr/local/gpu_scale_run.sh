#!/usr/bin/env bash
# Scaling out (RESULTS.md, "Several GPUs"): the recipe's training stage on 1, 2, 4 and 8 GPUs of one
# machine through its own --ngpu N (torchrun + DDP), the same config for a fixed number of epochs,
# then decoded; the throughput of all ranks together (metrics.jsonl's audio_s_per_s_all), scaling
# efficiency against one GPU, the share of step time spent waiting for data, and test WER at each
# N. Then a SIGKILL in the middle of the largest run and a resume, compared with the uninterrupted
# weights. Each process keeps the config's batch (batch_seconds of padded audio), so N GPUs take N
# times the audio per step; the learning rate is scaled by sqrt(N) (--lr_scale; our measurement
# for 4x the batch: RESULTS.md "One engine", lr 1.5e-3 -> 3e-3).
#   bash egs/synth/asr/local/gpu_scale_run.sh [--gpus "1 2 4 8"] [--epochs 4] [--hours 50]
#     [--config conf/train_gpu_fast.yaml] [--lr_scale sqrt|linear|none] [--kill_check 1] [--kill_steps 300]
# GPU counts above what nvidia-smi lists are skipped. Work goes to $WORK (default /tmp/scale_gpu), the
# report (scale.json, scale.md, metrics, WER JSON) to $REPORT. Start it detached:
#   (setsid nohup bash egs/synth/asr/local/gpu_scale_run.sh > /tmp/scale.log 2>&1 < /dev/null &)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
hours=50
gpus="1 2 4 8"
epochs=4
config=conf/train_gpu_fast.yaml
lr_scale=sqrt
kill_check=1
kill_steps=300
WORK=${WORK:-/tmp/scale_gpu}
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="hours gpus epochs config lr_scale kill_check kill_steps"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
run_from_private_copy "$WORK/src"
cli_from_checkout
mkdir -p "$REPORT"
recipe=$root/egs/synth/asr
have=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
run() { "$recipe/run.sh" --hours "$hours" --nj "$(nproc)" --data "$WORK/data" --dump "$WORK/dump" "$@"; }

conf_for() {  # N -> a copy of the config: fixed epochs, no time budget, lr scaled for N GPUs
  python3 - "$recipe/$config" "$1" "$epochs" "$lr_scale" "$WORK/conf_gpu$1.yaml" <<'EOF'
import math, sys, yaml
src, n, epochs, rule, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
c = yaml.safe_load(open(src))
c["train_conf"].update(max_epochs=epochs, max_minutes=0)
c["optim_conf"]["lr"] = c["optim_conf"]["lr"] * {"sqrt": math.sqrt(n), "linear": n, "none": 1}[rule]
yaml.safe_dump(c, open(out, "w"), sort_keys=False)
EOF
  echo "$WORK/conf_gpu$1.yaml"
}

run --stage 0 --stop_stage 2 --ngpu 1 --config "$recipe/$config" --exp "$WORK/exp_prep"
for n in $gpus; do
  [ "$n" -le "$have" ] || { echo "skipping $n GPUs: this machine has $have"; continue; }
  c=$(conf_for "$n")
  t=$(date +%s)
  run --stage 3 --stop_stage 4 --ngpu "$n" --config "$c" --exp "$WORK/exp_gpu$n"
  echo "gpu$n: training stage $(( $(date +%s) - t )) s" | tee -a "$REPORT/timing.txt"
  run --stage 5 --stop_stage 9 --ngpu 1 --config "$c" --exp "$WORK/exp_gpu$n" --decode_modes greedy
  mkdir -p "$REPORT/gpu$n"
  cp "$WORK/exp_gpu$n"/{metrics.jsonl,config.yaml} "$REPORT/gpu$n/"
  for f in "$WORK/exp_gpu$n"/decode_*/wer.json; do cp "$f" "$REPORT/gpu$n/$(basename "$(dirname "$f")").wer.json"; done
  largest=$n
done

if [ "$kill_check" != 0 ] && [ "${largest:-1}" -gt 1 ]; then
  # the largest N again for kill_steps steps, uninterrupted and killed
  # after its first mid-run checkpoint (SIGKILL to the launcher and every rank) then resumed; the final
  # weights compared
  python3 - "$WORK" "$largest" "$WORK/conf_gpu$largest.yaml" "$REPORT/kill_resume.json" "$kill_steps" <<'EOF'
import json, os, signal, subprocess, sys, time, yaml
import torch
from speechkit.proc import descendants
work, n, conf, out, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
c = yaml.safe_load(open(conf))
c["train_conf"].update(max_epochs=100, max_steps=steps, save_interval_steps=max(1, steps // 3))
yaml.safe_dump(c, open(f"{work}/conf_kill.yaml", "w"), sort_keys=False)
def cmd(exp):
    return ["torchrun", "--standalone", "--nproc_per_node", str(n), "-m", "speechkit.cli", "train", "--config", f"{work}/conf_kill.yaml",
            "--train-dump", f"{work}/dump/train", "--dev-dump", f"{work}/dump/dev", "--exp-dir", f"{work}/{exp}"]
subprocess.run(cmd("kill_full"), check=True)
p = subprocess.Popen(cmd("kill_resumed"))
ck = f"{work}/kill_resumed/checkpoint.pt"
while not os.path.exists(ck) and p.poll() is None:
    time.sleep(0.5)
time.sleep(3)  # into the next stretch of steps
for pid in [p.pid, *descendants(p.pid)]:  # torchrun's ranks run in sessions of their own
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
p.wait()
time.sleep(2)
killed_at = torch.load(ck, weights_only=True, map_location="cpu")["step"]
subprocess.run(cmd("kill_resumed"), check=True)
last = lambda e: torch.load(f"{work}/{e}/checkpoint.pt", weights_only=True, map_location="cpu")["model"]
a, b = last("kill_full"), last("kill_resumed")
diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
r = {"gpus": n, "steps": steps, "killed_after_checkpoint_at_step": killed_at, "identical": all(torch.equal(a[k], b[k]) for k in a),
     "max_abs_diff": diff}
json.dump(r, open(out, "w"), indent=1)
print("kill/resume:", r)
EOF
fi

python3 - "$REPORT" $gpus <<'EOF'
import json, statistics, sys
from pathlib import Path
report, counts = Path(sys.argv[1]), [int(x) for x in sys.argv[2:]]
rows = []
for n in counts:
    d = report / f"gpu{n}"
    if not (d / "metrics.jsonl").is_file():
        continue
    m = [json.loads(line) for line in open(d / "metrics.jsonl")]
    steps = [r for r in m if "audio_s_per_s" in r]
    steps = steps[len(steps) // 5:]  # past the first fifth: warm-up, compilation, first epoch's cache fill
    thr = statistics.median(r.get("audio_s_per_s_all", r["audio_s_per_s"]) for r in steps)
    wer = {p.name.split(".")[0].removeprefix("decode_"): json.load(open(p))["wer"] for p in sorted(d.glob("decode_*.wer.json"))}
    rows.append({"gpus": n, "audio_s_per_s": round(thr, 1), "data_wait": round(statistics.median(r["data_wait"] for r in steps), 4),
                 "steps": m[-1].get("step"), "wer": wer})
if rows:
    base = next((r for r in rows if r["gpus"] == 1), None)
    for r in rows:
        r["efficiency"] = round(r["audio_s_per_s"] / (r["gpus"] * base["audio_s_per_s"]), 3) if base else None
json.dump(rows, open(report / "scale.json", "w"), indent=1)
lines = ["| GPUs | audio s / s (all ranks) | scaling efficiency | data wait | steps | WER |", "|---|---|---|---|---|---|"]
lines += [f"| {r['gpus']} | {r['audio_s_per_s']:.0f} | {r['efficiency']} | {100 * r['data_wait']:.1f} % | {r['steps']} | "
          + ", ".join(f"{k} {v}" for k, v in r["wer"].items()) + " |" for r in rows]
(report / "scale.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
tar czf "$WORK/report.tgz" -C "$WORK" report
echo "done: $REPORT"
