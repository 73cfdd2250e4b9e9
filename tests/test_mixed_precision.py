"""Mixed precision: per-layer bits through every forward, the cost model, the allocator and its choice rule."""

import itertools

import numpy as np
import pytest
import torch

from quantlab import costs
from quantlab.evaluation import Split, outputs
from quantlab.inference import export_format, onnx_graph, runner
from quantlab.inference.engine import FixedPointEngine
from quantlab.inference.fixed_point import GEMMLOWP, ONNXRUNTIME
from quantlab.mixed_precision import Space, choose, frontier, kendall_tau, proposals
from quantlab.quantize.symmetric import Setting, int_range
from stages.mixed_precision import allocate

from quant_fixture import IMAGES, random_export, random_network

LAYER_BITS = {"conv1": [3, 8], "conv2": [8, 4], "fc1": [2, 4], "fc2": [4, 8]}  # fc3 keeps 8/8


@pytest.mark.parametrize("rounding", [GEMMLOWP, ONNXRUNTIME])
def test_each_layer_runs_at_its_own_bits_bit_exact(tmp_path, rounding):
    directory, reference = random_export(tmp_path, 8, per_channel=True, unsigned=True, logit_bits=8,
                                         rounding=rounding, layer_bits=LAYER_BITS)
    manifest, arrays = export_format.read(directory)
    assert [layer["weight_bits"] for layer in manifest["layers"]] == [3, 8, 2, 4, 8]
    # a layer's input bits are those of the activation it reads: conv2 reads conv1's output, fc1 conv2's
    assert manifest["activation_bits"] == {"input": 8, "conv1": 4, "conv2": 4, "fc1": 8, "fc2": 8, "fc3": 8}
    for layer in manifest["layers"]:
        low, high = int_range(layer["weight_bits"])
        weight = arrays[layer["weight"]]
        assert low <= weight.min() and weight.max() <= high and weight.max() == high or weight.min() == low
    engine = FixedPointEngine(manifest, arrays)(IMAGES).numpy()
    assert len(np.unique(engine.argmax(1))) > 1  # not a degenerate network
    np.testing.assert_array_equal(runner.run(manifest, arrays, IMAGES.numpy()), engine)
    if rounding == ONNXRUNTIME:
        session = onnx_graph.session(onnx_graph.load(directory, manifest))
        np.testing.assert_array_equal(onnx_graph.run(session, manifest, IMAGES.numpy(), batch=40), engine)
    float_rescale = outputs(reference, Split(IMAGES, torch.zeros(len(IMAGES), dtype=torch.int64)))
    difference = np.abs(engine - float_rescale.numpy())
    assert difference.max() <= 3 and (difference == 0).mean() >= 0.8


def test_the_cost_model_matches_hand_computed_sizes_and_bops():
    assert costs.weights() == {"conv1": 900, "conv2": 3456, "fc1": 294_912, "fc2": 16_384, "fc3": 640}
    # conv1: 12 x 28 x 28 outputs x 3 x 5 x 5; conv2: 32 x 12 x 12 x 12 x 3 x 3; fc: outputs x inputs
    assert costs.macs() == {"conv1": 705_600, "conv2": 497_664, "fc1": 294_912, "fc2": 16_384, "fc3": 640}
    assert costs.REFERENCE == costs.Cost(bits=2_530_336, bytes=316_292, bops=1_515_200 * 64)
    weight_bits = {"conv1": 8, "conv2": 8, "fc1": 2, "fc2": 8, "fc3": 3}
    input_bits = {"conv1": 8, "conv2": 4, "fc1": 8, "fc2": 8, "fc3": 8}
    cost = costs.cost(weight_bits, input_bits, biases=10)
    # (900 + 3456 + 16384) x 8 + 294912 x 2 + 640 x 3 = 757,664 bits; fc3's 1920 bits are 240 bytes
    assert cost == costs.Cost(bits=757_664, bytes=900 + 3456 + 73_728 + 16_384 + 240 + 40,
                              bops=705_600 * 64 + 497_664 * 32 + 294_912 * 16 + 16_384 * 64 + 640 * 24)
    size, bops = costs.relative(np.array([list(weight_bits.values())]), np.array([list(input_bits.values())]))
    assert size[0] == 757_664 / 2_530_336 and bops[0] == cost.bops / (1_515_200 * 64)
    _, network = random_network(8, layer_bits={"fc1": [2, 4], "conv1": [3, 8]}, model="bias")
    assert costs.of_network(network) == costs.cost({"conv1": 3, "conv2": 8, "fc1": 2, "fc2": 8, "fc3": 8},
                                                   {"conv1": 8, "conv2": 8, "fc1": 4, "fc2": 8, "fc3": 8}, biases=10)


