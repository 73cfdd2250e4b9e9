"""Quantization math against hand-computed values, and the float-rescale forward against an int64 reference."""

import dataclasses

import numpy as np
import pytest
import torch

from quantlab.architecture import ACTIVATIONS, LAYERS
from quantlab.data import normalize
from quantlab.inference.fixed_point import FLOAT32_EXACT
from quantlab.inference.float_rescale import (
    FloatRescaleNet,
    accumulation_dtype,
    integer_layer,
    requantize,
)
from quantlab.model import Net, state_to_arrays
from quantlab.quantize.network import Activation, Provenance, activations_of, quantize_network
from quantlab.quantize.symmetric import (
    Setting,
    activation_signs,
    activation_widths,
    bias_scale,
    int_range,
    quantize,
    quantize_bias,
    quantize_weight,
    scale_for,
    squared_errors,
    weight_scale,
    weight_widths,
)

from quant_fixture import random_network


def test_activation_widths_give_the_logits_their_own_bits():
    assert activation_widths(4) == {name: 4 for name in ACTIVATIONS}
    assert activation_widths(4, None) == activation_widths(4)
    widths = activation_widths(4, logit_bits=8)
    assert widths.pop("fc3") == 8 and set(widths.values()) == {4}


def test_int_range_follows_bits_and_sign():
    assert int_range(8) == (-128, 127)
    assert int_range(4) == (-8, 7)
    assert int_range(2) == (-2, 1)
    assert int_range(8, signed=False) == (0, 255)


def test_scale_maps_threshold_to_largest_integer():
    assert scale_for(12.7, 8) == pytest.approx(0.1)
    assert scale_for(7.0, 4) == pytest.approx(1.0)
    assert scale_for(25.5, 8, signed=False) == pytest.approx(0.1)
    assert scale_for(0.0, 8) == 1.0  # an all-zero tensor still gets a usable scale


def test_quantize_rounds_half_to_even_and_clamps():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49, 126.6, 200.0, -127.6, -500.0], dtype=torch.float64)
    assert quantize(x, 1.0, 8).tolist() == [0, 2, 2, 0, -2, 0, 127, 127, -128, -128]
    assert quantize(torch.tensor([-3.0, 3.0, 9.0]), 1.0, 4).tolist() == [-3, 3, 7]


def test_weight_scale_per_tensor_and_per_channel():
    w = np.array([[-0.5, 0.25], [0.1, 0.2]], dtype=np.float32)
    assert weight_scale(w, 8) == pytest.approx(0.5 / 127)
    np.testing.assert_allclose(weight_scale(w, 8, per_channel=True), [0.5 / 127, 0.2 / 127])


def test_weight_scale_in_float64_rounds_to_the_float32_quotient():
    weights = np.random.default_rng(0).normal(0, 0.1, (2000, 8)).astype(np.float32)
    for bits in (8, 4, 2):
        scales = weight_scale(weights, bits, per_channel=True).astype(np.float32)
        quotient = (torch.from_numpy(np.abs(weights).max(axis=1)) / int_range(bits)[1]).numpy()
        np.testing.assert_array_equal(scales, quotient)  # what quantization-aware training computes


def test_squared_errors_agree_for_numpy_and_torch():
    values = np.random.default_rng(1).laplace(0, 1, 500)
    thresholds = np.array([0.5, 1.0, 2.0, 4.0])
    counts = np.ones(len(values))
    numpy_errors = squared_errors(values, counts, thresholds, 4)
    torch_errors = squared_errors(torch.from_numpy(values), None, torch.from_numpy(thresholds), 4)
    np.testing.assert_allclose(numpy_errors, torch_errors.numpy(), rtol=1e-12)
    scale = 2.0 / 7  # by hand for T = 2 at 4 bits: x - S clamp(round(x / S), -8, 7)
    expected = np.sum((values - scale * np.clip(np.round(values / scale), -8, 7)) ** 2)
    assert numpy_errors[2] == pytest.approx(expected, rel=1e-12)


