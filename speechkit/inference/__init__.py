"""Inference in PyTorch: recognition with a trained ASR experiment (``asr``), synthesis with a
trained CLEAR experiment (``tts``), and a shipped codec's ONNX weights run by torch on the
synthesiser's device (``codec``). The torch-free counterpart on exported ONNX files is
:mod:`speechkit.runtime`."""
