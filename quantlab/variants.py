"""The evaluated variants of the lab, each built from the pipeline's stored artifacts.

    float                       the float model
    quant_weights               the float model with every weight replaced by S_W * q_W
    quant_weights_activations   the integer-only forward of the float model (IntegerNet)
    bias_float                  the float model with a bias in fc3
    bias_quant_raw_bias         its integer-only forward, fc3's bias added as trained (see IntegerNet)
    bias_quant                  its integer-only forward, fc3's bias as int32 on the accumulator's scale
    integer_engine              the exported float model on the bit-exact integer engine (fixed-point
                                rescale); it reads uint8 pixels, the others normalized images

With calib=ema the quantized variants are built from the quantization-aware fine-tunes instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from quantlab import paths, runner
from quantlab.config import load_params
from quantlab.engine import IntegerEngine
from quantlab.integer import IntegerNet
from quantlab.io import load_json, load_npz, load_state
from quantlab.model import load_model
from quantlab.quant import dequantized_state, split_weights

VARIANTS = ("float", "quant_weights", "quant_weights_activations", "bias_float", "bias_quant_raw_bias",
            "bias_quant", "integer_engine")
PIXEL_VARIANTS = {"integer_engine"}
FLOAT_VARIANTS = ("float", "bias_float")  # untouched by quantization: evaluated by their own stage
# The float-rescale variant the engine is compared with (the same network, rescaled with a float M).
ENGINE_REFERENCE = "quant_weights_activations"


def integer_net(model_name: str, bias_mode: str = "none") -> IntegerNet:
    arrays = load_npz(paths.quant_weights(model_name, load_params()))
    activations = load_json(paths.quant_activations(model_name))
    q_weights, weight_scales = split_weights(arrays)
    bias = None
    if bias_mode == "raw":  # the bias of the weights that were quantized (the QAT fine-tune's with calib=ema)
        bias = load_state(paths.quantized_state(model_name, load_params()))["fc3.bias"]
    elif bias_mode == "int32":
        bias = load_npz(paths.QUANT_BIAS)["fc3.bias"]
    return IntegerNet.build(q_weights, weight_scales, activations, bias, bias_mode)


def integer_engine(model_name: str) -> IntegerEngine:
    return IntegerEngine(*runner.load(paths.export(model_name)))


def build(variant: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward function from normalized images to logits (float or integer) for `variant`."""
    if variant == "float":
        return load_model(load_state(paths.model("float")), "float")
    if variant == "quant_weights":  # every weight replaced, so the float model's state serves as the frame
        state = load_state(paths.model("float"))
        return load_model(dequantized_state(state, load_npz(paths.quant_weights("float", load_params()))), "float")
    if variant == "quant_weights_activations":
        return integer_net("float")
    if variant == "bias_float":
        return load_model(load_state(paths.model("bias")), "bias")
    if variant == "bias_quant_raw_bias":
        return integer_net("bias", "raw")
    if variant == "bias_quant":
        return integer_net("bias", "int32")
    if variant == "integer_engine":
        return integer_engine("float")
    raise KeyError(variant)
