"""A hybrid CTC/transducer's CTC head in sherpa-onnx's zipformer2 CTC format: an experiment dir (the
CPU config's tiny model, random weights, its CTC head biased so symbols appear) → ``speechkit
export sherpa --head ctc`` → the folder decoded by ``sherpa_onnx.OnlineRecognizer`` and by
speechkit's torch-free ``SherpaCtcRecognizer``: the same tokens, token times and text on whole
chunks, streams alone and batched; a token spanning a chunk boundary is emitted once; fed in small
blocks equals fed whole; ``speechkit.load`` and ``speechkit transcribe`` open the folder; a folder
of the other family, a beam and a head the experiment lacks are refused in one line."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_data_dir, make_tiny_exp_dir, run_without_torch, sherpa_decode
from speechkit.audio.fbank import compute_fbank
from speechkit.audio.io import load_audio
from speechkit.checkpoint import save_atomic
from speechkit.cli import main
from speechkit.errors import SpeechkitError
from speechkit.models.asr.heads import build_asr_model
from speechkit.runtime.asr import EndpointConfig
from speechkit.runtime.console import open_recognizer
from speechkit.runtime.transducer import CTC_FAMILY, TRANSDUCER_FAMILY, SherpaCtcRecognizer, TransducerRecognizer
from speechkit.text.tokenizer import train_tokenizer
from speechkit.train.config import load_experiment_config
from test_sherpa_format import ctc_recognizer
from test_transducer_e2e import ATT_CONTEXT, CPU_CONFIG, SR, ours_whole_chunks, waves_of, whole_chunks

CHUNK = 4 * (ATT_CONTEXT[1] + 1)  # fbank frames per encoder call


def _bias_ctc_head(model, feats: list[np.ndarray]) -> None:
    """CMVN from the audio, then the CTC head's bias set so every symbol is about as likely and
    blank a little more (a random head would say blank or one symbol throughout)."""
    cat = np.concatenate(feats)
    model.cmvn.set_stats(cat.mean(0).astype(np.float32), (1.0 / (cat.std(0) + 1e-3)).astype(np.float32))
    x = torch.from_numpy(cat[:400])[None]
    with torch.no_grad():
        enc, _ = model.encode(x, torch.tensor([x.shape[1]]), ATT_CONTEXT)
        model.ctc.weight.mul_(4.0)
        model.ctc.bias -= model.ctc(enc[0]).mean(0)
        model.ctc.bias[0] += 1.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """→ (the CTC folder, the wav paths, the export command's stdout)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("hybrid_ctc")
        utts = make_tiny_data_dir(root / "data", n_utts=3, seed=5)
        exp = root / "exp"
        tok = train_tokenizer("char", [u.text for u in utts], exp)
        cfg = load_experiment_config(CPU_CONFIG)
        torch.manual_seed(0)
        model = build_asr_model(cfg.model, tok.vocab_size).eval()
        _bias_ctc_head(model, [compute_fbank(load_audio(u.wav, SR)[0]) for u in utts])
        save_atomic({"model": model.state_dict(), "config": cfg.to_yaml_dict()}, exp / "model_avg.pt")
        out = root / "sherpa_ctc"
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["export", "sherpa", str(exp), str(out), "--head", "ctc"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, [u.wav for u in utts], buf.getvalue()


def test_export_head_ctc_writes_sherpas_ctc_folder(folder, run_cli, tmp_path):
    out, _, stdout = folder
    assert {p.name for p in out.iterdir()} == {"model.onnx", "tokens.txt", "export.json"}
    info = json.loads((out / "export.json").read_text())
    assert (info["model_family"], info["head"], info["att_context"]) == (CTC_FAMILY, "ctc", list(ATT_CONTEXT))
    assert info["parity"]["max_abs_diff"] < 1e-4 and "online zipformer2 CTC" in stdout and "ctc head, att_context 16,3" in stdout
    assert (out / "tokens.txt").read_text().splitlines()[:2] == ["<blk> 0", "<unk> 1"]
    ctc_exp = make_tiny_exp_dir(tmp_path / "ctc_exp", ["up down", "left right"], streaming=True)
    rc, _, err = run_cli("export", "sherpa", ctc_exp, tmp_path / "out", "--head", "transducer")
    assert rc == 2 and "no transducer head" in err and err.count("\n") == 1 and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        run_cli("export", "sherpa", ctc_exp, tmp_path / "out", "--head", "attention")


def test_sherpa_and_our_runtime_give_the_same_tokens_times_and_text(folder):
    out, wavs, _ = folder
    counts = [(len(w) // 160 - 3) // CHUNK for w in waves_of(wavs)]  # as many whole chunks as each wave has
    waves = [whole_chunks(w, k) for w, k in zip(waves_of(wavs), counts)]
    theirs = sherpa_decode(ctc_recognizer(out), waves, SR)
    rec = SherpaCtcRecognizer(out, gate=None, endpoint=None)
    batched = ours_whole_chunks(rec, waves)
    unk_seen = False
    for wave, t, o, k in zip(waves, theirs, batched, counts):
        assert t[3] == o[3] == k
        assert len(t[0]) >= 3 and len(set(t[0])) >= 2
        unk_seen |= "<unk>" in t[0]
        t = (*t[:2], t[2].replace("<unk>", ""), t[3])  # both emit <unk>; sherpa-onnx spells it, our tokenizer drops it
        assert o == t
        assert ours_whole_chunks(rec, [wave])[0] == t  # alone = batched
    assert unk_seen


def test_a_token_across_a_chunk_boundary_is_emitted_once(folder):
    """The last chunk's argmax carries over: 5 at the end of one chunk and the start of the next
    is one token (at its first frame); after a blank it is a new one."""
    out, _, _ = folder
    rec = SherpaCtcRecognizer(out, gate=None, endpoint=None)
    vocab = rec.tokenizer.vocab_size

    def chunk(ids: list[int]) -> np.ndarray:
        return np.log(np.eye(vocab, dtype=np.float32)[ids] + 1e-6)

    s = rec.create_stream()
    for ids in ([0, 3, 5, 5], [5, 5, 0, 0], [5, 4, 4, 4], [4, 0, 4, 4]):
        rec._search_chunk([s], [chunk(ids)])
    assert (s.ids, s.id_frames) == ([3, 5, 5, 4, 4], [1, 2, 8, 9, 14])


def test_streamed_in_blocks_equals_whole(folder):
    """Three utterances with two seconds of silence between them, endpointing and the gate on:
    several segments, the same whether fed whole or in random small blocks."""
    out, wavs, _ = folder
    gap = np.zeros(2 * SR, dtype=np.float32)
    wave = np.concatenate([x for w in waves_of(wavs) for x in (w, gap)])
    rec = SherpaCtcRecognizer(out, endpoint=EndpointConfig(silence_after_speech=0.6))
    whole = rec.run_streams([[(wave, SR)]])[0]
    assert len(whole.finals) >= 2
    rng = np.random.default_rng(0)
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
    assert [(f.tokens, f.times, f.start, f.end) for f in s.finals] == [(f.tokens, f.times, f.start, f.end) for f in whole.finals]
    assert rec.text(s) == rec.text(whole)


def test_cli_transcribe_opens_the_folder_without_torch(folder, run_cli):
    out, wavs, _ = folder
    rec = SherpaCtcRecognizer(out)
    assert isinstance(open_recognizer(out), SherpaCtcRecognizer)
    rc, stdout, _ = run_cli("transcribe", out, wavs[0])
    assert rc == 0 and stdout == f"{wavs[0]} {rec.transcribe(waves_of(wavs[:1])[0])}\n"
    text = run_without_torch(f"from speechkit.runtime.console import open_recognizer\n"
                             f"from speechkit.runtime.console import transcribe_file\n"
                             f"print(transcribe_file(open_recognizer({str(out)!r}), {str(wavs[0])!r}))")
    assert text.strip() == stdout.split(" ", 1)[1].strip()


def test_speechkit_load_opens_the_folder(folder):
    out, wavs, _ = folder
    import speechkit

    asr = speechkit.load(out, gate=None)
    rec = SherpaCtcRecognizer(out, gate=None)
    texts = [t.text for t in asr.transcribe(list(wavs))]
    assert texts == [rec.transcribe(w) for w in waves_of(wavs)] and any(texts)


def test_refuses_another_family_a_beam_and_a_missing_graph(folder, run_cli, tmp_path):
    out, wavs, _ = folder
    (tmp_path / "export.json").write_text(json.dumps({"model_family": TRANSDUCER_FAMILY}))
    cases = [(lambda: SherpaCtcRecognizer(tmp_path), "not a sherpa-format streaming CTC export"),
             (lambda: TransducerRecognizer(out), "not a streaming transducer export"),
             (lambda: SherpaCtcRecognizer(out, beam=4), "decodes greedily"),
             (lambda: open_recognizer(out, beam=4), "decodes greedily"),
             (lambda: SherpaCtcRecognizer(out, att_context=(16, 0)), "one context")]
    for make, match in cases:
        with pytest.raises(SpeechkitError, match=match) as e:
            make()
        assert "\n" not in str(e.value)
    (tmp_path / "export.json").write_text(json.dumps({"model_family": CTC_FAMILY}))
    with pytest.raises(SpeechkitError, match="model.onnx: missing"):
        SherpaCtcRecognizer(tmp_path)
    rc, _, err = run_cli("transcribe", out, wavs[0], "--beam", "4")
    assert rc == 2 and "decodes greedily" in err
