"""The post-training techniques: equalization keeps the float function, learned rounding only rounds, bias
correction removes each layer's mean output error, and every technique's network runs bit-exactly in the
integer engine."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from quantlab.architecture import LAYERS, Layer
from quantlab.config import PTQParams
from quantlab.errors import UserError
from quantlab.evaluation import Split
from quantlab.inference import export_format, onnx_graph, runner
from quantlab.inference.engine import FixedPointEngine
from quantlab.inference.export import integer_network, package, write
from quantlab.inference.fixed_point import ONNXRUNTIME
from quantlab.inference.float_rescale import FloatRescaleNet
from quantlab.model import Net, layer_output, load_model, state_to_arrays, walk
from quantlab.profiling import profile_model
from quantlab.quantize.calibration import calibrator
from quantlab.quantize.network import Activation, Provenance
from quantlab.quantize.ptq import (
    Block,
    Rounded,
    adaround,
    apply_techniques,
    block_wise,
    equalize,
    fake_quantize_activation,
    layer_wise,
    prepare,
    range_spread,
)
from quantlab.quantize.symmetric import (
    activation_signs,
    activation_widths,
    channel_shaped,
    clipped_weight_scale,
    int_range,
    quantize,
    scale_for,
    weight_scale,
    weight_widths,
)
from quantlab.quantize.techniques import ROUND, TECHNIQUES, Technique, combination_label, switched_on
from quantlab.stage import load_params
from stages.techniques import compare_techniques

IMAGES = np.random.default_rng(0).integers(0, 256, (96, 3, 32, 32), dtype=np.uint8)
PTQ = PTQParams(equalize=False, bias_correction=False, rounding="nearest", iterations=20, batch_size=16, lr=0.01,
                images=1024, weight_scale="max", blocks=[["conv1"], ["conv2"], ["fc1", "fc2", "fc3"]], drop=0.5)


def unbalanced_state(seed: int = 0) -> dict[str, np.ndarray]:
    """A random model whose channels have ranges 100x apart: each output channel of every layer but the last
    scaled by a factor, the matching inputs of the next layer by its inverse (the function is unchanged)."""
    torch.manual_seed(seed)
    state = {name: value.astype(np.float64) for name, value in state_to_arrays(Net()).items()}
    factors = np.random.default_rng(seed)
    for first, second in zip(LAYERS[:-1], LAYERS[1:], strict=True):
        f = 10.0 ** factors.uniform(-1, 1, first.outputs)
        state[f"{first.name}.weight"] *= channel_shaped(f, state[f"{first.name}.weight"].ndim, 0)
        w2 = state[f"{second.name}.weight"]
        state[f"{second.name}.weight"] = (w2.reshape(len(w2), first.outputs, -1) / f[None, :, None]).reshape(w2.shape)
    return {name: value.astype(np.float32) for name, value in state.items()}


def normalized(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float() / 127.5 - 1


def test_equalization_keeps_the_float_logits_and_narrows_every_range_spread():
    state = unbalanced_state()
    equalized, scales = equalize(state)
    x = normalized(IMAGES)
    with torch.no_grad():
        before, after = load_model(state)(x), load_model(equalized)(x)
    assert float((after - before).abs().max() / before.abs().max()) <= 1e-5
    spread_before, spread_after = range_spread(state), range_spread(equalized)
    for layer in LAYERS:
        assert spread_after[layer.name] < spread_before[layer.name], layer.name
    assert all((s > 0).all() for s in scales.values())


def test_equalization_refuses_a_layer_that_is_not_channels_times_positions():
    layers = (Layer("a", "conv", 3, 5, 3, True, False), Layer("b", "fc", 12, 4, 0, False, False))
    state = {"a.weight": np.ones((5, 3, 3, 3), np.float32), "b.weight": np.ones((4, 12), np.float32)}
    with pytest.raises(UserError, match="cannot scale a -> b"):
        equalize(state, layers=layers)


def activations_for(state):
    with torch.no_grad():
        profiles = profile_model(load_model(state), normalized(IMAGES), 256)["activations"]
    return profiles


def techniques(state, ptq, weight_bits=4, activation_bits=8, per_channel=False):
    """The network the techniques of `ptq` quantize (without their diagnostics)."""
    profiles = activations_for(state)
    widths, signs = activation_widths(activation_bits, 8), activation_signs(True)
    on = switched_on(ptq)
    return apply_techniques(prepare(state, IMAGES, profiles, on, 256), calibrator("mse"), widths, signs,
                            weight_widths(weight_bits), per_channel, on, ptq, 0,
                            Provenance("float", "mse", "trained", "random", [t.name for t in on]))[0]


def test_learned_rounding_picks_the_floor_or_the_ceiling_of_every_weight():
    state = unbalanced_state(1)
    network = techniques(state, dataclasses.replace(PTQ, rounding="adaround"), weight_bits=3, per_channel=True)
    changed = 0
    for layer in LAYERS:
        weight = state[f"{layer.name}.weight"].astype(np.float64)
        ratio = weight / channel_shaped(weight_scale(weight, 3, True), weight.ndim, 0)
        q = network.layers[layer.name].weight
        assert np.all((q == np.floor(ratio)) | (q == np.ceil(ratio))), layer.name
        changed += int((q != np.round(ratio)).sum())
    assert changed > 0  # it learned something other than nearest rounding


def test_learned_rounding_reconstructs_a_layer_better_than_nearest():
    layer = LAYERS[3]  # fc2: 256 inputs, 64 outputs
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(layer.outputs, layer.inputs, generator=generator, dtype=torch.float64) / 16
    scale = channel_shaped(torch.as_tensor(weight_scale(weight.numpy(), 3, True)), 2, 0)
    x = torch.rand(512, layer.inputs, generator=generator)
    target = layer_output(layer, x, weight.float(), None).relu()
    learned = adaround(layer, weight, scale, 3, None, x, target,
                       dataclasses.replace(PTQ, rounding="adaround", iterations=200, batch_size=64), generator)

    def error(q):
        return float((layer_output(layer, x, (q * scale).float(), None).relu() - target).square().mean())

    assert error(learned) < 0.8 * error(quantize(weight, scale, 3))


def fc_block(seed: int = 0, bits: int = 2, first: int = 3) -> Block:
    """The fully connected layers from LAYERS[first] on, of a random network, as one block on random inputs
    (fc2-fc3 by default): a fixed small case."""
    generator = torch.Generator().manual_seed(seed)
    layers = LAYERS[first:]
    weights = {layer.name: torch.randn(layer.outputs, layer.inputs, generator=generator) / layer.inputs ** 0.5
               for layer in layers}
    scales = {name: channel_shaped(torch.as_tensor(weight_scale(w.numpy(), bits, True)), 2, 0)
              for name, w in weights.items()}
    x = torch.rand(256, layers[0].inputs, generator=generator)
    activations = {layer.name: Activation(8, layer.relu is False, 4.0) for layer in layers}
    return Block(layers, weights, scales, {layer.name: bits for layer in layers},
                 {layer.name: None for layer in layers}, activations, x, x, lambda z: z)


def block_error(block: Block, rounded: Rounded) -> float:
    """The mean squared error of the block's quantized output (its integers, its activations) against float."""
    with torch.no_grad():
        target = block.forward(block.x_float, block.float_weight)
        output = block.forward(block.x_quant,
                               lambda layer: (rounded.integers[layer.name] * block.scales[layer.name]).float(),
                               lambda name, v: fake_quantize_activation(rounded.activations.get(
                                   name, block.activations[name]), v))
    return float((output - target).square().mean())


