"""The quantization math: symmetric integer ranges and scales (`symmetric`), the calibration methods that
choose activation thresholds (`calibration`), quantization-aware training with learned ranges (`qat`), and
the typed quantized network they produce, which every later stage reads (`network`)."""
