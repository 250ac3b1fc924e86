"""Inference with trained experiments in PyTorch: load a checkpoint and its config, decode data.
The torch-free counterpart on exported ONNX files is :mod:`speechkit.runtime`."""