def test_block_reconstruction_beats_layer_wise_adaround_on_a_block():
    """fc2-fc3 at 2 bits: learned together against the block's output, the weights and activations leave less
    error at the block's output than AdaRound's layer-by-layer rounding, which in turn beats the nearest. (Not
    a law: at 3 bits, or with fc1's 295k weights against 10 logits, the layer-wise targets win; docs/ptq.md.)"""
    block, ptq = fc_block(), dataclasses.replace(PTQ, iterations=200, batch_size=32)
    nearest = Rounded({layer.name: quantize(block.weights[layer.name].double(), block.scales[layer.name], 2)
                       for layer in block.layers})
    # AdaRound layer by layer, each layer's input from the layers before it, quantized as learned
    integers, x_quant, x_float = {}, block.x_quant, block.x_float

    def learned(layer):
        return (integers[layer.name] * block.scales[layer.name]).float()

    for layer in block.layers:
        one = dataclasses.replace(block, layers=(layer,), x_quant=x_quant, x_float=x_float)
        integers |= layer_wise(one, ptq, torch.Generator().manual_seed(0)).integers
        with torch.no_grad():
            x_float = one.forward(x_float, block.float_weight)
            x_quant = one.forward(x_quant, learned,
                                  lambda name, v: fake_quantize_activation(block.activations[name], v))
    layer_by_layer = block_error(block, Rounded(integers))
    together = block_error(block, block_wise(block, 0.0, ptq, torch.Generator().manual_seed(0)))
    assert layer_by_layer < block_error(block, nearest)
    assert together < 0.9 * layer_by_layer


