"""Layers point one way (DESIGN.md): every import inside ``speechkit``, read from the source with
``ast`` (imports inside functions included), goes to its own layer or a lower one; the runtime
imports neither torch nor ``speechkit.models``, directly or through what it loads.

The order, lowest first, is what the code needs:
   0  errors, config, proc     one-module foundations (errors, typed configs, /proc readings)
   1  audio, text              signals and strings
   2  data                     Kaldi data dirs, corpora, datasets
   3  decoding                 torch-free search and post-processing on numpy (CTC, CIF times,
                               CLEAR's decode options), shared by the torch models and the runtime
   4  runtime                  ONNX Runtime engines; torch-free, so it sits below every torch layer:
                               export's parity checks, the torch synthesiser and codec reuse it
   5  nn, checkpoint           torch blocks shared by the families; checkpoint files (atomic save,
                               weights_only load, averaging) for models, train, inference, export
   6  models                   one package per family
   7  train                    the training engine and its tasks
   8  inference                trained experiments run in torch (ASR recognition, TTS synthesis
                               with the codec on the same device); reads train's configs
   9  export                   ONNX export, checked against torch and the runtime
  10  serve                    the WebSocket server over the runtime
  11  eval, bench              above what they measure (models, runtime, serve)
  12  api                      ``import speechkit``
  13  cli, commands, speechkit/__init__.py   the ``speechkit`` command and the package's face
Modules of one layer may import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "speechkit"

LAYERS = {
    "errors": 0, "config": 0, "proc": 0, "devices": 0,
    "audio": 1, "text": 1,
    "data": 2,
    "decoding": 3,
    "runtime": 4,
    "nn": 5, "checkpoint": 5,
    "models": 6,
    "train": 7,
    "inference": 8,
    "export": 9,
    "serve": 10,
    "eval": 11, "bench": 11,
    "api": 12,
    "cli": 13, "commands": 13, "__init__": 13,
}


def module_of(path: str) -> str:
    """'speechkit/nn/attention.py' → 'speechkit.nn.attention'; a package's __init__ → the package."""
    parts = list(Path(path).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    base = REPO.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: str, source: str, eager_only: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import of ``source``; ``from m import n`` names m.n when
    that is a module. ``eager_only``: those that run at import (not inside a function)."""
    package = module_of(path) if path.endswith("__init__.py") else module_of(path).rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if eager_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((node.lineno, sub if base.startswith(PACKAGE) and is_module(sub) else base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source, filename=path))
    return sorted(set(found))


def layer(module: str) -> int | None:
    """The rank of a speechkit module (KeyError: its top-level name is in no layer); None outside."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def upward_imports(path: str, source: str) -> list[str]:
    """'path:line → target (layer a → b)' for each import of ``source`` into a higher layer."""
    own = layer(module_of(path))
    return [f"{path}:{line} → {target} (layer {own} → {layer(target)})" for line, target in imports(path, source)
            if (layer(target) or 0) > own]


def torch_or_models(path: str, source: str, eager_only: bool = False) -> list[str]:
    return [f"{path}:{line} → {target}" for line, target in imports(path, source, eager_only)
            if target.split(".")[0] == "torch" or target.startswith(f"{PACKAGE}.models")]


def package_files() -> dict[str, str]:
    """'speechkit/…/x.py' → source, for every module of the package."""
    return {p.relative_to(REPO).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted((REPO / PACKAGE).rglob("*.py")) if "__pycache__" not in p.parts}


def file_of(module: str) -> str | None:
    base = REPO.joinpath(*module.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p.relative_to(REPO).as_posix()
    return None


# ---- the checker can fail ---------------------------------------------------------------------

def test_checker_flags_an_upward_import_and_torch_in_the_runtime():
    fake = "import os\nfrom speechkit.errors import SpeechkitError\n\n\ndef f():\n    from ..models.asr import heads\n"
    assert upward_imports("speechkit/nn/fake.py", fake) == [
        "speechkit/nn/fake.py:6 → speechkit.models.asr.heads (layer 5 → 6)"]
    assert upward_imports("speechkit/train/fake.py", fake) == []
    runtime = "import numpy as np\n\n\ndef f():\n    import torch.nn\n"
    assert torch_or_models("speechkit/runtime/fake.py", runtime) == ["speechkit/runtime/fake.py:5 → torch.nn"]
    assert torch_or_models("speechkit/runtime/fake.py", runtime, eager_only=True) == []


# ---- the package --------------------------------------------------------------------------------

def test_every_module_has_a_layer():
    missing = set()
    for path, source in package_files().items():
        for module in [module_of(path), *(target for _, target in imports(path, source))]:
            try:
                layer(module)
            except KeyError:
                missing.add(module)
    assert not missing, "no layer for these modules: add their top-level name to LAYERS\n" + "\n".join(sorted(missing))


def test_imports_point_down():
    found = [v for path, source in package_files().items() for v in upward_imports(path, source)]
    assert not found, "imports into a higher layer (see tests/test_layers.py for the order):\n" + "\n".join(found)


def test_runtime_imports_neither_torch_nor_models():
    found = [v for path, source in package_files().items() if path.startswith(f"{PACKAGE}/runtime/")
             for v in torch_or_models(path, source)]
    assert not found, "the runtime must run without torch and without speechkit.models:\n" + "\n".join(found)


def test_what_the_runtime_loads_imports_no_torch():
    """Everything importing the runtime executes (its modules, their eager imports, their packages'
    __init__ files, transitively) is free of torch and speechkit.models."""
    sources = package_files()
    todo = [p for p in sources if p.startswith(f"{PACKAGE}/runtime/")]
    seen, found = set(todo), []
    while todo:
        path = todo.pop()
        found += torch_or_models(path, sources[path], eager_only=True)
        for _, target in imports(path, sources[path], eager_only=True):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                dep = file_of(".".join(parts[:i])) if parts[0] == PACKAGE else None
                if dep and dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
    assert not found, "importing the runtime would load torch or speechkit.models:\n" + "\n".join(sorted(found))
