"""Stage mixed_precision: each layer's weight bits and input bits, chosen per budget of size and of bit operations
(quantlab.mixed_precision), on the float model, as `mixed_precision` says: sensitivities on the calibration
images, choices on the validation images, every chosen network then measured on the test images against the float
model, and exported and run in the integer engine, the standalone runner and ONNX Runtime. With
`mixed_precision.exhaustive`, every configuration of the weight bits with the inputs at the widest activation
bits is evaluated too: the true frontier, Kendall's tau of each sensitivity measure and the allocator's regret.
Where the `ptq` params switch post-training techniques on, the chosen networks and the uniform widths are built
with them, each layer at its own bits, after the choice (the candidates are compared with nearest rounding).

    metrics/mixed_precision.json               the choices, the uniform widths, the float model; the exhaustive
                                               run's summary (null without it)
    compare/mixed_precision/sensitivity.csv    every layer's sensitivity at every option, by measure
    compare/mixed_precision/configurations.csv every configuration evaluated: bits per layer, costs, accuracies
"""

import dataclasses
import time

import numpy as np
import onnxruntime
import pandas as pd
import torch

from quantlab import costs, paths
from quantlab.architecture import LAYER_NAMES, LAYERS, input_of, load_state
from quantlab.config import Params
from quantlab.data import calibration_images
from quantlab.evaluation import Split, evaluation_images, outputs, predict
from quantlab.inference import onnx_graph, runner
from quantlab.inference.engine import FixedPointEngine
from quantlab.inference.export import integer_network, package
from quantlab.inference.fixed_point import GEMMLOWP, ONNXRUNTIME
from quantlab.inference.float_rescale import FloatRescaleNet
from quantlab.io import save_csv, save_json
from quantlab.mixed_precision import KINDS, MEASURES, TOLERANCE, Space, choose, frontier, kendall_tau, proposals
from quantlab.model import load_model
from quantlab.profiling import TensorProfile, load_profiles
from quantlab.quantize.calibration import TRAINED, calibrator, diagnose
from quantlab.quantize.network import Provenance, QuantizedNetwork, activations_of, quantize_network
from quantlab.quantize.symmetric import (
    activation_signs,
    activation_widths,
    channel_shaped,
    quantize_weight,
    weight_scales,
    weight_widths,
)
from quantlab.quantize.techniques import switched_on
from quantlab.stage import load_params, run_main
from quantlab.statistics import accuracy, paired

LOGIT_BITS = 8
SENSITIVITY_IMAGES = 1024  # the first calibration images measure the output error (as AdaRound's, 1024)
RUNNER_IMAGES = 1000  # test images the NumPy runner checks each chosen network on (it is 20x slower)


