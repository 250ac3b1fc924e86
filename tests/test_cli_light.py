"""Building the ``speechkit`` parser loads no heavy library: ``--help`` of any command, and the
start of the torch-free ones (transcribe, stream, serve, ...), stay instant. Every command's
``--help`` prints its usage and exits 0."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import textwrap

import pytest

# each costs 0.1 s (soundfile, onnxruntime) to over a second (torch) at import
HEAVY = ("torch", "onnxruntime", "scipy", "librosa", "numba", "sklearn", "soundfile")


def _heavy_loaded(body: str) -> list[str]:
    """Run ``body`` in a fresh interpreter → the HEAVY packages it left in ``sys.modules``."""
    code = textwrap.dedent(body) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_building_the_parser_loads_no_heavy_library():
    body = """
        from speechkit.cli import build_parser
        from speechkit.commands.tts import build_tts_parser
        from speechkit.commands.vc import build_vc_parser
        build_parser(), build_tts_parser(), build_vc_parser()
        """
    assert _heavy_loaded(body) == []


def test_a_torch_free_command_starts_without_heavy_libraries():
    body = """
        import contextlib, io
        from speechkit.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
            main(["transcribe", "--help"])
        assert out.getvalue().startswith("usage: speechkit transcribe"), out.getvalue()
        """
    assert _heavy_loaded(body) == []


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser) for every node of the tree, e.g. ("bench", "asr-stream"), aliases included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_command_help_exits_zero():
    """Through ``main``, as typed: ``tts`` and ``vc`` parse their actions with a parser of their own."""
    from speechkit.cli import build_parser, main
    from speechkit.commands.tts import build_tts_parser
    from speechkit.commands.vc import build_vc_parser

    commands = {**dict(_commands(build_parser())), **dict(_commands(build_tts_parser(), ("tts",))),
                **dict(_commands(build_vc_parser(), ("vc",)))}
    assert {("transcribe",), ("bench", "asr-decode"), ("export", "sherpa"), ("decode-onnx",), ("tts", "synth"),
            ("vc", "convert")} <= set(commands)
    for path, parser in commands.items():
        with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as e:
            main([*path, "--help"])
        assert e.value.code == 0, path
        assert out.getvalue().startswith(f"usage: {parser.prog}"), path
