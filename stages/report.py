"""Stage report: the lab report as LaTeX (IEEEtran) and Markdown, with its figures, from the pipeline's data."""

from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from markupsafe import Markup

from quantlab import figures, paths, runner
from quantlab.architecture import ACTIVATIONS, LAYER_NAMES, LAYERS
from quantlab.config import PARAMS_FILE, load_params
from quantlab.errors import run_main
from quantlab.io import load_json, load_npz, save_text
from quantlab.profiling import TensorProfile, load_profiles
from quantlab.quant import activation_range, int_range, multiplier, split_weights
from quantlab.report import code_version, render, source_date

# How the report names the keys of metrics/accuracy.json (a key without a name here is printed as itself).
VARIANTS = {
    "float": "float model",
    "quant_weights": "weights quantized",
    "quant_weights_activations": "weights and activations quantized",
    "bias_float": "float model, bias in fc3",
    "bias_quant_raw_bias": "quantized, bias added unscaled",
    "bias_quant": "quantized, int32 bias",
    "integer_engine": "integer engine, fixed-point rescale",
}


def interval(low: float, high: float) -> str:
    return f"[{low:.4f}, {high:.4f}]"


def ranges(profiles: dict[str, TensorProfile], first: str) -> pd.DataFrame:
    """The lab's range table: actual and 3-sigma range of every tensor."""
    return pd.DataFrame({first: list(profiles), "actual range": [interval(p.min, p.max) for p in profiles.values()],
                         "3-sigma range": [interval(*p.sigma3) for p in profiles.values()]})


def sigma3_verdicts(profiles: dict[str, TensorProfile]) -> dict[str, list[str]]:
    """Which tensors' 3-sigma range would clip (narrower than the actual range) and which would waste levels."""
    clips = [name for name, p in profiles.items() if p.sigma3[0] > p.min or p.sigma3[1] < p.max]
    return {"clips": clips, "wastes": [name for name in profiles if name not in clips]}


