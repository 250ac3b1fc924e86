"""Data in, clear errors out (DESIGN.md): bad data dirs, bad audio and bad configs give one line
naming the file (and line or key) through the real CLI; batch jobs report a bad file and go on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import make_tiny_exp_dir
from speechkit.data.kaldi import read_table
from speechkit.inference.asr import Recognizer, decode_data_dir


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("speechkit: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


def _wav_of(data_dir: Path, index: int) -> tuple[str, Path]:
    utt, wav = sorted(read_table(data_dir / "wav.scp").items())[index]
    return utt, Path(wav)


def write_bad_wav(path: Path, kind: str) -> str:
    """Overwrite ``path`` with a broken file; returns a word its error message must contain."""
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
        return "unreadable"
    if kind == "missing":
        path.unlink()
        return "unreadable"
    if kind == "empty":
        sf.write(str(path), np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
        return "empty"
    if kind == "stereo":
        sf.write(str(path), np.full((8000, 2), 0.1, dtype=np.float32), 16000, subtype="PCM_16")
        return "channels"
    if kind == "8khz":
        sf.write(str(path), np.full(8000, 0.1, dtype=np.float32), 8000, subtype="PCM_16")
        return "8000"
    if kind == "nan":
        x = np.full(8000, 0.1, dtype=np.float32)
        x[100] = np.nan
        sf.write(str(path), x, 16000, subtype="FLOAT")
        return "NaN"
    raise ValueError(kind)


BAD_AUDIO = ["garbage", "missing", "empty", "stereo", "8khz", "nan"]


# ---- structure of the data dir --------------------------------------------------------------

def test_valid_dir_passes(tiny_data_dir, run_cli):
    rc, out, err = run_cli("data", "validate", tiny_data_dir)
    assert rc == 0, err
    assert "12 utterances, 2 speakers" in out and "OK" in out


def test_missing_key_names_the_file(tiny_data_dir, run_cli):
    text = _lines(tiny_data_dir / "text")
    dropped = text.pop(4).split()[0]
    (tiny_data_dir / "text").write_text("".join(text))
    rc, _, err = run_cli("data", "validate", tiny_data_dir)
    assert rc == 2
    line = _one_line_error(err)
    assert f"{tiny_data_dir / 'text'}:" in line and dropped in line and "missing" in line


def test_extra_key_names_the_file(tiny_data_dir, run_cli):
    lines = _lines(tiny_data_dir / "utt2spk")
    lines.append("zzz-extra spk1\n")  # sorted last, but not in wav.scp
    (tiny_data_dir / "utt2spk").write_text("".join(lines))
    rc, _, err = run_cli("data", "validate", "--no-audio", tiny_data_dir)
    assert rc == 2
    line = _one_line_error(err)
    assert f"{tiny_data_dir / 'utt2spk'}:" in line and "zzz-extra" in line


def test_unsorted_keys_name_file_and_line(tiny_data_dir, run_cli):
    lines = _lines(tiny_data_dir / "wav.scp")
    lines[2], lines[3] = lines[3], lines[2]
    (tiny_data_dir / "wav.scp").write_text("".join(lines))
    rc, _, err = run_cli("data", "validate", tiny_data_dir)
    assert rc == 2
    line = _one_line_error(err)
    assert f"{tiny_data_dir / 'wav.scp'}:4:" in line and "sort" in line


def test_duplicated_key_names_file_and_line(tiny_data_dir, run_cli):
    lines = _lines(tiny_data_dir / "utt2spk")
    lines.insert(6, lines[5])
    (tiny_data_dir / "utt2spk").write_text("".join(lines))
    rc, _, err = run_cli("data", "validate", tiny_data_dir)
    assert rc == 2
    line = _one_line_error(err)
    assert f"{tiny_data_dir / 'utt2spk'}:7:" in line and "duplicated" in line and lines[5].split()[0] in line


def test_missing_required_file(tiny_data_dir, run_cli):
    (tiny_data_dir / "utt2spk").unlink()
    rc, _, err = run_cli("data", "validate", tiny_data_dir)
    assert rc == 2
    assert str(tiny_data_dir / "utt2spk") in _one_line_error(err)


# ---- bad audio ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", BAD_AUDIO)
def test_bad_audio_is_named(tiny_data_dir, run_cli, kind):
    _, wav = _wav_of(tiny_data_dir, 3)
    reason = write_bad_wav(wav, kind)
    rc, out, err = run_cli("data", "validate", tiny_data_dir)
    assert rc != 0
    assert "Traceback" not in err
    named = [ln for ln in err.splitlines() if str(wav) in ln]
    assert len(named) == 1, err
    assert reason in named[0], named[0]
    assert "1 bad audio file" in out


def test_every_bad_file_is_listed_at_once(tiny_data_dir, run_cli):
    wavs = [_wav_of(tiny_data_dir, i)[1] for i in range(len(BAD_AUDIO))]
    for wav, kind in zip(wavs, BAD_AUDIO):
        write_bad_wav(wav, kind)
    rc, out, err = run_cli("data", "validate", tiny_data_dir)
    assert rc == 2
    for wav in wavs:
        assert sum(str(wav) in ln for ln in err.splitlines()) == 1, f"{wav} not reported once:\n{err}"
    assert f"{len(BAD_AUDIO)} bad audio file(s)" in out


def test_duration_disagreeing_with_utt2dur(tiny_data_dir, run_cli):
    _, wav = _wav_of(tiny_data_dir, 0)
    sf.write(str(wav), np.full(32000, 0.1, dtype=np.float32), 16000, subtype="PCM_16")  # 2 s, utt2dur says < 1.5 s
    rc, _, err = run_cli("data", "validate", tiny_data_dir)
    assert rc == 2
    assert any(str(wav) in ln and "utt2dur" in ln for ln in err.splitlines()), err


# ---- configs --------------------------------------------------------------------------------

GOOD_YAML = """\
encoder: conformer
encoder_conf:
  output_size: 16
  num_blocks: 2
