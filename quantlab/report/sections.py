"""What the report's template prints, from the run's artifacts (`Run`, which stage report reads): one builder per
part of the template, named as its file in reports/sections/ (`shared` for every part; `appendix` for the end
of report.j2; summary.j2, the Results, Discussion and Conclusion, reads the others' values). `context` merges
them; no two builders give the same key."""

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantlab.config import Params
from quantlab.mixed_precision import KINDS, MEASURES
from quantlab.profiling import TensorProfile
from quantlab.quantize.calibration import FINE_TUNED, LEARNED_STEP, METHODS, calibrator
from quantlab.quantize.network import QuantizedNetwork
from quantlab.quantize.symmetric import Setting, activation_signs, activation_widths, int_range
from quantlab.quantize.techniques import TECHNIQUES
from quantlab.report import figures, tables
from quantlab.statistics import standard_error


@dataclass(frozen=True)
class Run:
    """The artifacts of a finished run that the report reads."""

    params: Params
    network: QuantizedNetwork  # the float model's quantized network
    bias_network: QuantizedNetwork  # the bias model's
    accuracy: dict  # metrics/accuracy.json
    differences: dict  # metrics/differences.json
    weights: dict[str, TensorProfile]  # the float model's weight profiles
    activations: dict[str, TensorProfile]  # and activation profiles
    calibration: dict  # metrics/calibration.json
    calibration_layers: pd.DataFrame  # compare/layers.csv
    training_images: int  # in the dataset, before the validation images are held out
    test_images: int
    export: tuple[dict, dict[str, np.ndarray]]  # the float model's export: manifest and arrays
    engine: dict  # metrics/engine.json
    onnxruntime_version: str
    techniques: dict  # metrics/techniques.json
    technique_layers: pd.DataFrame  # compare/techniques.csv
    mixed_precision: dict  # metrics/mixed_precision.json


def shared(run: Run) -> dict:
    """Every section: the params, the accuracies and differences, and how a difference prints."""
    differences = run.differences
    return {"report": run.params.report, "params": run.params, "acc": run.accuracy, "diff": differences,
            "variants": tables.variants(run.accuracy, differences), "delta": tables.difference,
            "verdict": tables.verdict, "p_value": tables.p_value, "standard_error": standard_error,
            "calib": run.network.provenance.calib, "against": f"vs_best_{differences['choices_on']}",
            "chosen": [f"{row['best']} at {Setting.parse(width).label}"
                       for width, row in differences["calibration"].items()],
            "techniques": [TECHNIQUES[name].title for name in run.network.provenance.techniques],
            "methods": [(name, calibrator(name, run.params.quant.percentile).summary)
                        for name in run.params.compare.methods]}


def trained_on(run: Run) -> int:
    """The training images the models saw: those not held out, as training.training_subset takes a fraction."""
    held_in = run.training_images - run.params.data.validation
    return held_in if run.params.train.fraction >= 1 else max(1, round(run.params.train.fraction * held_in))


def initial_setup(run: Run) -> dict:
    return {"architecture": tables.architecture(), "train_images": trained_on(run), "test_images": run.test_images}


def weights(run: Run) -> dict:
    """Weights and Quantized weights."""
    qmin, qmax = int_range(run.params.quant.weight_bits)
    return {"weight_ranges": tables.ranges(run.weights, "layer"),
            "weight_verdicts": tables.sigma3_verdicts(run.weights),
            "weight_scales": tables.weight_scales(run.weights, run.network), "qmin_w": qmin, "qmax_w": qmax}


def activations(run: Run) -> dict:
    """Activations and Quantized activations."""
    qmin, qmax = int_range(run.params.quant.activation_bits)
    return {"activation_ranges": tables.ranges(run.activations, "tensor"),
            "activation_verdicts": tables.sigma3_verdicts(run.activations),
            "activation_scales": tables.activation_scales(run.network), "qmin_a": qmin, "qmax_a": qmax,
            "factors": {name: tables.layer_factors(run.network, name) for name in ("conv1", "conv2")}}


def quantized_bias(run: Run) -> dict:
    return {"s_bias": float(np.max(run.bias_network.bias_scale("fc3"))),
            "q_bias": run.bias_network.layers["fc3"].q_bias.tolist()}


def calibration_methods(run: Run) -> dict:
    """Calibration methods and bit widths: the comparison, the choices, the KL example and the diagnostics at the
    activation width with the fewest bits."""
    quant, differences, tensor = run.params.quant, run.differences, figures.KL_TENSOR
    kl_bits = activation_widths(quant.activation_bits, quant.logit_bits)[tensor]
    low_bits = tables.low_bit_activations(differences, run.calibration_layers)
    diagnostics_bits = low_bits["bits"] if low_bits else quant.activation_bits
    return {"calibration": tables.calibration(run.calibration), "choices": tables.choices(differences),
            "against_minmax": tables.against_baseline(differences), "low_bits": low_bits,
            "diagnostics": tables.diagnostics(run.calibration_layers, diagnostics_bits),
            "diagnostics_bits": diagnostics_bits,
            "kl_example": tables.kl_example(), "kl_tensor": tensor, "kl_bits": kl_bits,
            "kl_threshold": calibrator("kl").threshold(run.activations[tensor], kl_bits,
                                                       activation_signs(quant.unsigned_activations)[tensor]),
            "kl_absmax": run.activations[tensor].absmax, "onnxruntime": tables.onnxruntime(differences),
            "onnxruntime_version": run.onnxruntime_version,
            "versus_onnxruntime": next((dict(row["vs_project"], setting=Setting.parse(setting).label,
                                             chosen=row["best"])
                                        for setting, row in differences["onnxruntime"].items() if "vs_project" in row),
                                       None)}


