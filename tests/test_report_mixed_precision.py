"""The report's Mixed precision section, its tables and figures, from a synthetic metrics/mixed_precision.json with
and without the exhaustive run."""

from types import SimpleNamespace

import pandas as pd
import pytest

from quantlab.architecture import LAYER_NAMES
from quantlab.report import figures, sections, tables
from quantlab.report.render import latex_escape, markdown_escape, render
from quantlab.stage import load_params


def paired(delta: float, low: float, high: float) -> dict:
    return {"delta": delta, "ci_low": low, "ci_high": high, "p": 0.01, "only_a_right": 10, "only_b_right": 20}


def configuration(weight_bits: int, input_bits: int, accuracy: float, **extra) -> dict:
    size, bops = weight_bits / 8, weight_bits * input_bits / 64
    return {"layer_bits": {layer: [weight_bits, input_bits] for layer in LAYER_NAMES}, "size": size, "bops": bops,
            "bytes": 1000, "validation_accuracy": accuracy + 1, "test_accuracy": accuracy,
            "vs_float": paired(accuracy - 70.0, accuracy - 70.5, accuracy - 69.5), **extra}


def chosen(weight_bits: int, input_bits: int, accuracy: float) -> dict:
    return configuration(weight_bits, input_bits, accuracy, proposed_by=["output"], candidates=3,
                         engine_accuracy=accuracy, runner_identical_logits=1.0, onnxruntime_identical_logits=0.999,
                         onnxruntime="1.0")


def results(exhaustive: bool) -> dict:
    """metrics/mixed_precision.json of a space of 4 or 8 weight bits and 8-bit inputs: nothing fits the smallest
    size budget."""
    record = {key: value for key, value in chosen(4, 8, 68.0).items() if key in ("layer_bits", "size", "bops")}
    return {
        "choices_on": "validation", "float": {"test_accuracy": 70.0}, "techniques": [],
        "space": {"weight_bits": [4, 8], "activation_bits": [8], "configurations": 32, "per_channel": True,
                  "unsigned_activations": True, "calib": "mse", "logit_bits": 8,
                  "reference": {"bits": 2530336, "bytes": 316292, "bops": 96972800}},
        "budgets": [{"kind": "size", "budget": 0.25, "choice": None},
                    {"kind": "size", "budget": 0.75, "choice": chosen(4, 8, 69.8)},
                    {"kind": "bops", "budget": 0.5, "choice": chosen(4, 8, 68.0)}],
        "uniform": {"W4A8": configuration(4, 8, 68.0), "W8A8": configuration(8, 8, 69.9)},
        "exhaustive": {
            "configurations": 32, "input_bits": 8, "kendall_tau": {"output": 0.61, "sqnr": 0.42},
            "frontier": {kind: [record | {"test_accuracy": 68.0}] for kind in ("size", "bops")},
            "regret": [{"kind": "size", "budget": 0.25, "regret": None},
                       {"kind": "bops", "budget": 0.5, "chosen": record | {"test_accuracy": 68.0},
                        "best": record | {"test_accuracy": 69.0}, "regret": paired(1.0, 0.4, 1.6)}]}
        if exhaustive else None}


def section(data: dict, fmt: str) -> str:
    """The section alone, with the values `sections.shared` gives every section."""
    values = sections.mixed_precision(SimpleNamespace(mixed_precision=data, params=load_params()))
    values |= {"params": load_params(), "delta": tables.difference, "verdict": tables.verdict,
               "p_value": tables.p_value}
    return render("sections/mixed_precision.j2", values, fmt)


ESCAPE = {"markdown": markdown_escape, "latex": latex_escape}


@pytest.mark.parametrize("fmt", ["markdown", "latex"])
def test_section_renders_without_the_exhaustive_run_and_says_how_to_get_it(fmt):
    text = section(results(exhaustive=False), fmt)
    assert "Mixed precision" in text and "Kendall" not in text
    assert "dvc exp run" in text and "exhaustive=true" in text
    # the choice for size ≤ 75 %, with its interval
    assert "none fits" in text and ESCAPE[fmt]("−0.20 [−0.70, +0.30]") in text
    assert "post-training techniques" not in text
    with_adaround = section(results(exhaustive=False) | {"techniques": ["adaround"]}, fmt)
    assert "post-training techniques (learned rounding (AdaRound))" in with_adaround


@pytest.mark.parametrize("fmt", ["markdown", "latex"])
def test_section_renders_the_exhaustive_run(fmt):
    text = section(results(exhaustive=True), fmt)
    assert "Kendall" in text and "0.61" in text and "0.42" in text and "dvc exp run" not in text
    # the regret beyond noise, with its interval and p
    assert ESCAPE[fmt]("+1.00 [+0.40, +1.60]") in text and "p = 0.01" in text


def test_chosen_table_says_none_fits_and_gives_every_difference_with_its_interval():
    data = results(exhaustive=False)
    table = tables.mixed_precision_chosen(data)
    assert list(table["budget"]) == ["size ≤ 25 %", "size ≤ 75 %", "BOPs ≤ 50 %"]
    assert table.loc[0, "conv1"] == "none fits" and table.loc[0, "− float [95 % CI]"] == ""
    assert table.loc[1, "− float [95 % CI]"] == tables.difference(data["budgets"][1]["choice"]["vs_float"])
    assert table.loc[1, "fc3"] == "4/8" and table.loc[1, "size (%)"] == "50.0" and table.loc[1, "val. (%)"] == "70.80"
    uniform = tables.mixed_precision_uniform(data)
    assert list(uniform["W/A bits"]) == ["4/8", "8/8"] and uniform.loc[1, "− float [95 % CI]"] == "−0.10 [−0.60, +0.40]"


def test_regret_table_gives_the_regret_with_its_interval_and_none_fits():
    table = tables.regret(results(exhaustive=True)["exhaustive"])
    assert table.loc[0, "chosen (%)"] == "none fits" and table.loc[0, "best − chosen [95 % CI]"] == ""
    assert table.loc[1, "best (%)"] == "69.00" and table.loc[1, "best − chosen [95 % CI]"] == "+1.00 [+0.40, +1.60]"


@pytest.mark.parametrize("exhaustive", [False, True])
def test_figures_draw_with_and_without_the_exhaustive_run(tmp_path, exhaustive):
    data = results(exhaustive)
    configurations = pd.DataFrame([{"configuration": 0, **dict.fromkeys(LAYER_NAMES, "4/8"), "size": 0.5, "bops": 0.5,
                                    "test_accuracy": 68.0}])
    figures.save(figures.mixed_precision(data, configurations), tmp_path, "mixed_precision")
    sensitivity = pd.DataFrame([{"measure": measure, "layer": layer, "weight_bits": w, "input_bits": 8,
                                 "sensitivity": 0.0 if w == 8 else 0.1}
                                for measure in ("output", "sqnr") for layer in LAYER_NAMES for w in (4, 8)])
    figures.save(figures.sensitivity(sensitivity), tmp_path, "sensitivity")
    assert all((tmp_path / f"{name}.{suffix}").stat().st_size > 0
               for name in ("mixed_precision", "sensitivity") for suffix in ("pdf", "png"))
