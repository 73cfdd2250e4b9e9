"""Post-training techniques for low-bit weights: cross-layer equalization, bias correction, learned rounding.

    equalization      (Nagel et al. 2019, "Data-Free Quantization", section 4.1) positive per-channel scales
                      commute with ReLU and max pooling: relu(x / s) = relu(x) / s. Dividing output channel i
                      of one layer by s_i and multiplying the matching input channel(s) of the next layer by
                      s_i leaves the float network's function unchanged; s_i = sqrt(r1_i r2_i) / r2_i, with
                      r1_i, r2_i the ranges (max |W|) of the channel in the two layers, gives both the range
                      sqrt(r1_i r2_i). Every consecutive pair (conv1-conv2, conv2-fc1, fc1-fc2, fc2-fc3) is
                      equalized in turn, repeated until the scales stop changing. fc1's input channel i is
                      conv2's output channel i at its 6 x 6 positions.
    bias correction   (ibid., section 4.2, empirical) quantized weights shift each layer's expected output:
                      E[W~ x~] - E[W x] != 0, with W~, x~ the quantized weights and the quantized network's
                      input to the layer, x the float network's. That error, measured per output channel on
                      the calibration images, is subtracted from the layer's bias, which becomes an int32
                      bias on the accumulator's scale, like fc3's.
    learned rounding  (AdaRound, Nagel et al. 2020, arXiv:2004.10568) each weight is rounded down or up, not to
                      the nearest: W~ = S clamp(floor(W / S) + h(V), qmin, qmax), h(V) = clamp(sigmoid(V)
                      (zeta - gamma) + gamma, 0, 1), zeta = 1.1, gamma = -0.1. V minimizes, per layer and in
                      order, || f(W x) - f(W~ x~) ||^2 + lambda sum(1 - |2 h(V) - 1|^beta) over batches of the
                      calibration images (the asymmetric variant: x~ from the already quantized layers before,
                      f the layer's ReLU), beta annealed from 20 to 2 after a warm-up with no regularizer,
                      lambda = 0.01, Adam; then each weight takes floor or floor + 1 as h(V) >= 1/2.

The layers are taken in order so that each one sees the inputs the quantized network will give it. The
registry of the techniques, which says which hook each one is and when it applies, is
quantlab.quantize.techniques.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from quantlab.architecture import LAYERS, Layer
from quantlab.config import PTQParams
from quantlab.data import normalize
from quantlab.errors import UserError
from quantlab.model import layer_output, load_model, max_pool
from quantlab.profiling import TensorProfile, profile_model
from quantlab.quantize.calibration import Calibrator
from quantlab.quantize.network import Provenance, QuantizedNetwork, activations_of, quantize_network
from quantlab.quantize.symmetric import channel_shaped, int_range, quantize, weight_scale

ZETA, GAMMA = 1.1, -0.1  # AdaRound's stretch of the sigmoid, so that h reaches 0 and 1 exactly
REGULARIZER = 0.01  # lambda
BETA = (20.0, 2.0)  # the regularizer's exponent, annealed from the first to the second
WARM_UP = 0.2  # the share of iterations without the regularizer


def channel_ranges(weight: np.ndarray, axis: int, channels: int) -> np.ndarray:
    """max |W| of each of `channels` channels along `axis` (0: output channels; 1: input channels, where
    fc1's 1152 inputs are conv2's 32 channels at 6 x 6 positions each)."""
    magnitude = np.abs(weight)
    if axis == 0:
        return magnitude.reshape(channels, -1).max(axis=1)
    return magnitude.reshape(len(weight), channels, -1).max(axis=(0, 2))


def equalize(state: dict[str, np.ndarray], iterations: int = 100, tolerance: float = 1e-6,
             layers: tuple[Layer, ...] = LAYERS) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The state with every consecutive pair of `layers` equalized (see the module docstring), and the total
    scale s of every layer's output channels (the float network's outputs there are divided by s)."""
    # Every layer but the last must feed the next through ReLU or nothing and max pooling (positive scales
    # commute with those), and the next layer's inputs must be its channels, each at the same number of positions.
    for first, second in zip(layers[:-1], layers[1:], strict=True):
        if second.inputs % first.outputs:
            raise UserError(f"ptq.equalize cannot scale {first.name} -> {second.name}: {second.name}'s "
                            f"{second.inputs} inputs are not {first.name}'s {first.outputs} channels at equal "
                            f"numbers of positions; set ptq.equalize: false")
    state = {name: value.astype(np.float64) for name, value in state.items()}
    totals = {layer.name: np.ones(layer.outputs) for layer in layers[:-1]}
    for _ in range(iterations):
        largest = 0.0
        for first, second in zip(layers[:-1], layers[1:], strict=True):
            w1, w2 = state[f"{first.name}.weight"], state[f"{second.name}.weight"]
            r1 = channel_ranges(w1, 0, first.outputs)
            r2 = channel_ranges(w2, 1, first.outputs)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 * r2) / np.where(r2 > 0, r2, 1), 1.0)
            state[f"{first.name}.weight"] = w1 / channel_shaped(s, w1.ndim, 0)
            if f"{first.name}.bias" in state:
                state[f"{first.name}.bias"] = state[f"{first.name}.bias"] / s
            grouped = w2.reshape(w2.shape[0], first.outputs, -1) * s[None, :, None]
            state[f"{second.name}.weight"] = grouped.reshape(w2.shape)
            totals[first.name] *= s
            largest = max(largest, float(np.abs(np.log(s)).max()))
        if largest < tolerance:
            break
    return {name: value.astype(np.float32) for name, value in state.items()}, totals


