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
    block reconstruction  (BRECQ, Li et al. 2021, arXiv:2102.05426; QDrop, Wei et al. 2022, arXiv:2203.05740)
                      the same variables for every layer of a block of consecutive layers, learned together with
                      the log step sizes of the activations quantized in the block, against the block output's
                      Fisher-weighted error; QDrop drops each activation's quantization at random while it learns
                      (`block_wise`).

The layers are taken in order so that each one sees the inputs the quantized network will give it. The
registry of the techniques, which says which hook each one is and when it applies, is
quantlab.quantize.techniques.
"""

import dataclasses
import math
from collections.abc import Callable
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
from quantlab.quantize.network import Activation, Provenance, QuantizedNetwork, activations_of, quantize_network
from quantlab.quantize.qat import learned_step_quantize
from quantlab.quantize.symmetric import channel_shaped, int_range, quantize, weight_scales
from quantlab.quantize.techniques import ROUND

ZETA, GAMMA = 1.1, -0.1  # AdaRound's stretch of the sigmoid, so that h reaches 0 and 1 exactly
REGULARIZER = 0.01  # lambda
BETA = (20.0, 2.0)  # the regularizer's exponent, annealed from the first to the second
WARM_UP = 0.2  # the share of iterations without the regularizer
STEP_LR = 1e-3  # block reconstruction: Adam's learning rate of the activations' log step sizes


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
    floor, v = rounding_variables(weight, scale)
    optimizer = torch.optim.Adam([v], lr=ptq.lr)
    floor, scale = floor.float(), scale.float()
    for step in range(ptq.iterations):
        batch = torch.randint(len(x_quant), (ptq.batch_size,), generator=generator)
        h = soft_rounding(v)
        output = layer_output(layer, x_quant[batch], torch.clamp(floor + h, qmin, qmax) * scale, bias)
        loss = ((F.relu(output) if layer.relu else output) - target[batch]).square().flatten(1).sum(1).mean()
        loss = loss + regularizer([h], step, ptq.iterations)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return hard_rounding(floor, v, bits)


def rounding_variables(weight: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """floor(W / S) (float64) and the variables V (float32, trained) with h(V) = W / S - floor(W / S) at the
    start, so that the soft weight S clamp(floor + h(V)) is W inside the range."""
    ratio = weight / scale
    floor = torch.floor(ratio)
    rest = (ratio - floor).clamp(1e-4, 1 - 1e-4)
    return floor, torch.logit((rest - GAMMA) / (ZETA - GAMMA)).float().requires_grad_()


def regularizer(soft: list[torch.Tensor], step: int, iterations: int):
    """lambda sum(1 - |2 h - 1|^beta) over the soft roundings h of `soft` at `step` of `iterations`: 0 during
    the warm-up, then with beta annealed from 20 to 2 on a cosine."""
    warm_up = int(WARM_UP * iterations)
    if step < warm_up:
        return 0
    progress = (step - warm_up) / max(iterations - warm_up, 1)
    beta = BETA[1] + 0.5 * (BETA[0] - BETA[1]) * (1 + math.cos(math.pi * progress))
    return sum(REGULARIZER * (1 - (2 * h - 1).abs().pow(beta)).sum() for h in soft)


def hard_rounding(floor: torch.Tensor, v: torch.Tensor, bits: int) -> torch.Tensor:
    """The integers the learned V round to: floor, or floor + 1 where h(V) >= 1/2 (float64 holding integers)."""
    with torch.no_grad():
        return torch.clamp(floor + (soft_rounding(v) >= 0.5), *int_range(bits)).double()


def correct_bias(layer: Layer, output: torch.Tensor, target: torch.Tensor,
                 bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bias correction: the layer's bias less its mean output error per output channel, and its output so corrected."""
    shift = (output - target).transpose(0, 1).flatten(1).double().mean(1)  # per output channel
    bias = (torch.zeros(layer.outputs) if bias is None else bias) - shift.float()
    return bias, output - channel_shaped(shift.float(), output.ndim, 1)


