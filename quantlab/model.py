"""The lab's network, whole, and the layer walk that every forward pass of the project shares.

    layer  type             input     output    activation
    conv1  convolution 5x5  3x32x32   12x28x28  ReLU
    pool1  max pool 2       12x28x28  12x14x14  -
    conv2  convolution 3x3  12x14x14  32x12x12  ReLU
    pool2  max pool 2       32x12x12  32x6x6    -
    fc1    fully connected  1152      256       ReLU
    fc2    fully connected  256       64        ReLU
    fc3    fully connected  64        10        -

The sizes come from `quantlab.architecture.LAYERS`. No trained layer has a bias, except fc3 in the "bias" model of
the lab's last section. The float forward, the profiling taps, the float-rescale forward and
quantization-aware training all walk `LAYERS` through `walk()`, so they cannot disagree about the order of
ReLU, pooling and flattening.
"""

from collections.abc import Callable
from functools import reduce

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quantlab.architecture import LAYERS, POOL, Layer


def max_pool(x: torch.Tensor, size: int = POOL) -> torch.Tensor:
    """F.max_pool2d(x, size), bit for bit, gradient included. Without autograd: the maximum over each window's
    rows, then over its columns, on strided views, 4-15x faster on the CPU than max_pool2d (NCHW or channels
    last). With autograd: `_MaxPoolWithGradient`."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _MaxPoolWithGradient.apply(x, size)
    height, width = x.shape[-2] // size * size, x.shape[-1] // size * size
    rows = reduce(torch.maximum, (x[..., i:height:size, :width] for i in range(size)))
    return reduce(torch.maximum, (rows[..., j::size] for j in range(size)))


class _MaxPoolWithGradient(torch.autograd.Function):
    """F.max_pool2d for training, 2-4x faster on the CPU for NCHW inputs: ATen's NCHW max-pool kernel is about
    7x slower than its channels-last one, so the forward runs on a channels-last copy, and the backward is
    ATen's own scatter of each window's gradient to its first maximum. A maximum and a scatter round nothing:
    values and gradients are max_pool2d's bit for bit, on any CPU."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int) -> torch.Tensor:
        pooled, index = F.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), size)
        ctx.save_for_backward(x, index.contiguous())
        ctx.size = size
        return pooled.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, index = ctx.saved_tensors
        window = [ctx.size] * 2
        return torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, window, window, [0, 0], [1, 1],
                                                               False, index), None


def layer_output(layer: Layer, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A conv or fc layer's output before its ReLU."""
    return (F.conv2d if layer.kind == "conv" else F.linear)(x, weight, bias)


def walk(x: torch.Tensor, apply: Callable[[Layer, torch.Tensor], torch.Tensor],
         tap: Callable[[str, torch.Tensor], torch.Tensor] | None = None, fused: bool = False) -> torch.Tensor:
    """Run the network: `apply(layer, x)` computes each conv/fc layer; `tap(name, x)` sees (and may replace)
    the input and every layer's output after its ReLU, before pooling. With `fused=True`, `apply` does the
    layer's ReLU and max pooling itself."""
    if tap:
        x = tap("input", x)
    for layer in LAYERS:
        if layer.kind == "fc":
            x = x.flatten(1)
        x = apply(layer, x)
        pool = layer.pool and not fused
        if pool and not tap:  # max commutes with ReLU, gradient included: pooled first, the ReLU sees a quarter
            x, pool = max_pool(x), False
        if layer.relu and not fused:
            x = F.relu(x)
        if tap:
            x = tap(layer.name, x)
        if pool:
            x = max_pool(x)
    return x


class Net(nn.Module):
    """The layers of `LAYERS`, as torch modules of the same names; a bias in the layers named in `biased`
    (`MODELS` names them for the trained models; every layer whose bias a post-training correction set)."""

    def __init__(self, biased: frozenset[str] = frozenset()):
        super().__init__()
        for layer in LAYERS:
            bias = layer.name in biased
            setattr(self, layer.name, nn.Conv2d(layer.inputs, layer.outputs, layer.kernel, bias=bias)
                    if layer.kind == "conv" else nn.Linear(layer.inputs, layer.outputs, bias=bias))

    def forward(self, x: torch.Tensor, tap=None) -> torch.Tensor:
        return walk(x, lambda layer, h: getattr(self, layer.name)(h), tap)


def state_to_arrays(model: Net) -> dict[str, np.ndarray]:
    return {name: tensor.detach().cpu().numpy() for name, tensor in model.state_dict().items()}


def load_model(arrays: dict[str, np.ndarray]) -> Net:
    """The network holding `arrays`, a state with a bias wherever it has one."""
    model = Net(biased=frozenset(name.split(".")[0] for name in arrays if name.endswith(".bias")))
    model.load_state_dict({name: torch.from_numpy(array) for name, array in arrays.items()})
    return model.eval()