def weight_scales_table(profiles, scales: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({"layer": list(profiles), "max |W|": [f"{p.absmax:.4f}" for p in profiles.values()],
                         "S_W": [_format_scale(s) for s in scales.values()]})


def activation_scales_table(activations: dict, weight_scales: dict[str, np.ndarray]) -> pd.DataFrame:
    scales = activations["scales"]
    rows = []
    for name in ACTIVATIONS:
        qmin, qmax = activation_range(activations, name)
        m = "" if name == "input" else _format_scale(multiplier(activations, weight_scales[name], name))
        rows.append({"tensor": name, "threshold T": f"{activations['thresholds'][name]:.4f}",
                     "scale S": f"{scales[name]:.4g}", "range": f"[{qmin}, {qmax}]", "M": m})
    return pd.DataFrame(rows)


def _format_scale(value: np.ndarray) -> str:
    """A scale or multiplier; per-channel ones as their range."""
    return f"{value:.4g}" if np.ndim(value) == 0 else f"{value.min():.3g} to {value.max():.3g}"


def calibration_table(results: dict[str, dict[str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(results).T
    frame = frame.map(lambda v: f"{v:.2f}")
    frame.insert(0, "W/A bits", [w[1:].replace("A", "/") for w in frame.index])
    return frame


def diagnostics_table(layers: pd.DataFrame, bits: int) -> pd.DataFrame:
    """SQNR (dB) and clipped share (%) of every tensor under every method, at the headline activation bits."""
    rows = layers[layers["activation_bits"] == bits]
    table = rows.pivot(index="tensor", columns="method", values="sqnr_db").loc[list(ACTIVATIONS)]
    clipped = rows.pivot(index="tensor", columns="method", values="clipped").loc[list(ACTIVATIONS)]
    methods = list(dict.fromkeys(rows["method"]))
    frame = pd.DataFrame({"tensor": table.index})
    for method in methods:
        frame[method] = [f"{s:.1f} / {100 * c:.2f}" if pd.notna(s) else f"- / {100 * c:.2f}"
                         for s, c in zip(table[method], clipped[method], strict=True)]
    return frame


def fixed_point_table(manifest: dict, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """Every layer's rescale M, its fixed-point form M0 * 2^(shift - 31), pre-shift and accumulator bound."""
    def span(values: np.ndarray) -> str:
        return str(values.min()) if values.min() == values.max() else f"{values.min()} to {values.max()}"

    return pd.DataFrame([{"layer": layer["name"],
                          "M": _format_scale(np.unique(layer["real_multiplier"]).squeeze()),
                          "M0": span(arrays[layer["multiplier"]]), "shift": span(arrays[layer["shift"]]),
                          "pre-shift": str(layer["pre_shift"]), "max |acc|": str(layer["accumulator_bound"])}
                         for layer in manifest["layers"]])


def best_post_training(row: dict[str, float]) -> str:
    """The calibration method with the highest accuracy in a row of metrics/calibration.json (not QAT)."""
    return max((method for method in row if method != "qat"), key=row.get)


def qat_table(calibration: dict[str, dict[str, float]], float_accuracy: float) -> pd.DataFrame:
    """Per width: the best post-training method, the quantization-aware fine-tune, and the gap to float."""
    rows = []
    for width, row in calibration.items():
        best = best_post_training(row)
        rows.append({"W/A bits": width[1:].replace("A", "/"), "best post-training": f"{best} {row[best]:.2f}",
                     "QAT": f"{row['qat']:.2f}", "QAT - float": f"{row['qat'] - float_accuracy:+.2f}"})
    return pd.DataFrame(rows)


def flat_params(mapping: dict, prefix: str = "") -> list[tuple[str, str]]:
    items = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            items += flat_params(value, f"{prefix}{key}.")
        else:
            text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
            items.append((f"{prefix}{key}", text.removesuffix("\n...")))
    return items


def context() -> dict:
    params = load_params()
    raw_params = yaml.safe_load(Path(PARAMS_FILE).read_text(encoding="utf-8"))
    accuracy = load_json(paths.ACCURACY)
    weights = load_profiles(paths.profile("float"), "weights")
    activations_profile = load_profiles(paths.profile("float"), "activations")
    activations = load_json(paths.quant_activations("float"))
    _, weight_scales = split_weights(load_npz(paths.quant_weights("float", params)))
    bias = load_npz(paths.QUANT_BIAS)
    bias_activations = load_json(paths.quant_activations("bias"))
    calibration = load_json(paths.CALIBRATION)
    dataset = load_npz(paths.DATASET, ["train_y", "test_y"])
    best = [f"{best_post_training(row)} at {width[1:].replace('A', '/')}" for width, row in calibration.items()]
    return {
        "report": params.report, "params": params, "acc": accuracy,
        "variants": pd.DataFrame({"variant": [VARIANTS.get(k, k) for k in accuracy], "metric key": list(accuracy),
                                  "accuracy (%)": [f"{v:.2f}" for v in accuracy.values()]}),
        "architecture": pd.DataFrame(load_json(paths.profile("float") / "stats.json")["architecture"]),
        "train_images": len(dataset["train_y"]), "test_images": len(dataset["test_y"]),
        "weight_ranges": ranges(weights, "layer"), "weight_verdicts": sigma3_verdicts(weights),
        "weight_scales": weight_scales_table(weights, weight_scales),
        "activation_ranges": ranges(activations_profile, "tensor"),
        "activation_verdicts": sigma3_verdicts(activations_profile),
        "activation_scales": activation_scales_table(activations, weight_scales),
        "qmax_w": int_range(params.quant.weight_bits)[1], "qmin_w": int_range(params.quant.weight_bits)[0],
        "qmax_a": int_range(params.quant.activation_bits)[1], "qmin_a": int_range(params.quant.activation_bits)[0],
        "calibration": calibration_table(calibration), "best": best,
        "diagnostics": diagnostics_table(pd.read_csv(paths.CALIBRATION_LAYERS), params.quant.activation_bits),
        "s_bias": float(np.max(bias["fc3.bias_scale"])), "q_bias": bias["fc3.bias"].tolist(),
        "s_in_fc3": bias_activations["scales"]["fc2"],
        "fixed_point": fixed_point_table(*runner.load(paths.export("float"))),
        "engine": load_json(paths.ENGINE),
        "qat": qat_table(calibration, accuracy["float"]),
        "run": pd.DataFrame(flat_params(raw_params), columns=["param", "value"]),
        "code_version": code_version(), "date": source_date().strftime("%Y-%m-%d"),
        "layers": LAYER_NAMES, "relu_layers": [layer.name for layer in LAYERS if layer.relu],
        "figures": Markup("figures"),
    }


def draw_activations(directory: Path) -> None:
    """The activation histograms with the chosen calibration's thresholds (the other figures: stage figures)."""
    activations = load_json(paths.quant_activations("float"))
    figures.save(figures.histograms(load_profiles(paths.profile("float"), "activations"), "activation value",
                                    log=True, thresholds=activations["thresholds"],
                                    threshold_label=f"threshold ({load_params().calib})"), directory, "activations")


def main() -> None:
    draw_activations(paths.REPORT / "figures")
    values = context()
    save_text(paths.REPORT / "report.tex", render("report.tex.j2", values))
    save_text(paths.REPORT / "report.md", render("report.md.j2", values))


if __name__ == "__main__":
    run_main(main)