def range_spread(state: dict[str, np.ndarray]) -> dict[str, float]:
    """Per layer, the largest over the smallest nonzero output-channel range max |W_i|: what one per-tensor
    scale must cover. 1 is a perfectly equalized layer."""
    ranges = {layer.name: channel_ranges(state[f"{layer.name}.weight"], 0, layer.outputs) for layer in LAYERS}
    return {name: float(r.max() / r[r > 0].min()) for name, r in ranges.items()}


def next_input(layer: Layer, output: torch.Tensor, quantize_activation=None) -> torch.Tensor:
    """The input of the layer after `layer` from its pre-ReLU output, in the order of quantlab.model.walk:
    ReLU, the activation's quantization (`quantize_activation`, for the quantized network), pooling; flattened
    before a fully connected layer."""
    x = F.relu(output) if layer.relu else output
    if quantize_activation is not None:
        x = quantize_activation(x)
    if layer.pool:
        x = max_pool(x)
    following = LAYERS.index(layer) + 1
    return x.flatten(1) if following < len(LAYERS) and LAYERS[following].kind == "fc" else x


def soft_rounding(v: torch.Tensor) -> torch.Tensor:
    """h(V) in [0, 1]."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def adaround(layer: Layer, weight: torch.Tensor, scale: torch.Tensor, bits: int, bias: torch.Tensor | None,
             x_quant: torch.Tensor, target: torch.Tensor, ptq: PTQParams,
             generator: torch.Generator) -> torch.Tensor:
    """The layer's integer weights (float64 holding integers), each floor(W / S) or floor(W / S) + 1, learned
    as in the module docstring; S: the weight scale, shaped to broadcast over the weight; `target`: the float
    network's output of the layer, after its ReLU, for the quantized network's inputs `x_quant`."""
    qmin, qmax = int_range(bits)
    ratio = weight / scale
    floor = torch.floor(ratio)
    rest = (ratio - floor).clamp(1e-4, 1 - 1e-4)  # h(V) = rest at the start: W~ = W inside the range
    v = torch.logit((rest - GAMMA) / (ZETA - GAMMA)).float().requires_grad_()
    optimizer = torch.optim.Adam([v], lr=ptq.lr)
    floor, scale = floor.float(), scale.float()
    warm_up = int(WARM_UP * ptq.iterations)
    for step in range(ptq.iterations):
        batch = torch.randint(len(x_quant), (ptq.batch_size,), generator=generator)
        h = soft_rounding(v)
        output = layer_output(layer, x_quant[batch], torch.clamp(floor + h, qmin, qmax) * scale, bias)
        loss = ((F.relu(output) if layer.relu else output) - target[batch]).square().flatten(1).sum(1).mean()
        if step >= warm_up:
            progress = (step - warm_up) / max(ptq.iterations - warm_up, 1)
            beta = BETA[1] + 0.5 * (BETA[0] - BETA[1]) * (1 + math.cos(math.pi * progress))
            loss = loss + REGULARIZER * (1 - (2 * h - 1).abs().pow(beta)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return torch.clamp(floor + (soft_rounding(v) >= 0.5), qmin, qmax).double()


def correct_bias(layer: Layer, output: torch.Tensor, target: torch.Tensor,
                 bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bias correction: the layer's bias less its mean output error per output channel, and its output so corrected."""
    shift = (output - target).transpose(0, 1).flatten(1).double().mean(1)  # per output channel
    bias = (torch.zeros(layer.outputs) if bias is None else bias) - shift.float()
    return bias, output - channel_shaped(shift.float(), output.ndim, 1)


