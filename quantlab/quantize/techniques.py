"""The post-training techniques, a registry like the calibration methods': one class per technique with its
name, its labels, its switch in params.yaml and its hook. quantlab.quantize.ptq runs the techniques switched on,
in the order of their phases:

    prepare   the float state, before anything is quantized         (cross-layer equalization)
    round     each block's integer weights, instead of the nearest  (AdaRound per layer; BRECQ, QDrop per block)
    correct   each layer's bias, once its weights are integers      (bias correction)

The techniques stage compares no technique, each technique alone, and the correcting techniques on top of every
combination of the others (at most one rounding in each): what each buys alone, and what correction adds.

A new technique is a subclass with @register (here or in a module imported before the stages run) and its
switch: a rounding technique is a value of ptq.rounding, which lists them by itself; a prepare or correct
technique is switched on by the boolean ptq.<name>. The formulas are in quantlab.quantize.ptq, whose
functions import torch: the hooks import them when they run, so that the report and the param check read this
registry without torch.
"""

import itertools

from quantlab.architecture import LAYERS

PREPARE, ROUND, CORRECT = "prepare", "round", "correct"
PHASES = (PREPARE, ROUND, CORRECT)
NEAREST = "nearest"  # the rounding of no technique at all, the lab's, and the name of the empty combination
TECHNIQUES: dict[str, "Technique"] = {}


def register(cls: type["Technique"]) -> type["Technique"]:
    TECHNIQUES[cls.name] = cls()
    return cls


class Technique:
    """Base class. `phase` says which hook a technique implements; the others leave everything as it is:

        prepare(state) -> state                                         the float state, arrays by name
        blocks(ptq) -> tuple of tuples of layers                         the blocks `round` reconstructs
        round(block, ptq, generator) -> ptq.Rounded or None              a block's integers (and activations)
        correct(layer, output, target, bias) -> (bias, output)          on the calibration images
    """

    name = ""
    label = ""  # short, for tables and figures
    title = ""  # the report's words
    phase = PREPARE
    combined = True  # the techniques stage also compares it combined with the others, not only alone
    against = ""  # the technique it is measured against too, beside nearest rounding (its cell alone against that one)

    def enabled(self, ptq) -> bool:
        """Whether params.yaml's `ptq` section switches it on."""
        return ptq.rounding == self.name if self.phase == ROUND else getattr(ptq, self.name)

    def prepare(self, state):
        return state

    def blocks(self, ptq):
        return tuple((layer,) for layer in LAYERS)  # one layer at a time

    def round(self, block, ptq, generator):
        return None  # not a rounding: the block's weights are rounded by another technique, or to the nearest

    def correct(self, layer, output, target, bias):
        return bias, output


@register
class Equalize(Technique):
    """Cross-layer equalization (quantlab.quantize.ptq.equalize)."""

    name, label, title, phase = "equalize", "CLE", "cross-layer equalization", PREPARE

    def prepare(self, state):
        from quantlab.quantize.ptq import equalize

        return equalize(state)[0]


@register
class BiasCorrection(Technique):
    """Empirical bias correction: the layer's mean output error per output channel, subtracted from its bias."""

    name, label, title, phase = "bias_correction", "BC", "bias correction", CORRECT

    def correct(self, layer, output, target, bias):
        from quantlab.quantize.ptq import correct_bias

        return correct_bias(layer, output, target, bias)


@register
class AdaRound(Technique):
    """Learned rounding (quantlab.quantize.ptq.adaround)."""

    name, label, title, phase = "adaround", "AdaRound", "learned rounding (AdaRound)", ROUND

    def round(self, block, ptq, generator):
        from quantlab.quantize.ptq import layer_wise

        return layer_wise(block, ptq, generator)


@register
class BRECQ(Technique):
    """Block reconstruction with a Fisher-weighted output error (quantlab.quantize.ptq.block_wise), on the blocks
    of ptq.blocks."""

    name, label, title, phase = "brecq", "BRECQ", "block reconstruction (BRECQ)", ROUND
    # Compared alone: it fits each block's whole output, its mean included (what bias correction would add),
    # and each of its cells costs as much as the rest of the comparison.
    combined = False
    against = "adaround"  # block against layer reconstruction

    def drop(self, ptq) -> float:
        return 0.0

    def blocks(self, ptq):
        by_name = {layer.name: layer for layer in LAYERS}
        return tuple(tuple(by_name[name] for name in block) for block in ptq.blocks)

    def round(self, block, ptq, generator):
        from quantlab.quantize.ptq import block_wise

        return block_wise(block, self.drop(ptq), ptq, generator)


@register
class QDrop(BRECQ):
    """BRECQ with each activation's quantization dropped with probability ptq.drop while it learns."""

    name, label, title, phase = "qdrop", "QDrop", "block reconstruction with dropped quantization (QDrop)", ROUND
    against = "brecq"  # with against without dropping

    def drop(self, ptq) -> float:
        return ptq.drop


def ordered(techniques) -> tuple[Technique, ...]:
    """`techniques` in the order they apply: by phase, then as registered."""
    return tuple(sorted(techniques, key=lambda t: (PHASES.index(t.phase), list(TECHNIQUES).index(t.name))))


def switched_on(ptq) -> tuple[Technique, ...]:
    """The techniques params.yaml's `ptq` switches on, in the order they apply: () quantizes as the lab does."""
    return ordered(t for t in TECHNIQUES.values() if t.enabled(ptq))


def roundings() -> tuple[str, ...]:
    """The values of ptq.rounding: nearest, or a rounding technique."""
    return (NEAREST, *(t.name for t in TECHNIQUES.values() if t.phase == ROUND))


def combinations() -> list[tuple[Technique, ...]]:
    """The techniques stage's combinations, each in the order it applies: none, each technique alone, then the
    correcting techniques on top of every combination of the others that combine, with at most one rounding."""
    alone = [(t,) for t in TECHNIQUES.values()]
    others = [t for t in TECHNIQUES.values() if t.phase != CORRECT and t.combined]
    correcting = tuple(t for t in TECHNIQUES.values() if t.phase == CORRECT)
    combined = [subset + correcting for size in range(1, len(others) + 1)
                for subset in itertools.combinations(others, size)
                if sum(t.phase == ROUND for t in subset) <= 1] if correcting else []
    return [(), *alone, *(ordered(c) for c in combined)]


def pairs() -> list[tuple[str, str]]:
    """(technique, the technique it is measured against) for every technique that names one."""
    return [(t.name, t.against) for t in TECHNIQUES.values() if t.against]


def combination_name(techniques) -> str:
    """A combination's name in files and metrics: "adaround+bias_correction", or "nearest" for none."""
    return "+".join(t.name for t in techniques) or NEAREST


def combination_label(name: str) -> str:
    """How tables and figures print a combination's name: "adaround+bias_correction" -> "AdaRound + BC"."""
    return NEAREST if name == NEAREST else " + ".join(TECHNIQUES[part].label for part in name.split("+"))
