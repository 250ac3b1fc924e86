"""Export trained models to self-describing ONNX files, checked against PyTorch before they are written."""