tokenizer_conf: {type: char}
train_conf:
  max_epochs: 1
"""


@pytest.mark.parametrize("old, new, line_no, key", [
    ("  num_blocks: 2", "  num_blockz: 2", 4, "encoder_conf.num_blockz"),
    ("  max_epochs: 1", "  max_epochs: ten", 7, "train_conf.max_epochs"),
    ("  output_size: 16", "  output_size: 1.5", 3, "encoder_conf.output_size"),
    ("tokenizer_conf: {type: char}", "tokenizer_conf: {type: char, vocab_size: [1]}", 5, "tokenizer_conf.vocab_size"),
    ("encoder: conformer", "encoder: conformer\nbatch_size: 3", 2, "batch_size"),
])
def test_bad_config_names_file_line_and_key(tmp_path, run_cli, old, new, line_no, key):
    bad = tmp_path / "bad.yaml"
    assert old in GOOD_YAML
    bad.write_text(GOOD_YAML.replace(old, new))
    rc, _, err = run_cli("train", "--config", bad, "--train-dump", tmp_path / "no_dump", "--dev-dump",
                         tmp_path / "no_dump", "--exp-dir", tmp_path / "exp")
    assert rc == 2
    line = _one_line_error(err)
    assert f"{bad}:{line_no}:" in line and f"'{key}'" in line
    assert not (tmp_path / "exp").exists(), "a bad config must be refused before anything is written"


# ---- batch jobs skip a bad file -------------------------------------------------------------

def test_features_skip_a_bad_file_and_dump_the_rest(tiny_data_dir, tmp_path, run_cli):
    bad_utt, wav = _wav_of(tiny_data_dir, 5)
    write_bad_wav(wav, "garbage")
    dump = tmp_path / "dump"
    rc, _, err = run_cli("features", tiny_data_dir, dump, "--nj", "1", "--speed-perturb", "0.9,1.0")
    assert rc == 0, err
    skipped = (dump / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 1 and str(wav) in skipped[0]
    assert "1 bad file(s) skipped" in err
    index = read_table(dump / "feats.tsv")
    all_utts = set(read_table(tiny_data_dir / "wav.scp"))
    assert set(index) == {u for u in all_utts - {bad_utt}} | {f"sp0.9-{u}" for u in all_utts - {bad_utt}}
    assert set(read_table(dump / "text", allow_empty_value=True)) == set(index)


@pytest.mark.parametrize("beam", [1, 3])
def test_decode_skips_a_corrupt_wav(tiny_data_dir, tmp_path, beam):
    texts = list(read_table(tiny_data_dir / "text").values())
    exp = make_tiny_exp_dir(tmp_path / "exp", texts)
    bad_utt, wav = _wav_of(tiny_data_dir, 7)
    write_bad_wav(wav, "garbage")
    rec = Recognizer.from_exp_dir(exp, device="cpu")
    n = decode_data_dir(rec, tiny_data_dir, tmp_path / "decode", beam=beam, batch_seconds=3.0)
    skipped = (tmp_path / "decode" / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 1 and str(wav) in skipped[0]
    hyp = read_table(tmp_path / "decode" / "hyp", allow_empty_value=True)
    assert n == 11 and set(hyp) == set(read_table(tiny_data_dir / "wav.scp")) - {bad_utt}


def test_decode_cli_reports_skip(tiny_data_dir, tmp_path, run_cli):
    texts = list(read_table(tiny_data_dir / "text").values())
    exp = make_tiny_exp_dir(tmp_path / "exp", texts)
    _, wav = _wav_of(tiny_data_dir, 0)
    write_bad_wav(wav, "nan")
    rc, out, err = run_cli("decode", exp, tiny_data_dir, tmp_path / "dec", "--device", "cpu")
    assert rc == 0, err
    assert "decoded 11 utterances" in out
    # (the progress bar shares stderr, so the message need not start its line)
    assert any(f"skipped: {wav}" in ln and "NaN" in ln for ln in err.splitlines()), err


def test_train_without_cmvn_stats_or_with_a_missing_path_is_one_line(tmp_path, run_cli, tiny_dump):
    import shutil

    from conftest import tiny_experiment_config
    from speechkit.train.config import save_experiment_config

    conf = tmp_path / "conf.yaml"
    save_experiment_config(tiny_experiment_config(), conf)
    dump = tmp_path / "dump"
    shutil.copytree(tiny_dump, dump)
    (dump / "stats.json").unlink()
    code, _, err = run_cli("train", "--config", str(conf), "--train-dump", str(dump), "--dev-dump", str(dump),
                           "--exp-dir", str(tmp_path / "exp"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "stats.json" in err, err

    code, _, err = run_cli("score", str(tmp_path / "no_text"), str(tmp_path / "no_hyp"), "--out", str(tmp_path / "w.json"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no_text" in err, err