def reconstruct(state: dict[str, np.ndarray], quantize_activation, weight_bits: dict[str, int], per_channel: bool,
                images: torch.Tensor, techniques: tuple, ptq: PTQParams, seed: int) -> tuple[dict, dict, dict]:
    """Every layer's weights, at its `weight_bits`, rounded by the rounding technique of `techniques` (nearest
    without one) and its bias corrected by its correcting techniques, layer by layer on the calibration `images`
    (normalized floats); `ptq`: the settings of AdaRound's optimization. `quantize_activation(name, x)`
    fake-quantizes the activation `name` as the quantized network will (scale times integers). Returns the float
    state with the corrected biases (quantized to int32 on the accumulator's scale like any bias), every layer's
    integer weights (int8), and per layer the mean squared error of its output against the float network's, with
    nearest rounding and no correction ("nearest") and after the techniques ("final")."""
    generator = torch.Generator().manual_seed(seed)
    x_float = images.float()
    x_quant = quantize_activation("input", x_float)
    corrected, integers, errors = dict(state), {}, {}
    for layer in LAYERS:
        weight = torch.from_numpy(state[f"{layer.name}.weight"])
        bias = state.get(f"{layer.name}.bias")
        bias = None if bias is None else torch.from_numpy(bias).float()
        bits = weight_bits[layer.name]
        shaped = channel_shaped(weight_scale(weight, bits, per_channel), weight.ndim, 0)
        nearest = quantize(weight.double(), shaped, bits)
        with torch.no_grad():
            target = layer_output(layer, x_float, weight, bias)
            output = layer_output(layer, x_quant, (nearest * shaped).float(), bias)
            errors[layer.name] = {"nearest": mse(output, target)}
        rounded = [q for technique in techniques if (q := technique.round(
            layer, weight.double(), shaped, bits, bias, x_quant, F.relu(target) if layer.relu else target,
            ptq, generator)) is not None]
        q = rounded[0] if rounded else nearest
        with torch.no_grad():
            if q is not nearest:
                output = layer_output(layer, x_quant, (q * shaped).float(), bias)
            for technique in techniques:
                bias, output = technique.correct(layer, output, target, bias)
            errors[layer.name]["final"] = mse(output, target)
            x_float = next_input(layer, target)
            x_quant = next_input(layer, output, lambda x, name=layer.name: quantize_activation(name, x))
        integers[layer.name] = q.numpy().astype(np.int8)
        if bias is not None:
            corrected[f"{layer.name}.bias"] = bias.numpy()
    return corrected, integers, errors


def mse(output: torch.Tensor, target: torch.Tensor) -> float:
    return float((output - target).double().square().mean())


@dataclass(frozen=True)
class Prepared:
    """The float network the techniques start from: its state (after the prepare phase), the activation profiles
    of that state, the calibration images (normalized) and, per layer, the weight-range spread before any
    preparation."""

    state: dict[str, np.ndarray]
    profiles: dict[str, TensorProfile]
    images: torch.Tensor
    spread: dict[str, float]


def prepare(state: dict[str, np.ndarray], images: np.ndarray, profiles: dict[str, TensorProfile],
            techniques: tuple, bins: int) -> Prepared:
    """The start of `apply_techniques` from the calibration `images` (uint8) and their activation `profiles`:
    where `techniques` has a prepare phase, the state is prepared and profiled again with `bins` bins (the
    thresholds follow the scaled channels). It depends on no bit width, so one serves every setting."""
    spread = range_spread(state)
    images = normalize(torch.from_numpy(images))
    prepared = state
    for technique in techniques:
        prepared = technique.prepare(prepared)
    if prepared is not state:
        state = prepared
        with torch.no_grad():
            profiles = profile_model(load_model(state), images, bins)["activations"]
    return Prepared(state, profiles, images, spread)


def apply_techniques(start: Prepared, method: Calibrator, widths: dict[str, int], signs: dict[str, bool],
                     weight_bits: dict[str, int], per_channel: bool, techniques: tuple, ptq: PTQParams, seed: int,
                     provenance: Provenance) -> tuple[QuantizedNetwork, dict[str, dict[str, float]]]:
    """The network quantized from `start` (`prepare` with the same `techniques`), with the activations calibrated
    on its state, after the rounding and correcting `techniques`; and, per layer, the weight-range spread before
    and after equalization and the output's mean squared error with nearest rounding and after the techniques.
    The layers are reconstructed on the first `ptq.images` calibration images, or all if there are fewer
    (AdaRound's paper uses 1024: the error of a layer's mean output is well measured on far fewer images than
    a histogram's tails need)."""
    activations = activations_of(method.thresholds(start.profiles, widths, signs), widths, signs)

    def quantize_activation(name: str, x: torch.Tensor) -> torch.Tensor:
        a = activations[name]
        return (quantize(x.double(), a.scale, a.bits, a.signed) * a.scale).float()

    state, integers, errors = reconstruct(start.state, quantize_activation, weight_bits, per_channel,
                                          start.images[:ptq.images], techniques, ptq, seed)
    after = range_spread(start.state)
    diagnostics = {name: {"spread_before": start.spread[name], "spread_after": after[name], **layer_errors}
                   for name, layer_errors in errors.items()}
    return quantize_network(state, activations, weight_bits, per_channel, provenance, integers), diagnostics
