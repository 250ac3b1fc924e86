"""Export to ONNX (parity check and its refusal), the torch-free streaming runtime, and the
streaming CLI commands, on a tiny randomly initialised streaming conformer."""

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import run_without_torch, make_tiny_data_dir, make_tiny_exp_dir
from speechkit.errors import AudioError, SpeechkitError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(exp_dir, model_dir, data_dir): a tiny streaming experiment exported to ONNX."""
    from speechkit.cli import main

    root = tmp_path_factory.mktemp("stream")
    utts = make_tiny_data_dir(root / "data", n_utts=6, seed=3)
    exp = make_tiny_exp_dir(root / "exp", [u.text for u in utts], seed=1, streaming=True)
    assert main(["export", "onnx", str(exp), str(root / "model"), "--check-data", str(root / "data")]) == 0
    return exp, root / "model", root / "data"


def test_export_writes_metadata_and_a_passed_parity_report(exported):
    import onnxruntime as ort

    _, model_dir, _ = exported
    meta = ort.InferenceSession(str(model_dir / "model.onnx")).get_modelmeta().custom_metadata_map
    assert meta["model_family"] == "ctc-streaming-conformer"
    assert meta["att_contexts"] == "8,3;8,0;8,1" and meta["subsampling"] == "4" and meta["sample_rate"] == "16000"
    report = json.loads((model_dir / "export.json").read_text())["parity"]
    assert len(report) == 9 and all(r["same_tokens"] and r["chunks"] >= 3 for r in report)
    names = [i.name for i in ort.InferenceSession(str(model_dir / "model.onnx")).get_inputs()]
    assert names == ["x", "x_lens", "att_context", "cached_sub1", "cached_sub2", "cached_att", "cached_conv", "cached_len"]


def test_parity_check_refuses_a_graph_that_disagrees(exported, tmp_path):
    from speechkit.export.streaming_asr import check_parity
    from speechkit.inference.asr import Recognizer

    exp, model_dir, data = exported
    texts = [line.split(" ", 1)[1] for line in (data / "text").read_text().splitlines()]
    other = Recognizer.from_exp_dir(make_tiny_exp_dir(tmp_path / "other", texts, seed=7, streaming=True), device="cpu").model
    feats = [np.random.default_rng(0).normal(size=(80, 80)).astype(np.float32) * 3 + 8]
    with pytest.raises(SpeechkitError, match="disagree"):
        check_parity(other, model_dir / "model.onnx", feats)


def test_export_refuses_a_full_context_model(tmp_path, run_cli):
    exp = make_tiny_exp_dir(tmp_path / "exp", ["a b"], streaming=False)
    make_tiny_data_dir(tmp_path / "data", n_utts=3)
    rc, _, err = run_cli("export", "onnx", exp, tmp_path / "out", "--check-data", tmp_path / "data")
    assert rc == 2 and "streaming_conformer" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("context", [(8, 0), (8, 3)])
def test_runtime_equals_pytorch_decode_with_the_same_context(exported, context, tmp_path, run_cli):
    from speechkit.data.kaldi import read_table
    from speechkit.runtime.decode import decode_data_dir_streaming

    exp, model_dir, data = exported
    ctx = f"{context[0]},{context[1]}"
    assert run_cli("decode", exp, data, tmp_path / "torch", "--att-context", ctx, "--device", "cpu")[0] == 0
    n = decode_data_dir_streaming(model_dir, data, tmp_path / "onnx", att_context=context, batch=4)
    assert n == 6
    assert read_table(tmp_path / "onnx" / "hyp") == read_table(tmp_path / "torch" / "hyp")


def test_runtime_runs_with_torch_unimportable(exported, tmp_path):
    from speechkit.runtime import OnlineRecognizer

    _, model_dir, data = exported
    wav = sorted((data / "wav").glob("*.wav"))[0]
    expected = OnlineRecognizer(model_dir).transcribe(sf.read(wav, dtype="float32")[0])
    out = run_without_torch(f"""
        import soundfile as sf
        from speechkit.runtime import OnlineRecognizer
        rec = OnlineRecognizer({str(model_dir)!r})
        print(repr(rec.transcribe(sf.read({str(wav)!r}, dtype="float32")[0])))
    """)
    assert out.strip() == repr(expected)


def test_small_pieces_give_the_same_text_as_one_piece(exported):
    from speechkit.runtime import OnlineRecognizer

    _, model_dir, data = exported
    rec = OnlineRecognizer(model_dir, att_context=(8, 1), endpoint=None)
    samples = sf.read(sorted((data / "wav").glob("*.wav"))[1], dtype="float32")[0]
    s = rec.create_stream()
    for start in range(0, len(samples), 777):  # pieces that end mid-frame and mid-chunk
        s.accept_waveform(samples[start : start + 777])
        s.accept_waveform(np.zeros(0, dtype=np.float32))  # empty pieces are fine
        while rec.is_ready(s):
            rec.decode_streams([s])
    s.input_finished()
    while rec.is_ready(s):
        rec.decode_streams([s])
    assert rec.text(s) == rec.transcribe(samples)


def test_runtime_bad_input(exported):
    from speechkit.runtime import OnlineRecognizer

    _, model_dir, _ = exported
    rec = OnlineRecognizer(model_dir)
    s = rec.create_stream()
    with pytest.raises(AudioError, match="NaN"):
        s.accept_waveform(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(AudioError, match="mono"):
        s.accept_waveform(np.zeros((10, 2), dtype=np.float32))
    s.accept_waveform(np.zeros(8000, dtype=np.float32), sample_rate=8000)  # resampled, not refused
    assert s.fbank.num_frames_ready > 90
    s.input_finished()
    with pytest.raises(SpeechkitError, match="finished"):
        s.accept_waveform(np.zeros(10, dtype=np.float32))
    with pytest.raises(SpeechkitError, match="not trained"):
        OnlineRecognizer(model_dir, att_context=(8, 2))
    with pytest.raises(SpeechkitError, match="no such model"):
        OnlineRecognizer(model_dir.parent / "nowhere")


def test_endpoint_splits_speech_separated_by_silence(exported):
    from speechkit.runtime import EndpointConfig, OnlineRecognizer

    _, model_dir, _ = exported
    # with a random model "silence" is whatever decodes to blank; force it by rules on time alone
    rec = OnlineRecognizer(model_dir, endpoint=EndpointConfig(silence_before_speech=0.0, silence_after_speech=0.0, max_segment=1.0))
    s = rec.create_stream()
    s.accept_waveform(np.random.default_rng(0).normal(size=16000 * 5).astype(np.float32) * 0.1)
    s.input_finished()
    while rec.is_ready(s):
        rec.decode_streams([s])
    ends = [seg.end for seg in s.finals]
    assert ends == sorted(ends) and all(seg.end - seg.start <= 1.0 + rec.chunk_ms / 1000 for seg in s.finals)
    assert all(seg.start <= t <= seg.end for seg in s.finals for t in seg.times)


def test_prefix_beam_fed_in_pieces_equals_one_piece():
    from speechkit.decoding.ctc import CtcPrefixBeamSearch, ctc_prefix_beam_search

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 7)) * 3
    logits[:, 0] += 2  # mostly blank, like a trained CTC model
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    search = CtcPrefixBeamSearch(beam=5)
    for start in range(0, 60, 13):
        search.accept(lp[start : start + 13])
    assert search.nbest() == ctc_prefix_beam_search(lp, beam=5)
    ids, frames = search.best()
    assert len(ids) == len(frames) and frames == sorted(frames) and all(0 <= f < 60 for f in frames)


def test_runtime_beam_search_gives_text_and_times(exported):
    from speechkit.runtime import OnlineRecognizer

    _, model_dir, data = exported
    samples = sf.read(sorted((data / "wav").glob("*.wav"))[0], dtype="float32")[0]
    rec = OnlineRecognizer(model_dir, att_context=(8, 1), beam=4, endpoint=None)
    s = rec.create_stream()
    s.accept_waveform(samples)
    s.input_finished()
    while rec.is_ready(s):
        rec.decode_streams([s])
    assert len(s.finals) <= 1
    for seg in s.finals:
        assert len(seg.times) == len(seg.tokens) and seg.times == sorted(seg.times)


def test_int8_export_is_weight_only_and_batch_independent(exported, tmp_path):
    """`export onnx --int8`: int8 weights behind DequantizeLinear, and a stream's text is the
    same alone and next to a much louder stream."""
    import onnx

    from speechkit.cli import main
    from speechkit.runtime import OnlineRecognizer

    exp, _, data = exported
    assert main(["export", "onnx", str(exp), str(tmp_path / "int8"), "--check-data", str(data), "--int8"]) == 0
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node}
    assert "DequantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    rec = OnlineRecognizer(tmp_path / "int8")
    wavs = [sf.read(line.split()[1], dtype="float32")[0] for line in (data / "wav.scp").read_text().splitlines()[:2]]
    loud = [wavs[0], wavs[1] * 8.0]  # very different activation ranges in one batch
    assert rec.transcribe_batch(loud) == [rec.transcribe(w) for w in loud]
