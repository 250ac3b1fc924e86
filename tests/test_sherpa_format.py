"""sherpa-onnx's online formats (``speechkit/export/sherpa.py``): a tiny random streaming conformer
with a toy stateless decoder and joiner is exported as encoder/decoder/joiner ONNX files and
tokens.txt, loaded by ``sherpa_onnx.OnlineRecognizer`` (cpu, one thread), and fed a few seconds of
audio; its tokens and token times equal our greedy search (and its modified beam search ours) on
speechkit's own fbank through the torch modules, and on sherpa-onnx's fbank through the exported
graphs in ONNX Runtime, for streams decoded alone and as one batch. The same encoder with a CTC
head, exported as a zipformer2 CTC model, gives our CTC greedy tokens."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import sherpa_onnx
from conftest import sherpa_decode as decode_with_sherpa
from conftest import sherpa_transducer_recognizer
import torch
from torch import nn

from speechkit.audio.fbank import FbankConfig, compute_fbank
from speechkit.decoding.ctc import ctc_greedy
from speechkit.decoding.transducer import BeamState, GreedyState, greedy_search, modified_beam_search
from speechkit.errors import SpeechkitError
from speechkit.export.sherpa import (INT16_LOG_GAIN, LOG_FLOOR, MODEL_TYPE, SherpaStateLayout, export_sherpa_ctc,
                                     export_sherpa_transducer, recognizer_options, speechkit_fbank)
from speechkit.models.asr.ctc_model import GlobalCMVN
from speechkit.nn.streaming_conformer import StreamingConformerConfig, StreamingConformerEncoder


SR = 16000
ATT_CONTEXT = (8, 3)
CHUNK = 4 * (ATT_CONTEXT[1] + 1)  # fbank frames per encoder call
TOKENS = ["<blk>", "<unk>", "▁a", "b", "c", "d", "e", "f", "▁g"]
CONTEXT = 2
JOINER_DIM = 16
BEAM = 4

pytestmark = pytest.mark.usefixtures("one_thread")


class ToyDecoder(nn.Module):
    """icefall's stateless decoder in miniature: embeddings of the last 2 tokens (-1 → zeros), a
    conv over them, a projection. y (N, 2) int64 → (N, J)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(len(TOKENS), JOINER_DIM)
        self.conv = nn.Conv1d(JOINER_DIM, JOINER_DIM, CONTEXT)
        self.proj = nn.Linear(JOINER_DIM, JOINER_DIM)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        e = self.emb(y.clamp(min=0)) * (y >= 0).unsqueeze(-1)
        return self.proj(torch.relu(self.conv(e.transpose(1, 2)).squeeze(-1)))


