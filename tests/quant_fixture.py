"""Small quantized networks for the integer-path tests: a random model's weights, with minmax activation
thresholds measured on random inputs."""

import numpy as np
import torch

from quantlab.architecture import MODELS
from quantlab.inference.export import integer_network, package, write
from quantlab.inference.fixed_point import GEMMLOWP
from quantlab.inference.float_rescale import FloatRescaleNet
from quantlab.model import Net, state_to_arrays
from quantlab.quantize.network import Provenance, QuantizedNetwork, activations_of, quantize_network
from quantlab.quantize.symmetric import activation_signs, activation_widths, weight_widths

IMAGES = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (64, 3, 32, 32), dtype=np.uint8))


def minmax_thresholds(net, x: torch.Tensor) -> dict[str, float]:
    """The actual range max|x| of every activation of `net` on `x`."""
    absmax = {}

    def record(name, h):
        absmax[name] = h.abs().max().item()
        return h

    with torch.no_grad():
        net(x, record)
    return absmax


def random_network(bits: int = 8, per_channel: bool = False, unsigned: bool = False, logit_bits: int | None = None,
                   model: str = "bias", seed: int = 0, layer_bits: dict | None = None) -> tuple[Net, QuantizedNetwork]:
    """A randomly initialized model and its quantized network, minmax-calibrated on 64 random images; `layer_bits`
    as quant.layer_bits."""
    torch.manual_seed(seed)
    net = Net(MODELS[model])
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    activations = activations_of(minmax_thresholds(net, x), activation_widths(bits, logit_bits, layer_bits),
                                 activation_signs(unsigned))
    state = {name: np.asarray(value) for name, value in state_to_arrays(net).items()}
    provenance = Provenance(model, "minmax", "trained", "random")
    return net, quantize_network(state, activations, weight_widths(bits, layer_bits), per_channel, provenance)


def random_export(tmp_path, bits=8, per_channel=False, unsigned=False, headroom=True, model="bias", seed=0,
                  logit_bits=None, rounding=GEMMLOWP, layer_bits=None):
    """A random network exported to tmp_path/export, and its float-rescale forward."""
    _, network = random_network(bits, per_channel, unsigned, logit_bits, model, seed, layer_bits)
    directory = tmp_path / "export"
    write(directory, *package(*integer_network(network, [str(c) for c in range(10)], headroom, rounding)))
    return directory, FloatRescaleNet(network)