class Configurations:
    """The networks of a Space on the float model: built on demand, their predictions kept."""

    def __init__(self, space: Space, state: dict[str, np.ndarray], profiles: dict[str, TensorProfile],
                 params: Params):
        settings = params.mixed_precision
        self.space, self.state, self.per_channel, self.params = space, state, settings.per_channel, params
        self.signs = activation_signs(settings.unsigned_activations)
        self.method = calibrator(settings.calib, params.quant.percentile)
        self.thresholds = {bits: self.method.thresholds(profiles, activation_widths(bits), self.signs)
                           for bits in {*settings.activation_bits, LOGIT_BITS}}
        # each layer's weight scale at each of its bits, once: a configuration only picks them
        self.weight_scales = {bits: weight_scales(state, dict.fromkeys(LAYER_NAMES, bits), self.per_channel,
                                                  params.ptq.weight_scale)
                              for bits in {*settings.weight_bits, LOGIT_BITS}}
        self.provenance = Provenance("float", settings.calib, TRAINED, paths.model("float").as_posix())
        self.predictions: dict[tuple[int, str], torch.Tensor] = {}
        self.techniques = switched_on(params.ptq)
        self.start = None
        if self.techniques:  # torch's reconstruction, imported only when a technique is on
            from quantlab.quantize.ptq import prepare

            self.start = prepare(state, calibration_images(params), profiles, self.techniques, params.profile.bins)

    def network(self, index: int) -> QuantizedNetwork:
        layer_bits = self.space.layer_bits(index)
        widths = activation_widths(LOGIT_BITS, LOGIT_BITS, layer_bits)
        thresholds = {name: self.thresholds[bits][name] for name, bits in widths.items()}
        weight_bits = weight_widths(LOGIT_BITS, layer_bits)
        return quantize_network(self.state, activations_of(thresholds, widths, self.signs), weight_bits,
                                self.per_channel, self.provenance,
                                scales={name: self.weight_scales[bits][name] for name, bits in weight_bits.items()})

    def final(self, index: int) -> QuantizedNetwork:
        """The network of a configuration with the post-training techniques that the `ptq` params switch on, each
        layer at its own bits (AdaRound at the layer's weight bits); without any, `network`'s."""
        if not self.techniques:
            return self.network(index)
        from quantlab.quantize.ptq import apply_techniques

        layer_bits = self.space.layer_bits(index)
        provenance = dataclasses.replace(self.provenance, techniques=[t.name for t in self.techniques])
        return apply_techniques(self.start, self.method, activation_widths(LOGIT_BITS, LOGIT_BITS, layer_bits),
                                self.signs, weight_widths(LOGIT_BITS, layer_bits), self.per_channel, self.techniques,
                                self.params.ptq, self.params.seed, provenance)[0]

    def predict(self, index: int, part: str, split: Split) -> torch.Tensor:
        if (index, part) not in self.predictions:
            self.predictions[index, part] = predict(FloatRescaleNet(self.network(index)), split)
        return self.predictions[index, part]

    def predict_all(self, indices: np.ndarray, part: str, split: Split) -> None:
        """The predictions of many configurations, layer by layer: the output of a layer depends only on the
        options of the layers up to it and on the next layer's input bits, so each distinct such prefix is
        computed once (4 + 16 + 64 + 256 + 1024 layers for every configuration of four weight widths, instead of
        5 x 1024). The same arithmetic as `predict`, so the same predictions."""
        options = self.space.configurations[indices]
        input_bits = np.array([o.activation_bits for o in self.space.options])[options]

        def descend(rows: list[int], depth: int, q: torch.Tensor | None) -> None:
            groups: dict[tuple, list[int]] = {}
            for row in rows:
                following = int(input_bits[row, depth + 1]) if depth + 1 < len(LAYERS) else 0
                groups.setdefault((*options[row, :depth + 1], following), []).append(row)
            for group in groups.values():
                net = FloatRescaleNet(self.network(int(indices[group[0]])))
                output = net.layer(LAYERS[depth], net.quantized_input(split.x) if q is None else q)
                if depth + 1 < len(LAYERS):
                    descend(group, depth + 1, output)
                else:
                    self.predictions |= {(int(indices[row]), part): output.argmax(1) for row in group}

        with torch.no_grad():
            descend(list(range(len(indices))), 0, None)


def sensitivities(configurations: Configurations, calibration: Split, float_logits: torch.Tensor,
                  profiles: dict[str, TensorProfile]) -> dict[str, np.ndarray]:
    """(layers, options) per measure of quantlab.mixed_precision, each relative to the widest option."""
    space, state = configurations.space, configurations.state
    widest = space.widest

    def output_error(index: int) -> float:
        network = configurations.network(index)
        logits = outputs(FloatRescaleNet(network), calibration) * network.activations[LAYER_NAMES[-1]].scale
        return float((logits - float_logits.double()).square().mean())

    def noise_to_signal(layer: str, option: int) -> float:
        setting = space.options[option]
        weight = state[f"{layer}.weight"].astype(np.float64)
        q, scale = quantize_weight(weight, setting.weight_bits, configurations.per_channel,
                                   configurations.weight_scales[setting.weight_bits][layer])
        weights = np.square(weight - q * channel_shaped(scale, weight.ndim, 0)).sum() / np.square(weight).sum()
        name = input_of(layer)
        sqnr = diagnose(profiles[name], configurations.thresholds[setting.activation_bits][name],
                        setting.activation_bits, configurations.signs[name])["sqnr_db"]
        return float(weights + (0.0 if sqnr is None else 10 ** (-sqnr / 10)))

    base = output_error(space.uniform(widest))
    result = {measure: np.zeros((len(LAYER_NAMES), len(space.options))) for measure in MEASURES}
    for i, layer in enumerate(LAYER_NAMES):
        for option in range(len(space.options)):
            lowered = [widest] * len(LAYER_NAMES)
            lowered[i] = option
            result["output"][i, option] = output_error(space.index(lowered)) - base
            result["sqnr"][i, option] = noise_to_signal(layer, option) - noise_to_signal(layer, widest)
    return result