def integer_engine(run: Run) -> dict:
    return {"fixed_point": tables.fixed_point(*run.export), "engine": run.engine}


def quantization_aware_training(run: Run) -> dict:
    qat_low, qat_high = tables.qat_extremes(run.differences)
    params = run.params
    return {"fine_tuned": run.network.provenance.weights == FINE_TUNED,
            "qat_statistic": None if params.qat.ranges == LEARNED_STEP else METHODS[params.qat.ranges].batch_summary,
            "qat": tables.qat(run.calibration, run.differences), "qat_low": qat_low, "qat_high": qat_high,
            "qat_steps": params.qat.epochs * -(-trained_on(run) // params.train.batch_size)}


def post_training_techniques(run: Run) -> dict:
    """The comparison's table, the choices, each technique against the one it is measured against (in a table and
    in words), per layer at its first setting, and the layer that keeps the most error at its fewest bits."""
    differences = run.differences
    first = next(iter(differences["techniques"]))
    return {"techniques_table": tables.techniques(run.techniques, differences),
            "techniques_chosen": tables.techniques_chosen(differences),
            "technique_pairs": tables.technique_pairs(differences),
            "technique_verdicts": tables.technique_verdicts(differences),
            "techniques_alone": [t.label for t in TECHNIQUES.values() if not t.combined],
            "remaining_error": tables.remaining_error(differences, run.technique_layers),
            "technique_layers": tables.technique_layers(run.technique_layers, first,
                                                        differences["techniques"][first]["best"]),
            "technique_setting": Setting.parse(first).label}


def fitting(results: dict, kind: str) -> list[dict]:
    """The choices of metrics/mixed_precision.json under budgets of `kind` where a configuration fits, each with
    its budget as the report prints it."""
    return [entry["choice"] | {"budget": tables.budget(kind, entry["budget"])}
            for entry in results["budgets"] if entry["kind"] == kind and entry["choice"] is not None]


def cheapest_lossless(records: list[dict], kind: str) -> dict | None:
    """Of configuration records (with size, bops, vs_float), the cheapest in `kind` whose test accuracy is not
    measurably below float's; None if every one is."""
    return min((r for r in records if tables.verdict(r["vs_float"]) != "lower"), key=lambda r: r[kind], default=None)


def regret_summary(exhaustive: dict) -> dict:
    """The allocator's regret over the budgets where a configuration fits: how many are within noise, and the
    largest."""
    regrets = [entry | {"budget": tables.budget(entry["kind"], entry["budget"])}
               for entry in exhaustive["regret"] if entry["regret"] is not None]
    return {"budgets": len(regrets),
            "within_noise": sum(tables.verdict(e["regret"]) == "within noise" for e in regrets),
            "largest": max(regrets, key=lambda e: e["regret"]["delta"], default=None)}


def mixed_precision(run: Run) -> dict:
    """Mixed precision: the space and its cost model, the choices per budget against float and against the
    cheapest uniform width without a measurable loss, the chosen networks' deployment checks and, where every
    configuration was evaluated, each measure's rank correlation and the allocator's regret."""
    results = run.mixed_precision
    uniform = [record | {"label": Setting.parse(name).label} for name, record in results["uniform"].items()]
    chosen = {kind: fitting(results, kind) for kind in KINDS}
    choices = [choice for kind in KINDS for choice in chosen[kind]]
    exhaustive = results["exhaustive"]
    return {"mp": results, "mp_kinds": tables.BUDGET_KINDS, "mp_measures": MEASURES,
            "mp_layers": list(uniform[0]["layer_bits"]),
            "mp_reference": {key: f"{value:,}" for key, value in results["space"]["reference"].items()},
            "mp_chosen": tables.mixed_precision_chosen(results), "mp_uniform": tables.mixed_precision_uniform(results),
            "mp_none_fits": [tables.budget(e["kind"], e["budget"]) for e in results["budgets"] if e["choice"] is None],
            "mp_smallest": {kind: min(record[kind] for record in uniform) for kind in KINDS},
            "mp_lossless": {kind: {"chosen": cheapest_lossless(chosen[kind], kind),
                                   "uniform": cheapest_lossless(uniform, kind)} for kind in KINDS},
            "mp_techniques": [TECHNIQUES[name].title for name in results["techniques"]],
            "mp_proposed": {measure: sum(measure in c["proposed_by"] for c in choices) for measure in MEASURES},
            "mp_deployed": {"choices": len(choices),
                            "engine": sum(c["engine_accuracy"] == c["test_accuracy"] for c in choices),
                            "runner": min((c["runner_identical_logits"] for c in choices), default=None),
                            "onnxruntime": min((c["onnxruntime_identical_logits"] for c in choices), default=None),
                            "version": choices[0]["onnxruntime"] if choices else None},
            "mp_regret": tables.regret(exhaustive) if exhaustive else None,
            "mp_regrets": regret_summary(exhaustive) if exhaustive else None}


def appendix(run: Run) -> dict:
    return {"run": tables.run_parameters(dataclasses.asdict(run.params))}


BUILDERS = (shared, initial_setup, weights, activations, quantized_bias, calibration_methods, integer_engine,
            quantization_aware_training, post_training_techniques, mixed_precision, appendix)


def context(run: Run, **stamps) -> dict:
    """Every value the template prints: each builder's, and the `stamps` (code version, date)."""
    values = dict(stamps)
    for builder in BUILDERS:
        part = builder(run)
        assert not values.keys() & part.keys(), f"{builder.__name__} repeats {sorted(values.keys() & part.keys())}"
        values |= part
    return values
