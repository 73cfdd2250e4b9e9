"""Quantization-aware training with learned ranges: moving averages (Jacob et al. 2017, arXiv:1712.05877,
section 3) or learned step sizes (LSQ, Esser et al. 2020, arXiv:1902.08153).

During fine-tuning, weights and activations pass through fake quantization: the forward pass sees
S * clamp(round(x / S), qmin, qmax), the backward pass lets the gradient through unchanged inside the
representable range [qmin S, qmax S] and stops it outside (the straight-through estimator).

    weights      S_W = max|W| / qmax of the current weights (per tensor or per output channel), as at export
    activations  the `ema` calibration method: T <- decay * T + (1 - decay) * t over the training batches
                 (T = t at the first), S = T / qmax; t is the batch threshold of the method `ranges`:
                 - "minmax": max|x| of the batch, the paper's choice;
                 - "mse": the threshold with the least squared quantization error of the batch, over 64
                   candidates k/64 max|x|, on a seeded sample of 8192 of its values. At 4 bits, max-tracked
                   ranges leave most of the 16 levels to rare large values (as minmax calibration does).
                 Activations are fake-quantized from step `start` on (before it, only T is learned, as the
                 paper delays activation quantization).
    or, with ranges "lsq", each activation's step size S is a trained parameter, initialized from the
                 thresholds of a post-training calibration (`initial`), S = T / qmax. The forward pass is the
                 same fake quantization; S's gradient is d/dS = round(x / S) - x / S inside the range and
                 qmin or qmax beyond it, scaled by 1 / sqrt(n qmax) (n: the tensor's values per image) so
                 that S learns at the pace of the weights. From step `start` on, as above.

The learned thresholds T (for LSQ, S * qmax) are the state of `calib=ema`.

"""

import torch
from torch import nn

from quantlab.architecture import ACTIVATIONS, Layer
from quantlab.model import Net, layer_output, walk
from quantlab.quantize.calibration import EMA, LEARNED_STEP, METHODS
from quantlab.quantize.symmetric import activation_signs, channel_shaped, int_range, quantize, scale_for, weight_scale


class FakeQuantize(torch.autograd.Function):
    """S * quantize(x, S) = S * clamp(round(x / S), qmin, qmax) forward (round half to even); gradient 1 inside
    [qmin S, qmax S] (edges included), 0 beyond."""

    @staticmethod
    def forward(ctx, x, scale, bits, signed):
        qmin, qmax = int_range(bits, signed)
        inside = x >= qmin * scale
        inside &= x <= qmax * scale
        ctx.save_for_backward(inside)
        return quantize(x, scale, bits, signed).mul_(scale)  # in place on quantize's one new tensor

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    return FakeQuantize.apply(x, scale, bits, signed)


def learned_step_quantize(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int,
                          gradient_scale: float) -> torch.Tensor:
    """S clamp(round(x / S), qmin, qmax) with a trained step size S (LSQ): x's gradient as FakeQuantize's; S's,
    round(x / S) - x / S inside the range and qmin or qmax beyond it, times `gradient_scale`."""
    step = (step - step * gradient_scale).detach() + step * gradient_scale  # the value S, the gradient scaled
    q = torch.clamp(x / step, qmin, qmax)
    return ((q.round() - q).detach() + q) * step  # rounded forward, straight through backward


class QATNet(nn.Module):
    """The lab's network with fake-quantized weights and activations and learned activation ranges."""

    def __init__(self, model: Net, weight_bits: int, widths: dict[str, int], per_channel: bool,
                 unsigned_activations: bool, decay: float, start: int, ranges: str = "mse", seed: int = 0,
                 initial: dict[str, float] | None = None):
        """`widths`: the bits of every activation (quantlab.quantize.symmetric.activation_widths); `ranges`:
        a method of quantlab.quantize.calibration.BATCH_STATISTICS, or "lsq" with the `initial` thresholds."""
        super().__init__()
        self.model = model
        self.weight_bits, self.widths, self.per_channel = weight_bits, widths, per_channel
        self.signs = activation_signs(unsigned_activations)
        self.decay, self.start = decay, start
        self.learned_step = ranges == LEARNED_STEP
        if self.learned_step:
            self.step_sizes = nn.Parameter(torch.tensor(
                [float(scale_for(initial[name], widths[name], self.signs[name])) for name in ACTIVATIONS]))
        else:
            self.statistic = METHODS[ranges].batch_threshold
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("thresholds", torch.zeros(len(ACTIVATIONS), dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def weight(self, layer: Layer) -> torch.Tensor:
        weight = getattr(self.model, layer.name).weight
        scale = weight_scale(weight.detach(), self.weight_bits, self.per_channel).to(weight.dtype)
        return fake_quantize(weight, channel_shaped(scale, weight.ndim, 0), self.weight_bits)

    def _layer(self, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        return layer_output(layer, x, self.weight(layer), getattr(self.model, layer.name).bias)

    def _sample(self, values: torch.Tensor, size: int) -> torch.Tensor:
        return values[torch.randint(len(values), (size,), generator=self.generator)]

    def _activation(self, name: str, x: torch.Tensor) -> torch.Tensor:
        index = ACTIVATIONS.index(name)
        bits, signed = self.widths[name], self.signs[name]
        if self.training and not self.learned_step:
            observed = self.statistic(x, bits, signed, self._sample)
            self.thresholds[index] = torch.where(self.steps == 0, observed,
                                                 EMA.average(self.thresholds[index], observed, self.decay))
        if self.training and self.steps < self.start:
            return x
        if self.learned_step:
            qmin, qmax = int_range(bits, signed)
            return learned_step_quantize(x, self.step_sizes[index], qmin, qmax, (x[0].numel() * qmax) ** -0.5)
        return fake_quantize(x, scale_for(self.thresholds[index].to(x.dtype), bits, signed), bits, signed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = walk(x, self._layer, self._activation)
        if self.training:
            self.steps += 1
        return out

    def learned_thresholds(self) -> dict[str, float]:
        if self.learned_step:
            return {name: float(step) * int_range(self.widths[name], self.signs[name])[1]
                    for name, step in zip(ACTIVATIONS, self.step_sizes.tolist(), strict=True)}
        return {name: float(t) for name, t in zip(ACTIVATIONS, self.thresholds.tolist(), strict=True)}