def deployed(network: QuantizedNetwork, classes: list[str], headroom: bool, test: Split) -> dict:
    """A chosen network exported: the engine's test accuracy, and how many logits the runner (on the first
    RUNNER_IMAGES test images) and ONNX Runtime (in the engine's onnxruntime rounding) give identically."""
    manifest, arrays = integer_network(network, classes, headroom, GEMMLOWP)
    manifest, _, model = package(manifest, arrays)
    engine = outputs(FixedPointEngine(manifest, arrays), test).numpy()
    by_runner = runner.run(manifest, arrays, test.x[:RUNNER_IMAGES].numpy())
    by_onnxruntime = onnx_graph.run(onnx_graph.session(model), manifest, test.x.numpy())
    in_rounding = outputs(FixedPointEngine(manifest, arrays, ONNXRUNTIME), test).numpy()
    return {"engine_accuracy": accuracy(engine.argmax(1), test.y.numpy()),
            "runner_identical_logits": float(np.mean(by_runner == engine[:RUNNER_IMAGES])),
            "onnxruntime_identical_logits": float(np.mean(by_onnxruntime == in_rounding)),
            "onnxruntime": onnxruntime.__version__}


def record(space: Space, index: int) -> dict:
    return {"layer_bits": space.layer_bits(index), **{kind: float(space.costs[kind][index]) for kind in KINDS}}


def allocate(configurations: Configurations, predictions: dict[str, np.ndarray], budgets: list[float],
             candidates: int, choice_split: tuple[str, Split], restrict: np.ndarray | None = None) -> list[dict]:
    """Per budget kind and budget, the configuration chosen on `choice_split` (see quantlab.mixed_precision), or
    None where none fits; `restrict`: the configurations allowed (all without it)."""
    part, split = choice_split
    costs_of = {kind: configurations.space.costs[kind] if restrict is None else
                np.where(restrict, configurations.space.costs[kind], np.inf) for kind in KINDS}
    # every candidate run at once, its shared layers once (Configurations.predict_all)
    configurations.predict_all(np.array(sorted({index for kind in KINDS for budget in budgets
                                                for predicted in predictions.values()
                                                for index in proposals(predicted, costs_of[kind], budget, candidates)}),
                                        np.int64), part, split)
    chosen = []
    for kind in KINDS:
        cost = costs_of[kind]
        for budget in budgets:
            choice = choose(predictions, cost, budget, candidates,
                            lambda index: accuracy(configurations.predict(index, part, split), split.y))
            chosen.append({"kind": kind, "budget": budget, "choice": choice})
    return chosen


def main() -> None:
    began = time.perf_counter()
    params = load_params()
    settings = params.mixed_precision
    space = Space.of(settings.weight_bits, settings.activation_bits)
    splits, classes = evaluation_images(params.data.validation, params.seed)
    choice_split = next((part, split) for part, split in splits.items())  # validation, or test where none is held out
    test = splits["test"]
    state = load_state(paths.model("float"), "float")
    profiles = load_profiles(paths.profile("float"), "activations")
    configurations = Configurations(space, state, profiles, params)
    images = calibration_images(params)[:SENSITIVITY_IMAGES]
    calibration = Split.of(images, np.zeros(len(images)), torch.device("cpu"))
    float_model = load_model(state)
    sensitivity = sensitivities(configurations, calibration, outputs(float_model, calibration), profiles)
    predictions = {measure: space.predicted(value) for measure, value in sensitivity.items()}
    print(f"sensitivities: {time.perf_counter() - began:.1f} s", flush=True)
    chosen = allocate(configurations, predictions, settings.budgets, settings.candidates, choice_split)
    print(f"allocation: {time.perf_counter() - began:.1f} s", flush=True)

    float_predictions = predict(float_model, test)

    def measured(index: int, network: QuantizedNetwork) -> dict:
        """A configuration's costs, its validation accuracy as the choice saw it (nearest rounding) and its
        `network`'s (`Configurations.final`) on test."""
        predicted = configurations.predict(index, "test", test) if not configurations.techniques else \
            predict(FloatRescaleNet(network), test)
        validation = configurations.predict(index, *choice_split) if "validation" in splits else None
        return {**record(space, index), "bytes": costs.of_network(network).bytes,
                "validation_accuracy": None if validation is None else accuracy(validation, choice_split[1].y),
                "test_accuracy": accuracy(predicted, test.y),
                "vs_float": paired((predicted == test.y).numpy(), (float_predictions == test.y).numpy())}

    results = []
    for entry in chosen:
        choice = entry["choice"]
        network = None if choice is None else configurations.final(choice.index)
        results.append({"kind": entry["kind"], "budget": entry["budget"], "choice": None if choice is None else {
            **measured(choice.index, network), "proposed_by": list(choice.proposed_by),
            "candidates": len(choice.validated), **deployed(network, list(classes), params.export.headroom, test)}})
        print(f"{entry['kind']} <= {entry['budget']:g}: "
              f"{'none fits' if choice is None else space.layer_bits(choice.index)}", flush=True)
    uniform = {space.options[o].name: measured(space.uniform(o), configurations.final(space.uniform(o)))
               for o in range(len(space.options))}
    exhaustive = ground_truth(configurations, predictions, settings, choice_split, test) if settings.exhaustive \
        else None
    save_json(paths.MIXED_PRECISION, {
        "choices_on": choice_split[0], "float": {"test_accuracy": accuracy(float_predictions, test.y)},
        "techniques": [t.name for t in configurations.techniques],
        "space": {"weight_bits": sorted(settings.weight_bits), "activation_bits": sorted(settings.activation_bits),
                  "configurations": len(space.configurations), "per_channel": settings.per_channel,
                  "unsigned_activations": settings.unsigned_activations, "calib": settings.calib,
                  "logit_bits": LOGIT_BITS, "reference": dataclasses.asdict(costs.REFERENCE)},
        "budgets": results, "uniform": uniform, "exhaustive": exhaustive})
    save_csv(paths.MIXED_PRECISION_DIR / "sensitivity.csv", pd.DataFrame([
        {"measure": measure, "layer": layer, "weight_bits": option.weight_bits, "input_bits": option.activation_bits,
         "sensitivity": float(value[i, o])}
        for measure, value in sensitivity.items() for i, layer in enumerate(LAYER_NAMES)
        for o, option in enumerate(space.options)]))
    evaluated = sorted({index for index, _ in configurations.predictions})
    save_csv(paths.MIXED_PRECISION_DIR / "configurations.csv", pd.DataFrame([
        {"configuration": index, **{layer: s.label for layer, s in space.settings(index).items()},
         **{kind: float(space.costs[kind][index]) for kind in KINDS},
         **{f"predicted_{measure}": float(predictions[measure][index]) for measure in MEASURES},
         **{f"{part}_accuracy": accuracy(configurations.predictions[index, part], split.y)
            if (index, part) in configurations.predictions else None for part, split in splits.items()}}
        for index in evaluated]))
    print(f"mixed precision: {time.perf_counter() - began:.1f} s")