def test_the_space_enumerates_every_configuration_with_its_costs():
    space = Space.of([8, 2], [8])
    assert space.options == (Setting(2, 8), Setting(8, 8)) and len(space.configurations) == 2 ** 5
    assert space.widest == 1 and space.costs["size"][space.uniform(1)] == 1.0
    assert space.costs["size"][space.uniform(0)] == 0.25 and space.costs["bops"][space.uniform(0)] == 0.25
    fc1_low = space.index([1, 1, 0, 1, 1])
    assert space.layer_bits(fc1_low) == {"conv1": [8, 8], "conv2": [8, 8], "fc1": [2, 8], "fc2": [8, 8],
                                         "fc3": [8, 8]}
    assert space.costs["size"][fc1_low] == (2_530_336 - 294_912 * 6) / 2_530_336


def test_the_allocator_finds_the_known_optimum_of_a_toy_problem():
    """Five layers, options of 2, 4 or 8 bits with an additive loss: the exact minimum under every budget is
    found by brute force over the 243 configurations, and the allocator, whose validation accuracy is the true
    (negated) loss, must choose it from its candidates."""
    space = Space.of([2, 4, 8], [8])
    rng = np.random.default_rng(3)
    sensitivity = np.sort(rng.random((5, 3)), axis=1)[:, ::-1] * [[10], [1], [5], [0.1], [2]]
    sensitivity[:, -1] = 0.0
    truth = {tuple(c): sum(sensitivity[i, o] for i, o in enumerate(c)) for c in itertools.product(range(3), repeat=5)}
    predicted = space.predicted(sensitivity)
    for kind in ("size", "bops"):
        cost = space.costs[kind]
        for budget in (0.25, 0.3, 0.5, 0.75, 1.0):
            fits = [c for c in truth if cost[space.index(list(c))] <= budget + 1e-9]
            optimum = space.index(list(min(fits, key=lambda c: (truth[c], -cost[space.index(list(c))]))))
            assert proposals(predicted, cost, budget, 1) == [optimum]
            choice = choose({"toy": predicted}, cost, budget, 4, lambda index: -predicted[index])
            assert choice.index == optimum and choice.proposed_by == ("toy",)
            assert len(choice.validated) == min(4, len(fits))
    # validation overrules the prediction among the candidates: the second-best predicted wins if it validates
    cost = space.costs["size"]
    first, second = proposals(predicted, cost, 0.5, 2)
    assert choose({"toy": predicted}, cost, 0.5, 2, lambda index: float(index == second)).index == second
    assert choose({"toy": predicted}, cost, 0.2, 2, lambda index: 0.0) is None  # below all 2-bit: none fits


def test_kendall_tau_and_the_frontier():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert kendall_tau(x, x) == 1.0 and kendall_tau(x, -x) == -1.0
    assert kendall_tau(x, np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(4 / 6)
    cost = np.array([0.5, 0.25, 0.25, 1.0, 0.75])
    accuracy = np.array([70.0, 60.0, 65.0, 71.0, 69.0])
    assert frontier(cost, accuracy) == [2, 0, 3]


class RecordingConfigurations:
    """Configurations whose networks are never built: each prediction is a function of the configuration, and
    every set of images asked for is recorded."""

    def __init__(self, space: Space):
        self.space, self.parts = space, set()

    def predict(self, index: int, part: str, split: Split) -> torch.Tensor:
        self.parts.add(part)
        return torch.full((len(split),), index % 10)

    def predict_all(self, indices: np.ndarray, part: str, split: Split) -> None:
        self.parts.add(part)


def test_no_choice_reads_the_test_images():
    space = Space.of([2, 8], [4, 8])
    predictions = {"output": space.predicted(np.random.default_rng(0).random((5, 4))),
                   "sqnr": space.predicted(np.random.default_rng(1).random((5, 4)))}
    labels = torch.from_numpy(np.random.default_rng(2).integers(0, 10, 200))
    validation = Split(torch.zeros(200, 3, 32, 32, dtype=torch.uint8), labels)
    configurations = RecordingConfigurations(space)
    chosen = allocate(configurations, predictions, [0.25, 0.5, 1.0], 3, ("validation", validation))
    assert configurations.parts == {"validation"}
    for entry in chosen:  # the most accurate on validation among the candidates
        validated = entry["choice"].validated
        assert validated[entry["choice"].index] == max(validated.values())
    assert [(entry["kind"], entry["budget"]) for entry in chosen] == [
        (kind, budget) for kind in ("size", "bops") for budget in (0.25, 0.5, 1.0)]
    # other validation labels, other choices: the validation images decide
    favoured = next(i for i in chosen[-1]["choice"].validated if i % 10 != chosen[-1]["choice"].index % 10)
    relabelled = Split(validation.x, torch.full((200,), favoured % 10))
    again = allocate(RecordingConfigurations(space), predictions, [1.0], 3, ("validation", relabelled))
    assert again[-1]["choice"].index % 10 == favoured % 10
