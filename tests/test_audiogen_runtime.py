"""The torch-free text-to-music runtime (``speechkit/runtime/audiogen.py``) on the tiny export of
``test_audiogen_export.py``: captions encode as the tokenizer does; magnet, rescored, hybrid and
ar generations give PyTorch's tokens from the same seed; clip lengths and progress; one-line
errors; ``speechkit.load``, ``speechkit generate`` (WAVs, a plot), the bench; no torch."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import bench_args, run_bench, run_without_torch
from speechkit.decoding.magnet import ar_generate, hybrid_generate, magnet_generate
from speechkit.errors import SpeechkitError
from test_audiogen_export import CAPTIONS, CARD, HOP, K, build, torch_models

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    return build(tmp_path_factory.mktemp("audiogen_runtime"))


# ---- the runtime ----------------------------------------------------------------------------------

def test_caption_ids_are_the_tokenizers():
    from speechkit.models.audiogen.text import CaptionTokenizer
    from speechkit.runtime.audiogen import CaptionIds

    tok = CaptionTokenizer.build(CAPTIONS)
    texts = ["Calm PIANO, at 128 bpm!", "it's an unknown-word tune", "rock", "1 2 3 4 5 6 7 8 9 0 sad jazz piano rock", "…"]
    for max_tokens in (4, 64):
        assert np.array_equal(CaptionIds(tok.words, max_tokens).batch(texts), tok.batch(texts, max_tokens).numpy())


@pytest.mark.parametrize("mode,rescore,cfg", [("magnet", 0.0, None), ("magnet", 0.4, None), ("hybrid", 0.0, None), ("ar", 0.0, None),
                                              ("ar", 0.0, 1.0)])
def test_runtime_tokens_are_torchs_with_the_same_seed(built, mode, rescore, cfg):
    """``MusicGenerator.tokens`` (ONNX Runtime) equals the decoding loop over the torch models'
    own callables with the same options and seed (AR: guided, where the runtime steps the
    conditional and null caches as one batch, and not); another seed gives other tokens."""
    from speechkit.runtime.audiogen import MusicGenerator

    magnet, tok, ar, ar_tok = torch_models(built)
    gen = MusicGenerator(built["onnx"])
    gen.hybrid_ar_seconds = 0.2  # 10 of the 30 frames
    captions, frames, steps = CAPTIONS[:3], 30, (6, 3, 3)
    got = gen.tokens(captions, frames, mode, rescore=rescore, seed=7, steps=steps, cfg=cfg)
    mopts = replace(gen.magnet_options, steps=steps, rescore_weight=rescore)
    aopts = gen.ar_options if cfg is None else replace(gen.ar_options, cfg=cfg)
    ids, ar_ids = tok.batch(captions), ar_tok.batch(captions)
    with torch.no_grad():
        if mode == "magnet":
            score = ar.rescore_fn(ar_ids) if rescore else None
            want = magnet_generate(magnet.logits_fn(ids), 3, frames, K, CARD, mopts, rescore_fn=score, rng=7)
        elif mode == "ar":
            want = ar_generate(*ar.decoding_fns(ar_ids), 3, frames, K, CARD, aopts, rng=7)
        else:
            assert gen.hybrid_ar_frames(frames) == 10
            want = hybrid_generate(magnet.logits_fn(ids), *ar.decoding_fns(ar_ids), 3, frames, K, CARD, 10, mopts, aopts, rng=7)
    assert got.shape == (3, K, frames) and got.dtype == np.int64 and 0 <= got.min() and got.max() < CARD
    assert np.array_equal(got, want)
    assert not np.array_equal(got, gen.tokens(captions, frames, mode, rescore=rescore, seed=8, steps=steps, cfg=cfg))
    if rescore:
        assert not np.array_equal(got, gen.tokens(captions, frames, mode, seed=7, steps=steps))  # rescoring changes the choice


def test_generate_gives_clips_of_the_length_asked_and_reports_progress(built):
    from speechkit.runtime.audiogen import MusicGenerator

    gen = MusicGenerator(built["onnx"])
    calls = []
    clips = gen.generate(CAPTIONS[:2], 0.5, steps=[3, 2, 1], progress=lambda done, total: calls.append((done, total)))
    assert len(clips) == 2 and all(c.shape == (25 * HOP,) and c.dtype == np.float32 and np.isfinite(c).all() for c in clips)
    assert calls == [(i + 1, 6) for i in range(6)]  # one per MAGNeT step (the conditional call)
    assert np.array_equal(gen.generate(CAPTIONS[:2], 0.5, steps=[3, 2, 1])[1], clips[1])  # the same seed, the same clip
    calls.clear()
    gen.generate(CAPTIONS[:1], 0.1, mode="ar", progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (5 + K - 1, 5 + K - 1)  # one per delay step


def test_bad_inputs_are_one_line_errors(built):
    from speechkit.runtime.audiogen import MusicGenerator

    gen, alone = MusicGenerator(built["onnx"]), MusicGenerator(built["magnet_only"])
    cases = [
        (lambda: gen.generate([], 1.0), "no captions"),
        (lambda: gen.generate([""], 1.0), "caption 1 .* is empty"),
        (lambda: gen.generate(["piano", "!!!"], 1.0), "caption 2 .* is empty"),
        (lambda: gen.generate(["piano"], 0), "more than 0"),
        (lambda: gen.generate(["piano"], -3), "more than 0"),
        (lambda: gen.generate(["piano"], float("nan")), "more than 0"),
        (lambda: gen.generate(["piano"], 10000), "longer than this model generates .* at most 6 s"),
        (lambda: gen.generate(["piano"], 5.5, mode="ar"), "at most 5 s"),
        (lambda: gen.generate(["piano"], 0.001), "shorter than 1 codec frame"),
        (lambda: gen.generate(["piano"], 1.0, mode="loud"), "unknown mode 'loud'"),
        (lambda: gen.generate(["piano"], 1.0, mode="ar", rescore=0.5), "rescore weighs MAGNeT"),
        (lambda: gen.generate(["piano"], 1.0, steps=[3, 2]), "steps must give one count per codebook"),
        (lambda: gen.generate(["piano"], 1.0, cfg=[1, 2, 3]), "cfg is a number or a"),
        (lambda: alone.generate(["piano"], 1.0, mode="hybrid"), "needs the AR model's graphs"),
        (lambda: alone.generate(["piano"], 1.0, mode="ar"), "needs the AR model's graphs"),
        (lambda: alone.generate(["piano"], 1.0, rescore=0.3), "rescore needs the AR model's graphs"),
        (lambda: MusicGenerator(built["root"]), "no such file"),
        (lambda: _unpaired_steps(gen), "step its two caches together"),
    ]
    for case, words in cases:
        with pytest.raises(SpeechkitError, match=words) as e:
            case()
        assert "\n" not in str(e.value)


def _unpaired_steps(gen) -> None:
    """Guided AR steps that feed the null cache other tokens than the conditional one."""
    init_fn, step_fn = gen.graphs.ar_fns(["piano"])
    cond, null = init_fn(False), init_fn(True)
    start = np.full((1, K), CARD + 1, np.int64)
    step_fn(start, cond)
    step_fn(start - 1, null)


# ---- API, command, bench, no torch ------------------------------------------------------------------

def test_speechkit_load_generates(built):
    import speechkit
    from speechkit.api import TextToMusic

    music = speechkit.load(built["onnx"])
    assert isinstance(music, TextToMusic) and music.sample_rate == 16000 and music.modes == ("magnet", "hybrid", "ar")
    one = music.generate("calm piano", 0.2, steps=[2, 1, 1], seed=3)
    many = music.generate(["calm piano", "sad jazz"], 0.2, steps=[2, 1, 1], seed=3)
    assert one.shape == (10 * HOP,) and len(many) == 2 and all(c.shape == (10 * HOP,) for c in many)
    assert music.generate("calm piano", 0.2, mode="ar", cfg=1.0, temperature=0.0).shape == (10 * HOP,)
    assert speechkit.load(built["magnet_only"]).modes == ("magnet",)


def test_runtime_needs_no_torch(built):
    out = run_without_torch(f"""
        import speechkit
        music = speechkit.load({str(built["onnx"])!r})
        print(len(music.generate(["calm piano", "sad jazz"], 0.2, mode="hybrid", rescore=0.3, steps=[2, 1, 1])[1]))
    """)
    assert out.split() == [str(10 * HOP)]


def test_generate_command_writes_wavs_and_a_plot(built, run_cli, tmp_path):
    rc, out, err = run_cli("generate", built["onnx"], "--text", "calm piano", "--seconds", "0.3", "--out", tmp_path / "one.wav",
                           "--steps", "2,1,1", "--mode", "hybrid", "--rescore", "0.2", "--cfg", "2,1", "--plot")
    assert rc == 0, err
    x, rate = sf.read(tmp_path / "one.wav")
    assert rate == 16000 and len(x) == 15 * HOP and (tmp_path / "one.png").stat().st_size > 1000
    assert "one.wav: 0.30 s" in out and "RTF" in err
    rc, out, err = run_cli("generate", built["onnx"], "--text", "calm piano", "--text", "sad jazz", "--seconds", "0.2",
                           "--out-dir", tmp_path / "many", "--mode", "ar", "--seed", "3", "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "many").glob("*.wav")) == ["01_calm_piano.wav", "02_sad_jazz.wav"]
    assert all(sf.info(str(p)).frames == 10 * HOP for p in (tmp_path / "many").glob("*.wav"))


@pytest.mark.parametrize("args,words", [
    (["--text", "", "--seconds", "1"], "caption 1 ('') is empty"),
    (["--text", "piano", "--seconds", "0"], "more than 0"),
    (["--text", "piano", "--seconds", "10000"], "at most 6 s"),
    (["--text", "piano", "--seconds", "1", "--mode", "loud"], "unknown mode 'loud'"),
    (["--text", "piano", "--text", "jazz", "--seconds", "1"], "2 captions need --out-dir"),
    (["--text", "piano", "--seconds", "1", "--cfg", "1,2,3"], "one number or a start,end pair"),
])
def test_generate_command_errors_are_one_line(built, run_cli, tmp_path, args, words):
    rc, out, err = run_cli("generate", built["onnx"], *args, "--out", tmp_path / "x.wav")
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.wav").exists()


def test_bench_reports_every_mode_and_batch(built, capsys, tmp_path):
    from speechkit.bench import audiogen_gen

    args = bench_args(audiogen_gen.add_parser, ["audiogen", built["onnx"], "--seconds", "0.2", "--batch", "1,2", "--steps", "2,1,1",
                                                "--modes", "magnet,hybrid,ar", "--repeats", "1", "--json", "--out", tmp_path / "bench.json"])
    lines, result = run_bench(args, capsys)
    assert [(r["mode"], r["batch"]) for r in result["rows"]] == [(m, b) for m in ("magnet", "hybrid", "ar") for b in (1, 2)]
    assert all(r["total_s"] > 0 and r["rtf"] > 0 and r["seconds_per_clip"] == 0.2 for r in result["rows"])
    assert len(lines) == 2 + 6 and "RTF" in lines[1]
    with pytest.raises(SpeechkitError, match="not an exported text-to-music model"):
        audiogen_gen.main(bench_args(audiogen_gen.add_parser, ["audiogen", built["magnet"]]))
