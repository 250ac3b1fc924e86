"""An experiment's config: the model's fields (ESPnet shape, at top level) plus
``tokenizer_conf``, ``optim_conf`` and ``train_conf``. The resolved config is written into the
experiment dir and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from speechkit.config import from_dict, load_yaml, to_dict
from speechkit.errors import ConfigError
from speechkit.models.asr.ctc_model import ENCODERS, AsrModelConfig
from speechkit.models.asr.heads import HEADS
from speechkit.train.engine import LoopConfig, OptimConfig


@dataclass(frozen=True)
class TokenizerConfig:
    type: str = "bpe"  # bpe | char
    vocab_size: int = 256  # bpe only


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """The engine's loop fields (``LoopConfig``) with ASR defaults, plus the data's."""

    max_epochs: int = 20
    batch_seconds: float = 200.0  # padded seconds of audio per batch (per GPU)
    max_utt_seconds: float = 30.0  # longer utterances are left out of training
    num_workers: int = 2  # unused since the engine loads on one thread (kept so older configs load)
    resident: str = "auto"  # features in GPU memory: auto (when they fit) | on | off
    avg_last: int = 5
    init_checkpoint: str | None = None  # start from these weights (e.g. MWER fine-tuning); its tokenizer is reused
    init_modules: tuple[str, ...] = ()  # with init_checkpoint: only these top-level modules (e.g. [cmvn, encoder, ctc])
    # top-level modules kept as they are: no gradient, no optimizer state, their layers in eval mode
    # (no dropout; a streaming encoder still draws its look-ahead per batch); e.g. [encoder, ctc]
    # to train a new head on a trained encoder (ESPnet's --freeze_param)
    freeze_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExperimentConfig:
    model: AsrModelConfig = field(default_factory=AsrModelConfig)
    tokenizer_conf: TokenizerConfig = field(default_factory=TokenizerConfig)
    optim_conf: OptimConfig = field(default_factory=OptimConfig)
    train_conf: TrainConfig = field(default_factory=TrainConfig)

    def to_yaml_dict(self) -> dict:
        out = to_dict(self.model)
        out.update(tokenizer_conf=to_dict(self.tokenizer_conf), optim_conf=to_dict(self.optim_conf),
                   train_conf=to_dict(self.train_conf))
        return out


_MODEL_KEYS = {f.name for f in dataclasses.fields(AsrModelConfig)}


def _where(source: str, lines: dict[str, int], key: str) -> str:
    return f"{source}:{lines[key]}" if key in lines else source


def experiment_config_from_dict(data: dict, source: str = "<config>", lines: dict[str, int] | None = None) -> ExperimentConfig:
    lines = lines or {}
    model_part = {k: v for k, v in data.items() if k in _MODEL_KEYS}
    rest = {k: v for k, v in data.items() if k not in _MODEL_KEYS}
    encoder = model_part.get("encoder", "conformer")
    if encoder not in ENCODERS:
        raise ConfigError(f"{_where(source, lines, 'encoder')}: unknown encoder '{encoder}' (known: {', '.join(ENCODERS)})")
    head = model_part.get("head", "ctc")
    if head not in HEADS:
        raise ConfigError(f"{_where(source, lines, 'head')}: unknown head '{head}' (known: {', '.join(HEADS)})")
    enc_cls = ENCODERS[encoder][0]
    enc_data = model_part.pop("encoder_conf", None)
    enc_conf = from_dict(enc_cls, {} if enc_data is None else enc_data, source=source, lines=lines, prefix="encoder_conf.")
    head_data = model_part.pop("head_conf", None)
    head_conf = from_dict(HEADS[head][0], {} if head_data is None else head_data, source=source, lines=lines, prefix="head_conf.")
    model = from_dict(AsrModelConfig, model_part, source=source, lines=lines)
    model = dataclasses.replace(model, encoder_conf=enc_conf, head_conf=head_conf)
    try:
        if "model" in rest:
            raise ConfigError(f"{_where(source, lines, 'model')}: unknown key 'model'")
        exp = from_dict(ExperimentConfig, rest, source=source, lines=lines)
    except ConfigError as e:
        key = str(e).split("unknown key '")[1].split("'")[0] if "unknown key '" in str(e) else ""
        if key and "." not in key:  # a top-level key: list the model keys too, not only the *_conf sections
            known = ", ".join(sorted(_MODEL_KEYS | {"tokenizer_conf", "optim_conf", "train_conf"}))
            raise ConfigError(f"{_where(source, lines, key)}: unknown key '{key}' (known: {known})") from None
        raise
    return dataclasses.replace(exp, model=model)


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    data, lines = load_yaml(path)
    return experiment_config_from_dict(data, str(path), lines)


def save_experiment_config(cfg: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_yaml_dict(), sort_keys=False))
