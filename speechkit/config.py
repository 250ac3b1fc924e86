"""Typed configs: dataclasses filled from ESPnet-shaped YAML.

``from_dict`` rejects unknown keys and wrong types with one line naming the file, the line and
the dotted key (``conf/train.yaml:12: unknown key 'encoder_conf.num_blockz'``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from speechkit.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: str | Path) -> tuple[dict, dict[str, int]]:
    """YAML mapping and a map from dotted key to its 1-based line number."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    lines: dict[str, int] = {}

    def walk(n, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")

    walk(node, "")
    return data, lines


def from_dict(cls: type[T], data: Any, *, source: str = "<config>", lines: dict[str, int] | None = None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    lines = lines or {}

    def where(key: str) -> str:
        line = lines.get(key)
        return f"{source}:{line}" if line else source

    if not isinstance(data, dict):
        raise ConfigError(f"{where(prefix.rstrip('.'))}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where(prefix + str(key))}: unknown key '{prefix}{key}' (known: {known})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{prefix}{name}", where, source, lines)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: {e}") from None


def _convert(tp, value, key: str, where, source: str, lines: dict[str, int]):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, source=source, lines=lines, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, key, where, source, lines)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where(key)}: '{key}' must be a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where(key)}: '{key}' must have {len(args)} items, got {len(value)}")
            item_types = list(args)
        else:
            item_types = [args[0] if args else Any] * len(value)
        items = [_convert(t, v, f"{key}[{i}]", where, source, lines) for i, (t, v) in enumerate(zip(item_types, value))]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where(key)}: '{key}' must be a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # PyYAML reads "1e-3" as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{where(key)}: '{key}' must be {name}, got {type(value).__name__} {value!r}")


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)