class ToyJoiner(nn.Module):
    """(N, J), (N, J) → (N, V): tanh of the sum, a projection."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(JOINER_DIM, len(TOKENS))
        with torch.no_grad():
            self.out.weight.mul_(4.0)

    def forward(self, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(enc + dec))


def tiny_model():
    """The random encoder, CMVN, decoder and joiner; the joiner's bias is set so that over some
    audio every symbol is about as likely and blank a little more, so many symbols appear."""
    torch.manual_seed(0)
    cfg = StreamingConformerConfig(output_size=JOINER_DIM, attention_heads=2, linear_units=32, num_blocks=2, cnn_module_kernel=5,
                                   dropout_rate=0.0, attention_dropout_rate=0.0, subsampling_channels=8,
                                   att_context_size=(ATT_CONTEXT,))
    encoder = StreamingConformerEncoder(cfg, 80).eval()
    cmvn = GlobalCMVN(80)
    rng = np.random.default_rng(0)
    cmvn.set_stats((8 + rng.standard_normal(80)).astype(np.float32), (0.3 + 0.05 * rng.random(80)).astype(np.float32))
    decoder, joiner = ToyDecoder().eval(), ToyJoiner().eval()
    feats = torch.from_numpy(compute_fbank(audio(9, 2.0)))[None]
    with torch.no_grad():
        enc, _ = encoder(cmvn(feats), torch.tensor([feats.shape[1]]), ATT_CONTEXT)
        dec = decoder(torch.randint(-1, len(TOKENS), (enc.shape[1], CONTEXT)))
        joiner.out.bias -= joiner(enc[0], dec).mean(0)
        joiner.out.bias[0] += 0.5
    return encoder, cmvn, decoder, joiner


def audio(seed: int, seconds: float) -> np.ndarray:
    """A chirp and a tone over light noise, with digital silence before and after (sherpa-onnx
    needs trailing audio to decode the last chunk; the zeros also test the fbank floor)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * (300 + 200 * seed) * t * (1 + t)) + 0.1 * np.sin(2 * np.pi * 1200 * t) * (t > seconds / 2)
    x = x + 0.02 * rng.standard_normal(len(t))
    return np.concatenate([np.zeros(SR // 10), x, np.zeros(SR // 2)]).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny model exported twice: for fbank of int16-range samples (the default) and of
    samples in [-1, 1] (sherpa-onnx's default scale), on one torch thread (a module fixture runs
    before ``one_thread``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_model()
        encoder, cmvn, decoder, joiner = model
        dirs, reports = {}, {}
        for unit in (False, True):
            dirs[unit] = tmp_path_factory.mktemp("sherpa_unit" if unit else "sherpa")
            reports[unit] = export_sherpa_transducer(dirs[unit], encoder=encoder, frontend=cmvn, decoder=decoder, joiner=joiner, tokens=TOKENS,
                                                     att_context=ATT_CONTEXT, context_size=CONTEXT, unit_range_samples=unit)
    finally:
        torch.set_num_threads(threads)
    return dirs, model, reports


def recognizer(out, unit_range_samples: bool = False, **kw):
    return sherpa_transducer_recognizer(out, unit_range_samples, **kw)


def sherpa_decode(rec, waves: list[np.ndarray]) -> list[tuple[list[int], list[int], int]]:
    """Every wave as its own stream, decoded together → per stream (token ids, token frames, chunks)."""
    ids = {t: i for i, t in enumerate(TOKENS)}
    return [([ids[p] for p in pieces], frames, n) for pieces, frames, _, n in decode_with_sherpa(rec, waves, SR)]


def torch_fns(decoder, joiner):
    def decoder_fn(c):
        with torch.no_grad():
            return decoder(torch.from_numpy(c)).numpy()

    def joiner_fn(e, d):
        with torch.no_grad():
            return joiner(torch.from_numpy(e).float(), torch.from_numpy(d).float()).numpy()

    return decoder_fn, joiner_fn


def reference(model, wave: np.ndarray, chunks: int, beam: int = 0) -> tuple[list[int], list[int]]:
    """speechkit's fbank → CMVN → the torch encoder chunk by chunk → our search, one chunk at a time."""
    encoder, cmvn, decoder, joiner = model
    feats = torch.from_numpy(compute_fbank(wave))
    fns = torch_fns(decoder, joiner)
    enc_state = encoder.init_state(1)
    search = BeamState.start(CONTEXT) if beam else GreedyState.start(CONTEXT)
    for k in range(chunks):
        x = feats[k * CHUNK : (k + 1) * CHUNK][None]
        with torch.no_grad():
            y, _, enc_state = encoder.forward_chunk(cmvn(x), torch.tensor([CHUNK]), enc_state, ATT_CONTEXT)
        if beam:
            search = modified_beam_search([y[0].numpy()], [search], *fns, beam=beam, unk_id=1)[0]
        else:
            search = greedy_search([y[0].numpy()], [search], *fns, unk_id=1)[0]
    if beam:
        tokens, frames, _ = search.best(length_norm=True)  # sherpa-onnx's pick
        return tokens, frames
    return list(search.tokens), list(search.frames)


def test_sherpa_greedy_equals_ours_alone_and_batched(exported):
    dirs, model, _ = exported
    rec = recognizer(dirs[False])
    waves = [audio(0, 2.0), audio(1, 1.6)]
    batched = sherpa_decode(rec, waves)
    for wave, (tokens, frames, chunks) in zip(waves, batched):
        assert chunks == (len(compute_fbank(wave)) - 1) // CHUNK  # sherpa-onnx decodes whole chunks only
        assert len(tokens) > 10 and len(set(tokens)) >= 3 and len(tokens) < 0.8 * chunks * 4
        assert (tokens, frames) == reference(model, wave, chunks)
        assert sherpa_decode(rec, [wave])[0] == (tokens, frames, chunks)


def test_sherpa_modified_beam_search_equals_ours(exported):
    dirs, model, _ = exported
    rec = recognizer(dirs[False], decoding_method="modified_beam_search", max_active_paths=BEAM)
    wave = audio(2, 2.5)
    tokens, frames, chunks = sherpa_decode(rec, [wave])[0]
    assert len(tokens) > 10
    assert (tokens, frames) == reference(model, wave, chunks, beam=BEAM)
    assert tokens != reference(model, wave, chunks)[0]  # the beam's pick is not greedy's here


def sherpa_fbank(out, wave: np.ndarray, frames: int, **kw) -> np.ndarray:
    s = recognizer(out, **kw).create_stream()
    s.accept_waveform(SR, wave)
    s.input_finished()
    return np.asarray(s.get_frames(0, frames), dtype=np.float32).reshape(frames, 80)


def test_sherpa_fbank_against_ours(exported):
    """With ``recognizer_options()`` sherpa-onnx's fbank is ours; at its default scale it is ours
    minus 2 ln 32768 but for bins on the floor (digital silence, and quiet bins the int16 scale
    keeps above it); with its default high_freq (-400) it is another filterbank."""
    dirs, _, _ = exported
    wave = audio(3, 1.0)
    ours = compute_fbank(wave)
    n = (len(ours) - 1) // CHUNK * CHUNK
    ours = ours[:n]
    np.testing.assert_allclose(sherpa_fbank(dirs[False], wave, n), ours, atol=1e-5, rtol=0)
    unit = sherpa_fbank(dirs[True], wave, n, unit_range_samples=True)
    mapped = speechkit_fbank(torch.from_numpy(unit)).numpy()
    off = np.abs(mapped - ours) > 1e-4
    assert (ours[:5] <= LOG_FLOOR + 1e-3).all() and not off[:5].any()  # leading zeros: the floor in both
    assert off.sum() < 0.001 * off.size and (unit[off] <= LOG_FLOOR + 1e-3).all() and (ours[off] < LOG_FLOOR + INT16_LOG_GAIN).all()
    default_mel = speechkit_fbank(torch.from_numpy(sherpa_fbank(dirs[True], wave, n, unit_range_samples=True, high_freq=-400.0)))
    assert np.abs(default_mel.numpy() - ours).mean() > 0.1


def test_exported_graphs_in_onnx_runtime_give_sherpas_tokens(exported):
    """The [-1, 1]-scale export at sherpa-onnx's default scale: sherpa-onnx's tokens equal ONNX
    Runtime running the same graphs on sherpa-onnx's own fbank, with the state list laid out as
    sherpa-onnx lays it (zeros of the metadata's shapes), and our greedy search."""
    dirs, model, _ = exported
    out = dirs[True]
    wave = audio(0, 2.0)
    tokens, frames, chunks = sherpa_decode(recognizer(out, unit_range_samples=True), [wave])[0]
    assert len(tokens) > 10
    feats = sherpa_fbank(out, wave, chunks * CHUNK, unit_range_samples=True)
    enc, dec, join = (ort.InferenceSession(str(out / f"{n}.onnx"), providers=["CPUExecutionProvider"]) for n in ("encoder", "decoder", "joiner"))
    names = [i.name for i in enc.get_inputs()]
    state = [t.numpy() for t in SherpaStateLayout.of(model[0].init_state(1)).zeros(1)]
    search = GreedyState.start(CONTEXT)
    for k in range(chunks):
        enc_out, *state = enc.run(None, dict(zip(names, [feats[k * CHUNK : (k + 1) * CHUNK][None], *state])))
        search = greedy_search([enc_out[0]], [search], lambda c: dec.run(None, {"y": c})[0],
                               lambda e, d: join.run(None, {"encoder_out": e.astype(np.float32), "decoder_out": d.astype(np.float32)})[0],
                               unk_id=1)[0]
    assert (list(search.tokens), list(search.frames)) == (tokens, frames)


def test_files_names_and_metadata(exported):
    dirs, model, reports = exported
    out, report = dirs[False], reports[False]
    encoder = model[0]
    layout = SherpaStateLayout.of(encoder.init_state(1))
    enc = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    meta = enc.get_modelmeta().custom_metadata_map
    assert meta["model_type"] == MODEL_TYPE == "zipformer2"
    assert (meta["T"], meta["decode_chunk_len"]) == (str(CHUNK), str(CHUNK))
    assert {k: meta[k] for k in ("encoder_dims", "query_head_dims", "value_head_dims", "num_heads", "num_encoder_layers",
                                 "cnn_module_kernels", "left_context_len")} == {
        "encoder_dims": "16,8", "query_head_dims": "16,80", "value_head_dims": "1,1", "num_heads": "1,1",
        "num_encoder_layers": "2,1", "cnn_module_kernels": "8,78", "left_context_len": "8,2"}
    inputs = enc.get_inputs()
    assert [i.name for i in inputs] == ["x", *layout.names()] and len(inputs) == 1 + 6 * 3 + 2
    assert [i.name for i in enc.get_outputs()] == ["encoder_out", *("new_" + n for n in layout.names())]
    for i, shape, axis in zip(inputs[1:], layout.shapes(1), layout.batch_axes()):  # the batch axis is the dynamic one
        assert [d if j != axis else 1 for j, d in enumerate(i.shape)] == list(shape), i.name
    assert inputs[-1].type == "tensor(int64)" and inputs[1].type == "tensor(float)"
    dec = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert dec.get_modelmeta().custom_metadata_map == {"context_size": "2", "vocab_size": str(len(TOKENS))}
    assert [i.name for i in dec.get_inputs()] == ["y"] and dec.get_inputs()[0].type == "tensor(int64)"
    assert len(dec.get_outputs()) == 1  # one output: sherpa-onnx's icefall-style transducer, not NeMo's
    join = ort.InferenceSession(str(out / "joiner.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in join.get_inputs()] == ["encoder_out", "decoder_out"] and [o.name for o in join.get_outputs()] == ["logit"]
    assert (out / "tokens.txt").read_text(encoding="utf-8").splitlines()[:3] == ["<blk> 0", "<unk> 1", "▁a 2"]
    assert report["parity"]["max_abs_diff"] < 1e-4 and (out / "export.json").is_file()
    assert report["recognizer_feature_options"] == {"feature_dim": 80, "sample_rate": 16000, "high_freq": 0.0, "low_freq": 20.0,
                                                    "dither": 0.0, "normalize_samples": False}


def test_state_layout_round_trips_our_state():
    encoder = tiny_model()[0]
    layout = SherpaStateLayout.of(encoder.init_state(1))
    torch.manual_seed(3)
    state = [torch.randn_like(t.float()) if t.is_floating_point() else torch.tensor([5]) for t in encoder.init_state(1)]
    flat = layout.to_sherpa(state, layout.zeros(1))
    assert [tuple(t.shape) for t in flat] == layout.shapes(1)
    for a, b in zip(layout.to_speechkit(flat), state):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(layout.to_sherpa(encoder.init_state(1), layout.zeros(1)), layout.zeros(1)))


def test_export_refuses_bad_input(tmp_path):
    encoder, cmvn, decoder, joiner = tiny_model()
    args = dict(encoder=encoder, frontend=cmvn, decoder=decoder, joiner=joiner, tokens=TOKENS, att_context=ATT_CONTEXT, context_size=CONTEXT)
    bad = [dict(tokens=TOKENS[:-1]), dict(att_context=(-1, -1)), dict(tokens=TOKENS[:-1] + ["a b"]),
           dict(fbank=FbankConfig(num_mel_bins=40)), dict(fbank=FbankConfig(dither=1.0))]
    for kw in bad:
        with pytest.raises(SpeechkitError) as e:
            export_sherpa_transducer(tmp_path, **{**args, **kw})
        assert "\n" not in str(e.value)
    assert not (tmp_path / "encoder.onnx").exists()


def ctc_recognizer(out, unit_range_samples: bool = False):
    """sherpa-onnx's online zipformer2 CTC recognizer with our feature options (its
    ``from_zipformer2_ctc`` does not take them, so the config is built directly)."""
    lib = sherpa_onnx.lib._sherpa_onnx
    o = recognizer_options(unit_range_samples)
    feat = lib.FeatureExtractorConfig(sampling_rate=o["sample_rate"], feature_dim=o["feature_dim"], low_freq=o["low_freq"],
                                      high_freq=o["high_freq"], dither=o["dither"], normalize_samples=o["normalize_samples"])
    model = lib.OnlineModelConfig(zipformer2_ctc=lib.OnlineZipformer2CtcModelConfig(model=str(out / "model.onnx")),
                                  tokens=str(out / "tokens.txt"), num_threads=1, provider_config=lib.ProviderConfig(provider="cpu"))
    config = lib.OnlineRecognizerConfig(feat_config=feat, model_config=model, enable_endpoint=False, decoding_method="greedy_search")
    rec = sherpa_onnx.OnlineRecognizer.__new__(sherpa_onnx.OnlineRecognizer)
    rec.recognizer, rec.config = lib.OnlineRecognizer(config), config
    return rec


def test_ctc_head_as_sherpa_zipformer2_ctc(tmp_path):
    encoder, cmvn, _, _ = tiny_model()
    torch.manual_seed(4)
    ctc = nn.Linear(JOINER_DIM, len(TOKENS))
    feats = torch.from_numpy(compute_fbank(audio(9, 2.0)))[None]
    with torch.no_grad():
        ctc.weight.mul_(4.0)
        enc, _ = encoder(cmvn(feats), torch.tensor([feats.shape[1]]), ATT_CONTEXT)
        ctc.bias -= ctc(enc[0]).mean(0)
        ctc.bias[0] += 1.0
    report = export_sherpa_ctc(tmp_path, encoder=encoder, frontend=cmvn, ctc=ctc, tokens=TOKENS, att_context=ATT_CONTEXT)
    assert report["parity"]["max_abs_diff"] < 1e-4
    waves = [audio(0, 2.0), audio(1, 1.6)]
    rec = ctc_recognizer(tmp_path)
    for wave, (tokens, frames, chunks) in zip(waves, sherpa_decode(rec, waves)):
        x = torch.from_numpy(compute_fbank(wave))
        state, best = encoder.init_state(1), []
        for k in range(chunks):
            with torch.no_grad():
                y, _, state = encoder.forward_chunk(cmvn(x[k * CHUNK : (k + 1) * CHUNK][None]), torch.tensor([CHUNK]), state, ATT_CONTEXT)
            best += torch.log_softmax(ctc(y[0]), -1).argmax(-1).tolist()
        ours = [(t, f) for f, (t, prev) in enumerate(zip(best, [0] + best)) if t not in (0, prev)]
        assert len(ours) > 10 and (tokens, frames) == ([t for t, _ in ours], [f for _, f in ours])
        assert tokens == ctc_greedy(np.log(np.eye(len(TOKENS))[best] + 1e-9))