def test_qdrop_without_dropping_is_brecq():
    block, ptq = fc_block(1, bits=3, first=2), dataclasses.replace(PTQ, iterations=30, batch_size=16, drop=0.0)
    brecq = TECHNIQUES["brecq"].round(block, ptq, torch.Generator().manual_seed(0))
    qdrop = TECHNIQUES["qdrop"].round(block, ptq, torch.Generator().manual_seed(0))
    assert brecq.activations == qdrop.activations
    for name, q in brecq.integers.items():
        assert torch.equal(q, qdrop.integers[name]), name
    dropped = TECHNIQUES["qdrop"].round(block, dataclasses.replace(ptq, drop=0.5), torch.Generator().manual_seed(0))
    assert dropped.activations != brecq.activations  # the drop is drawn and changes what is learned


@pytest.mark.parametrize("rounding", ["brecq", "qdrop"])
@pytest.mark.parametrize("bits", [2, 3])
def test_block_reconstruction_keeps_every_integer_within_its_bits(rounding, bits):
    state = unbalanced_state(4)
    ptq = dataclasses.replace(PTQ, rounding=rounding, weight_scale="mse", blocks=[["conv1", "conv2"], ["fc1"],
                                                                                  ["fc2", "fc3"]])
    network = techniques(state, ptq, weight_bits=bits, activation_bits=bits, per_channel=True)
    network.validate()  # raises where an integer leaves its bits
    for layer in LAYERS:
        low, high = int_range(bits)
        weight = state[f"{layer.name}.weight"].astype(np.float64)
        ratio = weight / channel_shaped(network.layers[layer.name].scale, weight.ndim, 0)
        q = network.layers[layer.name].weight
        assert low <= q.min() and q.max() <= high, layer.name
        # each weight rounded down or up on its clipped scale, or clipped to the range
        down, up = np.clip(np.floor(ratio), low, high), np.clip(np.ceil(ratio), low, high)
        assert np.all((q == down) | (q == up)), layer.name
    for name, a in network.activations.items():  # learned step sizes, the logits' bits and signs kept
        assert a.bits == (8 if name == "fc3" else bits) and a.threshold > 0, name


def test_the_clipped_weight_scale_has_the_least_squared_error_of_its_candidates():
    weight = np.random.default_rng(0).standard_t(3, (16, 300)).astype(np.float32)  # heavy tails
    for bits in (2, 4):
        for per_channel in (False, True):
            clipped = clipped_weight_scale(weight, bits, per_channel)
            largest = weight_scale(weight, bits, per_channel)
            assert np.all(clipped <= largest) and np.any(clipped < largest)

            def error(scale, bits=bits):
                shaped = channel_shaped(np.asarray(scale), 2, 0)
                return np.square(weight - quantize(weight.astype(np.float64), shaped, bits) * shaped).sum()

            assert error(clipped) < error(largest)
            candidates = (1 - np.arange(100) / 100) * np.abs(weight).max()
            if not per_channel:  # the best of every candidate, checked by brute force
                assert error(clipped) == min(error(scale_for(t, bits)) for t in candidates)


