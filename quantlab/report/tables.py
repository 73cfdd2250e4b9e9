"""The report's tables, as pure functions from the pipeline's artifacts to frames of formatted strings (the
renderer escapes and lays them out for LaTeX or Markdown)."""

import numpy as np
import pandas as pd
import yaml

from quantlab.architecture import ACTIVATIONS, input_of, steps
from quantlab.config import combination_label
from quantlab.data import archive_name
from quantlab.profiling import TensorProfile
from quantlab.quantize.calibration import FINE_TUNED, merge_and_expand
from quantlab.quantize.network import QuantizedNetwork
from quantlab.quantize.symmetric import width_label
from quantlab.statistics import signed

# How the report names the keys of metrics/accuracy.json (a key without a name here is printed as itself).
VARIANT_NAMES = {
    "float": "float model",
    "quant_weights": "weights quantized",
    "quant_weights_activations": "weights and activations quantized",
    "bias_float": "float model, bias in fc3",
    "bias_quant_raw_bias": "quantized, bias added unscaled",
    "bias_quant": "quantized, int32 bias",
    "integer_engine": "integer engine, fixed-point rescale",
}
KINDS = {"conv": "Convolutional", "fc": "Fully-connected", "pool": "Max pool"}


def difference(record: dict) -> str:
    """A difference of metrics/differences.json as the report prints it: "−0.26 [−0.55, +0.03]" (points, 95 %
    interval)."""
    return f"{signed(record['delta'])} [{signed(record['ci_low'])}, {signed(record['ci_high'])}]"


def p_value(p: float) -> str:
    return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def verdict(record: dict) -> str:
    """"within noise" where the interval holds 0, else which way the difference goes."""
    if record["ci_low"] <= 0 <= record["ci_high"]:
        return "within noise"
    return "higher" if record["delta"] > 0 else "lower"


def variants(accuracy: dict[str, float], differences: dict) -> pd.DataFrame:
    """Every variant's test accuracy and its difference to its float model on the test images, with McNemar's p
    (the float models themselves are the references)."""
    rows = []
    for key, value in accuracy.items():
        record = differences["variants"].get(key)
        rows.append({"variant": VARIANT_NAMES.get(key, key), "metric key": key, "test (%)": f"{value:.2f}",
                     "− its float model [95 % CI]": difference(record) if record else "reference",
                     "McNemar": p_value(record["p"]) if record else ""})
    return pd.DataFrame(rows)


def architecture() -> pd.DataFrame:
    """The lab's Table I: every layer and pool with its input and output shape."""
    return pd.DataFrame([{"layer": s.name, "type": KINDS[s.kind], "input": "x".join(map(str, s.input)),
                          "output": "x".join(map(str, s.output)), "activation": "ReLU" if s.relu else "None"}
                         for s in steps()])


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


def scale_text(value: np.ndarray) -> str:
    """A scale or multiplier; per-channel ones as their range."""
    return f"{value:.4g}" if np.ndim(value) == 0 else f"{value.min():.3g} to {value.max():.3g}"


def span_text(values) -> str:
    """A number, or the range of per-channel numbers, to 4 significant digits."""
    values = np.asarray(values)
    if values.size == 1 or values.min() == values.max():
        return f"{values.max():.4g}"
    return f"{values.min():.4g} to {values.max():.4g}"


def layer_factors(network: QuantizedNetwork, name: str) -> dict[str, str]:
    """The lab's scaling factors of a layer (its equations (5), (6)), n = 1/S: n_W of its weights, n_In of the
    activation entering it, n_Out = M the factor its accumulator is rescaled by, and their product 1/S_out."""
    s_in, s_out = network.activations[input_of(name)].scale, network.activations[name].scale
    return {"n_w": span_text(1 / network.layers[name].scale), "n_in": span_text(1 / s_in),
            "n_out": span_text(network.multiplier(name)), "product": span_text(1 / s_out)}


LAB_P = (1, 0, 2, 3, 5, 3, 1, 7)  # the lab's worked example of the KL calibration (its Fig. 5)


