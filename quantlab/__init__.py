"""Shared code of the quantization lab pipeline: model, data, quantization math and calibration."""