def ground_truth(configurations: Configurations, predictions: dict[str, np.ndarray], settings, choice_split,
                 test: Split) -> dict:
    """Every configuration of the weight bits with the inputs at the widest activation bits, evaluated on the
    validation and test images: Kendall's tau of each measure's prediction against the test accuracies, the true
    frontiers, and per budget the allocator's choice within these configurations against the best on test."""
    space = configurations.space
    widest_input = max(settings.activation_bits)
    inputs = np.array([o.activation_bits for o in space.options])[space.configurations]
    restrict = (inputs == widest_input).all(1)
    indices = np.flatnonzero(restrict)
    began = time.perf_counter()
    for part, split in {choice_split[0]: choice_split[1], "test": test}.items():
        configurations.predict_all(indices, part, split)
        print(f"exhaustive: {len(indices)} configurations on the {part} images, {time.perf_counter() - began:.0f} s",
              flush=True)
    right = {index: (configurations.predictions[index, "test"] == test.y).numpy() for index in indices}
    test_accuracy = np.array([accuracy(configurations.predictions[index, "test"], test.y) for index in indices])
    allocated = allocate(configurations, predictions, settings.budgets, settings.candidates, choice_split, restrict)
    regrets = []
    for entry in allocated:
        cost = space.costs[entry["kind"]][indices]
        within = np.flatnonzero(cost <= entry["budget"] + TOLERANCE)
        if entry["choice"] is None or not len(within):
            regrets.append({"kind": entry["kind"], "budget": entry["budget"], "regret": None})
            continue
        best = int(indices[within[np.argmax(test_accuracy[within])]])
        chosen = entry["choice"].index
        regrets.append({"kind": entry["kind"], "budget": entry["budget"],
                        "chosen": record(space, chosen) | {"test_accuracy": float(test_accuracy[indices == chosen][0])},
                        "best": record(space, best) | {"test_accuracy": float(test_accuracy[indices == best][0])},
                        "regret": paired(right[best], right[chosen])})
    return {"configurations": len(indices), "input_bits": widest_input,
            "kendall_tau": {measure: round(kendall_tau(-predictions[measure][indices], test_accuracy), 4)
                            for measure in MEASURES},
            "frontier": {kind: [record(space, int(indices[i])) | {"test_accuracy": round(float(test_accuracy[i]), 2)}
                                for i in frontier(space.costs[kind][indices], test_accuracy)] for kind in KINDS},
            "regret": regrets}


if __name__ == "__main__":
    run_main(main)
