"""The evaluated variants of the lab: one table, which the evaluate stages, the statistics, the report and the
tests read. Each variant has its key in metrics/accuracy.json, the report's name for it, the float variant it
is measured against (none for the float models themselves) and the forward function it is built as from the
pipeline's stored artifacts:

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

The builders import torch when they run, not here: the statistics and report stages read the table without it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from quantlab import paths

Forward = Callable  # images (N, 3, 32, 32) to logits, float or integer


def float_model(model_name: str) -> Forward:
    from quantlab.architecture import load_state
    from quantlab.model import load_model

    return load_model(load_state(paths.model(model_name), model_name))


def dequantized_weights() -> Forward:
    from quantlab.model import load_model
    from quantlab.quantize.network import QuantizedNetwork

    return load_model(QuantizedNetwork.load(paths.quantized("float")).dequantized_state())


def float_rescale(model_name: str, bias: str = "int32") -> Forward:
    from quantlab.inference.float_rescale import FloatRescaleNet
    from quantlab.quantize.network import QuantizedNetwork

    return FloatRescaleNet(QuantizedNetwork.load(paths.quantized(model_name)), bias=bias)


def fixed_point_engine(model_name: str = "float") -> Forward:
    from quantlab.inference import export_format
    from quantlab.inference.engine import FixedPointEngine

    return FixedPointEngine(*export_format.read(paths.export(model_name)))


@dataclass(frozen=True)
class Variant:
    name: str  # its key in metrics/accuracy.json and evaluation/*.npz
    label: str  # how the report names it
    reference: str | None  # the float variant it is measured against; None: a float model, evaluate_float's
    build: Callable[[], Forward]


VARIANTS = (
    Variant("float", "float model", None, partial(float_model, "float")),
    Variant("quant_weights", "weights quantized", "float", dequantized_weights),
    Variant("quant_weights_activations", "weights and activations quantized", "float",
            partial(float_rescale, "float")),
    Variant("bias_float", "float model, bias in fc3", None, partial(float_model, "bias")),
    Variant("bias_quant_raw_bias", "quantized, bias added unscaled", "bias_float",
            partial(float_rescale, "bias", "raw")),
    Variant("bias_quant", "quantized, int32 bias", "bias_float", partial(float_rescale, "bias")),
    Variant("integer_engine", "integer engine, fixed-point rescale", "float", fixed_point_engine),
)
BY_NAME = {variant.name: variant for variant in VARIANTS}
FLOAT = tuple(variant for variant in VARIANTS if variant.reference is None)
QUANTIZED = tuple(variant for variant in VARIANTS if variant.reference is not None)
# The float-rescale variant the engine is compared with (the same network, rescaled with a float M).
ENGINE_REFERENCE = "quant_weights_activations"
