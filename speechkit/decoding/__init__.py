"""Torch-free search and post-processing on numpy arrays, shared by the torch models and the ONNX
runtime: CTC greedy / prefix beam search / forced alignment, CIF token and word times, and the
options and stopping rules of CLEAR's autoregressive decode."""
