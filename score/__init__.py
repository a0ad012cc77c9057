"""Score stage: batch inference with ONNX Runtime over image folders (`mri-score --help`)."""
