#!/usr/bin/env bash
# Issue 23 on a CPU, before its GPU run: a transducer head trained on the frozen encoder of the
# shipped streaming model (conf/transducer_head_cpu.yaml), so that a hybrid CTC/transducer model
# exists, loads in sherpa-onnx and can be compared with the CTC head on the very same encoder.
#   1. models/asr-stream-synth's int8 ONNX back into a checkpoint (local/onnx_to_checkpoint.py;
#      exact: the runtime computes with the same dequantized weights)
#   2. the corpus that encoder was last fine-tuned on (speechkit corpus synth --hours 6 --seed 0
#      --engines espeak-ng,flite,piper) and one copy augmented by conf/augment.yaml beside the clean one
#   3. the recipe's stages 1-5 with the config: features, training (the head only; encoder and CTC
#      layer frozen), averaging
#   4. local/gpu_transducer_run.sh --stage 6 on the same dirs: CTC greedy, transducer greedy and
#      beam 4 at each look-ahead (PyTorch), the sherpa-onnx folders at 64,12 decoded chunk by chunk
#      by our runtime, both benched against sherpa-onnx on one thread; report in WORK/report
#   bash local/cpu_transducer_head.sh [--work exp/transducer_head] [--minutes 60] [--real_dev DIR]
# --real_dev DIR: a data dir from `speechkit data real-dev`, decoded beside the synth test sets.
set -euo pipefail
cd "$(dirname "$0")/.."
. ./path.sh
work=exp/transducer_head
minutes=60
real_dev=
config=conf/transducer_head_cpu.yaml
nj=$(nproc)
_speechkit_opts="work minutes real_dev config nj"
. ../../../tools/parse_options.sh
. ../../../tools/gpu_common.sh  # synth_corpus
log() { echo "[$(date +%T)] $*" >&2; }
[ -z "$real_dev" ] || [ -f "$real_dev/text" ] || { echo "$0: --real_dev $real_dev: not a data dir (no text)" >&2; exit 2; }
mkdir -p "$work"
work=$(realpath "$work")
init=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['train_conf']['init_checkpoint'])" "$config")
[ -f "$init" ] || { log "the shipped model -> $init"; python3 local/onnx_to_checkpoint.py ../../../models/asr-stream-synth "$(dirname "$init")" --config conf/train_stream_gpu.yaml; }
python3 - "$config" "$work/train.yaml" "$minutes" "$(realpath "$init")" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["train_conf"].update(max_minutes=float(sys.argv[3]), init_checkpoint=sys.argv[4])
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
PY
synth_corpus "$work/data" 6 0 "$nj" espeak-ng,flite,piper  # once; an engine that made nothing is an error
./run.sh --stage 1 --stop_stage 5 --config "$work/train.yaml" --data "$work/data" --dump "$work/dump" --exp "$work/exp" \
  --augment conf/augment.yaml --augment_copies 1 --nj "$nj"
WORK=$work bash local/gpu_transducer_run.sh --stage 6 ${real_dev:+--real_dev "$(realpath "$real_dev")"}
