"""Typed configs (DESIGN.md): ESPnet-shaped YAML into dataclasses, round trips exactly, and every
unknown key or wrong type is refused with one line naming the file, the line and the dotted key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from speechkit.audio.augment import SpecAugConfig
from speechkit.audio.fbank import FbankConfig
from speechkit.config import from_dict, load_yaml
from speechkit.errors import ConfigError
from speechkit.models.asr.ctc_model import AsrModelConfig
from speechkit.nn.conformer import ConformerConfig
from speechkit.train.config import (
    ExperimentConfig,
    OptimConfig,
    TokenizerConfig,
    TrainConfig,
    experiment_config_from_dict,
    load_experiment_config,
    save_experiment_config,
)

YAML = """\
# tiny conformer-CTC
encoder: conformer
encoder_conf:
  output_size: 16
  attention_heads: 2
  num_blocks: 2
  subsampling_channels: 8
frontend_conf:
  num_mel_bins: 40
specaug_conf: null
tokenizer_conf: {type: char}
optim_conf:
  lr: 2e-3
  betas: [0.8, 0.9]
  warmup_steps: 10
train_conf:
  max_epochs: 3
  batch_seconds: 50
"""


def _write(tmp_path, text: str, name: str = "conf.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(tmp_path, text: str) -> tuple[str, str]:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_experiment_config(path)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg, str(path)


# ---- round trips ----------------------------------------------------------------------------

def _custom() -> ExperimentConfig:
    return ExperimentConfig(
        model=AsrModelConfig(
            frontend_conf=FbankConfig(num_mel_bins=40, dither=0.5),
            specaug_conf=SpecAugConfig(num_time_masks=3),
            encoder_conf=ConformerConfig(output_size=32, attention_heads=2, num_blocks=2, subsampling_channels=8),
        ),
        tokenizer_conf=TokenizerConfig(type="char"),
        optim_conf=OptimConfig(lr=5e-4, betas=(0.8, 0.95)),
        train_conf=TrainConfig(max_epochs=2, amp="off"),
    )


@pytest.mark.parametrize("cfg", [
    ExperimentConfig(),
    _custom(),
    dataclasses.replace(_custom(), model=dataclasses.replace(_custom().model, specaug_conf=None)),
], ids=["defaults", "custom", "no-specaug"])
def test_round_trip_through_dict_and_yaml(tmp_path, cfg):
    assert experiment_config_from_dict(cfg.to_yaml_dict()) == cfg
    save_experiment_config(cfg, tmp_path / "config.yaml")
    again = load_experiment_config(tmp_path / "config.yaml")
    assert again == cfg
    assert isinstance(again.optim_conf.betas, tuple)


def test_yaml_values_are_converted(tmp_path):
    cfg = load_experiment_config(_write(tmp_path, YAML))
    assert cfg.model.encoder_conf == ConformerConfig(output_size=16, attention_heads=2, num_blocks=2, subsampling_channels=8)
    assert cfg.model.frontend_conf.num_mel_bins == 40
    assert cfg.model.specaug_conf is None  # Optional: null is None, not the default
    assert cfg.optim_conf.lr == 2e-3 and isinstance(cfg.optim_conf.lr, float)  # PyYAML reads "2e-3" as a string
    assert cfg.optim_conf.betas == (0.8, 0.9)
    assert cfg.train_conf.batch_seconds == 50.0 and isinstance(cfg.train_conf.batch_seconds, float)  # int → float
    assert cfg.train_conf.max_epochs == 3 and cfg.train_conf.seed == TrainConfig().seed  # unset keys keep defaults


def test_empty_yaml_is_all_defaults(tmp_path):
    assert load_experiment_config(_write(tmp_path, "# nothing\n")) == ExperimentConfig()


def test_load_yaml_gives_line_of_every_dotted_key(tmp_path):
    _, lines = load_yaml(_write(tmp_path, YAML))
    assert lines["encoder"] == 2
    assert lines["encoder_conf.subsampling_channels"] == 7
    assert lines["tokenizer_conf.type"] == 11  # flow mapping
    assert lines["optim_conf.betas"] == 14
    assert lines["train_conf.batch_seconds"] == 18


# ---- unknown keys ---------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, line_no, key, a_known_key", [
    ("  num_blocks: 2", "  num_blockz: 2", 6, "encoder_conf.num_blockz", "num_blocks"),
    ("  num_mel_bins: 40", "  num_mel_binz: 40", 9, "frontend_conf.num_mel_binz", "num_mel_bins"),
    ("encoder: conformer", "encoder: conformer\nencoder_cfg: {}", 3, "encoder_cfg", "encoder_conf"),
    ("  warmup_steps: 10", "  warmup_step: 10", 15, "optim_conf.warmup_step", "warmup_steps"),
    ("  max_epochs: 3", "  max_epoch: 3", 17, "train_conf.max_epoch", "max_epochs"),
])
def test_unknown_key_names_file_line_key_and_the_known_keys(tmp_path, old, new, line_no, key, a_known_key):
    msg, path = _error(tmp_path, YAML.replace(old, new))
    assert msg.startswith(f"{path}:{line_no}: unknown key '{key}'"), msg
    known = msg.split("(known: ")[1].rstrip(")").split(", ")
    assert a_known_key in known, (
        f"the known keys listed should be those of the section that holds '{key}': {msg}"
        + ("  [bug: speechkit/train/config.py rewrites nested *_conf errors with the top-level keys]"
           if "." in key and "encoder" in known else ""))


def test_model_key_is_not_a_section(tmp_path):
    msg, path = _error(tmp_path, "model: {encoder: conformer}\n")
    assert msg.startswith(f"{path}:1: unknown key 'model'"), msg


def test_unknown_encoder_names_file_and_line(tmp_path):
    msg, path = _error(tmp_path, "tokenizer_conf: {type: char}\nencoder: transformerr\n")
    assert msg.startswith(f"{path}:2:") and "transformerr" in msg and "conformer" in msg


def test_unknown_head_names_file_and_line(tmp_path):
    msg, path = _error(tmp_path, "encoder: conformer\nhead: rnnt\n")
    assert "rnnt" in msg
    assert msg.startswith(f"{path}:2:"), (
        f"message lacks the file and line: {msg!r} (AsrModelConfig.__post_init__ raises a bare ConfigError that "
        "from_dict does not locate)")


# ---- wrong types ----------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, line_no, key, want", [
    ("  output_size: 16", "  output_size: sixteen", 4, "encoder_conf.output_size", "int"),
    ("  output_size: 16", "  output_size: 16.5", 4, "encoder_conf.output_size", "int"),
    ("  output_size: 16", "  output_size: true", 4, "encoder_conf.output_size", "int"),
    ("  subsampling_channels: 8", "  subsampling_channels: eight", 7, "encoder_conf.subsampling_channels", "int"),
    ("  lr: 2e-3", "  lr: fast", 13, "optim_conf.lr", "float"),
    ("  lr: 2e-3", "  lr: false", 13, "optim_conf.lr", "float"),
    ("  betas: [0.8, 0.9]", "  betas: 0.8", 14, "optim_conf.betas", "list"),
    ("  betas: [0.8, 0.9]", "  betas: [0.8, high]", 14, "optim_conf.betas[1]", "float"),
    ("tokenizer_conf: {type: char}", "tokenizer_conf: {type: 3}", 11, "tokenizer_conf.type", "str"),
    ("specaug_conf: null", "specaug_conf: 5", 10, "specaug_conf", "mapping"),
    ("specaug_conf: null", "specaug_conf: {num_time_masks: x}", 10, "specaug_conf.num_time_masks", "int"),
    ("train_conf:\n  max_epochs: 3\n  batch_seconds: 50\n", "train_conf: 5\n", 16, "train_conf", "mapping"),
])
def test_wrong_type_names_file_line_and_key(tmp_path, old, new, line_no, key, want):
    assert old in YAML
    msg, path = _error(tmp_path, YAML.replace(old, new))
    where = f"{path}:{line_no}: " if "[" not in key else f"{path}"  # list items have no line of their own
    assert msg.startswith(where) and f"'{key}'" in msg and want in msg, msg


@pytest.mark.parametrize("betas", ["[0.9]", "[0.9, 0.98, 0.5]"])
def test_fixed_length_tuple_is_checked(tmp_path, betas):
    """``betas: tuple[float, float]``: a wrong length is a wrong type; accepted, it only fails at
    the first optimizer step with an IndexError from inside torch."""
    path = _write(tmp_path, f"optim_conf:\n  betas: {betas}\n")
    try:
        cfg = load_experiment_config(path)
    except ConfigError as e:
        assert str(e).startswith(f"{path}:2:") and "optim_conf.betas" in str(e)
    else:
        pytest.fail(f"betas: {betas} was accepted as {cfg.optim_conf.betas}: speechkit/config.py _convert does not "
                    "check the length of a fixed-size tuple")


# ---- files ----------------------------------------------------------------------------------

def test_yaml_syntax_error_names_file_and_line(tmp_path):
    msg, path = _error(tmp_path, "encoder: conformer\nencoder_conf: {output_size: 16\ntrain_conf: {}\n")
    assert msg.startswith(f"{path}:") and "invalid YAML" in msg
    assert int(msg.split(":")[1]) in (2, 3)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_experiment_config(tmp_path / "absent.yaml")
    msg, path = _error(tmp_path, "- a\n- b\n")
    assert msg.startswith(path) and "mapping" in msg


# ---- from_dict on its own -------------------------------------------------------------------

@dataclass(frozen=True)
class _Inner:
    n: int = 1
    names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    maybe: _Inner | None = None
    scale: float | None = None
    pair: tuple[int, int] = (1, 2)
    table: dict = field(default_factory=dict)


def test_from_dict_nested_optional_and_collections():
    got = from_dict(_Outer, {"inner": {"n": 3, "names": ["a", "b"]}, "maybe": {"n": 2}, "scale": 2, "pair": [3, 4],
                             "table": {"x": 1}})
    assert got == _Outer(_Inner(3, ["a", "b"]), _Inner(2), 2.0, (3, 4), {"x": 1})
    assert from_dict(_Outer, {"maybe": None, "scale": None}) == _Outer()
    assert from_dict(_Outer, {"inner": None}) == _Outer()  # an empty YAML section is the defaults
    assert from_dict(_Outer, dataclasses.asdict(got)) == got


def test_from_dict_errors_use_source_and_lines():
    lines = {"inner": 2, "inner.n": 3, "inner.bogus": 4}
    with pytest.raises(ConfigError, match=r"^x\.yaml:3: 'inner\.n' must be int, got str 'a'$"):
        from_dict(_Outer, {"inner": {"n": "a"}}, source="x.yaml", lines=lines)
    with pytest.raises(ConfigError, match=r"^x\.yaml:4: unknown key 'inner\.bogus' \(known: n, names\)$"):
        from_dict(_Outer, {"inner": {"bogus": 1}}, source="x.yaml", lines=lines)
    with pytest.raises(ConfigError, match=r"'inner\.names\[1\]' must be str"):
        from_dict(_Outer, {"inner": {"names": ["a", 2]}}, source="x.yaml", lines=lines)
    with pytest.raises(ConfigError, match=r"'maybe\.n' must be int"):
        from_dict(_Outer, {"maybe": {"n": "two"}})
