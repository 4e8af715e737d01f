"""ONNX -> precision variants (quantize.py, calibrated on real ABC by calibration.py) -> TensorRT plans."""
