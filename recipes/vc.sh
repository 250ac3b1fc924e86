#!/usr/bin/env bash
# Generic voice-conversion recipe (MeanVC on our parts): validate → speaker encoder (ECAPA-TDNN on
# the train voices) → features (content from the streaming ASR encoder, VAE latents, speaker
# embeddings: `speechkit vc prepare`) → train the chunk DiT (mean flow, on the one engine) →
# ONNX export (checked against PyTorch) → zero-shot conversion of a test set into other unseen
# voices, judged (resemblyzer similarity, pocketsphinx and ASR WER, log-F0 correlation, DNSMOS,
# RTF) → a streamed conversion with the exported model → RESULTS.md. Called by egs/<corpus>/vc/run.sh
# with Kaldi data dirs under $data. Stages skip finished work.
#   recipes/vc.sh --config conf/vc_gpu.yaml --speaker_config conf/speaker_gpu.yaml [--stage N] ...
set -euo pipefail

stage=1
stop_stage=100
config=
speaker_config=
codec=
asr=
data=data
exp=
train_set=train
test_set=test_unseen
nj=$(nproc)
device=
judges=asr,pocketsphinx,resemblyzer,dnsmos
eval_utts=20
systems=""  # extra `--system NAME=MODEL:SAMPLER:STEPS` of vc eval beside the model's 1 and 2 steps
results=RESULTS.md
command_line="$0 $*"
_speechkit_opts="command_line stage stop_stage config speaker_config codec asr data exp train_set test_set nj device judges eval_utts systems results"
. "$(dirname "$0")/../tools/parse_options.sh"

root=$(cd "$(dirname "$0")/.." && pwd)
[ -n "$config" ] || { echo "$0: --config is required" >&2; exit 2; }
[ -n "$speaker_config" ] || { echo "$0: --speaker_config is required" >&2; exit 2; }
[ -n "$codec" ] || codec=$root/models/codec-vae-synth
[ -n "$asr" ] || asr=$root/models/asr-stream-synth
[ -n "$exp" ] || exp=exp/$(basename "${config%.*}")
dev=${device:+--device $device}
log() { echo "[$(date +%T)] $*" >&2; }

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "stage 1: validate data dirs"
  for s in $train_set $test_set; do
    [ -f "$data/$s/.validated" ] && continue
    speechkit data validate "$data/$s" --nj "$nj" --allow-bad-audio
    touch "$data/$s/.validated"
  done
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "stage 2: speaker encoder on the $train_set voices (EER on $test_set, voices never seen)"
  [ -f "$exp/speaker/model.pt" ] || speechkit speaker train --config "$speaker_config" --data "$data/$train_set" \
    --exp-dir "$exp/speaker" --eval-data "$data/$test_set" $dev
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "stage 3: features (content of $asr, latents of $codec, speaker embeddings)"
  for s in $train_set $test_set; do
    [ -f "$exp/dump/$s/stats.json" ] || speechkit vc prepare "$data/$s" "$exp/dump/$s" --codec "$codec" --asr "$asr" \
      --speaker-model "$exp/speaker" --nj "$nj"
  done
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "stage 4: train $exp/vc (resumes if interrupted)"
  [ -f "$exp/vc/model.pt" ] && [ "$exp/vc/model.pt" -nt "$exp/vc/checkpoint.pt" ] || \
    speechkit vc train --config "$config" --dump "$exp/dump/$train_set" --exp-dir "$exp/vc" $dev
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "stage 5: ONNX export, checked against PyTorch"
  speechkit vc export "$exp/vc" "$exp/onnx" --speaker-model "$exp/speaker"
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "stage 6: zero-shot conversion of $test_set into other unseen voices, judged by $judges"
  extra=(); for s in $systems; do extra+=(--system "$s"); done
  speechkit vc eval --system "mf1=$exp/vc:meanflow:1" --system "mf2=$exp/vc:meanflow:2" "${extra[@]}" \
    --dump "$exp/dump/$test_set" --data "$data/$test_set" --out-dir "$exp/eval_$test_set" --max-utts "$eval_utts" \
    --judges "$judges" --asr-model "$asr" --codec "$codec" --out "$exp/eval.json" $dev | tee "$exp/eval.txt"
fi

if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  log "stage 7: one streamed conversion with the exported model (torch-free runtime, 1 CPU thread)"
  src=$(head -n 1 "$data/$test_set/wav.scp" | cut -d' ' -f2-)
  ref=$(tail -n 1 "$data/$test_set/wav.scp" | cut -d' ' -f2-)
  speechkit vc convert "$exp/onnx" --source "$src" --reference "$ref" --out "$exp/stream_demo.wav" --stream \
    --codec "$codec" --asr "$asr" | tee "$exp/stream.txt"
fi

if [ $stage -le 8 ] && [ $stop_stage -ge 8 ]; then
  log "stage 8: $results"
  rev=$(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo unknown)
  { echo "# MeanVC voice conversion results ($(basename "$config"))"; echo; echo "command: \`$command_line\` (git $rev)"; echo
    [ -f "$exp/speaker/eer.json" ] && { echo "speaker encoder: $(python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(', '.join(f\"{r['data']}: EER {100 * r['eer']:.2f} % ({r['speakers']} voices never seen in training)\" for r in d['results']))" "$exp/speaker/eer.json")"; echo; }
    echo '```'; cat "$exp/eval.txt"; [ -f "$exp/stream.txt" ] && cat "$exp/stream.txt"; echo '```'; } > "$results"
  log "wrote $results"
fi