def pre_activations(state, apply_weight, tap=None) -> dict[str, torch.Tensor]:
    """Every layer's output before its ReLU on IMAGES, through quantlab.model.walk."""
    outputs = {}

    def apply(layer, x):
        outputs[layer.name] = layer_output(layer, x, apply_weight(layer),
                                           None if f"{layer.name}.bias" not in state else
                                           torch.from_numpy(state[f"{layer.name}.bias"]))
        return outputs[layer.name]

    with torch.no_grad():
        walk(normalized(IMAGES), apply, tap)
    return outputs


@pytest.mark.parametrize("rounding", ["nearest", "adaround", "qdrop"])
def test_bias_correction_leaves_no_mean_output_error_in_any_layer(rounding):
    state = unbalanced_state(2)
    network = techniques(state, dataclasses.replace(PTQ, bias_correction=True, rounding=rounding))
    corrected = network.dequantized_state()
    assert all(f"{layer.name}.bias" in corrected for layer in LAYERS)
    float_outputs = pre_activations(state, lambda layer: torch.from_numpy(state[f"{layer.name}.weight"]))
    weights = {layer.name: quantize(torch.from_numpy(state[f"{layer.name}.weight"]).double(),
                                    channel_shaped(torch.as_tensor(weight_scale(state[f"{layer.name}.weight"], 4)),
                                                   4 if layer.kind == "conv" else 2, 0), 4) for layer in LAYERS}
    scales = {layer.name: float(weight_scale(state[f"{layer.name}.weight"], 4)) for layer in LAYERS}

    def fake_quantize(name, x):
        a = network.activations[name]
        return (quantize(x.double(), a.scale, a.bits, a.signed) * a.scale).float()

    quant_outputs = pre_activations(
        corrected, lambda layer: torch.from_numpy(network.layers[layer.name].weight).float() * scales[layer.name],
        fake_quantize)
    for layer in LAYERS:
        error = (quant_outputs[layer.name] - float_outputs[layer.name]).transpose(0, 1).flatten(1).mean(1)
        scale = float_outputs[layer.name].abs().mean()
        assert float(error.abs().max()) <= 1e-4 * float(scale), layer.name
        if rounding == "nearest":  # the integers are the nearest ones: only the bias changed
            np.testing.assert_array_equal(network.layers[layer.name].weight,
                                          weights[layer.name].numpy().astype(np.int8))


@pytest.mark.parametrize("settings", [
    dict(equalize=True), dict(bias_correction=True), dict(rounding="adaround"),
    dict(equalize=True, bias_correction=True, rounding="adaround"), dict(rounding="brecq", weight_scale="mse"),
    dict(rounding="qdrop", bias_correction=True)])
def test_every_technique_runs_bit_exactly_in_the_integer_engine(tmp_path, settings):
    state = unbalanced_state(3)
    network = techniques(state, dataclasses.replace(PTQ, **settings), weight_bits=4, activation_bits=4,
                         per_channel=True)
    directory = tmp_path / "export"
    write(directory, *package(*integer_network(network, [str(c) for c in range(10)], True)))
    manifest, arrays = export_format.read(directory)
    images = torch.from_numpy(IMAGES)
    logits = FixedPointEngine(manifest, arrays)(images).numpy()
    np.testing.assert_array_equal(logits, runner.run(manifest, arrays, IMAGES))  # bit for bit, always
    onnx_directory = tmp_path / "onnx"  # and in ONNX Runtime, in its rounding
    write(onnx_directory, *package(*integer_network(network, [str(c) for c in range(10)], True, ONNXRUNTIME)))
    manifest, arrays = export_format.read(onnx_directory)
    session = onnx_graph.session(onnx_graph.load(onnx_directory, manifest))
    np.testing.assert_array_equal(onnx_graph.run(session, manifest, IMAGES, batch=48),
                                  FixedPointEngine(manifest, arrays)(images).numpy())
    # the float rescale rounds M * acc once per layer in float: within the LSBs the design allows
    assert np.abs(logits - FloatRescaleNet(network)(images).numpy().astype(np.int64)).max() <= 2
    if settings.get("bias_correction"):
        assert all(network.layers[layer.name].q_bias is not None for layer in LAYERS)


