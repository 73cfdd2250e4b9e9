"""A small network with minmax activation scales measured on random inputs, for the integer-path tests."""

import torch

from quantlab.quant import activation_signs, int_range


def minmax_activations(net, x: torch.Tensor, bits: int = 8, unsigned: bool = False) -> dict:
    """What quantize_activations stores, with thresholds from the actual ranges of `net` on `x`."""
    absmax = {}

    def record(name, h):
        absmax[name] = h.abs().max().item()
        return h

    with torch.no_grad():
        net(x, record)
    signs = activation_signs(unsigned)
    return {"calib": "minmax", "bits": bits, "signed": signs, "thresholds": absmax,
            "scales": {name: absmax[name] / int_range(bits, signs[name])[1] for name in signs}}
