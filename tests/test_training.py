"""The model matches the lab's table, and training is bit-for-bit deterministic for a seed."""

import numpy as np
import pytest
import torch

from quantlab.architecture import MODELS, shapes
from quantlab.config import TrainParams
from quantlab.errors import UserError
from quantlab.evaluation import Split
from quantlab.model import Net, max_pool
from quantlab.report.tables import architecture
from quantlab.training import training_subset
from stages.train import train

from cifar_fixture import batches


def test_architecture_is_the_labs_table_and_the_models_shapes():
    assert architecture().values.tolist() == [
        ["conv1", "Convolutional", "3x32x32", "12x28x28", "ReLU"],
        ["pool1", "Max pool", "12x28x28", "12x14x14", "None"],
        ["conv2", "Convolutional", "12x14x14", "32x12x12", "ReLU"],
        ["pool2", "Max pool", "32x12x12", "32x6x6", "None"],
        ["fc1", "Fully-connected", "1152", "256", "ReLU"],
        ["fc2", "Fully-connected", "256", "64", "ReLU"],
        ["fc3", "Fully-connected", "64", "10", "None"],
    ]
    computed = []  # what the torch model computes, layer by layer

    def apply(module, inputs, output):
        computed.append((tuple(inputs[0].shape[1:]), tuple(output.shape[1:])))

    model = Net()
    for module in model.children():
        module.register_forward_hook(apply)
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert computed == [(step.input, step.output) for step in shapes() if step.kind != "pool"]
    assert Net().fc3.bias is None and Net(MODELS["bias"]).fc3.bias is not None
    assert all(getattr(Net(), name).bias is None for name in ("conv1", "conv2", "fc1", "fc2"))


@pytest.mark.parametrize("shape", [(4, 12, 28, 28), (3, 5, 7, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [2, 3])
def test_max_pool_is_max_pool2d_bit_for_bit(shape, channels_last, size):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    x[x < 0] = 0.0  # ReLU's ties
    x[0, 0, 0, :3] = float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = torch.nn.functional.max_pool2d(x, size)
    with torch.no_grad():
        assert torch.equal(max_pool(x, size).nan_to_num(7.0), expected.nan_to_num(7.0))
    quantized = (x * 4).round() / 4  # fake quantization's ties among positive values, too
    upstream = torch.randn(expected.shape, generator=generator)
    upstream[upstream.abs() < 0.1] = -0.0
    for values in (x, quantized):
        gradients = []
        for pool in (max_pool, torch.nn.functional.max_pool2d):
            trained = values.clone().requires_grad_()
            pooled = pool(trained, size)
            pooled.backward(upstream)
            gradients.append((pooled.detach(), trained.grad))
        (pooled, gradient), (expected_pooled, expected_gradient) = gradients
        assert torch.equal(pooled.view(torch.int32), expected_pooled.view(torch.int32))
        assert torch.equal(gradient.view(torch.int32), expected_gradient.view(torch.int32))  # -0.0 included


def test_net_pools_before_the_relu_as_if_after_it_bit_for_bit():
    """Without a tap, Net pools before its ReLU (cheaper); an identity tap forces the ReLU first. Logits and
    every gradient are the same bits: ReLU commutes with max, and both send a window's gradient to its first
    maximum or nowhere."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Net(MODELS["bias"])
    images = torch.randn(16, 3, 32, 32, generator=generator)
    images[:4] = images[:4].round()  # equal inputs make equal outputs, ties in the pools' windows
    upstream = torch.randn(16, 10, generator=generator)
    runs = []
    for tap in (None, lambda name, x: x):
        model.zero_grad()
        logits = model(images, tap)
        logits.backward(upstream)
        runs.append([logits.detach(), *(parameter.grad for parameter in model.parameters())])
    for pooled_first, relu_first in zip(*runs, strict=True):
        assert torch.equal(pooled_first.view(torch.int32), relu_first.view(torch.int32))


@pytest.fixture(scope="module")
def dataset():
    import pickle

    members = {name: pickle.loads(payload) for name, payload in batches(train_per_batch=40, test=50).items()}
    train_x = np.concatenate([members[f"data_batch_{i}"]["data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    train_y = np.concatenate([members[f"data_batch_{i}"]["labels"] for i in range(1, 6)])
    return {"train_x": train_x, "train_y": train_y,
            "test_x": members["test_batch"]["data"].reshape(-1, 3, 32, 32),
            "test_y": np.array(members["test_batch"]["labels"])}


def test_same_seed_same_weights_bit_for_bit(dataset):
    params = TrainParams(epochs=2, batch_size=32, lr=0.004, weight_decay=0.0, flip=True, fraction=1.0)
    first, history = train("bias", dataset, params, seed=1)
    second, _ = train("bias", dataset, params, seed=1)
    other, _ = train("bias", dataset, params, seed=2)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert not torch.equal(first.fc1.weight, other.fc1.weight)
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[-1]["loss"] < history[0]["loss"]


def test_fraction_trains_on_a_seeded_subset(dataset):
    split = Split.of(dataset["train_x"], dataset["train_y"], torch.device("cpu"))
    quarter = training_subset(split, 0.25, seed=0)
    assert len(quarter) == 50 and torch.equal(quarter.y, training_subset(split, 0.25, seed=0).y)
    assert training_subset(split, 1.0, seed=0) is split


def test_diverging_training_stops_with_a_clear_error(dataset):
    # a learning rate that params.yaml's check refuses (train.lr <= 10), to reach the detector behind it
    params = TrainParams.__new__(TrainParams)
    for field, value in dict(epochs=1, batch_size=32, lr=1e12, weight_decay=0.0, flip=False, fraction=1.0).items():
        object.__setattr__(params, field, value)
    with pytest.raises(UserError, match="training diverged .* lower the learning rate"):
        train("float", dataset, params, seed=0)