class RoundDown(Technique):
    """A technique defined here only: every weight rounded down (toward minus infinity) instead of to the nearest."""

    name, label, title, phase = "round_down", "down", "rounding down", ROUND

    def round(self, block, ptq, generator):
        return Rounded({layer.name: torch.clamp(torch.floor(block.weights[layer.name].double() / block.scales[
            layer.name]), *int_range(block.bits[layer.name])) for layer in block.layers})


def test_a_technique_is_its_class_and_its_switch(monkeypatch, tmp_path):
    """Registered from outside the package, a rounding technique is a valid ptq.rounding, the quantize stage's
    networks round with it, and the techniques stage compares it alone and under bias correction."""
    monkeypatch.setitem(TECHNIQUES, RoundDown.name, RoundDown())
    params = load_params()
    path = tmp_path / "params.yaml"
    path.write_text(Path("params.yaml").read_text().replace("rounding: nearest", "rounding: round_down"))
    assert switched_on(load_params(path).ptq) == (TECHNIQUES["round_down"],)
    params = dataclasses.replace(params, techniques=dataclasses.replace(
        params.techniques, widths=[[4, 8]], per_channel=[False], iterations=2))
    state = unbalanced_state(2)
    labels = np.random.default_rng(1).integers(0, 10, len(IMAGES))
    splits = {"test": Split.of(IMAGES, labels, torch.device("cpu"))}
    results, layers, predictions = compare_techniques(state, IMAGES, activations_for(state), splits, params)
    names = list(results["W4A8-tensor"])
    assert {"round_down", "round_down+bias_correction", "equalize+round_down+bias_correction"} <= set(names)
    assert "adaround+round_down" not in " ".join(names)  # one rounding at a time
    assert combination_label("equalize+round_down+bias_correction") == "CLE + down + BC"
    network = techniques(state, dataclasses.replace(PTQ, rounding="round_down"))
    for layer in LAYERS:
        weight = state[f"{layer.name}.weight"].astype(np.float64)
        floor = np.floor(weight / weight_scale(weight, 4))
        assert np.array_equal(network.layers[layer.name].weight, np.clip(floor, -8, 7)), layer.name
    assert set(layers[layers.techniques == "round_down"].layer) == {layer.name for layer in LAYERS}


def test_the_comparison_keeps_the_layers_that_techniques_layer_bits_names_at_their_bits():
    """BRECQ's convention, first and last layers at 8 bits: conv1's output error drops to that of 8 bits, conv2's
    stays that of 2 bits."""
    state = unbalanced_state(5)
    labels = np.random.default_rng(2).integers(0, 10, len(IMAGES))
    splits = {"test": Split.of(IMAGES, labels, torch.device("cpu"))}
    base = load_params()
    errors = {}
    for name, layer_bits in (("uniform", {}), ("first_last", {"conv1": [8, 8], "fc3": [8, 8]})):
        params = dataclasses.replace(base, techniques=dataclasses.replace(
            base.techniques, widths=[[2, 8]], per_channel=[True], iterations=2,
            layer_bits={layer.name: layer_bits.get(layer.name) for layer in LAYERS}))
        _, layers, _ = compare_techniques(state, IMAGES, activations_for(state), splits, params)
        errors[name] = layers[layers.techniques == "nearest"].set_index("layer")["nearest"]
    assert errors["first_last"]["conv1"] < errors["uniform"]["conv1"] / 100
    assert errors["first_last"]["conv2"] > errors["uniform"]["conv2"] / 10  # still 2-bit weights