def test_setting_names_labels_and_parse():
    assert Setting(8, 4).name == "W8A4" and Setting(8, 4).label == "8/4"
    assert Setting(4, 8, False).name == "W4A8-tensor" and Setting(3, 8, True).label == "3/8 per channel"
    for setting in (Setting(8, 4), Setting(4, 8, False), Setting(2, 8, True)):
        assert Setting.parse(setting.name) == setting
    assert Setting(4, 8, True).width == Setting(4, 8)
    with pytest.raises(ValueError, match="not a setting name"):
        Setting.parse("W4A8-row")


def test_quantize_weights_matches_hand_values():
    state = state_to_arrays(Net())
    state["conv1.weight"][:] = 0
    # max|W| = 127/64 -> S = 1/64, exact in binary, so the ties below are real ties
    state["conv1.weight"][0, 0, 0, :4] = [127 / 64, -0.3, 0.5 / 64, 1.5 / 64]
    q, scale = quantize_weight(state["conv1.weight"], 8)
    assert scale == 1 / 64 and q.dtype == np.int8
    # -0.3 * 64 = -19.2 -> -19; 0.5 rounds to 0 and 1.5 to 2 (half to even)
    assert q[0, 0, 0, :4].tolist() == [127, -19, 0, 2]
    activations = activations_of(dict.fromkeys(ACTIVATIONS, 1.0), activation_widths(8), activation_signs(False))
    network = quantize_network(state, activations, weight_widths(8), False,
                               Provenance("float", "minmax", "trained", "-"))
    restored = network.dequantized_state()["conv1.weight"][0, 0, 0, :4]
    assert restored.tolist() == [127 / 64, -19 / 64, 0.0, 2 / 64]


def test_accumulation_dtype_switches_to_float64_beyond_two_to_the_24():
    small = torch.full((1, 1000), 127.0)  # 1000 * 127 * 128 = 16,256,000 < 2^24
    large = torch.full((1, 1100), 127.0)  # 1100 * 127 * 128 = 17,881,600 > 2^24
    assert accumulation_dtype(small, 128) == torch.float32
    assert accumulation_dtype(large, 128) == torch.float64


def test_fc1_sized_accumulation_is_exact_where_float32_is_not():
    q_x = torch.full((1, 1152), 127.0)
    q_w = torch.full((1, 1152), 127.0)
    q_x[0, 0] = 0.0  # an odd total: float32 cannot hold it above 2^24
    exact = 1151 * 127 * 127
    assert exact > FLOAT32_EXACT and int(np.float32(exact)) != exact  # float32 cannot hold the sum
    fc1 = next(layer for layer in LAYERS if layer.name == "fc1")
    q_w = q_w.to(accumulation_dtype(q_w, 128))
    assert integer_layer(fc1, q_x, q_w).item() == exact


def test_requantize_rounds_half_to_even_and_clamps():
    acc = torch.tensor([5.0, 7.0, -5.0, 1000.0, -1000.0, 3.0], dtype=torch.float64)
    half = torch.tensor(0.5, dtype=torch.float64)
    assert requantize(acc.clone(), half, -128, 127).tolist() == [2, 4, -2, 127, -128, 2]
    assert requantize(acc.clone(), half, 0, 255).tolist() == [2, 4, 0, 255, 0, 2]
    assert requantize(acc.clone(), half, -8, 7).tolist() == [2, 4, -2, 7, -8, 2]


