"""Torch-free inference engines on exported ONNX models."""

from speechkit.runtime.asr import EndpointConfig, OnlineRecognizer, Stream

__all__ = ["EndpointConfig", "OnlineRecognizer", "Stream"]
