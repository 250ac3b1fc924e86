"""Shared fixtures: a tiny Kaldi data dir of synthetic audio (no speech engines needed), its
feature dump, a tiny randomly initialised experiment dir, and an in-process CLI runner.

The plain functions (``make_tiny_data_dir``, ``make_tiny_dump``, ``make_tiny_exp_dir``) are
importable with ``from conftest import ...`` for tests that need their own copies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from speechkit.audio.io import save_audio
from speechkit.data.kaldi import Utterance, write_data_dir
from speechkit.proc import descendants

SAMPLE_RATE = 16000
# Each word is a tone at its own pitch, so a model could in principle learn the mapping.
WORD_HZ = {"up": 220.0, "down": 330.0, "left": 440.0, "right": 550.0, "yes": 660.0, "no": 770.0, "go": 880.0, "stop": 990.0}
VOCAB = tuple(WORD_HZ)

TINY_ENCODER_CONF = {"output_size": 16, "attention_heads": 2, "linear_units": 32, "num_blocks": 2, "cnn_module_kernel": 5}


def _synth_utterance(rng: np.random.Generator, words: list[str], pitch: float, seconds: float) -> np.ndarray:
    """Tones (fundamental + one harmonic) for each word, a short gap between words, light noise."""
    n = int(round(seconds * SAMPLE_RATE))
    out = np.zeros(n, dtype=np.float32)
    bounds = np.linspace(0, n, len(words) + 1).astype(int)
    for w, a, b in zip(words, bounds[:-1], bounds[1:]):
        gap = int(0.05 * SAMPLE_RATE)
        t = np.arange(b - a - gap) / SAMPLE_RATE
        f0 = WORD_HZ[w] * pitch
        tone = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * 2 * f0 * t)
        out[a : a + len(t)] = tone * np.hanning(len(t))
    out += 0.01 * rng.standard_normal(n).astype(np.float32)
    return out


def make_tiny_data_dir(path: str | Path, n_utts: int = 12, seed: int = 0, n_speakers: int = 2) -> list[Utterance]:
    """Write a Kaldi data dir of ``n_utts`` 16 kHz mono utterances (0.5-1.5 s, 1-3 words) from
    ``n_speakers`` speakers; audio in ``path/wav/``, absolute paths in ``wav.scp``, ``utt2dur`` set.
    Same (n_utts, seed, n_speakers), same files."""
    path = Path(path).resolve()
    wav_dir = path / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    utts = []
    for i in range(n_utts):
        spk = f"spk{i % n_speakers + 1}"
        utt_id = f"{spk}-{seed:02d}{i:04d}"
        words = [str(w) for w in rng.choice(VOCAB, size=int(rng.integers(1, 4)))]
        seconds = float(rng.uniform(0.5, 1.5))
        samples = _synth_utterance(rng, words, pitch=1.0 + 0.15 * (i % n_speakers), seconds=seconds)
        wav = wav_dir / f"{utt_id}.wav"
        save_audio(wav, samples, SAMPLE_RATE)
        utts.append(Utterance(utt_id, spk, str(wav), " ".join(words), len(samples) / SAMPLE_RATE))
    write_data_dir(path, utts)
    return sorted(utts, key=lambda u: u.utt_id)


def make_tiny_dump(data_dir: str | Path, dump_dir: str | Path, **kwargs) -> Path:
    """Fbank dump of a data dir in this process (``nj=1``); returns the dump dir."""
    from speechkit.data.features import compute_dump

    compute_dump(data_dir, dump_dir, nj=1, **kwargs)
    return Path(dump_dir)


def make_train_dev_dumps(root: Path, n_train: int, seed: int) -> None:
    """``root/dump_train`` and ``root/dump_dev`` from two fresh tiny data dirs (for trainer tests)."""
    make_tiny_data_dir(root / "train", n_utts=n_train, seed=seed)
    make_tiny_data_dir(root / "dev", n_utts=max(4, n_train // 6), seed=seed + 1)
    make_tiny_dump(root / "train", root / "dump_train")
    make_tiny_dump(root / "dev", root / "dump_dev")


TINY_STREAMING_CONTEXTS = [[8, 3], [8, 0], [8, 1], [-1, -1]]


def tiny_experiment_config(streaming: bool = False, **train_conf):
    """An ExperimentConfig with a 2-block, 16-dim conformer (or streaming conformer with
    ``TINY_STREAMING_CONTEXTS``) and a char tokenizer."""
    from speechkit.train.config import experiment_config_from_dict

    enc = dict(TINY_ENCODER_CONF)
    if streaming:
        enc["att_context_size"] = TINY_STREAMING_CONTEXTS
    return experiment_config_from_dict({
        "encoder": "streaming_conformer" if streaming else "conformer",
        "encoder_conf": enc,
        "specaug_conf": {"num_freq_masks": 1, "freq_mask_width": 8, "num_time_masks": 2, "time_mask_ratio": 0.05},
        "tokenizer_conf": {"type": "char"},
        "train_conf": {"num_workers": 0, **train_conf},
    })


def tiny_paraformer_config(num_mel_bins: int = 20, **head_conf):
    """An ExperimentConfig for a Paraformer on the tiny conformer: one decoder block, no SpecAugment,
    char tokens; ``head_conf`` overrides the head's settings."""
    from speechkit.train.config import experiment_config_from_dict

    return experiment_config_from_dict({
        "frontend_conf": {"num_mel_bins": num_mel_bins}, "specaug_conf": None, "encoder": "conformer",
        "encoder_conf": TINY_ENCODER_CONF, "head": "paraformer", "tokenizer_conf": {"type": "char"},
        "head_conf": {"decoder_blocks": 1, "attention_heads": 2, "linear_units": 32, **head_conf},
    })


