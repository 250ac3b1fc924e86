"""speechkit: Kaldi/ESPnet-style speech recipes on shared encoders with interchangeable heads."""

__version__ = "0.1.0"
