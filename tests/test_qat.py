"""Fake quantization and its straight-through gradient; the EMA-learned ranges of the QAT network."""

import pytest
import torch

from quantlab.architecture import ACTIVATIONS, LAYERS
from quantlab.model import Net
from quantlab.quantize.qat import QATNet, fake_quantize, learned_step_quantize
from quantlab.quantize.symmetric import activation_widths


def test_forward_rounds_half_to_even_and_clamps():
    x = torch.tensor([0.25, 0.75, 1.25, -0.25, -0.75, 0.3, 3.5, 3.75, 10.0, -4.0, -4.25, -10.0])
    # scale 0.5, range [-8, 7] (4 bits): representable [-4.0, 3.5]
    expected = [0.0, 1.0, 1.0, -0.0, -1.0, 0.5, 3.5, 3.5, 3.5, -4.0, -4.0, -4.0]
    assert fake_quantize(x, torch.tensor(0.5), 4).tolist() == expected


def test_gradient_passes_inside_and_at_the_range_and_stops_beyond():
    x = torch.tensor([0.1, 3.5, 3.50001, 10.0, -4.0, -4.00001, -10.0, 0.0], requires_grad=True)
    fake_quantize(x, torch.tensor(0.5), 4).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]


def test_gradient_is_straight_through_at_rounding_ties():
    x = torch.tensor([0.25, 0.75], requires_grad=True)  # ties: forward rounds, backward ignores the rounding
    (fake_quantize(x, torch.tensor(0.5), 4) * torch.tensor([2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [2.0, 3.0]


def test_ema_ranges_and_delayed_activation_quantization():
    torch.manual_seed(0)
    network = QATNet(Net(), 8, activation_widths(8), per_channel=False, unsigned_activations=False, decay=0.5, start=2,
                     ranges="minmax")
    network.train()
    batches = [torch.rand(4, 3, 32, 32) * 2 - 1 for _ in range(3)]
    for x in batches:
        network(x)
    # the input's range: T = max|x| at the first batch, then T <- 0.5 T + 0.5 max|x|
    observed = [x.abs().max().item() for x in batches]
    expected = 0.25 * observed[0] + 0.25 * observed[1] + 0.5 * observed[2]
    assert network.learned_thresholds()["input"] == pytest.approx(expected, rel=1e-6)
    assert network.steps.item() == 3
    network.eval()  # quantized from `start` on, and always in evaluation
    x = batches[0]
    assert not torch.allclose(network(x), network.model(x))


def test_logits_take_their_own_width():
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    levels = {}
    for logit_bits in (None, 8):
        torch.manual_seed(0)
        network = QATNet(Net(), 8, activation_widths(2, logit_bits), per_channel=False, unsigned_activations=False,
                         decay=0.5, start=0, ranges="minmax")
        network(x)  # learns the ranges
        network.eval()
        levels[logit_bits] = len(torch.unique(network(x)))  # the fake-quantized logits
    assert levels[None] <= 4 < 16 < levels[8]  # 2 bits as every activation; 8 bits of their own


def test_weights_are_fake_quantized_per_channel():
    torch.manual_seed(0)
    network = QATNet(Net(), 2, activation_widths(8), per_channel=True, unsigned_activations=False, decay=0.9, start=0)
    weight = network.weight(next(layer for layer in LAYERS if layer.name == "fc2"))
    for row in weight:
        assert len(torch.unique(row)) <= 4  # 2 bits: at most -2, -1, 0, 1 times the row's scale


def test_learned_step_forward_is_fake_quantization_and_its_gradient_is_lsqs():
    x = torch.tensor([0.1, 0.3, 0.74, 3.4, 5.0, -1.1, -6.0], requires_grad=True)
    step = torch.tensor(0.5, requires_grad=True)
    out = learned_step_quantize(x, step, -8, 7, 0.25)
    assert out.tolist() == fake_quantize(x.detach(), torch.tensor(0.5), 4).tolist()
    out.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0]  # straight through inside, 0 beyond
    v = x.detach() / 0.5  # d/dS: round(x/S) - x/S inside, qmin or qmax beyond, times the gradient scale
    inside = torch.where(v > 7, torch.tensor(7.0), torch.where(v < -8, torch.tensor(-8.0), v.round() - v))
    assert step.grad.item() == pytest.approx(0.25 * inside.sum().item(), rel=1e-6)


def test_learned_step_sizes_start_from_the_initial_thresholds_and_train():
    torch.manual_seed(0)
    widths = activation_widths(4, 8)
    initial = {name: 0.5 + 0.1 * i for i, name in enumerate(ACTIVATIONS)}  # small: the signal reaches fc3
    network = QATNet(Net(), 4, widths, per_channel=True, unsigned_activations=True, decay=0.9, start=0,
                     ranges="lsq", initial=initial)
    assert network.learned_thresholds() == pytest.approx(initial, rel=1e-6)
    assert network.step_sizes in set(network.parameters())
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    x, y = torch.rand(16, 3, 32, 32) * 2 - 1, torch.randint(0, 10, (16,))
    torch.nn.functional.cross_entropy(network(x), y).backward()
    assert network.step_sizes.grad.abs().min() > 0  # every activation's step size learns
    optimizer.step()
    assert network.learned_thresholds() != pytest.approx(initial, rel=1e-6)
