"""The report's tables, as pure functions from the pipeline's artifacts to frames of formatted strings (the
renderer escapes and lays them out for LaTeX or Markdown)."""

import numpy as np
import pandas as pd
import yaml

from quantlab.architecture import ACTIVATIONS, input_of, shapes
from quantlab.data import archive_name
from quantlab.profiling import TensorProfile
from quantlab.quantize.calibration import BASELINE, FINE_TUNED, merge_and_expand
from quantlab.quantize.network import QuantizedNetwork
from quantlab.quantize.symmetric import Setting
from quantlab.quantize.techniques import NEAREST, combination_label, pairs
from quantlab.statistics import signed
from quantlab.variants import BY_NAME

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


def better(record: dict) -> str:
    """`verdict` in words for a difference where higher is better (accuracy): "better" or "worse" only where the
    interval excludes 0, else "within noise"."""
    return {"higher": "better", "lower": "worse"}.get(verdict(record), "within noise")


def variants(accuracy: dict[str, float], differences: dict) -> pd.DataFrame:
    """Every variant's test accuracy and its difference to its float model on the test images, with McNemar's p
    (the float models themselves are the references)."""
    rows = []
    for key, value in accuracy.items():
        record = differences["variants"].get(key)
        rows.append({"variant": BY_NAME[key].label, "metric key": key, "test (%)": f"{value:.2f}",
                     "− its float model [95 % CI]": difference(record) if record else "reference",
                     "McNemar": p_value(record["p"]) if record else ""})
    return pd.DataFrame(rows)


def architecture() -> pd.DataFrame:
    """The lab's Table I: every layer and pool with its input and output shape."""
    return pd.DataFrame([{"layer": s.name, "type": KINDS[s.kind], "input": "x".join(map(str, s.input)),
                          "output": "x".join(map(str, s.output)), "activation": "ReLU" if s.relu else "None"}
                         for s in shapes()])


def interval(low: float, high: float) -> str:
    return f"[{low:.4f}, {high:.4f}]"


def ranges(profiles: dict[str, TensorProfile], first: str) -> pd.DataFrame:
    """The lab's range table: actual and 3-sigma range of every tensor."""
    return pd.DataFrame({first: list(profiles),
                         "actual range": [interval(profile.min, profile.max) for profile in profiles.values()],
                         "3-sigma range": [interval(*profile.sigma3) for profile in profiles.values()]})


def sigma3_verdicts(profiles: dict[str, TensorProfile]) -> dict[str, list[str]]:
    """Which tensors' 3-sigma range would clip (narrower than the actual range) and which would waste levels."""
    clips = [name for name, profile in profiles.items()
             if profile.sigma3[0] > profile.min or profile.sigma3[1] < profile.max]
    return {"clips": clips, "wastes": [name for name in profiles if name not in clips]}


def span(values, single: str = ".4g", ranged: str = ".4g") -> str:
    """One number, or "min to max" of per-channel numbers that differ, each in its format."""
    values = np.asarray(values)
    low, high = values.min(), values.max()
    return format(high, single) if low == high else f"{low:{ranged}} to {high:{ranged}}"


def layer_factors(network: QuantizedNetwork, name: str) -> dict[str, str]:
    """The lab's scaling factors of a layer (its equations (5), (6)), n = 1/S: n_W of its weights, n_In of the
    activation entering it, n_Out = M the factor its accumulator is rescaled by, and their product 1/S_out."""
    s_in, s_out = network.activations[input_of(name)].scale, network.activations[name].scale
    return {"n_w": span(1 / network.layers[name].scale), "n_in": span(1 / s_in),
            "n_out": span(network.multiplier(name)), "product": span(1 / s_out)}


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
    widths = [Setting.parse(w) for w, row in differences["calibration"].items() if BASELINE in row]
    width = min((w for w in widths if w.activation_bits < 8), key=lambda w: (w.activation_bits, -w.weight_bits),
                default=None)
    if width is None or differences["calibration"][width.name]["best"] == BASELINE:  # nothing to set against it
        return None
    row, bits = differences["calibration"][width.name], width.activation_bits
    at = layers[(layers.activation_bits == bits) & (layers.tensor != "input")].set_index(["method", "tensor"])
    worst = at.loc[row["best"]]["sqnr_db"].idxmin()
    return {"width": width.label, "bits": bits, "chosen": row["best"], "row": row,
            "tensor": worst, "sqnr": f"{at.loc[(row['best'], worst), 'sqnr_db']:.1f}",
            "clipped": f"{100 * at.loc[(row['best'], worst), 'clipped']:.2f}",
            "minmax_sqnr": f"{at.loc[(BASELINE, worst), 'sqnr_db']:.1f}",
            "best_sqnr": f"{at.loc[row['best']]['sqnr_db'].max():.1f}"}


