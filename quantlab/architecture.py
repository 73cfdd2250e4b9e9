"""The lab's network as data: its layers in order, its activation tensors and the two models it trains.

Kept free of PyTorch so that the stages that only handle numbers (calibration, weight and bias
quantization) start in a fraction of a second; `quantlab.model` builds the network from this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantlab.errors import UserError


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # "conv" or "fc"
    relu: bool  # ReLU after the layer
    pool: bool  # 2x2 max pool after the ReLU


LAYERS = (
    Layer("conv1", "conv", relu=True, pool=True),
    Layer("conv2", "conv", relu=True, pool=True),
    Layer("fc1", "fc", relu=True, pool=False),
    Layer("fc2", "fc", relu=True, pool=False),
    Layer("fc3", "fc", relu=False, pool=False),
)
LAYER_NAMES = tuple(layer.name for layer in LAYERS)
# Activation tensors, in order: the network input, then every layer's output after its ReLU.
ACTIVATIONS = ("input", *LAYER_NAMES)
# Which model has a bias in fc3: the lab trains both.
MODELS = {"float": False, "bias": True}


def input_of(layer_name: str) -> str:
    """The activation entering a layer (pooling does not change scales)."""
    return ACTIVATIONS[ACTIVATIONS.index(layer_name) - 1]


def model_name_argument(argv: list[str], stage: str) -> str:
    """The one command-line argument of a per-model stage: a name in MODELS."""
    if len(argv) != 2 or argv[1] not in MODELS:
        raise UserError(f"usage: python -m stages.{stage} MODEL, where MODEL is one of {', '.join(MODELS)}")
    return argv[1]
