"""The lab's network as data: its layers in order, their sizes and shapes, its activation tensors and the two
models it trains.

Kept free of PyTorch so that the stages that only handle numbers (calibration, quantization, export) start in
a fraction of a second; `quantlab.model` builds the network from this table.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from quantlab.errors import UserError
from quantlab.io import load_npz

INPUT_SHAPE = (3, 32, 32)  # channels, height, width of a CIFAR-10 image


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # "conv" or "fc"
    inputs: int  # input channels (conv) or features (fc)
    outputs: int  # output channels or features
    kernel: int  # the conv's square kernel size; 0 for fc
    relu: bool  # ReLU after the layer
    pool: bool  # 2x2 max pool after the ReLU

    @property
    def weight_shape(self) -> tuple[int, ...]:
        kernel = (self.kernel, self.kernel) if self.kind == "conv" else ()
        return (self.outputs, self.inputs, *kernel)


LAYERS = (
    Layer("conv1", "conv", 3, 12, kernel=5, relu=True, pool=True),
    Layer("conv2", "conv", 12, 32, kernel=3, relu=True, pool=True),
    Layer("fc1", "fc", 32 * 6 * 6, 256, kernel=0, relu=True, pool=False),
    Layer("fc2", "fc", 256, 64, kernel=0, relu=True, pool=False),
    Layer("fc3", "fc", 64, 10, kernel=0, relu=False, pool=False),
)
LAYER_NAMES = tuple(layer.name for layer in LAYERS)
# Activation tensors, in order: the network input, then every layer's output after its ReLU.
ACTIVATIONS = ("input", *LAYER_NAMES)
# The models the lab trains, and the layers that have a bias in each: fc3 in the "bias" model.
MODELS = {"float": frozenset(), "bias": frozenset({LAYERS[-1].name})}
POOL = 2  # the max pools' window and stride


FLOAT32_MAX = float(np.finfo(np.float32).max)
MODEL_LIMIT = 16 * 2 ** 20  # bytes of a model's .npz, checked before reading: this network's weights are 1.3 MB


def activation_bounds(state: dict[str, np.ndarray]) -> dict[str, float]:
    """How large each layer's outputs can grow, for any input: |x| <= 1 at the input (normalized pixels), and a
    layer's |output| <= max over its outputs o of sum_j |W[o, j]| times its input's bound, plus its largest
    |bias| (ReLU and max pooling only shrink it). Every partial sum of the layer is within the bound too."""
    bounds, bound = {}, 1.0
    for layer in LAYERS:
        weight = state[f"{layer.name}.weight"].astype(np.float64)
        bias = state.get(f"{layer.name}.bias")
        bound = float(np.abs(weight).reshape(len(weight), -1).sum(axis=1).max()) * bound + \
            (0.0 if bias is None else float(np.abs(bias).max()))
        bounds[layer.name] = bound
    return bounds


def load_state(path: str | Path, model_name: str) -> dict[str, np.ndarray]:
    """The float weights of model `model_name` (.npz), checked once, here, against the architecture: exactly
    its layers' names and shapes, float32, finite (a diverged or damaged checkpoint is refused), and small enough
    that no input can overflow float32's forward pass (`activation_bounds`)."""
    state = load_npz(path, limit=MODEL_LIMIT)
    expected = {f"{layer.name}.weight": layer.weight_shape for layer in LAYERS}
    expected |= {f"{layer.name}.bias": (layer.outputs,) for layer in LAYERS if layer.name in MODELS[model_name]}
    for name, array in state.items():
        if name not in expected or array.shape != expected[name] or array.dtype != np.float32:
            layout = ", ".join(f"{key} {shape}" for key, shape in expected.items())
            raise UserError(f"{path}: {name} of shape {array.shape} ({array.dtype}) is not a weight of the "
                            f"{model_name} model ({layout}, float32): retrain it")
        if not np.isfinite(array).all():
            raise UserError(f"{path}: {name} holds NaN or infinite values; retrain it with `dvc repro -f` "
                            f"(and a lower learning rate if training diverged)")
    missing = [name for name in expected if name not in state]
    if missing:
        raise UserError(f"{path}: {missing[0]} is missing from the {model_name} model's weights: retrain it")
    layer, bound = next(((name, b) for name, b in activation_bounds(state).items() if not b <= FLOAT32_MAX),
                        (None, 0.0))
    if layer is not None:
        raise UserError(f"{path}: {layer}'s outputs can reach {bound:.3g}, beyond float32's {FLOAT32_MAX:.3g}: "
                        f"these are not trained weights of this network; retrain it with `dvc repro -f`")
    return state


def input_of(layer_name: str) -> str:
    """The activation entering a layer (pooling does not change scales)."""
    return ACTIVATIONS[ACTIVATIONS.index(layer_name) - 1]


class Step(NamedTuple):
    """One row of the lab's Table I: a conv/fc layer or a max pool ("pool"), its input and output shapes."""

    name: str
    kind: str
    input: tuple[int, ...]
    output: tuple[int, ...]
    relu: bool


def shapes() -> list[Step]:
    """The rows of the lab's Table I: every layer and max pool in order, with integer shapes: (C, H, W) for
    images, (features,) for fc."""
    rows, shape = [], INPUT_SHAPE
    for layer in LAYERS:
        size = shape[-1] - layer.kernel + 1
        output = (layer.outputs, size, size) if layer.kind == "conv" else (layer.outputs,)
        rows.append(Step(layer.name, layer.kind, (layer.inputs,) if layer.kind == "fc" else shape, output, layer.relu))
        shape = output
        if layer.pool:
            shape = (output[0], output[1] // POOL, output[2] // POOL)
            rows.append(Step(f"pool{layer.name[-1]}", "pool", output, shape, relu=False))
    return rows


def model_name_argument(argv: list[str], stage: str) -> str:
    """The one command-line argument of a per-model stage: a name in MODELS."""
    if len(argv) != 2 or argv[1] not in MODELS:
        raise UserError(f"usage: python -m stages.{stage} MODEL, where MODEL is one of {', '.join(MODELS)}")
    return argv[1]