def qat_extremes(differences: dict) -> tuple[dict | None, dict | None]:
    """The QAT cells at the comparison's fewest and most bits (weights plus activations): its width and record."""
    widths = [Setting.parse(w) for w, row in differences["calibration"].items() if FINE_TUNED in row]
    if not widths:
        return None, None

    def bits(width: Setting) -> int:
        return width.weight_bits + width.activation_bits

    low, high = min(widths, key=bits), max(widths, key=bits)
    cells = [{"width": w.label, "record": differences["calibration"][w.name][FINE_TUNED]} for w in (low, high)]
    return cells[0], cells[1] if high != low else None


def weight_scales(profiles: dict[str, TensorProfile], network: QuantizedNetwork) -> pd.DataFrame:
    return pd.DataFrame({"layer": list(profiles), "max |W|": [f"{p.absmax:.4f}" for p in profiles.values()],
                         "S_W": [span(network.layers[name].scale, ranged=".3g") for name in profiles]})


def activation_scales(network: QuantizedNetwork) -> pd.DataFrame:
    return pd.DataFrame([{"tensor": name, "threshold T": f"{activation.threshold:.4f}",
                          "scale S": f"{activation.scale:.4g}", "range": "[{}, {}]".format(*activation.range),
                          "M": "" if name == "input" else span(network.multiplier(name), ranged=".3g")}
                         for name, activation in network.activations.items()])


