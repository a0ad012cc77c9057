"""Export stage: checkpoint -> self-describing ONNX model, with parity checks (`onnx-export --help`)."""
