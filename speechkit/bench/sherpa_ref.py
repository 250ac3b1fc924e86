"""sherpa-onnx's C++ online recognizer on a folder ``speechkit export sherpa`` wrote, as the reference
our torch-free runtime is measured against: one builder for both layouts of that folder (the
online transducer and the zipformer2 CTC), given the feature options that make its fbank ours.

    rec = sherpa_recognizer("exp/hybrid/sherpa", beam=4)   # sherpa_onnx.OnlineRecognizer
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from speechkit.errors import SpeechkitError
from speechkit.runtime.console import model_family
from speechkit.runtime.transducer import SherpaCtcRecognizer, TransducerRecognizer

INSTALL_HINT = "pip install sherpa-onnx"


def import_sherpa_onnx() -> ModuleType:
    """sherpa_onnx, or a one-line error that says how to install it (an optional package)."""
    try:
        import sherpa_onnx
    except ImportError:
        raise SpeechkitError(f"comparing with sherpa-onnx needs its Python package ({INSTALL_HINT})") from None
    return sherpa_onnx


def sherpa_versions() -> dict:
    """sherpa-onnx's version and that of the ONNX Runtime it bundles (not the one we import)."""
    sherpa_onnx = import_sherpa_onnx()
    return {"sherpa_onnx": getattr(sherpa_onnx, "__version__", None),
            "sherpa_onnxruntime": getattr(sherpa_onnx, "onnxruntime_version", None)}


def _feature_options(model_dir: Path) -> dict:
    """The options the export recorded (``export.sherpa.recognizer_options``): sherpa-onnx's fbank
    equal to the one the model was trained on (read from export.json, so no torch is imported)."""
    info = json.loads((model_dir / "export.json").read_text(encoding="utf-8"))
    options = info.get("recognizer_feature_options")
    if not isinstance(options, dict):
        raise SpeechkitError(f"{model_dir / 'export.json'}: no recognizer_feature_options (re-export with `speechkit export sherpa`)")
    return options


def sherpa_recognizer(model_dir: str | Path, *, beam: int = 1, num_threads: int = 1):
    """``sherpa_onnx.OnlineRecognizer`` on ``model_dir`` on the CPU, endpointing off: its online
    transducer (``beam`` 1: greedy search, > 1: modified beam search keeping ``beam`` paths) or
    its zipformer2 CTC (greedy only). Refuses, in one line, any other folder — our own streaming
    CTC layout (``speechkit export onnx``) included, which sherpa-onnx cannot load."""
    model_dir = Path(model_dir)
    family = model_family(model_dir)
    if family not in (TransducerRecognizer.family, SherpaCtcRecognizer.family):
        raise SpeechkitError(f"{model_dir}: sherpa-onnx cannot load this folder (model_family {family!r}); "
                             "export the experiment with `speechkit export sherpa EXP_DIR OUT_DIR` to compare with it")
    if not isinstance(beam, int) or beam < 1:
        raise SpeechkitError(f"beam must be a positive integer, got {beam!r}")
    if family == SherpaCtcRecognizer.family and beam != 1:
        raise SpeechkitError(f"sherpa-onnx decodes a zipformer2 CTC model greedily (beam 1), got beam {beam}")
    sherpa_onnx = import_sherpa_onnx()
    options = _feature_options(model_dir)
    if family == TransducerRecognizer.family:
        return sherpa_onnx.OnlineRecognizer.from_transducer(
            tokens=str(model_dir / "tokens.txt"), encoder=str(model_dir / "encoder.onnx"),
            decoder=str(model_dir / "decoder.onnx"), joiner=str(model_dir / "joiner.onnx"), num_threads=num_threads,
            provider="cpu", decoding_method="modified_beam_search" if beam > 1 else "greedy_search",
            max_active_paths=beam, **options)
    return _zipformer2_ctc(sherpa_onnx, model_dir, options, num_threads)


def _zipformer2_ctc(sherpa_onnx: ModuleType, model_dir: Path, options: dict, num_threads: int):
    """``from_zipformer2_ctc`` takes no high_freq nor sample scale, so its config is built here."""
    lib = sherpa_onnx.lib._sherpa_onnx
    feat = lib.FeatureExtractorConfig(sampling_rate=options["sample_rate"], feature_dim=options["feature_dim"],
                                      low_freq=options["low_freq"], high_freq=options["high_freq"], dither=options["dither"],
                                      normalize_samples=options["normalize_samples"])
    model = lib.OnlineModelConfig(zipformer2_ctc=lib.OnlineZipformer2CtcModelConfig(model=str(model_dir / "model.onnx")),
                                  tokens=str(model_dir / "tokens.txt"), num_threads=num_threads,
                                  provider_config=lib.ProviderConfig(provider="cpu"))
    config = lib.OnlineRecognizerConfig(feat_config=feat, model_config=model, enable_endpoint=False,
                                        decoding_method="greedy_search")
    rec = sherpa_onnx.OnlineRecognizer.__new__(sherpa_onnx.OnlineRecognizer)  # what its from_* class methods do
    rec.recognizer, rec.config = lib.OnlineRecognizer(config), config
    return rec
