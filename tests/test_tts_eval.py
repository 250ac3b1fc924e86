"""tts eval's judging of a synthesised set: the ASR judge's WER is also given by engine, since the
judge has heard some engines' voices in training (its card's corpora)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import make_tiny_data_dir

from speechkit.data.kaldi import write_table
from speechkit.eval.tts_eval import eval_pairs, judge_set, summary_lines
from speechkit.eval.wer import wer_percent

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "asr-stream-synth"


def test_asr_judge_wer_by_engine(tmp_path):
    data, out = tmp_path / "data", tmp_path / "eval"
    utts = make_tiny_data_dir(data, n_utts=6, seed=3)
    engine = {u.utt_id: "espeak-ng" if u.speaker == "spk1" else "piper" for u in utts}
    write_table(data / "utt2synth", {u: f"engine={e} voice=v" for u, e in engine.items()})
    pairs = eval_pairs(data)
    assert {p["utt"]: p["engine"] for p in pairs} == engine
    (out / "wav").mkdir(parents=True)
    for u in utts:  # espeak-ng's "synthesised" clips are the recordings; piper's are empty (judged as silence)
        if engine[u.utt_id] == "espeak-ng":
            shutil.copy(u.wav, out / "wav" / f"{u.utt_id}.wav")
        else:
            sf.write(out / "wav" / f"{u.utt_id}.wav", np.zeros(0, np.float32), 16000)

    r = judge_set(pairs, out, ["asr"], str(SHIPPED))
    by = r["asr"]["by_engine"]
    assert set(by) == {"espeak-ng", "piper"} and by["espeak-ng"]["utterances"] == by["piper"]["utterances"] == 3
    assert by["espeak-ng"]["wer_synth"] == by["espeak-ng"]["wer_real"]
    assert by["piper"]["wer_synth"] == 100.0  # silence gives no words: every reference word deleted
    refs = {p["utt"]: p["text"] for p in pairs}
    hyps = {p["utt"]: p["asr_hyp"] for p in pairs}
    piper = sorted(u for u in refs if engine[u] == "piper")
    assert by["piper"]["wer_synth"] == wer_percent([refs[u] for u in piper], [hyps[u] for u in piper], 2)
    lines = summary_lines({"data": str(data), "utterances": len(pairs), "options": {"steps": 1, "cfg_scale": 1.0},
                           "judges": r})
    assert any(line.strip().startswith("piper (3 utts): synthesised 100.0") for line in lines)


def test_no_utt2synth_no_engine(tmp_path):
    make_tiny_data_dir(tmp_path / "data", n_utts=4, seed=4)
    assert all("engine" not in p for p in eval_pairs(tmp_path / "data"))