def test_multiplier_is_input_scale_times_weight_scale_over_output_scale():
    _, network = random_network(model="float")
    scales = {"input": 0.01, "conv1": 0.5, "conv2": 0.25, "fc1": 1.0, "fc2": 2.0, "fc3": 4.0}
    network = dataclasses.replace(
        network, activations={name: Activation(8, True, 127 * scale) for name, scale in scales.items()},
        layers={name: dataclasses.replace(layer, scale=np.float64(0.02)) for name, layer in network.layers.items()})
    assert network.multiplier("conv1") == pytest.approx(0.01 * 0.02 / 0.5)
    assert network.multiplier("fc3") == pytest.approx(2.0 * 0.02 / 4.0)
    assert network.bias_scale("fc3") == pytest.approx(2.0 * 0.02)
    assert Activation(8, False, 25.5).scale == pytest.approx(0.1) and Activation(8, True, 0.0).scale == 1.0


def test_bias_scale_and_int32_bias():
    assert bias_scale(0.01, 0.02) == pytest.approx(2e-4)
    q = quantize_bias(np.array([0.5, -0.1, 1e-5, 0.00015]), 0.01, 0.02)
    assert q.dtype == np.int32
    assert q.tolist() == [2500, -500, 0, 1]  # 0.00015 / 2e-4 = 0.75 -> 1
    np.testing.assert_array_equal(quantize_bias(np.array([0.3, 0.3]), np.array([0.01, 0.001]), 0.1), [300, 3000])
    with pytest.raises(OverflowError, match="int32"):
        quantize_bias(np.array([1e6]), 1e-4, 1e-4)


# --- the whole float-rescale forward against an independent int64 NumPy implementation -----------------------

def _conv_int64(x, w):
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))  # N, C, H', W', kh, kw
    return np.einsum("nchwij,ocij->nohw", windows, w)


def _reference(x, network, bits=8, unsigned=False):
    a_scales = {name: a.scale for name, a in network.activations.items()}
    qmin, qmax = int_range(bits)
    q = np.clip(np.round(x / a_scales["input"]), qmin, qmax).astype(np.int64)
    previous = "input"
    for layer in LAYERS:
        quantized = network.layers[layer.name]
        w = quantized.weight.astype(np.int64)
        if layer.kind == "fc":
            q = q.reshape(len(q), -1)
            acc = q @ w.T
        else:
            acc = _conv_int64(q, w)
        if quantized.q_bias is not None:
            acc = acc + quantized.q_bias.astype(np.int64)
        m = a_scales[previous] * quantized.scale / a_scales[layer.name]
        m = m.reshape((-1,) + (1,) * (acc.ndim - 2)) if np.ndim(m) else m
        qmin, qmax = int_range(bits, signed=not (unsigned and layer.relu))
        q = np.clip(np.round(acc * m), qmin, qmax).astype(np.int64)
        if layer.relu:
            q = np.maximum(q, 0)
        if layer.pool:
            n, c, h, wd = q.shape
            q = q.reshape(n, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
        previous = layer.name
    return q


@pytest.mark.parametrize("per_channel, bits, unsigned", [(False, 8, False), (True, 8, False), (True, 4, True),
                                                         (False, 6, True)])
def test_float_rescale_forward_equals_int64_reference(per_channel, bits, unsigned):
    _, network = random_network(bits, per_channel, unsigned)
    assert network.layers["fc3"].q_bias is not None
    pixels = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    expected = _reference(normalize(pixels).double().numpy(), network, bits, unsigned)
    got = FloatRescaleNet(network)(pixels)
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), expected)
    assert np.abs(expected).max() > 0  # the test data exercises non-trivial logits


def test_raw_bias_is_added_to_the_accumulator_unscaled():
    _, network = random_network()
    fc3 = dataclasses.replace(network.layers["fc3"], bias=np.full(10, 1000.0))  # in accumulator units
    network = dataclasses.replace(network, layers={**network.layers, "fc3": fc3})
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    no_bias = FloatRescaleNet(network, bias="none")(x)
    with_raw = FloatRescaleNet(network, bias="raw")(x)
    shift = (with_raw - no_bias)[(no_bias > -100) & (no_bias < 100)]
    assert shift.numel() > 0
    assert torch.all((shift - 1000 * network.multiplier("fc3")).abs() <= 1)