@dataclass(frozen=True)
class Block:
    """Consecutive layers that a rounding technique reconstructs together, on the calibration images: their float
    weights, weight scales S_W (float64, shaped to broadcast over the weight), weight bits and biases; the
    quantization of each one's output activation; the block's input in the float network and in the quantized
    network (the blocks before it quantized); and `tail`, the float network after the block (its output ->
    the logits)."""

    layers: tuple[Layer, ...]
    weights: dict[str, torch.Tensor]
    scales: dict[str, torch.Tensor]
    bits: dict[str, int]
    biases: dict[str, torch.Tensor | None]
    activations: dict[str, Activation]
    x_float: torch.Tensor
    x_quant: torch.Tensor
    tail: Callable[[torch.Tensor], torch.Tensor]

    def float_weight(self, layer: Layer) -> torch.Tensor:
        return self.weights[layer.name]

    def forward(self, x: torch.Tensor, weight: Callable[[Layer], torch.Tensor],
                activation: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The block's output from its input `x`, with `weight(layer)` as each layer's weight and `activation`
        quantizing each layer's output (None: float), pooled and flattened as the next layer reads it."""
        for layer in self.layers:
            quantize_output = None if activation is None else (lambda v, name=layer.name: activation(name, v))
            x = next_input(layer, layer_output(layer, x, weight(layer), self.biases[layer.name]), quantize_output)
        return x


@dataclass(frozen=True)
class Rounded:
    """What a rounding technique learned for a block: every layer's integer weights (float64 holding integers)
    and, where it learned them, the quantization of the block's activations."""

    integers: dict[str, torch.Tensor]
    activations: dict[str, Activation] = dataclasses.field(default_factory=dict)


def layer_wise(block: Block, ptq: PTQParams, generator: torch.Generator) -> Rounded:
    """AdaRound on a block of one layer: its target is the float layer's output after ReLU, from the float
    network's input, and its input the quantized network's."""
    (layer,) = block.layers
    weight, bias = block.weights[layer.name], block.biases[layer.name]
    with torch.no_grad():
        target = layer_output(layer, block.x_float, weight, bias)
    target = F.relu(target) if layer.relu else target
    return Rounded({layer.name: adaround(layer, weight.double(), block.scales[layer.name], block.bits[layer.name],
                                         bias, block.x_quant, target, ptq, generator)})


def fisher_weights(block: Block, weight: Callable[[Layer], torch.Tensor],
                   activation: Callable[[str, torch.Tensor], torch.Tensor], batch_size: int) -> torch.Tensor:
    """BRECQ's diagonal Fisher weights of the block's output z, per image and element: |dKL/dz| + 1, KL the
    divergence of the network's predicted distribution from the float network's, the block quantized (at its
    starting point) and the layers after it float (BRECQ's `|g| + 1`, so that no element's error is ignored;
    the gradient of one image's KL, whatever the batch)."""
    grads = []
    for start in range(0, len(block.x_quant), batch_size):
        with torch.no_grad():
            expected = F.log_softmax(block.tail(block.forward(block.x_float[start:start + batch_size],
                                                              block.float_weight)), dim=1)
            output = block.forward(block.x_quant[start:start + batch_size], weight, activation)
        output.requires_grad_()
        divergence = (expected.exp() * (expected - F.log_softmax(block.tail(output), dim=1))).sum()
        grads.append(torch.autograd.grad(divergence, output)[0].abs() + 1)
    return torch.cat(grads)


def block_wise(block: Block, drop: float, ptq: PTQParams, generator: torch.Generator) -> Rounded:
    """BRECQ (Li et al. 2021, arXiv:2102.05426) and, with `drop` > 0, QDrop (Wei et al. 2022, arXiv:2203.05740):
    AdaRound's variables of every layer of the block and the log step size of every activation quantized in it
    (LSQ's straight-through gradient), learned together to minimize the Fisher-weighted error of the block's
    output, sum_i F_i (z~_i - z_i)^2 (`fisher_weights`), plus AdaRound's regularizer over all its layers. z~ is
    computed from the quantized network's input to the block, z from the float network's. With `drop`, each
    element of the block's input is the float network's with probability `drop`, and each activation in the
    block skips its quantization with probability `drop` (QDrop's dropping, drawn anew every step); 0 is BRECQ."""
    names = [layer.name for layer in block.layers]
    rounding = {name: rounding_variables(block.weights[name].double(), block.scales[name]) for name in names}
    floors = {name: floor.float() for name, (floor, _) in rounding.items()}
    scales = {name: block.scales[name].float() for name in names}
    log_steps = {name: torch.tensor(math.log(block.activations[name].scale), requires_grad=True) for name in names}

    def soft_weight(layer: Layer) -> torch.Tensor:
        h = soft_rounding(rounding[layer.name][1])
        return torch.clamp(floors[layer.name] + h, *int_range(block.bits[layer.name])) * scales[layer.name]

    def nearest_weight(layer: Layer) -> torch.Tensor:
        return (quantize(block.weights[layer.name].double(), block.scales[layer.name], block.bits[layer.name])
                * block.scales[layer.name]).float()

    def learned_step(name: str, x: torch.Tensor, dropping: float = 0.0) -> torch.Tensor:
        a = block.activations[name]
        q = learned_step_quantize(x, log_steps[name].exp(), *a.range, 1.0)
        return torch.where(torch.rand(x.shape, generator=generator) < dropping, x, q) if dropping else q

    with torch.no_grad():
        target = block.forward(block.x_float, block.float_weight)
    fisher = fisher_weights(block, nearest_weight, learned_step, ptq.batch_size).square()
    optimizer = torch.optim.Adam([v for _, v in rounding.values()], lr=ptq.lr)
    step_optimizer = torch.optim.Adam(list(log_steps.values()), lr=STEP_LR)
    for step in range(ptq.iterations):
        batch = torch.randint(len(block.x_quant), (ptq.batch_size,), generator=generator)
        x = block.x_quant[batch]
        if drop:
            x = torch.where(torch.rand(x.shape, generator=generator) < drop, block.x_float[batch], x)
        output = block.forward(x, soft_weight, lambda name, v: learned_step(name, v, drop))
        loss = ((output - target[batch]).square() * fisher[batch]).flatten(1).sum(1).mean()
        loss = loss + regularizer([soft_rounding(v) for _, v in rounding.values()], step, ptq.iterations)
        optimizer.zero_grad()
        step_optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_optimizer.step()
    activations = {name: dataclasses.replace(a, threshold=math.exp(log_steps[name].item()) * a.range[1])
                   for name in names for a in [block.activations[name]]}
    return Rounded({name: hard_rounding(floor, v, block.bits[name]) for name, (floor, v) in rounding.items()},
                   activations)


def fake_quantize_activation(activation: Activation, x: torch.Tensor) -> torch.Tensor:
    """x as the quantized network carries it: S quantize(x, S), in float32."""
    return (quantize(x.double(), activation.scale, activation.bits, activation.signed) * activation.scale).float()


def reconstruct(state: dict[str, np.ndarray], activations: dict[str, Activation], weight_bits: dict[str, int],
                scales: dict[str, np.ndarray], images: torch.Tensor, techniques: tuple, ptq: PTQParams,
                seed: int) -> tuple[dict, dict, dict, dict]:
    """Every layer's weights, at its `weight_bits` on its weight `scales`, rounded by the rounding technique of
    `techniques` (nearest without one), block by block as it groups the layers, and its bias corrected by the
    correcting techniques, in order on the calibration `images` (normalized floats); `ptq`: the settings of the
    reconstruction. `activations`: how the quantized network quantizes each activation. Returns the float state
    with the corrected biases (quantized to int32 on the accumulator's scale like any bias), every layer's
    integer weights (int8), the activations with those a technique learned, and per layer the mean squared error
    of its output against the float network's, with nearest rounding and no correction ("nearest") and after the
    techniques ("final")."""
    generator = torch.Generator().manual_seed(seed)
    activations = dict(activations)
    rounding = next((t for t in techniques if t.phase == ROUND), None)
    weights = {layer.name: torch.from_numpy(state[f"{layer.name}.weight"]) for layer in LAYERS}
    biases = {layer.name: None if (b := state.get(f"{layer.name}.bias")) is None else torch.from_numpy(b).float()
              for layer in LAYERS}
    shaped = {layer.name: channel_shaped(torch.from_numpy(scales[layer.name]), weights[layer.name].ndim, 0)
              for layer in LAYERS}

    def float_tail(after: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def tail(x: torch.Tensor) -> torch.Tensor:
            for layer in LAYERS[after:]:
                x = next_input(layer, layer_output(layer, x, weights[layer.name], biases[layer.name]))
            return x
        return tail

    x_float = images.float()
    x_quant = fake_quantize_activation(activations["input"], x_float)
    corrected, integers, errors = dict(state), {}, {}
    for layers in (rounding.blocks(ptq) if rounding else tuple((layer,) for layer in LAYERS)):
        names = [layer.name for layer in layers]
        rounded = None if rounding is None else rounding.round(Block(
            layers, {n: weights[n] for n in names}, {n: shaped[n] for n in names}, {n: weight_bits[n] for n in names},
            {n: biases[n] for n in names}, {n: activations[n] for n in names}, x_float, x_quant,
            float_tail(LAYERS.index(layers[-1]) + 1)), ptq, generator)
        if rounded is not None:
            activations |= rounded.activations
        for layer in layers:
            weight, bias, scale = weights[layer.name], biases[layer.name], shaped[layer.name]
            nearest = quantize(weight.double(), scale, weight_bits[layer.name])
            q = nearest if rounded is None else rounded.integers[layer.name]
            with torch.no_grad():
                target = layer_output(layer, x_float, weight, bias)
                output = layer_output(layer, x_quant, (nearest * scale).float(), bias)
                errors[layer.name] = {"nearest": mse(output, target)}
                if q is not nearest:
                    output = layer_output(layer, x_quant, (q * scale).float(), bias)
                for technique in techniques:
                    bias, output = technique.correct(layer, output, target, bias)
                errors[layer.name]["final"] = mse(output, target)
                x_float = next_input(layer, target)
                x_quant = next_input(layer, output, lambda x, a=activations[layer.name]: fake_quantize_activation(a, x))
            integers[layer.name] = q.numpy().astype(np.int8)
            if bias is not None:
                corrected[f"{layer.name}.bias"] = bias.numpy()
    return corrected, integers, activations, errors


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
    scales = weight_scales(start.state, weight_bits, per_channel, ptq.weight_scale)
    state, integers, activations, errors = reconstruct(start.state, activations, weight_bits, scales,
                                                       start.images[:ptq.images], techniques, ptq, seed)
    after = range_spread(start.state)
    diagnostics = {name: {"spread_before": start.spread[name], "spread_after": after[name], **layer_errors}
                   for name, layer_errors in errors.items()}
    return quantize_network(state, activations, weight_bits, per_channel, provenance, integers, scales), diagnostics
