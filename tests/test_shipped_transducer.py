"""The shipped hybrid model (models/asr-transducer-synth: a transducer head on the shipped
streaming model's encoder, in sherpa-onnx's folder format): within its size budget, it reads
espeak-ng sentences through our torch-free runtime (greedy and beam), sherpa-onnx's online
recognizer gives the same tokens on the same whole chunks, and ``speechkit.load`` and the CLI open it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import speechkit
from conftest import ours_whole_chunks, sherpa_decode, sherpa_transducer_recognizer, whole_chunks
from speechkit.data.synth.engines import Prosody, Voice, synthesize
from speechkit.eval.wer import wer_percent
from speechkit.runtime.transducer import TransducerRecognizer

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = Path(__file__).resolve().parents[1] / "models" / "asr-transducer-synth"
SR = 16000
TEXTS = ["a quiet garden behind the old library", "the committee met on tuesday to vote",
         "she carried the heavy basket across the bridge"]
VOICES = ["en-us", "en-gb+m3", "en-us+f2"]


@pytest.fixture(scope="module")
def waves():
    return [synthesize(Voice("espeak-ng", v, f"espeak-{i}"), t, Prosody()).astype(np.float32)
            for i, (v, t) in enumerate(zip(VOICES, TEXTS))]


def test_the_folder_is_whole_and_within_budget():
    files = {p.name: p.stat().st_size for p in MODEL.iterdir()}
    assert {"encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt", "README.md", "card.json"} <= set(files)
    assert sum(files.values()) <= 20e6
    card = json.loads((MODEL / "card.json").read_text())
    assert card["size_mb"] == round(sum(files.values()) / 1e6, 1)


@pytest.mark.parametrize("beam", [1, 4])
def test_our_runtime_reads_espeak_sentences(waves, beam):
    rec = TransducerRecognizer(MODEL, beam=beam)
    hyps = [rec.transcribe(w) for w in waves]
    assert wer_percent(TEXTS, hyps) <= 35.0, hyps  # measured: 22.7 greedy, 18.2 beam 4


def test_sherpa_onnx_gives_our_tokens_times_and_text_on_whole_chunks(waves):
    rec = TransducerRecognizer(MODEL, gate=None, endpoint=None)
    cut = [whole_chunks(w, rec.chunk_feats) for w in waves]
    theirs = sherpa_decode(sherpa_transducer_recognizer(MODEL), cut, SR)
    assert ours_whole_chunks(rec, cut) == theirs and all(len(t[0]) > 10 for t in theirs)


def test_load_and_cli_open_it(waves, tmp_path, run_cli):
    import soundfile as sf

    path = tmp_path / "0.wav"
    sf.write(path, waves[0], SR)
    (text,) = [t.text for t in speechkit.load(MODEL).transcribe([path])]
    assert wer_percent(TEXTS[:1], [text]) <= 30.0, text
    rc, out, _ = run_cli("transcribe", str(MODEL), str(path))
    assert rc == 0 and out.strip() == f"{path} {text}"
