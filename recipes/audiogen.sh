#!/usr/bin/env bash
# Generic text-to-music recipe (issue 22): validate → RVQ codec on the corpus's audio (`speechkit
# codec train`) and, beside it, the instrument judge on the real renders → token dump (the codec's
# first K codebooks, `speechkit audiogen prepare`) → MAGNeT and the delay-pattern AR baseline on
# the one engine → eval of magnet, magnet + AR rescoring, hybrid and AR on the test captions
# (tempo, key, instruments, Fréchet distance; the codec's resynthesis of the real renders as the
# ceiling; generation time at batch 1 and B) → RESULTS.md. Called by egs/<corpus>/audiogen/run.sh
# with music data dirs under $data. Stages skip finished work (a trainer resumes from its checkpoint).
#   recipes/audiogen.sh --codec_config conf/codec_rvq_gpu.yaml --magnet_config conf/magnet_gpu.yaml \
#     --ar_config conf/ar_gpu.yaml --judge_config conf/judge_gpu.yaml [--stage N] [--stop_stage N] ...
set -euo pipefail

stage=1
stop_stage=100
codec_config=
magnet_config=
ar_config=
judge_config=
codebooks=4
data=data
exp=
train_set=train
test_set=test
nj=$(nproc)
device=
systems=magnet,magnet_rescore,hybrid,ar
eval_clips=64
eval_seconds=10
eval_batch=32
eval_steps=""  # MAGNeT decoding steps per codebook (default 20,10,10,10)
rescore_weight=0.5
hybrid_seconds=2
results=RESULTS.md
command_line="$0 $*"
_speechkit_opts="command_line stage stop_stage codec_config magnet_config ar_config judge_config codebooks data exp train_set test_set nj device systems eval_clips eval_seconds eval_batch eval_steps rescore_weight hybrid_seconds results"
. "$(dirname "$0")/../tools/parse_options.sh"

for c in codec_config magnet_config ar_config judge_config; do
  [ -n "${!c}" ] || { echo "$0: --$c is required" >&2; exit 2; }
done
[ -n "$exp" ] || exp=exp/$(basename "${magnet_config%.*}")
dev=${device:+--device $device}
log() { echo "[$(date +%T)] $*" >&2; }
fresh() { [ -f "$1/model.pt" ] && { [ ! -f "$1/checkpoint.pt" ] || [ "$1/model.pt" -nt "$1/checkpoint.pt" ]; }; }

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "stage 1: validate data dirs"
  for s in $train_set $test_set; do
    [ -f "$data/$s/.validated" ] && continue
    speechkit data validate "$data/$s" --nj "$nj" --allow-bad-audio
    touch "$data/$s/.validated"
  done
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "stage 2: RVQ codec ($codec_config) on $train_set; beside it the instrument judge ($judge_config)"
  mkdir -p "$exp"
  pids=()
  if ! fresh "$exp/codec"; then
    speechkit codec train --config "$codec_config" --data "$data/$train_set" --exp-dir "$exp/codec" $dev & pids+=($!)
  fi
  if [ ! -f "$exp/judge/report.json" ]; then
    speechkit audiogen judge --train "$data/$train_set" --test "$data/$test_set" --out-dir "$exp/judge" \
      --config "$judge_config" $dev > "$exp/judge.txt" & pids+=($!)
  fi
  for p in "${pids[@]}"; do wait "$p"; done  # set -e: a failed job stops here
  [ ! -f "$exp/judge.txt" ] || cat "$exp/judge.txt"
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "stage 3: tokens of $train_set (the codec's first $codebooks codebooks)"
  [ -f "$exp/dump/$train_set/stats.json" ] && [ "$exp/dump/$train_set/stats.json" -nt "$exp/codec/model.pt" ] || \
    speechkit audiogen prepare "$data/$train_set" "$exp/dump/$train_set" --codec "$exp/codec" --codebooks "$codebooks" $dev
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "stage 4: MAGNeT ($magnet_config) and the AR baseline ($ar_config), side by side (each resumes if interrupted)"
  pids=()
  for m in magnet ar; do
    fresh "$exp/$m" && continue
    mkdir -p "$exp/$m"
    config_var=${m}_config
    speechkit audiogen train --config "${!config_var}" --dump "$exp/dump/$train_set" --exp-dir "$exp/$m" $dev \
      > "$exp/$m/train.log" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { echo "$0: training failed; see $exp/{magnet,ar}/train.log" >&2; exit 1; }; done
  for m in magnet ar; do grep -h "^audiogen\|^trained" "$exp/$m/train.log" || true; done
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "stage 5: eval of $systems on $eval_clips $test_set captions"
  speechkit audiogen eval --magnet "$exp/magnet" --ar "$exp/ar" --codec "$exp/codec" --data "$data/$test_set" \
    --judge "$exp/judge" --out-dir "$exp/eval" --systems "$systems" --clips "$eval_clips" --seconds "$eval_seconds" \
    --batch "$eval_batch" --rescore-weight "$rescore_weight" --hybrid-seconds "$hybrid_seconds" \
    ${eval_steps:+--steps $eval_steps} $dev | tee "$exp/eval.txt"
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "stage 6: $results"
  rev=$(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo unknown)
  { echo "# Text-to-music results ($(basename "$magnet_config"), $(basename "$ar_config"))"; echo
    echo "command: \`$command_line\` (git $rev)"; echo
    for m in codec magnet ar; do
      [ ! -f "$exp/$m/metrics.jsonl" ] || echo "- $m: $(python3 -c "import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
keys = [k for k in r if k in ('loss', 'acc', 'mel', 'stft', 'waveform_l1', 'commit') or k.startswith('acc_q')]
print(f\"{r['step']} steps in {r['elapsed_s'] / 60:.1f} min; last log: \" + ', '.join(f'{k} {r[k]:.3f}' for k in keys))" "$exp/$m/metrics.jsonl")"
    done
    [ -f "$exp/dump/$train_set/stats.json" ] && echo "- tokens: $(python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(f\"{d['clips']} clips, {d['hours']} h, {d['codebooks']} codebooks of {d['card']} at {d['frame_rate']:g} frames/s\")" "$exp/dump/$train_set/stats.json")"
    [ -f "$exp/judge.txt" ] && echo "- $(cat "$exp/judge.txt")"
    echo; cat "$exp/eval/eval.md"; } > "$results"
  log "wrote $results"
fi