def make_tiny_exp_dir(exp_dir: str | Path, texts: list[str], seed: int = 0, checkpoint: str = "model_avg.pt",
                      streaming: bool = False) -> Path:
    """A decodable experiment dir without training: char tokenizer over ``texts`` and a randomly
    initialised tiny model saved as ``checkpoint`` with its config."""
    from speechkit.models.asr.ctc_model import CtcAsrModel
    from speechkit.text.tokenizer import train_tokenizer
    from speechkit.checkpoint import save_atomic

    exp_dir = Path(exp_dir)
    tok = train_tokenizer("char", texts, exp_dir)
    cfg = tiny_experiment_config(streaming)
    torch.manual_seed(seed)
    model = CtcAsrModel(cfg.model, tok.vocab_size)
    save_atomic({"model": model.state_dict(), "config": cfg.to_yaml_dict()}, exp_dir / checkpoint)
    return exp_dir


@pytest.fixture
def one_thread():
    """torch on one thread for the test (tiny models: more threads only add contention); modules
    use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_data_dir(tmp_path) -> Path:
    """A fresh 12-utterance, 2-speaker data dir that the test may damage."""
    make_tiny_data_dir(tmp_path / "data", n_utts=12, seed=0)
    return tmp_path / "data"


@pytest.fixture(scope="session")
def tiny_dump(tmp_path_factory) -> Path:
    """The feature dump of a 12-utterance data dir, shared read-only by the whole session."""
    root = tmp_path_factory.mktemp("tiny")
    make_tiny_data_dir(root / "data", n_utts=12, seed=0)
    return make_tiny_dump(root / "data", root / "dump")


@pytest.fixture
def run_cli(capsys):
    """Run ``speechkit ARGS`` in this process → (exit status, stdout, stderr)."""
    from speechkit.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # drop anything printed before
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def bench_args(add_parser, argv: list[str]):
    """``argv`` parsed by the one ``speechkit bench`` subcommand that ``add_parser`` adds."""
    import argparse

    root = argparse.ArgumentParser()
    add_parser(root.add_subparsers())
    return root.parse_args([str(a) for a in argv])


def run_bench(args, capsys) -> tuple[list[str], dict]:
    """Run a parsed bench in this process → (its report lines, the result on its last line, which
    ``--json`` prints); with ``--out`` the file must hold the same result."""
    import json

    capsys.readouterr()  # drop anything printed before
    args.func(args)
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    if getattr(args, "out", None):
        assert json.loads(Path(args.out).read_text()) == result
    return lines[:-1], result


def run_without_torch(body: str) -> str:
    """Run ``body`` (Python source) in a fresh interpreter where any ``import torch`` fails; it must
    not end with torch loaded. Returns its stdout (fails the test on a non-zero exit)."""
    import subprocess
    import sys
    import textwrap

    code = "import sys\nsys.modules['torch'] = None\n" + textwrap.dedent(body) + (
        "\nassert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m] is not None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout



def kill_after_first_checkpoint(cmd: list[str], ckpt: Path, env: dict, process_tree: bool = False) -> dict:
    """Start a training command, SIGKILL it as soon as ``ckpt`` appears (with ``process_tree``:
    the launcher and every process under it, as torchrun's ranks are), return the checkpoint."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    for pid in [proc.pid, *(descendants(proc.pid) if process_tree else [])]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    time.sleep(0.2 if process_tree else 0)
    assert ckpt.exists(), "no checkpoint was written before the kill"
    return torch.load(ckpt, weights_only=True)


def sherpa_transducer_recognizer(out, unit_range_samples: bool = False, **kw):
    """sherpa-onnx's online recognizer on a `speechkit export sherpa` folder, one CPU thread, with
    the feature settings that make its fbank ours (``export.sherpa.recognizer_options``)."""
    import sherpa_onnx

    from speechkit.export.sherpa import recognizer_options

    return sherpa_onnx.OnlineRecognizer.from_transducer(
        tokens=str(out / "tokens.txt"), encoder=str(out / "encoder.onnx"), decoder=str(out / "decoder.onnx"),
        joiner=str(out / "joiner.onnx"), num_threads=1, provider="cpu", **{**recognizer_options(unit_range_samples), **kw})


def sherpa_decode(rec, waves, sample_rate: int = 16000) -> list[tuple[list[str], list[int], str, int]]:
    """Every wave as its own sherpa-onnx stream, the ready ones decoded together each round → per
    stream (token pieces, encoder frames (40 ms), text, chunks decoded). sherpa-onnx spells a
    leading ▁ as a space; the pieces here are spelled as in tokens.txt."""
    streams, chunks = [rec.create_stream() for _ in waves], [0] * len(waves)
    for s, w in zip(streams, waves):
        s.accept_waveform(sample_rate, w)
        s.input_finished()
    while ready := [i for i, s in enumerate(streams) if rec.is_ready(s)]:
        rec.decode_streams([streams[i] for i in ready])
        for i in ready:
            chunks[i] += 1
    out = []
    for s, n in zip(streams, chunks):
        r = rec.get_result_all(s)
        out.append(([t.replace(" ", "▁") for t in r.tokens], [round(t / 0.04) for t in r.timestamps], r.text.strip(), n))
    return out


def whole_chunks(wave: np.ndarray, chunk_feats: int, chunks: int | None = None) -> np.ndarray:
    """The wave cut so that sherpa-onnx (after input_finished) and our runtime (before it) both
    decode exactly ``chunks`` chunks of ``chunk_feats`` fbank frames (default: as many as the wave
    holds): 2 fbank frames past them."""
    if chunks is None:
        chunks = (len(wave) // 160 - 3) // chunk_feats
    return wave[: (chunks * chunk_feats + 2) * 160]


def ours_whole_chunks(rec, waves) -> list[tuple[list[str], list[int], str, int]]:
    """Our transducer runtime on the same streams, batched, input not finished (so only whole
    chunks are decoded, as sherpa-onnx does) → per stream (pieces, frames, text, chunks), as
    ``sherpa_decode`` gives them."""
    streams = [rec.create_stream() for _ in waves]
    chunks = [0] * len(waves)
    for s, w in zip(streams, waves):
        s.accept_waveform(w)
    while ready := [i for i, s in enumerate(streams) if rec.is_ready(s)]:
        rec.decode_streams([streams[i] for i in ready])
        for i in ready:
            chunks[i] += 1
    return [([rec.tokenizer.id_to_piece(i) for i in s.ids], list(s.id_frames), rec.text(s), n) for s, n in zip(streams, chunks)]
