"""The quantized-network artifact: saved and loaded unchanged, and every damaged or edited file refused."""

import json

import numpy as np
import pytest

from quantlab.architecture import LAYER_NAMES
from quantlab.errors import UserError
from quantlab.io import load_npz, save_npz
from quantlab.quantize.network import QuantizedNetwork

from quant_fixture import random_network


@pytest.mark.parametrize("per_channel", [False, True])
def test_save_and_load_round_trip(tmp_path, per_channel):
    _, network = random_network(4, per_channel, unsigned=True, logit_bits=8)
    network.save(tmp_path)
    loaded = QuantizedNetwork.load(tmp_path)
    assert loaded.weight_bits == dict.fromkeys(LAYER_NAMES, 4) and loaded.per_channel == per_channel
    assert loaded.activations == network.activations and loaded.provenance == network.provenance
    for name, layer in network.layers.items():
        for key, value in vars(layer).items():
            other = getattr(loaded.layers[name], key)
            assert (value is None and other is None) or (np.array_equal(value, other) and value.dtype == other.dtype)
    assert loaded.layers["fc3"].q_bias.dtype == np.int32 and loaded.layers["conv1"].bias is None
    np.testing.assert_array_equal(loaded.multiplier("fc2"), network.multiplier("fc2"))
    meta = json.loads((tmp_path / "network.json").read_text())
    conv1 = network.activations["conv1"]
    assert meta["activations"]["conv1"] == {"bits": 4, "signed": False, "threshold": conv1.threshold,
                                            "scale": conv1.scale}


def test_each_layer_keeps_its_own_bits(tmp_path):
    _, network = random_network(8, per_channel=True, layer_bits={"fc1": [2, 4], "conv1": [3, 8]})
    network.save(tmp_path)
    loaded = QuantizedNetwork.load(tmp_path)
    assert loaded.weight_bits == {"conv1": 3, "conv2": 8, "fc1": 2, "fc2": 8, "fc3": 8}
    assert {name: a.bits for name, a in loaded.activations.items()} == {
        "input": 8, "conv1": 8, "conv2": 4, "fc1": 8, "fc2": 8, "fc3": 8}  # fc1 reads conv2's output
    assert loaded.layers["fc1"].weight.min() >= -2 and loaded.layers["fc1"].weight.max() <= 1
    assert loaded.layers["conv1"].weight.min() >= -4 and loaded.layers["conv1"].weight.max() <= 3


def edited_json(tmp_path, edit):
    meta = json.loads((tmp_path / "network.json").read_text())
    edit(meta)
    (tmp_path / "network.json").write_text(json.dumps(meta))


def edited_arrays(tmp_path, edit):
    arrays = load_npz(tmp_path / "network.npz")
    edit(arrays)
    save_npz(tmp_path / "network.npz", arrays)


@pytest.mark.parametrize("edit, message", [
    (lambda m: edited_json(m, lambda d: d["activations"]["fc1"].update(threshold=3.0)),
     "has a scale that does not follow from its threshold"),
    (lambda m: edited_json(m, lambda d: d["activations"]["fc1"].update(bits=12)),
     "has an invalid quantization of activation fc1"),
    (lambda m: edited_json(m, lambda d: d["activations"].pop("fc2")), "must describe the activations input, conv1"),
    (lambda m: edited_json(m, lambda d: d.pop("provenance")), "is incomplete (KeyError('provenance'))"),
    (lambda m: edited_json(m, lambda d: d.update(weight_bits=8)), "must give the weight bits (2-8) of the layers"),
    (lambda m: edited_json(m, lambda d: d["weight_bits"].update(fc1=2)), "has fc1.weight beyond 2 bits"),
    (lambda m: edited_json(m, lambda d: d.update(format="other")), "is not a quantlab-quantized-network file"),
    (lambda m: edited_arrays(m, lambda a: a.update({"fc1.weight": a["fc1.weight"][:128]})),
     "needs fc1.weight as int8 of shape (256, 1152)"),
    (lambda m: edited_arrays(m, lambda a: a.update({"conv2.weight": a["conv2.weight"].astype(np.int16)})),
     "needs conv2.weight as int8"),
    (lambda m: edited_arrays(m, lambda a: a.update({"fc2.scale": -a["fc2.scale"]})), "positive, finite fc2.scale"),
    (lambda m: edited_arrays(m, lambda a: a.pop("fc3.q_bias")), "needs fc3.bias and fc3.q_bias (int32)"),
    (lambda m: edited_arrays(m, lambda a: a.update(extra=np.zeros(1))), "has unknown arrays ['extra']"),
])
def test_damaged_or_edited_networks_are_refused_in_one_line(tmp_path, edit, message):
    _, network = random_network()
    network.save(tmp_path)
    edit(tmp_path)
    with pytest.raises(UserError) as error:
        QuantizedNetwork.load(tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith(f"{tmp_path}/network.json")


def test_weights_beyond_their_bits_are_refused(tmp_path):
    _, network = random_network(bits=4)
    network.save(tmp_path)
    edited_arrays(tmp_path, lambda a: a["conv1.weight"].__setitem__((0, 0, 0, 0), 100))
    with pytest.raises(UserError, match="has conv1.weight beyond 4 bits"):
        QuantizedNetwork.load(tmp_path)