def calibration(results: dict[str, dict[str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(results).T.map(lambda v: f"{v:.2f}")
    frame.insert(0, "W/A bits", [Setting.parse(w).label for w in frame.index])
    return frame


def choices(differences: dict) -> pd.DataFrame:
    """Per width: every method's accuracy on the images the choice is made on, and the method chosen."""
    images = differences["choices_on"]
    rows = [{"W/A bits": Setting.parse(width).label,
             **{method: f"{cell[f'{images}_accuracy']:.2f}" for method, cell in row.items() if method != "best"},
             "chosen": row["best"]} for width, row in differences["calibration"].items()]
    return pd.DataFrame(rows)


def against_baseline(differences: dict, baseline: str = BASELINE) -> pd.DataFrame:
    """Per width: every method's test accuracy minus the baseline's, with its 95 % interval."""
    rows = [{"W/A bits": Setting.parse(width).label, **{method: difference(cell[f"vs_{baseline}"])
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
    return pd.DataFrame([{"layer": layer["name"], "M": span(layer["real_multiplier"], ranged=".3g"),
                          "M0": span(arrays[layer["multiplier"]], "d", "d"),
                          "shift": span(arrays[layer["shift"]], "d", "d"),
                          "pre-shift": str(layer["pre_shift"]), "max |acc|": str(layer["accumulator_bound"])}
                         for layer in manifest["layers"]])


def qat(calibration: dict[str, dict[str, float]], differences: dict) -> pd.DataFrame:
    """Per width: the post-training method chosen on the validation images and its test accuracy, the
    quantization-aware fine-tune's, and the fine-tune's differences to float and to that method."""
    return pd.DataFrame([{"W/A bits": Setting.parse(width).label,
                          "chosen post-training": f"{row['best']} {calibration[width][row['best']]:.2f}",
                          "QAT": f"{calibration[width][FINE_TUNED]:.2f}", "QAT − float": difference(row[FINE_TUNED]),
                          "QAT − chosen": difference(row[FINE_TUNED][f"vs_best_{differences['choices_on']}"])}
                         for width, row in differences["calibration"].items()])


def onnxruntime(differences: dict) -> pd.DataFrame:
    """ONNX Runtime's quantizer: per setting and calibrator, the test accuracy (the choice on the validation
    images marked with *) and the difference to float."""
    return pd.DataFrame([{"setting": Setting.parse(setting).label, "calibrator": name,
                          "test (%)": f"{record['test_accuracy']:.2f}{' *' if row['best'] == name else ''}",
                          "− float [95 % CI]": difference(record)}
                         for setting, row in differences["onnxruntime"].items()
                         for name, record in row.items() if name not in ("best", "vs_project")])


def techniques(results: dict[str, dict[str, float]], differences: dict) -> pd.DataFrame:
    """Test accuracy (%) of every combination of post-training techniques (rows) at every setting (columns),
    the one chosen on the validation images marked with *."""
    chosen = {setting: row["best"] for setting, row in differences["techniques"].items()}
    return pd.DataFrame([{"techniques": combination_label(name),
                          **{Setting.parse(setting).label: f"{row[name]:.2f}{' *' if chosen[setting] == name else ''}"
                             for setting, row in results.items()}}
                         for name in next(iter(results.values()))])


def techniques_chosen(differences: dict) -> pd.DataFrame:
    """Per setting, the combination chosen on the validation images, its test accuracy and its differences to
    float and to nearest rounding."""
    rows = []
    for setting, row in differences["techniques"].items():
        best = row[row["best"]]
        rows.append({"setting": Setting.parse(setting).label, "chosen": combination_label(row["best"]),
                     "test (%)": f"{best['test_accuracy']:.2f}", "− float": difference(best),
                     "− nearest": difference(best["vs_nearest"]) if "vs_nearest" in best else "itself"})
    return pd.DataFrame(rows)


def technique_pairs(differences: dict) -> pd.DataFrame:
    """Per setting, every technique against the one the registry measures it against (techniques.pairs), where
    both cells ran: the difference in points with its 95 % interval, as techniques_chosen prints it, and McNemar's
    p."""
    return pd.DataFrame([{"setting": Setting.parse(setting).label,
                          "difference": f"{combination_label(name)} − {combination_label(other)}",
                          "points [95 % CI]": difference(record), "McNemar": p_value(record["p"])}
                         for setting, row in differences["techniques"].items() for name, other in pairs()
                         if (record := row.get(name, {}).get(f"vs_{other}")) is not None])


def technique_verdicts(differences: dict) -> list[dict]:
    """What each technique of techniques.pairs buys against its other, in words: the settings where it is
    "better", "within noise" and "worse" (`better`), each group that holds a setting with the settings' labels and
    differences; only the pairs measured at some setting."""
    out = []
    for name, other in pairs():
        cells = [{"setting": Setting.parse(setting).label, "record": row[name][f"vs_{other}"]}
                 for setting, row in differences["techniques"].items() if f"vs_{other}" in row.get(name, {})]
        groups = [{"word": word, "cells": [c for c in cells if better(c["record"]) == word]}
                  for word in ("better", "within noise", "worse")]
        if cells:
            out.append({"label": combination_label(name), "other": combination_label(other),
                        "groups": [group for group in groups if group["cells"]]})
    return out


def remaining_error(differences: dict, layers: pd.DataFrame) -> dict | None:
    """At the comparison's setting with the fewest weight bits (then activation bits; the first of a tie), the
    layer whose output keeps the largest part of its nearest-rounding error under the chosen combination: its
    output MSE after the combination and with nearest rounding (compare/techniques.csv's "final" and "nearest", on
    the same inputs), and their ratio. None where the CSV lacks that cell."""
    lowest = min(map(Setting.parse, differences["techniques"]), key=lambda s: (s.weight_bits, s.activation_bits))
    chosen = differences["techniques"][lowest.name]["best"]
    at = layers[(layers.setting == lowest.name) & (layers.techniques == chosen) & (layers.nearest > 0)]
    if at.empty:
        return None
    ratio = (at["final"] / at["nearest"]).set_axis(at["layer"])
    layer = ratio.idxmax()
    cell = at.set_index("layer").loc[layer]
    return {"setting": lowest.label, "chosen": combination_label(chosen), "nearest_chosen": chosen == NEAREST,
            "layer": layer, "final": f"{cell['final']:.3g}", "nearest": f"{cell['nearest']:.3g}",
            "share": f"{100 * ratio[layer]:.0f}"}


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


BUDGET_KINDS = {"size": "size", "bops": "BOPs"}  # a budget's kind as the report names it


def budget(kind: str, fraction: float) -> str:
    """A budget of metrics/mixed_precision.json as the report prints it: "BOPs ≤ 18.75 %" (of uniform 8/8)."""
    return f"{BUDGET_KINDS[kind]} ≤ {100 * fraction:g} %"


def share(fraction: float) -> str:
    """A fraction of uniform 8/8 in percent, as the tables print it."""
    return f"{100 * fraction:.1f}"


def layer_bits(bits: dict[str, list[int]]) -> dict[str, str]:
    """Each layer's [weight bits, input bits] as its label, "4/8"."""
    return {layer: Setting(*pair).label for layer, pair in bits.items()}


def mixed_precision_chosen(results: dict) -> pd.DataFrame:
    """Per budget: the configuration chosen (each layer's weight/input bits), its size and BOPs (% of 8/8), its
    accuracy on the images it was chosen on and on the test images, its difference to float and the sensitivity
    measures whose candidates held it; "none fits" where no configuration is within the budget."""
    on_validation = results["choices_on"] == "validation"  # else the test column is the one chosen on
    rows = []
    for entry in results["budgets"]:
        choice = entry["choice"]
        row = {"budget": budget(entry["kind"], entry["budget"])}
        if choice is None:
            rows.append(row | {"conv1": "none fits"})
            continue
        rows.append(row | layer_bits(choice["layer_bits"]) | {
            "size (%)": share(choice["size"]), "BOPs (%)": share(choice["bops"]),
            **({"val. (%)": f"{choice['validation_accuracy']:.2f}"} if on_validation else {}),
            "test (%)": f"{choice['test_accuracy']:.2f}",
            "− float [95 % CI]": difference(choice["vs_float"]), "proposed by": ", ".join(choice["proposed_by"])})
    return pd.DataFrame(rows).fillna("")


def mixed_precision_uniform(results: dict) -> pd.DataFrame:
    """Every uniform width of the space, the reference of the choices: size and BOPs (% of 8/8), test accuracy
    and difference to float."""
    return pd.DataFrame([{"W/A bits": Setting.parse(name).label, "size (%)": share(record["size"]),
                          "BOPs (%)": share(record["bops"]), "test (%)": f"{record['test_accuracy']:.2f}",
                          "− float [95 % CI]": difference(record["vs_float"])}
                         for name, record in results["uniform"].items()])


def regret(exhaustive: dict) -> pd.DataFrame:
    """Per budget, among the configurations the exhaustive run evaluated: the test accuracy of the allocator's
    choice and of the most accurate configuration on the test images, and the regret, best minus chosen."""
    rows = []
    for entry in exhaustive["regret"]:
        row = {"budget": budget(entry["kind"], entry["budget"])}
        record = entry["regret"]
        rows.append(row | ({"chosen (%)": "none fits"} if record is None else {
            "chosen (%)": f"{entry['chosen']['test_accuracy']:.2f}",
            "best (%)": f"{entry['best']['test_accuracy']:.2f}", "best − chosen [95 % CI]": difference(record)}))
    return pd.DataFrame(rows).fillna("")
