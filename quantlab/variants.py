"""The evaluated variants of the lab, each a forward function built from the pipeline's stored artifacts.

    float                       the float model
    quant_weights               the float model with every weight replaced by S_W * q_W
    quant_weights_activations   the float model's quantized network, float-rescale forward
    bias_float                  the float model with a bias in fc3
    bias_quant_raw_bias         its quantized network, fc3's bias added to the accumulator as trained
    bias_quant                  its quantized network, fc3's bias as int32 on the accumulator's scale
    integer_engine              the float model's export on the bit-exact fixed-point engine

The integer forwards (float-rescale and engine) read uint8 pixels, the float models normalized images.

The quantized variants read only the quantized networks (quant/<model>/) and the export, so they are what
the quantize stage decided: with calib=ema, for example, the quantization-aware fine-tunes.
"""

from collections.abc import Callable

import torch

from quantlab import paths
from quantlab.architecture import load_state
from quantlab.evaluation import FLOAT_VARIANTS
from quantlab.inference import export_format
from quantlab.inference.engine import FixedPointEngine
from quantlab.inference.float_rescale import FloatRescaleNet
from quantlab.model import load_model
from quantlab.quantize.network import QuantizedNetwork

VARIANTS = ("float", "quant_weights", "quant_weights_activations", "bias_float", "bias_quant_raw_bias",
            "bias_quant", "integer_engine")
# The float-rescale variant the engine is compared with (the same network, rescaled with a float M).
ENGINE_REFERENCE = "quant_weights_activations"


def fixed_point_engine(model_name: str) -> FixedPointEngine:
    return FixedPointEngine(*export_format.read(paths.export(model_name)))


def build(variant: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward function from images to logits (float or integer) for `variant`."""
    if variant in FLOAT_VARIANTS:
        model_name = FLOAT_VARIANTS[variant]
        return load_model(load_state(paths.model(model_name), model_name))
    if variant == "quant_weights":
        return load_model(QuantizedNetwork.load(paths.quantized("float")).dequantized_state())
    if variant == "quant_weights_activations":
        return FloatRescaleNet(QuantizedNetwork.load(paths.quantized("float")))
    if variant in ("bias_quant_raw_bias", "bias_quant"):
        return FloatRescaleNet(QuantizedNetwork.load(paths.quantized("bias")),
                               bias="raw" if variant == "bias_quant_raw_bias" else "int32")
    if variant == "integer_engine":
        return fixed_point_engine("float")
    raise KeyError(variant)
