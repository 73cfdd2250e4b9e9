"""Quantization math against hand-computed values, and the integer forward against an int64 reference."""

import numpy as np
import pytest
import torch

from quantlab.architecture import ACTIVATIONS, LAYERS
from quantlab.integer import FLOAT32_EXACT_LIMIT, IntegerNet, accumulation_dtype, integer_layer
from quantlab.model import Net, state_to_arrays
from quantlab.quant import (
    activation_signs,
    activation_widths,
    bias_scale,
    dequantized_state,
    int_range,
    quantize,
    quantize_bias,
    quantize_weights,
    requantize,
    scale_for,
    split_weights,
    weight_scale,
)

from quant_fixture import minmax_activations


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


def test_quantize_weights_matches_hand_values():
    state = state_to_arrays(Net())
    state["conv1.weight"][:] = 0
    # max|W| = 127/64 -> S = 1/64, exact in binary, so the ties below are real ties
    state["conv1.weight"][0, 0, 0, :4] = [127 / 64, -0.3, 0.5 / 64, 1.5 / 64]
    arrays = quantize_weights(state)
    assert arrays["conv1.scale"] == 1 / 64
    assert arrays["conv1"].dtype == np.int8
    # -0.3 * 64 = -19.2 -> -19; 0.5 rounds to 0 and 1.5 to 2 (half to even)
    assert arrays["conv1"][0, 0, 0, :4].tolist() == [127, -19, 0, 2]
    restored = dequantized_state(state, arrays)["conv1.weight"][0, 0, 0, :4]
    assert restored.tolist() == [127 / 64, -19 / 64, 0.0, 2 / 64]


def test_accumulation_dtype_switches_to_float64_beyond_two_to_the_24():
    small = torch.full((1, 1000), 127.0)  # 1000 * 127 * 128 = 16,256,000 < 2^24
    large = torch.full((1, 1100), 127.0)  # 1100 * 127 * 128 = 17,881,600 > 2^24
    assert accumulation_dtype(small, 128) == torch.float32
    assert accumulation_dtype(large, 128) == torch.float64


def test_fc1_sized_accumulation_is_exact_where_float32_is_not():
    q_x = torch.full((1, 1152), 127.0)
    q_w = torch.full((1, 1152), 127.0)
    q_x[0, 0], q_w[0, 0] = 1.0, 1.0  # an odd total: float32 cannot hold it above 2^24
    exact = 1151 * 127 * 127 + 1
    assert exact > FLOAT32_EXACT_LIMIT
    assert torch.nn.functional.linear(q_x, q_w).item() != exact  # float32 loses it
    fc1 = next(layer for layer in LAYERS if layer.name == "fc1")
    q_w = q_w.to(accumulation_dtype(q_w, 128))
    assert integer_layer(fc1, q_x, q_w).item() == exact


def test_requantize_rounds_half_to_even_and_clamps():
    acc = torch.tensor([5.0, 7.0, -5.0, 1000.0, -1000.0, 3.0], dtype=torch.float64)
    half = torch.tensor(0.5, dtype=torch.float64)
    assert requantize(acc, half, -128, 127).tolist() == [2, 4, -2, 127, -128, 2]
    assert requantize(acc, half, 0, 255).tolist() == [2, 4, 0, 255, 0, 2]
    assert requantize(acc, half, -8, 7).tolist() == [2, 4, -2, 7, -8, 2]


def test_multiplier_is_input_scale_times_weight_scale_over_output_scale():
    scales = {"input": 0.01, "conv1": 0.5, "conv2": 0.25, "fc1": 1.0, "fc2": 2.0, "fc3": 4.0}
    net = IntegerNet.build({layer.name: np.ones((1, 1)) for layer in LAYERS},
                           {layer.name: np.float64(0.02) for layer in LAYERS}, activations(scales))
    assert net.multiplier(LAYERS[0]).item() == pytest.approx(0.01 * 0.02 / 0.5)
    assert net.multiplier(LAYERS[4]).item() == pytest.approx(2.0 * 0.02 / 4.0)


def test_bias_scale_and_int32_bias():
    assert bias_scale(0.01, 0.02) == pytest.approx(2e-4)
    q = quantize_bias(np.array([0.5, -0.1, 1e-5, 0.00015]), 0.01, 0.02)
    assert q.dtype == np.int32
    assert q.tolist() == [2500, -500, 0, 1]  # 0.00015 / 2e-4 = 0.75 -> 1
    np.testing.assert_array_equal(quantize_bias(np.array([0.3, 0.3]), np.array([0.01, 0.001]), 0.1), [300, 3000])
    with pytest.raises(OverflowError, match="int32"):
        quantize_bias(np.array([1e6]), 1e-4, 1e-4)


# --- the whole integer forward against an independent int64 NumPy implementation -----------------------

def activations(scales, bits=8, unsigned=False):
    return {"bits": activation_widths(bits), "signed": activation_signs(unsigned), "scales": scales}


def _conv_int64(x, w):
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))  # N, C, H', W', kh, kw
    return np.einsum("nchwij,ocij->nohw", windows, w)


def _reference(x, q_weights, w_scales, a_scales, bias=None, bits=8, unsigned=False):
    qmin, qmax = int_range(bits)
    q = np.clip(np.round(x / a_scales["input"]), qmin, qmax).astype(np.int64)
    previous = "input"
    for layer in LAYERS:
        w = q_weights[layer.name].astype(np.int64)
        if layer.kind == "fc":
            q = q.reshape(len(q), -1)
            acc = q @ w.T
        else:
            acc = _conv_int64(q, w)
        if bias is not None and layer.name == "fc3":
            acc = acc + bias.astype(np.int64)
        m = a_scales[previous] * w_scales[layer.name] / a_scales[layer.name]
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
def test_integer_forward_equals_int64_reference(per_channel, bits, unsigned):
    torch.manual_seed(0)
    model = Net(fc3_bias=True)
    arrays = quantize_weights(state_to_arrays(model), bits, per_channel=per_channel)
    q_weights, w_scales = split_weights(arrays)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    calibrated = minmax_activations(model, x, bits, unsigned)
    a_scales = calibrated["scales"]
    bias = quantize_bias(model.fc3.bias.detach().numpy(), w_scales["fc3"], a_scales["fc2"])
    net = IntegerNet.build(q_weights, w_scales, calibrated, bias=bias, bias_mode="int32")
    expected = _reference(x.double().numpy(), q_weights, w_scales, a_scales, bias, bits, unsigned)
    got = net(x)
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), expected)
    assert np.abs(expected).max() > 0  # the test data exercises non-trivial logits


def test_raw_bias_is_added_to_the_accumulator_unscaled():
    torch.manual_seed(0)
    model = Net(fc3_bias=True)
    q_weights, w_scales = split_weights(quantize_weights(state_to_arrays(model)))
    a_scales = {"input": 1 / 127, "conv1": 0.02, "conv2": 0.03, "fc1": 0.05, "fc2": 0.05, "fc3": 0.001}
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    raw = np.array([1000.0] * 10)  # in accumulator units: M * 1000 output LSBs
    no_bias = IntegerNet.build(q_weights, w_scales, activations(a_scales))(x)
    with_raw = IntegerNet.build(q_weights, w_scales, activations(a_scales), bias=raw, bias_mode="raw")(x)
    m = a_scales["fc2"] * w_scales["fc3"] / a_scales["fc3"]
    shift = (with_raw - no_bias)[(no_bias > -100) & (no_bias < 100)]
    assert shift.numel() > 0
    assert torch.all((shift - 1000 * m).abs() <= 1)
