"""The hybrid CTC/transducer end to end: an experiment dir (the CPU config's tiny model, random
weights, its joiner biased so symbols appear) → ``speechkit export sherpa`` → the folder decoded by
``sherpa_onnx.OnlineRecognizer`` and by speechkit's torch-free runtime: the same tokens, token
times and text, greedy and modified beam search, streams alone and batched; our runtime fed in
small blocks equals it fed whole; ``speechkit.load`` and ``speechkit transcribe`` open the folder."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import make_tiny_data_dir, ours_whole_chunks, sherpa_decode, sherpa_transducer_recognizer, whole_chunks
from serve_harness import LiveServer
from speechkit.audio.fbank import compute_fbank
from speechkit.audio.io import load_audio
from speechkit.checkpoint import save_atomic
from speechkit.cli import main
from speechkit.errors import SpeechkitError
from speechkit.models.asr.heads import build_asr_model
from speechkit.runtime.asr import EndpointConfig
from speechkit.runtime.transducer import TransducerRecognizer
from speechkit.serve.client import stream_audio
from speechkit.serve.protocol import Limits
from speechkit.text.tokenizer import train_tokenizer
from speechkit.train.config import load_experiment_config

CPU_CONFIG = "egs/synth/asr/conf/train_transducer_cpu.yaml"
ATT_CONTEXT = (16, 3)  # the config's first
CHUNK = 4 * (ATT_CONTEXT[1] + 1)  # fbank frames per encoder call
SR = 16000
BEAM = 4


def _bias_joiner(model, feats: list[np.ndarray]) -> None:
    """CMVN from the audio, then the joiner's output bias set so every symbol is about as likely
    and blank a little more (a random joiner would say blank or one symbol throughout)."""
    cat = np.concatenate(feats)
    model.cmvn.set_stats(cat.mean(0).astype(np.float32), (1.0 / (cat.std(0) + 1e-3)).astype(np.float32))
    x = torch.from_numpy(cat[:400])[None]
    with torch.no_grad():
        enc, _ = model.encode(x, torch.tensor([x.shape[1]]), ATT_CONTEXT)
        enc_p = model.joiner.encoder_proj(enc[0])
        ctx = torch.randint(-1, model.joiner.output_linear.out_features, (enc_p.shape[0], model.hc.context_size))
        dec_p = model.joiner.decoder_proj(model.decoder(ctx))
        out = model.joiner.output_linear
        out.weight.mul_(4.0)
        out.bias -= model.joiner(enc_p, dec_p).mean(0)
        out.bias[0] += 0.5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """→ (the exported folder, the wav paths, the export command's stdout)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("hybrid")
        utts = make_tiny_data_dir(root / "data", n_utts=3, seed=5)
        exp = root / "exp"
        tok = train_tokenizer("char", [u.text for u in utts], exp)
        cfg = load_experiment_config(CPU_CONFIG)
        torch.manual_seed(0)
        model = build_asr_model(cfg.model, tok.vocab_size).eval()
        waves = [load_audio(u.wav, SR)[0] for u in utts]
        _bias_joiner(model, [compute_fbank(w) for w in waves])
        save_atomic({"model": model.state_dict(), "config": cfg.to_yaml_dict()}, exp / "model_avg.pt")
        out = root / "sherpa"
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["export", "sherpa", str(exp), str(out), "--att-context", "16,3"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, [u.wav for u in utts], buf.getvalue()


def waves_of(paths) -> list[np.ndarray]:
    return [load_audio(p, SR)[0] for p in paths]


def test_export_command_writes_a_folder_for_both_runtimes(folder):
    out, _, stdout = folder
    assert {p.name for p in out.iterdir()} >= {"encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt", "export.json"}
    info = json.loads((out / "export.json").read_text())
    assert info["model_family"] == "transducer-streaming-conformer" and info["att_context"] == list(ATT_CONTEXT)
    assert info["parity"]["max_abs_diff"] < 1e-4 and "att_context 16,3" in stdout
    assert info["size_mb"] == round(sum(f.stat().st_size for f in out.glob("*.onnx")) / 1e6, 2)
    assert (out / "tokens.txt").read_text().splitlines()[:2] == ["<blk> 0", "<unk> 1"]
    with pytest.raises(SpeechkitError, match="no export.json"):
        TransducerRecognizer(out / "..")


def test_runtime_refuses_another_family_and_context(folder, tmp_path):
    out, _, _ = folder
    (tmp_path / "export.json").write_text(json.dumps({"model_family": "ctc-streaming-conformer"}))
    with pytest.raises(SpeechkitError, match="not a streaming transducer"):
        TransducerRecognizer(tmp_path)
    with pytest.raises(SpeechkitError, match="one context"):
        TransducerRecognizer(out, att_context=(16, 0))


@pytest.mark.parametrize("beam", [1, BEAM])
def test_sherpa_and_our_runtime_give_the_same_tokens_times_and_text(folder, beam):
    out, wavs, _ = folder
    kw = {"decoding_method": "modified_beam_search", "max_active_paths": BEAM} if beam > 1 else {}
    counts = [(len(w) // 160 - 3) // CHUNK for w in waves_of(wavs)]  # as many whole chunks as each wave has
    waves = [whole_chunks(w, CHUNK, k) for w, k in zip(waves_of(wavs), counts)]
    theirs = sherpa_decode(sherpa_transducer_recognizer(out, **kw), waves, SR)
    rec = TransducerRecognizer(out, beam=beam, gate=None, endpoint=None)
    batched = ours_whole_chunks(rec, waves)
    for wave, t, o, k in zip(waves, theirs, batched, counts):
        assert t[3] == o[3] == k
        assert len(t[0]) >= 3 and len(set(t[0])) >= 2
        assert o == t
        assert ours_whole_chunks(rec, [wave])[0] == t  # alone = batched


def test_transcribe_with_the_tail_extends_sherpas_result(folder):
    """Our runtime also decodes the last partial chunk (padded with silence); sherpa-onnx's
    tokens are the start of ours, with the same times in seconds."""
    out, wavs, _ = folder
    rec = TransducerRecognizer(out, gate=None, endpoint=None)
    theirs = sherpa_decode(sherpa_transducer_recognizer(out), waves_of(wavs), SR)
    for wave, (pieces, frames, _, chunks) in zip(waves_of(wavs), theirs):
        s = rec.run_streams([[(wave, SR)]])[0]
        (seg,) = s.finals
        shared = [(p, t) for p, t in zip(seg.tokens, seg.times) if t < chunks * CHUNK / 4 * 0.04 - 1e-6]
        assert shared == [(p, round(f * 0.04, 3)) for p, f in zip(pieces, frames)]
        assert len(seg.tokens) >= len(pieces)


@pytest.mark.parametrize("beam", [1, BEAM])
def test_streamed_in_blocks_equals_whole(folder, beam):
    out, wavs, _ = folder
    rec = TransducerRecognizer(out, beam=beam, endpoint=None if beam > 1 else EndpointConfig())
    rng = np.random.default_rng(0)
    for wave in waves_of(wavs):
        whole = rec.run_streams([[(wave, SR)]])[0]
        s = rec.create_stream()
        at = 0
        while at < len(wave):
            n = int(rng.integers(100, 3000))
            s.accept_waveform(wave[at : at + n])
            at += n
            while rec.is_ready(s):
                rec.decode_streams([s])
        s.input_finished()
        while rec.is_ready(s):
            rec.decode_streams([s])
        assert rec.is_done(s)
        assert [(f.tokens, f.times) for f in s.finals] == [(f.tokens, f.times) for f in whole.finals]
        assert rec.text(s) == rec.text(whole)


def test_load_and_cli_open_the_folder_and_the_runtime_needs_no_torch(folder, run_cli):
    out, wavs, _ = folder
    import speechkit

    asr = speechkit.load(out, gate=None)
    rec = TransducerRecognizer(out, gate=None)
    texts = [t.text for t in asr.transcribe(list(wavs))]
    assert texts == [rec.transcribe(w) for w in waves_of(wavs)] and any(texts)
    rc, stdout, _ = run_cli("transcribe", out, wavs[0])
    assert rc == 0 and stdout.startswith(f"{wavs[0]} ")
    code = ("import sys, speechkit.runtime.transducer, speechkit.api; import speechkit; "
            f"speechkit.load({str(out)!r}).transcribe({str(wavs[0])!r}); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_decode_command_picks_the_hybrids_decoder(folder, run_cli, tmp_path):
    """``speechkit decode`` on the experiment: transducer greedy, its modified beam search (the
    numpy search over the torch modules) and the CTC head each give a hypothesis per utterance,
    and the beam's differ from greedy's on this random model."""
    out, wavs, _ = folder
    exp, data = out.parent / "exp", out.parent / "data"
    hyps = {}
    for name, extra in [("greedy", []), ("beam", ["--beam", "4"]), ("ctc", ["--decoder", "ctc"])]:
        rc, _, err = run_cli("decode", exp, data, tmp_path / name, "--device", "cpu", *extra)
        assert rc == 0, err
        hyps[name] = (tmp_path / name / "hyp").read_text().splitlines()
        assert len(hyps[name]) == len(wavs)
    assert hyps["beam"] != hyps["greedy"]
    with pytest.raises(SystemExit):
        run_cli("decode", exp, data, tmp_path / "bad", "--decoder", "nope")


def test_decode_stream_command_reads_the_folder_like_the_runtime(folder, run_cli, tmp_path):
    """``speechkit decode-stream`` on the sherpa-format folder: one hypothesis per utterance, each
    the runtime's text for that file (no endpointing in both)."""
    out, wavs, _ = folder
    data = out.parent / "data"
    rc, _, err = run_cli("decode-stream", out, data, tmp_path / "dec")
    assert rc == 0, err
    hyp = dict(line.split(" ", 1) if " " in line else (line, "") for line in (tmp_path / "dec" / "hyp").read_text().splitlines())
    rec = TransducerRecognizer(out, endpoint=None)
    keys = sorted(hyp)
    assert len(keys) == len(wavs)
    assert [hyp[k] for k in keys] == [rec.transcribe(w) for w in waves_of(sorted(wavs))]


@pytest.mark.parametrize("beam", [1, BEAM])
def test_server_streams_the_folder_like_the_runtime(folder, beam):
    """``speechkit serve`` on the sherpa-format folder: three clients at once (frames of 40, 100
    and 250 ms) are batched into shared model calls and each gets the runtime's own text, finals
    with one time per token; greedy and modified beam search."""
    out, wavs, _ = folder
    waves = waves_of(wavs)  # 16-bit wav files: the pcm16 on the wire is exact
    rec = TransducerRecognizer(out, beam=beam)
    alone = [rec.transcribe(w) for w in waves]
    assert any(alone)
    live = LiveServer(out, Limits(idle_timeout=5.0), beam=beam)
    try:
        async def run():
            return await asyncio.gather(*(stream_audio(live.url(), w, SR, frame_ms=ms) for w, ms in zip(waves, (40, 100, 250))))

        results = asyncio.run(run())
        assert [r.text for r in results] == alone
        for r in results:
            assert r.close_code == 1000 and [m["type"] for m in r.messages][-1] == "done"
            assert " ".join(m["text"] for m in r.finals) == r.text
            for m in r.finals:
                assert len(m["times"]) == len(m["tokens"])
        health = live.health()
        assert health["max_batch_seen"] >= 2 and health["chunk_ms"] == rec.chunk_ms
        assert live.settled(live.server.engine)
    finally:
        live.close()


def test_int8_export_is_smaller_and_both_runtimes_agree_on_it(folder, tmp_path, run_cli):
    """``export sherpa --int8``: every graph stored with int8 weights (smaller), checked against
    float32 on the way out; sherpa-onnx and our runtime still give the same tokens on it."""
    out, wavs, _ = folder
    exp = out.parent / "exp"
    q = tmp_path / "int8"
    rc, stdout, err = run_cli("export", "sherpa", exp, q, "--att-context", "16,3", "--int8")
    assert rc == 0, err
    info = json.loads((q / "export.json").read_text())
    assert info["weights"] == "int8" and 0 < info["int8"]["output_rel_err"] <= info["int8"]["tolerance"]
    assert "int8 weights:" in stdout
    size = {name: ((q / name).stat().st_size, (out / name).stat().st_size) for name in ("encoder.onnx", "decoder.onnx", "joiner.onnx")}
    assert size["encoder.onnx"][0] < 0.5 * size["encoder.onnx"][1]  # the tiny joiner's tensors are below quantize's minimum
    assert all(a <= b for a, b in size.values()), size
    counts = [(len(w) // 160 - 3) // CHUNK for w in waves_of(wavs)]
    waves = [whole_chunks(w, CHUNK, k) for w, k in zip(waves_of(wavs), counts)]
    theirs = sherpa_decode(sherpa_transducer_recognizer(q), waves, SR)
    assert ours_whole_chunks(TransducerRecognizer(q, gate=None, endpoint=None), waves) == theirs
    assert any(t[0] for t in theirs)
