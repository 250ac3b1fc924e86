"""The voice-conversion content encoder (speechkit/runtime/content.py) on the shipped streaming
ASR model: any way of feeding the audio gives the whole-utterance frames, 25 frames/s, the CTC
output of the ASR runtime, the layer option, one-line errors for a bad model, and no torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import run_without_torch
from speechkit.data.synth.engines import Prosody, Voice, synthesize
from speechkit.errors import SpeechkitError
from speechkit.runtime.content import ContentEncoder

MODEL = Path(__file__).resolve().parents[1] / "models" / "asr-stream-synth"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 5 s of two espeak-ng voices, 16 kHz."""
    texts = ["a quiet garden behind the old library", "the committee met on tuesday to vote"]
    parts = [synthesize(Voice("espeak-ng", v, f"espeak-{i}"), t, Prosody()) for i, (v, t) in enumerate(zip(["en-us", "en-gb+m3"], texts))]
    return np.concatenate(parts).astype(np.float32)


@pytest.fixture(scope="module")
def encoder() -> ContentEncoder:
    return ContentEncoder(MODEL)


def _fed(stream, x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    out, at, i = [], 0, 0
    while at < len(x):
        out.append(stream.accept(x[at : at + sizes[i % len(sizes)]]))
        at += sizes[i % len(sizes)]
        i += 1
    return out + [stream.finish()]


@pytest.mark.parametrize("att_context", [(64, 12), (64, 0)])
def test_streamed_in_varied_blocks_equals_the_whole_utterance(speech, att_context):
    enc = ContentEncoder(MODEL, att_context=att_context)
    whole = enc.encode(speech)
    assert whole.shape == (len(whole), 192) and whole.dtype == np.float32 and np.isfinite(whole).all()
    for sizes in ([1, 7, 160, 641, 3333, 16000, 2], [17001], list(np.random.default_rng(0).integers(1, 5000, 50))):
        parts = _fed(enc.stream(), speech, sizes)
        # same fbank frames, same encoder calls on the same caches: equal to float rounding (bitwise in practice)
        np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-6)
    # frames come out a whole chunk at a time: nothing before the first chunk's audio is in
    s = enc.stream()
    assert s.accept(speech[:100]).shape == (0, 192)
    assert len(s.accept(speech[100 : enc.chunk_feats * 160 + 240])) == att_context[1] + 1  # the last fbank frame needs 120 samples past its shift


def test_frame_rate_is_25_per_second(encoder, speech):
    assert encoder.frame_rate == 25.0
    for n in [0, 100, 640, 1000, 6400, 6401, 16000, 48017, len(speech)]:
        frames = len(encoder.encode(speech[:n]))
        fbank = (n + 80) // 160  # kaldi frames with snip_edges off: round(n / 160)
        assert frames == -(-fbank // 4), n  # 4x subsampling, the last partial group kept
        assert abs(frames - n / 640) <= 1, n  # so F = ceil(n / 640) or one less


def test_log_probs_are_the_asr_runtimes(encoder, speech):
    """The caches are carried as the ASR runtime carries them: the same CTC log-probabilities
    frame for frame (recorded inside OnlineRecognizer), hence the same greedy text."""
    from speechkit.decoding.ctc import BLANK_ID
    from speechkit.runtime import OnlineRecognizer

    rec = OnlineRecognizer(MODEL, gate=None, endpoint=None)
    seen, decode = [], rec._decode
    rec._decode = lambda s, lp: (seen.append(lp.copy()), decode(s, lp))
    text = rec.transcribe(speech)
    feats, log_probs = encoder.encode(speech, with_log_probs=True)
    assert len(log_probs) == len(feats) and len(seen) > 3
    np.testing.assert_allclose(log_probs, np.concatenate(seen), rtol=0, atol=1e-5)
    best = log_probs.argmax(-1)
    ids = [int(t) for i, t in enumerate(best) if t != BLANK_ID and (i == 0 or best[i - 1] != t)]
    assert ids and rec.tokenizer.decode(ids) == text


def test_layer_option_picks_another_block(encoder, speech):
    last = encoder.encode(speech)
    assert encoder.layer == 12
    np.testing.assert_array_equal(ContentEncoder(MODEL, layer=12).encode(speech), last)
    mid = ContentEncoder(MODEL, layer=8).encode(speech)
    assert mid.shape == last.shape
    assert np.abs(mid - last).mean() > 0.1 * np.abs(last).mean()
    for bad in (0, 13):
        with pytest.raises(SpeechkitError, match="out of range") as e:
            ContentEncoder(MODEL, layer=bad)
        assert "\n" not in str(e.value)


def _other_graph(path: Path, family: str) -> None:
    """A valid ONNX file whose graph is not a streaming conformer (x → log_probs)."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", "T", 80])
    y = onnx.helper.make_tensor_value_info("log_probs", onnx.TensorProto.FLOAT, ["B", "T", 80])
    model = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("LogSoftmax", ["x"], ["log_probs"])], "g", [x], [y]))
    onnx.helper.set_model_props(model, {"model_family": family, "num_blocks": "12"})
    path.mkdir()
    onnx.save(model, str(path / "model.onnx"))


def test_bad_model_dir_gives_one_line_error(tmp_path):
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "model.onnx").write_bytes(b"\x00not an onnx file" * 10)
    _other_graph(tmp_path / "codec", "vae-codec")
    _other_graph(tmp_path / "flat", "ctc-streaming-conformer")
    cases = {tmp_path / "missing": "no such model", tmp_path / "garbage": "not an ONNX file",
             tmp_path / "codec": "not a streaming CTC model", tmp_path / "flat": "not the streaming conformer graph"}
    for model_dir, says in cases.items():
        with pytest.raises(SpeechkitError, match=says) as e:
            ContentEncoder(model_dir)
        assert "\n" not in str(e.value) and str(model_dir) in str(e.value)
    with pytest.raises(SpeechkitError, match="not trained"):
        ContentEncoder(MODEL, att_context=(64, 5))


def test_runs_with_torch_unimportable(encoder, speech, tmp_path):
    np.save(tmp_path / "x.npy", speech)
    expected = encoder.encode(speech)
    out = run_without_torch(f"""
        import numpy as np
        from speechkit.runtime.content import ContentEncoder
        enc = ContentEncoder({str(MODEL)!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        s = enc.stream()
        f = np.concatenate([s.accept(x[:5000]), s.accept(x[5000:]), s.finish()])
        np.save({str(tmp_path / 'f.npy')!r}, f)
        print(f.shape)
    """)
    assert out.strip() == str(expected.shape)
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), expected, rtol=0, atol=1e-6)
