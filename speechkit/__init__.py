"""speechkit: Kaldi/ESPnet-style speech recipes on shared encoders with interchangeable heads."""

__version__ = "0.1.0"


def load(model_dir, **options):
    """Open an exported model directory: ``speechkit.load("models/asr-stream-synth")``. See
    :func:`speechkit.api.load` (imported on first use, so ``import speechkit`` stays light)."""
    from speechkit.api import load as _load

    return _load(model_dir, **options)
