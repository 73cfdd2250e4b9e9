"""Mixed precision: every layer's weight bits and input bits, chosen under a budget of size or of bit operations.

A configuration gives each layer an option, a (weight bits, input bits) pair from mixed_precision.weight_bits x
mixed_precision.activation_bits; the space holds all of them, (4 x 2)^5 = 32,768 by default. Size and BOPs
(quantlab.costs) are fractions of uniform 8/8. Per budget the choice is made in three steps:

1. Sensitivity, on the calibration images only: what each layer loses at each option, the other layers at the
   widest option. Two measures (`MEASURES`):
   - output: the increase of the logits' mean squared error against the float model's, the layer alone
     lowered (AIMET AMP's one-layer-at-a-time measurement, with the output error for the accuracy drop);
   - sqnr: the noise-to-signal ratio that quantization adds to the layer's operands,
     ||W - S_W q_W||^2 / ||W||^2 for its weights plus the same ratio of its input on the input's calibration
     histogram (HAWQ's ||Q(W) - W||^2 without its Hessian trace).
2. Prediction: a configuration's predicted loss is the sum of its layers' sensitivities (the additive model of
   HAWQ and AMP). The whole space is enumerated, so minimizing it under a budget is solved exactly: the integer
   program, by enumeration.
3. Choice, on the validation images: each measure's `candidates` best-predicted configurations within the
   budget are evaluated, and the most accurate is chosen (ties: the cheaper, then the first).
"""

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from quantlab import costs
from quantlab.architecture import LAYER_NAMES
from quantlab.quantize.symmetric import Setting

MEASURES = ("output", "sqnr")
KINDS = ("size", "bops")  # what a budget limits
TOLERANCE = 1e-9  # a configuration whose cost equals a budget, up to float rounding, is within it


@dataclass(frozen=True)
class Space:
    """Every configuration of the options, as option indices per layer (configurations, layers), with their
    relative costs."""

    options: tuple[Setting, ...]
    configurations: np.ndarray
    costs: dict[str, np.ndarray]  # by kind, (configurations,)

    @classmethod
    def of(cls, weight_bits: list[int], activation_bits: list[int]) -> "Space":
        options = tuple(Setting(w, a) for w in sorted(weight_bits) for a in sorted(activation_bits))
        configurations = np.array(list(itertools.product(range(len(options)), repeat=len(LAYER_NAMES))), np.int64)
        bits = np.array([[o.weight_bits, o.activation_bits] for o in options])[configurations]
        return cls(options, configurations, dict(zip(KINDS, costs.relative(bits[..., 0], bits[..., 1]), strict=True)))

    @property
    def widest(self) -> int:
        """The option of most weight bits and then most input bits."""
        return max(range(len(self.options)),
                   key=lambda i: (self.options[i].weight_bits, self.options[i].activation_bits))

    def settings(self, index: int) -> dict[str, Setting]:
        return {layer: self.options[o] for layer, o in zip(LAYER_NAMES, self.configurations[index], strict=True)}

    def layer_bits(self, index: int) -> dict[str, list[int]]:
        """Configuration `index` as quant.layer_bits writes it."""
        return {layer: [s.weight_bits, s.activation_bits] for layer, s in self.settings(index).items()}

    def index(self, layer_options: list[int]) -> int:
        """The index of the configuration with these option indices (the enumeration is in base len(options))."""
        return int(np.ravel_multi_index(tuple(layer_options), (len(self.options),) * len(LAYER_NAMES)))

    def uniform(self, option: int) -> int:
        return self.index([option] * len(LAYER_NAMES))

    def predicted(self, sensitivity: np.ndarray) -> np.ndarray:
        """The additive prediction of every configuration's loss from a (layers, options) sensitivity."""
        return sensitivity[np.arange(len(LAYER_NAMES)), self.configurations].sum(1)


def proposals(predicted: np.ndarray, cost: np.ndarray, budget: float, count: int) -> list[int]:
    """The `count` configurations of least predicted loss whose `cost` is within `budget`; among equal
    predictions the costlier first (its bits are free), then the first."""
    within = np.flatnonzero(cost <= budget + TOLERANCE)
    order = np.lexsort((within, -cost[within], predicted[within]))
    return within[order[:count]].tolist()


@dataclass(frozen=True)
class Choice:
    index: int  # the chosen configuration
    proposed_by: tuple[str, ...]  # the measures whose candidates held it
    validated: dict[int, float]  # every candidate's validation accuracy


def choose(predictions: dict[str, np.ndarray], cost: np.ndarray, budget: float, count: int,
           validation_accuracy: Callable[[int], float]) -> Choice | None:
    """The configuration within `budget` of the most accurate on validation among each measure's `count` best
    predicted (`predictions` by measure); None where no configuration is within the budget."""
    proposed = {measure: proposals(predicted, cost, budget, count) for measure, predicted in predictions.items()}
    candidates = list(dict.fromkeys(index for indices in proposed.values() for index in indices))
    if not candidates:
        return None
    validated = {index: validation_accuracy(index) for index in candidates}
    best = min(candidates, key=lambda index: (-validated[index], cost[index], index))
    return Choice(best, tuple(m for m, indices in proposed.items() if best in indices), validated)


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two equally long samples: (concordant - discordant) pairs over the geometric mean of
    the pairs untied in x and untied in y."""
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    upper = np.triu_indices(len(x), 1)
    dx, dy = dx[upper], dy[upper]
    untied = np.sqrt(float(np.count_nonzero(dx)) * float(np.count_nonzero(dy)))
    return float((dx * dy).sum() / untied) if untied else 0.0


def frontier(cost: np.ndarray, accuracy: np.ndarray) -> list[int]:
    """The Pareto front: the configurations that no other beats in accuracy at no more cost, by cost."""
    front, best = [], -np.inf
    for index in np.lexsort((-accuracy, cost)):
        if accuracy[index] > best:
            front.append(int(index))
            best = accuracy[index]
    return front
