"""The text-to-music family's training side end to end on a tiny music corpus: the token dump (the
codec's first K levels, captions, labels), MAGNeT and the AR baseline on the engine (per-stage
accuracies logged; 4 steps at once equal 2 steps and a resume to 4), model.pt round trips, torch
generation in every mode (audio of the asked length, no MASK left, rescoring at weight 0 is plain
MAGNeT bit for bit), one-line errors, and the CLI (sample, eval with a tiny judge, --help)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from speechkit.audio.io import load_audio
from speechkit.data.audiogen_dump import AudiogenDump, file_sha256
from speechkit.data.music.corpus import build_music_corpus
from speechkit.decoding.magnet import ArOptions, MagnetOptions
from speechkit.errors import SpeechkitError
from speechkit.inference.audiogen import GenerationOptions, MusicGeneratorTorch
from speechkit.models.audiogen.io import load_audiogen
from speechkit.models.codec.io import save_codec
from speechkit.models.codec.model import CodecConfig, RvqConfig, build_codec
from speechkit.nn.seanet import SeanetConfig
from speechkit.train.audiogen import audiogen_experiment_from_dict, train_audiogen
from speechkit.train.audiogen_prepare import prepare_audiogen_dump

pytestmark = pytest.mark.usefixtures("one_thread")

K, CARD = 3, 32
MODEL = {"codebooks": K, "card": CARD, "d_model": 32, "layers": 2, "heads": 2, "ff": 64, "max_frames": 100,
         "text": {"layers": 1, "heads": 2, "ff": 64}}
TRAIN = {"batch_size": 4, "segment_frames": 50, "log_interval": 1, "save_interval_steps": 100}
OPTIM = {"lr": 0.002, "warmup_steps": 10}  # the whole run in warm-up: the lr of a step does not depend on max_steps
OPTS = GenerationOptions(magnet=MagnetOptions(steps=(3, 2, 2), span=2), ar=ArOptions(top_k=None), hybrid_seconds=0.4, batch=2)


def _codec(path: Path, clips: list[np.ndarray], codec: str = "rvq") -> Path:
    """A tiny codec whose codebooks k-means initialised on the corpus (one training forward), saved as path/model.pt."""
    cfg = CodecConfig(codec=codec, encoder_conf=SeanetConfig(channels=4, latent_dim=16, dilations=(1,)),
                      rvq_conf=RvqConfig(n_q=4, codebook_size=CARD))
    torch.manual_seed(0)
    model = build_codec(cfg)
    if codec == "rvq":
        n = min(len(c) for c in clips) // 320 * 320
        model.train()(torch.from_numpy(np.stack([c[:n] for c in clips]))[:, None], n_q=4)
    path.mkdir(parents=True)
    save_codec(model.state_dict(), cfg, path / "model.pt")
    return path


def _experiment(kind: str, steps: int, **train):
    return audiogen_experiment_from_dict({"kind": kind, "model_conf": {**MODEL, **({"span": 2, "window": 2} if kind == "magnet" else {})},
                                          "optim_conf": OPTIM, "train_conf": {**TRAIN, "max_steps": steps, **train}})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests that train again and compare (module fixtures come before one_thread)
    root = tmp_path_factory.mktemp("audiogen")
    build_music_corpus(root / "corpus", hours=0.01, clip_seconds=2.0, nj=2)  # 18 clips: train 16
    train = root / "corpus" / "train"
    wavs = [line.split(maxsplit=1)[1] for line in (train / "wav.scp").read_text().splitlines()]
    codec = _codec(root / "codec", [load_audio(w, 16000)[0] for w in wavs])
    stats = prepare_audiogen_dump(train, root / "dump", codec, codebooks=K, device="cpu", batch=5)
    exps = {}
    for kind in ("magnet", "ar"):
        ema = {"ema_decay": 0.5} if kind == "magnet" else {}
        train_audiogen(_experiment(kind, 4, **ema), root / "dump", root / kind, "cpu", progress=False)
        exps[kind] = root / kind
    yield {"root": root, "train": train, "codec": codec, "stats": stats, **exps}
    torch.set_num_threads(threads)


def test_dump_holds_the_first_levels_of_the_codec_with_captions_and_labels(setup):
    from speechkit.models.codec.io import load_codec
    from speechkit.models.codec.model import encode_samples

    dump = AudiogenDump.open(setup["root"] / "dump")
    st = dump.stats
    assert (st["codebooks"], st["card"], st["frame_rate"], st["sample_rate"], st["clips"]) == (K, CARD, 50.0, 16000, 16)
    assert st["codec_sha256"] == file_sha256(setup["codec"] / "model.pt") and st["skipped"] == 0
    assert isinstance(dump.codes, np.memmap) and dump.codes.dtype == np.int16 and dump.codes.shape == (K, dump.offsets[-1])
    text = dict(line.split(" ", 1) for line in (setup["train"] / "text").read_text().splitlines())
    assert dump.captions == [text[u] for u in dump.utts]
    labels = [json.loads(line) for line in (setup["root"] / "dump" / "labels.jsonl").read_text().splitlines()]
    assert [r["utt"] for r in labels] == dump.utts and labels[0]["caption"] == dump.captions[0]
    codec = load_codec(setup["codec"])
    wav = dict(line.split(maxsplit=1) for line in (setup["train"] / "wav.scp").read_text().splitlines())
    for i in (0, 7):  # batched encoding (padded) gives each clip's own codes
        x, _ = load_audio(wav[dump.utts[i]], 16000)
        assert np.array_equal(dump.clip(i), encode_samples(codec, x, K))
    assert len(np.unique(dump.codes[0])) > 4  # k-means codebooks: the corpus uses several entries


def test_dump_refuses_a_vae_codec_too_few_levels_and_a_missing_dump(setup, tmp_path):
    vae = _codec(tmp_path / "vae", [], codec="vae")
    for codec, books, msg in ((vae, 4, "'vae' codec"), (setup["codec"], 5, "4 levels"), (tmp_path / "none", 4, "no such codec")):
        with pytest.raises(SpeechkitError) as e:
            prepare_audiogen_dump(setup["train"], tmp_path / "d", codec, codebooks=books, device="cpu")
        assert msg in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SpeechkitError, match="not a text-to-music token dump"):
        AudiogenDump.open(tmp_path)


def test_training_logs_stage_accuracies_and_resumes_exactly(setup, tmp_path):
    for kind in ("magnet", "ar"):
        rows = [json.loads(line) for line in (setup[kind] / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        assert all(np.isfinite(r["loss"]) and all(f"acc_q{q}" in r for q in range(K)) for r in rows)
        ema = {"ema_decay": 0.5} if kind == "magnet" else {}
        train_audiogen(_experiment(kind, 2, **ema), setup["root"] / "dump", tmp_path / kind, "cpu", progress=False)
        train_audiogen(_experiment(kind, 4, **ema), setup["root"] / "dump", tmp_path / kind, "cpu", progress=False)
        full = torch.load(setup[kind] / "model.pt", weights_only=True)
        again = torch.load(tmp_path / kind / "model.pt", weights_only=True)
        assert full["model"].keys() == again["model"].keys() and full["words"] == again["words"]
        for k in full["model"]:
            assert torch.equal(full["model"][k], again["model"][k]), f"{kind}: {k} differs after resume"
    # model.pt keeps the EMA weights (decay 0.5), not the last step's
    ck = torch.load(setup["magnet"] / "checkpoint.pt", weights_only=True)
    state = torch.load(setup["magnet"] / "model.pt", weights_only=True)["model"]
    assert not torch.equal(ck["model"]["net.blocks.0.qkv.weight"], state["blocks.0.qkv.weight"])


def test_model_pt_round_trips_with_vocabulary_and_token_provenance(setup, tmp_path):
    model, words, tokens = load_audiogen(setup["magnet"])
    assert model.cfg.text.vocab_size == len(words) and "jazz" in words.words
    assert tokens["codec_sha256"] == setup["stats"]["codec_sha256"] and tokens["codebooks"] == K and tokens["frame_rate"] == 50.0
    ar, _, _ = load_audiogen(setup["ar"] / "model.pt")
    assert type(ar).__name__ == "DelayAR"
    # a resume on another vocabulary is one line, not a state-dict mismatch
    other = tmp_path / "exp"
    train_audiogen(_experiment("ar", 1), setup["root"] / "dump", other, "cpu", progress=False)
    with pytest.raises(SpeechkitError, match="another caption vocabulary"):
        train_audiogen(replace(_experiment("ar", 2), train_conf=replace(_experiment("ar", 2).train_conf, min_count=3)),
                       setup["root"] / "dump", other, "cpu", progress=False)


def test_generation_in_every_mode_and_rescoring_at_weight_zero(setup):
    gen = MusicGeneratorTorch(setup["magnet"], setup["ar"], setup["codec"], "cpu")
    captions = ["upbeat rock song, E minor, 140 bpm: guitar and drums", "calm piano piece in C major"]
    for mode in ("magnet", "hybrid", "ar"):
        codes = gen.generate_codes(captions, 1.0, mode, seed=1, options=OPTS)
        assert codes.shape == (2, K, 50) and codes.min() >= 0 and codes.max() < CARD, mode  # no MASK / EMPTY left
    audio = gen.generate(captions, 0.99, "hybrid", rescore=0.5, options=OPTS)
    assert [a.shape for a in audio] == [(15840,), (15840,)] and all(a.dtype == np.float32 and np.isfinite(a).all() for a in audio)
    plain = MusicGeneratorTorch(setup["magnet"], None, setup["codec"], "cpu").generate_codes(captions, 1.0, seed=3, options=OPTS)
    assert np.array_equal(gen.generate_codes(captions, 1.0, rescore=0.0, seed=3, options=OPTS), plain)
    assert not np.array_equal(gen.generate_codes(captions, 1.0, rescore=0.9, seed=3, options=OPTS), plain)


def test_bad_requests_are_one_line(setup, tmp_path):
    gen = MusicGeneratorTorch(setup["magnet"], None, setup["codec"], "cpu")
    with_ar = MusicGeneratorTorch(setup["magnet"], setup["ar"], setup["codec"], "cpu")
    cases = [(gen, ["  "], 1.0, "magnet", 0.0, "caption 1 of 1 is empty"), (gen, [], 1.0, "magnet", 0.0, "at least one caption"),
             (gen, ["jazz"], 0.0, "magnet", 0.0, "positive"), (gen, ["jazz"], 2.5, "magnet", 0.0, "at most 100"),
             (gen, ["jazz"], 1.0, "loud", 0.0, "unknown mode"), (gen, ["jazz"], 1.0, "magnet", 0.5, "needs the AR model"),
             (gen, ["jazz"], 1.0, "hybrid", 0.0, "needs the AR model"), (with_ar, ["jazz"], 1.0, "ar", 0.5, "not ar"),
             (with_ar, ["jazz"], 0.2, "hybrid", 0.0, "ask for more")]
    for g, captions, seconds, mode, rescore, msg in cases:
        with pytest.raises(SpeechkitError) as e:
            g.generate(captions, seconds, mode, rescore, options=OPTS)
        assert msg in str(e.value) and "\n" not in str(e.value), (captions, seconds, mode, rescore)
    with pytest.raises(SpeechkitError, match="a 'ar' model where a 'magnet'"):
        MusicGeneratorTorch(setup["ar"], None, setup["codec"], "cpu")
    other = _codec(tmp_path / "other", [np.random.default_rng(0).standard_normal(16000).astype(np.float32)] * 2)
    with pytest.raises(SpeechkitError, match="not the codec the model's tokens came from"):
        MusicGeneratorTorch(setup["magnet"], None, other, "cpu")
    # a re-saved copy (weights through float16, as the GPU runs bring them back; codebooks kept) is the same codec
    ck = torch.load(setup["codec"] / "model.pt", weights_only=True)
    state = {k: v if "quantizer" in k or not v.is_floating_point() else v.half().float() for k, v in ck["model"].items()}
    torch.save({**ck, "model": state}, tmp_path / "copy.pt")
    assert file_sha256(tmp_path / "copy.pt") != file_sha256(setup["codec"] / "model.pt")
    MusicGeneratorTorch(setup["magnet"], None, tmp_path / "copy.pt", "cpu").generate(["jazz"], 0.1, options=OPTS)


def test_cli_sample_eval_errors_and_help(setup, tmp_path, run_cli, capsys):
    root = setup["root"]
    rc, out, err = run_cli("audiogen", "sample", setup["magnet"], "--text", "jazz tune with piano", "--seconds", "0.5",
                           "--out", tmp_path / "s.wav", "--ar", setup["ar"], "--mode", "hybrid", "--hybrid-seconds", "0.2",
                           "--steps", "2,1,1", "--device", "cpu")
    assert rc == 0, err
    assert load_audio(tmp_path / "s.wav", 16000)[0].shape == (8000,) and "by hybrid" in out
    rc, _, err = run_cli("audiogen", "sample", setup["magnet"], "--text", "jazz", "--out", tmp_path / "t.wav", "--rescore", "0.3")
    assert rc == 2 and err.count("\n") == 1 and "needs the AR model" in err
    rc, _, err = run_cli("audiogen", "train", "--config", tmp_path / "none.yaml", "--dump", root / "dump", "--exp-dir", tmp_path / "e")
    assert rc == 2 and err.count("\n") == 1 and "no such config file" in err
    (tmp_path / "bad.yaml").write_text("kind: gan\n")
    rc, _, err = run_cli("audiogen", "train", "--config", tmp_path / "bad.yaml", "--dump", root / "dump", "--exp-dir", tmp_path / "e")
    assert rc == 2 and "bad.yaml:1: unknown kind 'gan'" in err

    rc, out, err = run_cli("audiogen", "judge", "--train", setup["train"], "--test", setup["train"], "--out-dir", root / "judge",
                           "--steps", "2", "--device", "cpu")
    assert rc == 0 and "instrument accuracy" in out, err
    rc, out, err = run_cli("audiogen", "eval", "--magnet", setup["magnet"], "--ar", setup["ar"], "--data", setup["train"],
                           "--judge", root / "judge", "--out-dir", tmp_path / "ev", "--systems", "magnet,ar", "--clips", "2",
                           "--seconds", "1", "--batch", "2", "--steps", "2,1,1", "--device", "cpu")
    assert rc == 0, err
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert list(result["systems"]) == ["real", "codec", "magnet", "ar"] and result["reference_clips"] == 16
    assert result["systems"]["real"]["fd"] is None and result["systems"]["codec"]["fd"] >= 0
    assert result["systems"]["ar"]["timing"]["batch"] == 2 and (tmp_path / "ev" / "wav" / "ar").is_dir()
    assert "| MAGNeT |" in (tmp_path / "ev" / "eval.md").read_text() and "| AR (delay pattern) |" in out

    for action in ((), ("prepare",), ("train",), ("judge",), ("sample",), ("eval",)):
        with pytest.raises(SystemExit) as e:
            run_cli("audiogen", *action, "--help")
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "usage: speechkit audiogen" in out and (action or all(a in out for a in ("prepare", "judge", "sample", "eval")))


def test_recipe_configs_load_and_experiments_round_trip(tmp_path):
    import yaml

    from speechkit.config import from_dict, load_yaml
    from speechkit.eval.music_classifier import InstrumentExperiment
    from speechkit.train.audiogen import load_audiogen_experiment
    from speechkit.train.codec import load_codec_experiment

    conf = Path(__file__).resolve().parents[1] / "egs" / "synth" / "audiogen" / "conf"
    for size in ("cpu", "gpu"):
        for kind in ("magnet", "ar"):
            exp = load_audiogen_experiment(conf / f"{kind}_{size}.yaml")
            assert exp.kind == kind and exp.model_conf.codebooks == 4
            (tmp_path / "again.yaml").write_text(yaml.safe_dump(exp.to_yaml_dict()))
            assert load_audiogen_experiment(tmp_path / "again.yaml") == exp
        codec = load_codec_experiment(conf / f"codec_rvq_{size}.yaml").model
        assert codec.codec == "rvq" and codec.rvq_conf.n_q >= 4 and codec.frame_rate == 50.0
        assert codec.rvq_conf.codebook_size == load_audiogen_experiment(conf / f"magnet_{size}.yaml").model_conf.card
        data, lines = load_yaml(conf / f"judge_{size}.yaml")
        from_dict(InstrumentExperiment, data, source="judge", lines=lines)
    (tmp_path / "bad.yaml").write_text("kind: ar\nmodel_conf:\n  span: 3\n")  # MAGNeT's key in an AR config
    with pytest.raises(SpeechkitError, match="bad.yaml:3: unknown key 'model_conf.span'"):
        load_audiogen_experiment(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text("train_conf:\n  segment_frames: 2000\n")
    with pytest.raises(SpeechkitError, match="segment_frames"):
        load_audiogen_experiment(tmp_path / "bad.yaml")
