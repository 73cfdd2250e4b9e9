"""Stage report: the lab report as LaTeX (IEEEtran) and Markdown, with the activation histograms that show the
chosen calibration's thresholds, from the pipeline's artifacts."""

import dataclasses

import numpy as np
import pandas as pd

from quantlab import paths
from quantlab.config import TECHNIQUES, Params, load_params
from quantlab.errors import run_main
from quantlab.inference import export_format
from quantlab.io import load_json, load_npz, require, save_text
from quantlab.profiling import load_profiles
from quantlab.quantize.calibration import FINE_TUNED, LEARNED_STEP, METHODS, calibrator
from quantlab.quantize.network import QuantizedNetwork
from quantlab.quantize.symmetric import activation_signs, activation_widths, int_range, width_label
from quantlab.report import figures, tables
from quantlab.report.provenance import code_version, source_date
from quantlab.report.render import render
from quantlab.statistics import standard_error


def context(params: Params, network: QuantizedNetwork, bias_network: QuantizedNetwork) -> dict:
    """Everything the templates print, from the run's artifacts: `network` and `bias_network` are the
    quantized float and bias models."""
    accuracy, differences = load_json(paths.ACCURACY), load_json(paths.DIFFERENCES)
    weights = load_profiles(paths.profile("float"), "weights")
    activations = load_profiles(paths.profile("float"), "activations")
    calibration = load_json(paths.CALIBRATION)
    layers = pd.read_csv(require(paths.CALIBRATION_LAYERS))
    low_bits = tables.low_bit_activations(differences, layers)
    diagnostics_bits = low_bits["bits"] if low_bits else params.quant.activation_bits
    qat_low, qat_high = tables.qat_extremes(differences)
    first_setting = next(iter(differences["techniques"]))
    dataset = load_npz(paths.DATASET, ["train_y", "test_y"])
    kl_bits = activation_widths(params.quant.activation_bits, params.quant.logit_bits)[figures.KL_TENSOR]
    kl_signed = activation_signs(params.quant.unsigned_activations)[figures.KL_TENSOR]
    held_in = len(dataset["train_y"]) - params.data.validation  # as training.training_subset takes a fraction
    trained_on = held_in if params.train.fraction >= 1 else max(1, round(params.train.fraction * held_in))
    (qmin_w, qmax_w), (qmin_a, qmax_a) = int_range(params.quant.weight_bits), int_range(params.quant.activation_bits)
    return {
        "report": params.report, "params": params, "acc": accuracy, "diff": differences,
        "variants": tables.variants(accuracy, differences), "delta": tables.difference, "verdict": tables.verdict,
        "p_value": tables.p_value, "standard_error": standard_error, "choices": tables.choices(differences),
        "against_minmax": tables.against_baseline(differences),
        "calib": network.provenance.calib, "fine_tuned": network.provenance.weights == FINE_TUNED,
        "techniques": [TECHNIQUES[name] for name in network.provenance.techniques],
        "methods": [(name, calibrator(name, params.quant.percentile).summary) for name in params.compare.methods],
        "qat_statistic": None if params.qat.ranges == LEARNED_STEP else METHODS[params.qat.ranges].batch_summary,
        "architecture": tables.architecture(),
        "train_images": trained_on, "test_images": len(dataset["test_y"]),
        "qat_steps": params.qat.epochs * -(-trained_on // params.train.batch_size),
        "factors": {name: tables.layer_factors(network, name) for name in ("conv1", "conv2")},
        "kl_example": tables.kl_example(), "kl_tensor": figures.KL_TENSOR, "kl_bits": kl_bits,
        "kl_threshold": calibrator("kl").threshold(activations[figures.KL_TENSOR], kl_bits, kl_signed),
        "kl_absmax": activations[figures.KL_TENSOR].absmax,
        "low_bits": low_bits, "qat_low": qat_low, "qat_high": qat_high,
        "against": f"vs_best_{differences['choices_on']}",
        "weight_ranges": tables.ranges(weights, "layer"), "weight_verdicts": tables.sigma3_verdicts(weights),
        "weight_scales": tables.weight_scales(weights, network),
        "activation_ranges": tables.ranges(activations, "tensor"),
        "activation_verdicts": tables.sigma3_verdicts(activations),
        "activation_scales": tables.activation_scales(network),
        "qmax_w": qmax_w, "qmin_w": qmin_w, "qmax_a": qmax_a, "qmin_a": qmin_a,
        "calibration": tables.calibration(calibration),
        "chosen": [f"{row['best']} at {width_label(width)}" for width, row in differences["calibration"].items()],
        "diagnostics": tables.diagnostics(layers, diagnostics_bits), "diagnostics_bits": diagnostics_bits,
        "s_bias": float(np.max(bias_network.bias_scale("fc3"))), "q_bias": bias_network.layers["fc3"].q_bias.tolist(),
        "fixed_point": tables.fixed_point(*export_format.read(paths.export("float"))),
        "engine": load_json(paths.ENGINE), "onnxruntime": tables.onnxruntime(differences),
        "onnxruntime_version": load_json(paths.ONNXRUNTIME)["version"],
        "versus_onnxruntime": next((dict(row["vs_project"], setting=tables.setting_label(setting), chosen=row["best"])
                                    for setting, row in differences["onnxruntime"].items() if "vs_project" in row),
                                   None),
        "qat": tables.qat(calibration, differences),
        "techniques_table": tables.techniques(load_json(paths.TECHNIQUES), differences),
        "techniques_chosen": tables.techniques_chosen(differences),
        "technique_layers": tables.technique_layers(pd.read_csv(require(paths.TECHNIQUES_LAYERS)), first_setting,
                                                    differences["techniques"][first_setting]["best"]),
        "technique_setting": tables.setting_label(first_setting),
        "run": tables.run_parameters(dataclasses.asdict(params)),
        "code_version": code_version(), "date": source_date().strftime("%Y-%m-%d"),
    }


def main() -> None:
    params = load_params()
    network, bias_network = (QuantizedNetwork.load(paths.quantized(name)) for name in ("float", "bias"))
    figures.save(figures.histograms(load_profiles(paths.profile("float"), "activations"), "activation value",
                                    log=True, thresholds={n: a.threshold for n, a in network.activations.items()},
                                    threshold_label=f"threshold ({network.provenance.calib})"),
                 paths.REPORT / "figures", "activations")
    values = context(params, network, bias_network)
    for fmt, suffix in (("latex", "tex"), ("markdown", "md")):
        save_text(paths.REPORT / f"report.{suffix}", render("report.j2", values, fmt))


if __name__ == "__main__":
    run_main(main)
