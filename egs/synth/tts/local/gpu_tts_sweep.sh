#!/usr/bin/env bash
# GPU run 7 behind egs/synth/tts/RESULTS.md: several CLEAR variants trained side by side on one GPU
# (same data, same minutes), each judged by teacher-forced and free-running latents of held-out
# test_unseen utterances and of its own training utterances (tools/tts_latents.py generate; the
# codec decode and the ASR judge run on a CPU machine: tools/tts_latents.py judge).
#   bash egs/synth/tts/local/gpu_tts_sweep.sh [--hours 12] [--minutes 13] [--utts 24]
#        [--variants "name:key=value,key=value name2:..."] [--stage N] [--stop_stage N]
# A variant is conf/train_clear_gpu.yaml with dotted overrides (model.reg_weight=1.0). Stages:
# 1 corpus, 2 prepare, 3 train (all variants at once, in the background; 4 waits for them),
# 4 latents + report ($REPORT/VARIANT.tgz: metrics, config, the latents npz).
# Best variant's weights afterwards: python3 tools/state_parts.py split $WORK/exp/NAME/model.pt $REPORT --max-mb 15 --half
# Run it after the README's set-up on a GPU machine; start it detached.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
args=("$@")
hours=12
minutes=13
utts=24
stage=1
stop_stage=100
codec=models/codec-vae-synth
config=conf/train_clear_gpu.yaml
variants="base: reg05:model.reg_weight=1.0 reg02:model.reg_weight=1.0,model.latent_dropout=0.2 reg0:model.reg_weight=1.0,model.latent_dropout=0.0"
WORK=${WORK:-/tmp/tts_sweep}
SRC=${SRC:-$WORK/src}
REPORT=${REPORT:-$WORK/report}
_speechkit_opts="hours minutes utts stage stop_stage codec config variants"
. "$root/tools/parse_options.sh"
. "$root/tools/gpu_common.sh"
run_from_private_copy "$SRC"
cli_from_checkout
log() { echo "[$(date +%T)] $*"; }
here=$root/egs/synth/tts
case $codec in /*) ;; *) codec=$root/$codec ;; esac
case $config in /*) ;; *) config=$here/$config ;; esac
mkdir -p "$WORK/conf" "$REPORT"

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 1 ]; then  # corpus and prepare: the single run's stages 1-2
  WORK=$WORK SRC=$root REPORT=$REPORT bash "$root/egs/synth/tts/local/gpu_tts_run.sh" --hours "$hours" \
    --codec "$codec" --stage "$stage" --stop_stage "$(( stop_stage < 2 ? stop_stage : 2 ))"
fi
if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  n=$(echo $variants | wc -w)
  threads=$(( $(nproc) / n > 1 ? $(nproc) / n : 1 ))
  for v in $variants; do
    name=${v%%:*}
    python3 - "$config" "$WORK/conf/$name.yaml" "$minutes" "${v#*:}" <<'PY'
import sys, yaml
src, dst, minutes, overrides = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
conf = yaml.safe_load(open(src))
conf["train_conf"]["max_minutes"] = minutes
for kv in filter(None, overrides.split(",")):
    key, value = kv.split("=", 1)
    *path, last = key.split(".")
    node = conf
    for p in path:
        node = node.setdefault(p, {})
    node[last] = yaml.safe_load(value)
yaml.safe_dump(conf, open(dst, "w"), sort_keys=False)
PY
    log "train $name ($minutes min, $threads threads): ${v#*:}"
    mkdir -p "$WORK/exp/$name"
    (OMP_NUM_THREADS=$threads setsid nohup speechkit tts train --config "$WORK/conf/$name.yaml" --data "$WORK/prep/train" \
      --exp-dir "$WORK/exp/$name" > "$WORK/exp/$name/train.log" 2>&1 < /dev/null; echo $? > "$WORK/exp/$name/rc") &
  done
fi
if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  for v in $variants; do
    name=${v%%:*}
    while [ ! -f "$WORK/exp/$name/rc" ]; do sleep 10; done
    log "$name: rc $(cat "$WORK/exp/$name/rc"); $(tr '\r' '\n' < "$WORK/exp/$name/train.log" | grep -v "step/s" | tail -n 1)"
  done
  for v in $variants; do
    name=${v%%:*}
    (
      for s in test_unseen train; do
        python3 "$root/tools/tts_latents.py" generate "$WORK/exp/$name" "$WORK/prep/$s" "$WORK/exp/$name/latents_$s.npz" --utts "$utts"
      done > "$WORK/exp/$name/latents.log" 2>&1
      tar czf "$REPORT/$name.tgz" -C "$WORK/exp" "$name/config.yaml" "$name/metrics.jsonl" "$name/latents.log" \
        "$name/latents_test_unseen.npz" "$name/latents_train.npz"
    ) &
  done
  wait
  for v in $variants; do name=${v%%:*}; echo "$name: $(tr '\n' ' ' < "$WORK/exp/$name/latents.log")"; done
  ls -la "$REPORT"
  log "done"
fi
