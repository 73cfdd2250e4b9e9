"""Fake quantization and its straight-through gradient; the EMA-learned ranges of the QAT network; the
distillation loss."""

import numpy as np
import pytest
import torch

from quantlab.architecture import ACTIVATIONS, LAYERS
from quantlab.evaluation import Split
from quantlab.model import Net, load_model, state_to_arrays
from quantlab.quantize.qat import QATNet, fake_quantize, learned_step_quantize
from quantlab.quantize.symmetric import activation_widths
from quantlab.training import TEMPERATURE, cross_entropy, distillation, distillation_loss, fit


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


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student logits (requiring a gradient), teacher logits and labels of a batch of 16."""
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(16, 10, generator=generator)).requires_grad_()
    return logits, 3 * torch.randn(16, 10, generator=generator), torch.randint(0, 10, (16,), generator=generator)


def test_distillation_at_alpha_0_is_the_cross_entropy_and_its_gradient_bit_for_bit():
    logits, teacher, labels = batch()
    loss = distillation_loss(logits, teacher, labels, 0.0)
    (gradient,) = torch.autograd.grad(loss, logits)
    plain = torch.nn.functional.cross_entropy(logits, labels)
    (plain_gradient,) = torch.autograd.grad(plain, logits)
    assert loss.item() == plain.item() and torch.equal(gradient, plain_gradient)
    assert cross_entropy(None, logits, labels).item() == plain.item()  # fit's criterion without distillation


def test_distillation_at_alpha_1_is_t2_kl_of_the_softened_outputs_zero_at_the_teacher():
    logits, teacher, labels = batch()
    t = TEMPERATURE
    p, q = torch.softmax(teacher / t, 1), torch.softmax(logits.detach() / t, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()  # KL(softmax(t / T) || softmax(z / T)), the batch's mean
    assert distillation_loss(logits, teacher, labels, 1.0).item() == pytest.approx(t ** 2 * kl.item(), rel=1e-5)
    same = teacher.clone().requires_grad_()
    loss = distillation_loss(same, teacher, labels, 1.0)  # the labels no longer count
    (gradient,) = torch.autograd.grad(loss, same)
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and gradient.abs().max() < 1e-6


def test_distillation_between_mixes_the_two_terms():
    logits, teacher, labels = batch(1)
    hard, soft = (distillation_loss(logits, teacher, labels, alpha).item() for alpha in (0.0, 1.0))
    assert distillation_loss(logits, teacher, labels, 0.25).item() == pytest.approx(0.75 * hard + 0.25 * soft,
                                                                                     rel=1e-6)


def test_distillation_criterion_freezes_the_teacher_and_trains_the_student_towards_it():
    torch.manual_seed(0)
    teacher, student = Net(), Net()
    teacher.train()
    criterion = distillation(teacher, 1.0)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    before = criterion(x, student(x), torch.zeros(8, dtype=torch.int64))
    before.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad.abs().max() > 0 for p in student.parameters())
    assert criterion(x, teacher(x), torch.zeros(8, dtype=torch.int64)).item() == pytest.approx(0.0, abs=1e-6)
    assert before.item() > 0


def test_a_fine_tune_distilled_at_alpha_0_is_the_plain_fine_tune_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    train = Split(torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 10, (96,), generator=generator))
    torch.manual_seed(0)
    trained = Net().state_dict()
    states = []
    for criterion in (cross_entropy, distillation(load_model(state_to_arrays(Net())), 0.0)):
        model = Net()
        model.load_state_dict(trained)
        network = QATNet(model, 4, activation_widths(4, 8), per_channel=True, unsigned_activations=True, decay=0.9,
                         start=1)
        fit(network, train, Split(train.x[:32], train.y[:32]), epochs=1, batch_size=32, lr=0.001, weight_decay=0.0,
            flip=True, seed=0, desc="qat", criterion=criterion)
        states.append(state_to_arrays(model))
    assert all(np.array_equal(states[0][name], states[1][name]) for name in states[0])
