"""A small network with minmax activation scales measured on random inputs, for the integer-path tests."""

import torch

from quantlab.quant import activation_quantization, activation_signs, activation_widths


def minmax_activations(net, x: torch.Tensor, bits: int = 8, unsigned: bool = False,
                       logit_bits: int | None = None) -> dict:
    """What quantize_activations stores, with thresholds from the actual ranges of `net` on `x`."""
    absmax = {}

    def record(name, h):
        absmax[name] = h.abs().max().item()
        return h

    with torch.no_grad():
        net(x, record)
    return activation_quantization("minmax", absmax, activation_widths(bits, logit_bits), activation_signs(unsigned))