def kl_example(p: tuple[int, ...] = LAB_P, levels: int = 2) -> dict[str, str]:
    """The lab's worked example, computed by the calibration's own `merge_and_expand`: P merged into `levels`
    bins, expanded back to Q, and KL(P || Q) of the two normalized (natural log)."""
    reference = np.asarray(p, dtype=np.float64)
    q = merge_and_expand(reference, reference, levels)
    merged = [reference[i * len(p) // levels:(i + 1) * len(p) // levels].sum() for i in range(levels)]
    kept = reference > 0  # 0 log 0 = 0; Q is non-zero wherever P is
    p_norm, q_norm = reference[kept] / reference.sum(), q[kept] / q.sum()
    kl = float(np.sum(p_norm * np.log(p_norm / q_norm)))

    def listed(values) -> str:
        return "[" + ", ".join(f"{v:g}" for v in values) + "]"

    return {"p": listed(reference), "merged": listed(merged), "q": listed(q), "kl": f"{kl:.4f}", "levels": levels}


def low_bit_activations(differences: dict, layers: pd.DataFrame) -> dict | None:
    """At the comparison's width with the fewest activation bits (the most weight bits among those): minmax,
    the method chosen on validation and its difference to minmax, and the tensor where that method keeps the
    least signal (lowest SQNR) with minmax's SQNR for it. None when every width has 8-bit activations, or
    minmax is not compared, or it is the chosen method."""
    widths = [w for w, row in differences["calibration"].items() if int(w.split("A")[1]) < 8 and "minmax" in row]
    width = min(widths, key=lambda w: (int(w.split("A")[1]), -int(w[1:].split("A")[0])), default=None)
    if width is None or differences["calibration"][width]["best"] == "minmax":  # nothing to set against minmax
        return None
    row, bits = differences["calibration"][width], int(width.split("A")[1])
    at = layers[(layers.activation_bits == bits) & (layers.tensor != "input")].set_index(["method", "tensor"])
    worst = at.loc[row["best"]]["sqnr_db"].idxmin()
    return {"width": width_label(width), "bits": bits, "chosen": row["best"], "row": row,
            "tensor": worst, "sqnr": f"{at.loc[(row['best'], worst), 'sqnr_db']:.1f}",
            "clipped": f"{100 * at.loc[(row['best'], worst), 'clipped']:.2f}",
            "minmax_sqnr": f"{at.loc[('minmax', worst), 'sqnr_db']:.1f}",
            "best_sqnr": f"{at.loc[row['best']]['sqnr_db'].max():.1f}"}


def qat_extremes(differences: dict) -> tuple[dict | None, dict | None]:
    """The QAT cells at the comparison's fewest and most bits (weights plus activations): its width and record."""
    widths = [w for w, row in differences["calibration"].items() if FINE_TUNED in row]
    if not widths:
        return None, None

    def bits(width: str) -> int:
        return sum(int(part) for part in width[1:].split("A"))

    low, high = min(widths, key=bits), max(widths, key=bits)
    cells = [{"width": width_label(w), "record": differences["calibration"][w][FINE_TUNED]} for w in (low, high)]
    return cells[0], cells[1] if high != low else None


def weight_scales(profiles: dict[str, TensorProfile], network: QuantizedNetwork) -> pd.DataFrame:
    return pd.DataFrame({"layer": list(profiles), "max |W|": [f"{p.absmax:.4f}" for p in profiles.values()],
                         "S_W": [scale_text(network.layers[name].scale) for name in profiles]})


def activation_scales(network: QuantizedNetwork) -> pd.DataFrame:
    return pd.DataFrame([{"tensor": name, "threshold T": f"{activation.threshold:.4f}",
                          "scale S": f"{activation.scale:.4g}", "range": "[{}, {}]".format(*activation.range),
                          "M": "" if name == "input" else scale_text(network.multiplier(name))}
                         for name, activation in network.activations.items()])


def calibration(results: dict[str, dict[str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(results).T.map(lambda v: f"{v:.2f}")
    frame.insert(0, "W/A bits", [width_label(w) for w in frame.index])
    return frame


def choices(differences: dict) -> pd.DataFrame:
    """Per width: every method's accuracy on the images the choice is made on, and the method chosen."""
    images = differences["choices_on"]
    rows = [{"W/A bits": width_label(width),
             **{method: f"{cell[f'{images}_accuracy']:.2f}" for method, cell in row.items() if method != "best"},
             "chosen": row["best"]} for width, row in differences["calibration"].items()]
    return pd.DataFrame(rows)


def against_baseline(differences: dict, baseline: str = "minmax") -> pd.DataFrame:
    """Per width: every method's test accuracy minus the baseline's, with its 95 % interval."""
    rows = [{"W/A bits": width_label(width), **{method: difference(cell[f"vs_{baseline}"])
                                               for method, cell in row.items() if f"vs_{baseline}" in cell}}
            for width, row in differences["calibration"].items()]
    return pd.DataFrame(rows)


def diagnostics(layers: pd.DataFrame, bits: int) -> pd.DataFrame:
    """SQNR (dB) and clipped share (%) of every tensor under every method, at the headline activation bits."""
    rows = layers[layers["activation_bits"] == bits]
    table = rows.pivot(index="tensor", columns="method", values=["sqnr_db", "clipped"]).loc[list(ACTIVATIONS)]
    frame = pd.DataFrame({"tensor": table.index})
    for method in dict.fromkeys(rows["method"]):
        frame[method] = [f"{s:.1f} / {100 * c:.2f}" if pd.notna(s) else f"- / {100 * c:.2f}"
                         for s, c in zip(table["sqnr_db", method], table["clipped", method], strict=True)]
    return frame


def fixed_point(manifest: dict, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """Every layer's rescale M, its fixed-point form M0 * 2^(shift - 31), pre-shift and accumulator bound."""
    def span(values: np.ndarray) -> str:
        return str(values.min()) if values.min() == values.max() else f"{values.min()} to {values.max()}"

    return pd.DataFrame([{"layer": layer["name"],
                          "M": scale_text(np.unique(layer["real_multiplier"]).squeeze()),
                          "M0": span(arrays[layer["multiplier"]]), "shift": span(arrays[layer["shift"]]),
                          "pre-shift": str(layer["pre_shift"]), "max |acc|": str(layer["accumulator_bound"])}
                         for layer in manifest["layers"]])


def qat(calibration: dict[str, dict[str, float]], differences: dict) -> pd.DataFrame:
    """Per width: the post-training method chosen on the validation images and its test accuracy, the
    quantization-aware fine-tune's, and the fine-tune's differences to float and to that method."""
    return pd.DataFrame([{"W/A bits": width_label(width),
                          "chosen post-training": f"{row['best']} {calibration[width][row['best']]:.2f}",
                          "QAT": f"{calibration[width][FINE_TUNED]:.2f}", "QAT − float": difference(row[FINE_TUNED]),
                          "QAT − chosen": difference(row[FINE_TUNED][f"vs_best_{differences['choices_on']}"])}
                         for width, row in differences["calibration"].items()])


def setting_label(setting: str) -> str:
    """"W4A8-tensor" -> "4/8 per tensor"."""
    width, granularity = setting.split("-")
    return f"{width_label(width)} per {granularity}"


def onnxruntime(differences: dict) -> pd.DataFrame:
    """ONNX Runtime's quantizer: per setting and calibrator, the test accuracy (the choice on the validation
    images marked with *) and the difference to float."""
    return pd.DataFrame([{"setting": setting_label(setting), "calibrator": name,
                          "test (%)": f"{record['test_accuracy']:.2f}{' *' if row['best'] == name else ''}",
                          "− float [95 % CI]": difference(record)}
                         for setting, row in differences["onnxruntime"].items()
                         for name, record in row.items() if name not in ("best", "vs_project")])


def techniques(results: dict[str, dict[str, float]], differences: dict) -> pd.DataFrame:
    """Test accuracy (%) of every combination of post-training techniques (rows) at every setting (columns),
    the one chosen on the validation images marked with *."""
    chosen = {setting: row["best"] for setting, row in differences["techniques"].items()}
    return pd.DataFrame([{"techniques": combination_label(name),
                          **{setting_label(setting): f"{row[name]:.2f}{' *' if chosen[setting] == name else ''}"
                             for setting, row in results.items()}}
                         for name in next(iter(results.values()))])


def techniques_chosen(differences: dict) -> pd.DataFrame:
    """Per setting, the combination chosen on the validation images, its test accuracy and its differences to
    float and to nearest rounding."""
    rows = []
    for setting, row in differences["techniques"].items():
        best = row[row["best"]]
        rows.append({"setting": setting_label(setting), "chosen": combination_label(row["best"]),
                     "test (%)": f"{best['test_accuracy']:.2f}", "− float": difference(best),
                     "− nearest": difference(best["vs_nearest"]) if "vs_nearest" in best else "itself"})
    return pd.DataFrame(rows)


def technique_layers(layers: pd.DataFrame, setting: str, chosen: str) -> pd.DataFrame:
    """Per layer at one setting: the spread of its output channels' weight ranges (largest / smallest) before and
    after equalization, and its output's mean squared error against float with nearest rounding, after AdaRound
    and after the chosen combination."""
    at = layers[layers.setting == setting].set_index(["techniques", "layer"])
    return pd.DataFrame([{"layer": layer, "spread": f"{at.loc[('nearest', layer), 'spread_before']:.3g}",
                          "after CLE": f"{at.loc[('equalize', layer), 'spread_after']:.3g}",
                          "MSE nearest": f"{at.loc[('nearest', layer), 'final']:.3g}",
                          "AdaRound": f"{at.loc[('adaround', layer), 'final']:.3g}",
                          "chosen": f"{at.loc[(chosen, layer), 'final']:.3g}"}
                         for layer in dict.fromkeys(at.index.get_level_values("layer"))])


def run_parameters(params: dict) -> pd.DataFrame:
    """Every param of the run: its dotted key, and its value as params.yaml writes it; the data source as its
    archive's file name."""
    flat = pd.json_normalize(params).to_dict("records")[0]  # nested keys joined with "."
    flat["data.url"] = archive_name(flat["data.url"])
    return pd.DataFrame({"param": list(flat), "value": [
        v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...")
        for v in flat.values()]})
