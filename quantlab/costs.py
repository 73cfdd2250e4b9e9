"""What a quantized network costs, by the definitions of AIMET's mixed precision and HAWQ-V3:

    size    sum over layers of weights x weight bits: the bits of the packed integer weights. In bytes: each
            layer's weights packed at their bits and rounded up to whole bytes, plus 4 bytes per int32 bias
    BOPs    sum over layers of MACs x weight bits x input bits: the bit operations of one image's forward
            pass, a multiply-accumulate of a b_w-bit weight and a b_a-bit input counting b_w b_a

`relative` gives both as fractions of the same network at uniform 8/8, the reference every budget refers to.
"""

import math
from dataclasses import dataclass

import numpy as np

from quantlab.architecture import LAYERS, input_of, shapes

REFERENCE_BITS = 8  # the uniform width that sizes and BOPs are relative to


def weights() -> dict[str, int]:
    """Weights per layer: conv1 900, conv2 3456, fc1 294,912, fc2 16,384, fc3 640."""
    return {layer.name: math.prod(layer.weight_shape) for layer in LAYERS}


def macs() -> dict[str, int]:
    """Multiply-accumulates per layer for one image: every output value sums its layer's inputs times kernel
    (conv1 12 x 28 x 28 x 75 = 705,600)."""
    rows = {step.name: step for step in shapes()}
    return {layer.name: math.prod(rows[layer.name].output) * layer.inputs * max(layer.kernel, 1) ** 2
            for layer in LAYERS}


@dataclass(frozen=True)
class Cost:
    bits: int  # weight bits in total
    bytes: int  # the packed weights and the int32 biases
    bops: int  # bit operations per image


def cost(weight_bits: dict[str, int], input_bits: dict[str, int], biases: int = 0) -> Cost:
    """The cost of a network whose layers hold `weight_bits` and read inputs of `input_bits` (both per layer),
    with `biases` int32 biases in all."""
    counts, operations = weights(), macs()
    return Cost(sum(counts[name] * bits for name, bits in weight_bits.items()),
                sum(math.ceil(counts[name] * bits / 8) for name, bits in weight_bits.items()) + 4 * biases,
                sum(operations[name] * weight_bits[name] * input_bits[name] for name in weight_bits))


def of_network(network) -> Cost:
    """The cost of a quantlab.quantize.network.QuantizedNetwork."""
    return cost(network.weight_bits, {name: network.activations[input_of(name)].bits for name in network.weight_bits},
                sum(len(layer.q_bias) for layer in network.layers.values() if layer.q_bias is not None))


REFERENCE = cost(dict.fromkeys(weights(), REFERENCE_BITS), dict.fromkeys(weights(), REFERENCE_BITS))


def relative(weight_bits: np.ndarray, input_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Size and BOPs as fractions of uniform 8/8 for many configurations at once: `weight_bits` and `input_bits`
    of shape (configurations, layers), the layers in the order of LAYERS."""
    counts = np.array(list(weights().values()), np.int64)
    operations = np.array(list(macs().values()), np.int64)
    return weight_bits @ counts / REFERENCE.bits, (weight_bits * input_bits) @ operations / REFERENCE.bops
