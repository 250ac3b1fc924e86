#!/usr/bin/env bash
# Streaming conformer-CTC on LibriSpeech, from a local download (nothing is downloaded here).
#   ./run.sh --corpus_dir /data/LibriSpeech --ngpu 1                          train-clean-100 (default)
#   ./run.sh --corpus_dir /data/LibriSpeech --ngpu 8 \
#       --train_subsets "train-clean-100 train-clean-360 train-other-500"      all 960 h
# --corpus_dir holds <subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt and the .flac
# files (or a LibriSpeech/ folder that does). Stage 0 writes the Kaldi data dirs (one per subset,
# dev-clean → data/dev_clean; several training subsets also as data/train); stages 1-9 are
# recipes/asr.sh (see its header).
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh

stage=0
stop_stage=100
corpus_dir=
train_subsets="train-clean-100"
dev_subset="dev-clean"
test_subsets="test-clean test-other dev-other"
config=conf/train_gpu.yaml
nj=$(nproc)
ngpu=1
data=data
dump=dump
exp=
speed_perturb="0.9,1.0,1.1"
decode_modes="greedy beam"
_speechkit_opts="stage stop_stage corpus_dir train_subsets dev_subset test_subsets config nj ngpu data dump exp speed_perturb decode_modes"
command_line="egs/librispeech/asr/run.sh $*"
. ../../../tools/parse_options.sh
[ -n "$exp" ] || exp=exp/$(basename "${config%.*}")

under() { echo "${1//-/_}"; }  # a subset's data dir name: dev-clean -> dev_clean
if [ "$(echo $train_subsets | wc -w)" -gt 1 ]; then train_set=train; else train_set=$(under "$train_subsets"); fi
dev_set=$(under "$dev_subset")
test_sets=$(for s in $test_subsets; do under "$s"; done | xargs)

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && [ ! -f "$data/.done" ]; then
  [ -n "$corpus_dir" ] || { echo "$0: --corpus_dir is required (the local LibriSpeech download)" >&2; exit 2; }
  echo "[$(date +%T)] stage 0: Kaldi data dirs from $corpus_dir" >&2
  subsets=$(echo $train_subsets $dev_subset $test_subsets | tr ' ' ',')
  combine=()
  [ "$train_set" = train ] && combine=(--combine "train=$(echo $train_subsets | tr ' ' ',')")
  speechkit data prepare-librispeech --corpus-dir "$corpus_dir" --out "$data" --subsets "$subsets" "${combine[@]}"
  touch "$data/.done"
fi

../../../recipes/asr.sh --stage "$((stage > 1 ? stage : 1))" --stop_stage "$stop_stage" --config "$config" \
  --data "$data" --dump "$dump" --exp "$exp" --nj "$nj" --ngpu "$ngpu" --speed_perturb "$speed_perturb" \
  --train_set "$train_set" --dev_set "$dev_set" --test_sets "$test_sets" \
  --decode_modes "$decode_modes" --results "$exp/RESULTS.md" \
  --results_title "streaming conformer-CTC, LibriSpeech $(echo $train_subsets | xargs) ($(basename "$config"))" \
  --command_line "$command_line"

if [ $stop_stage -ge 9 ]; then
  echo "== per-split WER ($exp) =="
  for f in "$exp"/decode_*/wer.json; do
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"{sys.argv[1].split('/')[-2]:<28} WER {r['wer']:6.2f}%  CER {r['cer']:6.2f}%  ({r['utterances']} utts)\")" "$f"
  done
fi
