"""The report's Post-training techniques section: every combination's row, each technique against the one the
registry measures it against (techniques.pairs) in a table and in words, and the layer that keeps the most error
at the fewest bits, from a synthetic metrics/differences.json, metrics/techniques.json and compare/techniques.csv."""

from types import SimpleNamespace

import pandas as pd
import pytest

from quantlab.architecture import LAYER_NAMES
from quantlab.quantize.techniques import NEAREST, combination_label, combination_name, combinations, pairs
from quantlab.report import sections, tables
from quantlab.report.render import latex_escape, markdown_escape, render

ESCAPE = {"markdown": markdown_escape, "latex": latex_escape}
NAMES = [combination_name(c) for c in combinations()]
AGAINST = dict(pairs())  # technique -> the one it is measured against


def paired(delta: float, low: float, high: float, p: float = 0.01) -> dict:
    return {"delta": delta, "ci_low": low, "ci_high": high, "p": p, "only_a_right": 10, "only_b_right": 20}


def cell(accuracy: float, **against) -> dict:
    return {"validation_accuracy": accuracy, "test_accuracy": accuracy, **paired(accuracy - 70.0, -1.0, 1.0),
            **{f"vs_{other}": record for other, record in against.items()}}


def differences(vs: dict[str, dict[str, dict]], missing: dict[str, set] | None = None) -> dict:
    """metrics/differences.json's "techniques" at two settings, every combination a cell but those `missing`,
    each technique of techniques.pairs with its vs_<other> where `vs` gives one ({setting: {technique: record}})."""
    out = {}
    for setting, best in (("W4A8-tensor", "adaround"), ("W2A8-channel", "adaround+bias_correction")):
        names = [n for n in NAMES if n not in (missing or {}).get(setting, set())]
        row = {name: cell(60.0 + i, **({} if name == NEAREST else {NEAREST: paired(1.0, 0.5, 1.5)}))
               for i, name in enumerate(names)}
        for name, record in vs.get(setting, {}).items():
            row[name][f"vs_{AGAINST[name]}"] = record
        out[setting] = row | {"best": best}
    return {"choices_on": "validation", "techniques": out}


def results(diff: dict) -> dict:
    return {setting: {name: c["test_accuracy"] for name, c in row.items() if name != "best"}
            for setting, row in diff["techniques"].items()}


def layers(diff: dict) -> pd.DataFrame:
    """compare/techniques.csv: at every cell, each layer's output MSE with nearest rounding and after; fc1 keeps the
    largest share (80 %) under the chosen combination at 2/8, conv1 the largest absolute error."""
    rows = []
    for setting, row in diff["techniques"].items():
        for name in row:
            if name == "best":
                continue
            for i, layer in enumerate(LAYER_NAMES):
                nearest = 10.0 if layer == "conv1" else 1.0 + i
                final = nearest if name == NEAREST else 0.8 * nearest if layer == "fc1" else 0.3 * nearest
                rows.append({"setting": setting, "techniques": name, "layer": layer, "spread_before": 3.0,
                             "spread_after": 1.5, "nearest": nearest, "final": final})
    return pd.DataFrame(rows)


BRECQ, QDROP = "brecq", "qdrop"  # the test's data; the report's code reads them from the registry
VS = {"W4A8-tensor": {BRECQ: paired(0.3, -0.2, 0.8, p=0.24), QDROP: paired(-1.0, -1.6, -0.4, p=0.0004)},
      "W2A8-channel": {BRECQ: paired(3.0, 2.0, 4.0, p=1e-9)}}


def params(weight_scale: str = "mse") -> SimpleNamespace:
    return SimpleNamespace(
        profile=SimpleNamespace(calib_images=4096),
        ptq=SimpleNamespace(images=1024, iterations=1000, blocks=[["conv1"], ["conv2"], ["fc1", "fc2", "fc3"]],
                            drop=0.5),
        techniques=SimpleNamespace(iterations=250, calib="mse", unsigned_activations=True, weight_scale=weight_scale))


def section(diff: dict, fmt: str, weight_scale: str = "mse") -> str:
    """The section and its paragraph of the Discussion, with the values `sections.shared` gives every section."""
    run = SimpleNamespace(differences=diff, techniques=results(diff), technique_layers=layers(diff))
    values = sections.post_training_techniques(run)
    values |= {"params": params(weight_scale), "diff": diff, "delta": tables.difference, "verdict": tables.verdict,
               "p_value": tables.p_value}
    return "\n".join(render(f"sections/{name}.j2", values, fmt)
                     for name in ("post_training_techniques", "techniques_discussion"))


def test_the_registry_pairs_the_test_relies_on():
    assert AGAINST == {BRECQ: "adaround", QDROP: BRECQ}
    assert {BRECQ, QDROP} <= set(NAMES)


def test_better_only_where_the_interval_excludes_zero():
    assert tables.better(paired(0.5, 0.1, 0.9)) == "better"
    assert tables.better(paired(-0.5, -0.9, -0.1)) == "worse"
    assert tables.better(paired(0.5, -0.1, 1.1)) == "within noise"
    assert tables.better(paired(0.4, 0.0, 0.8)) == "within noise"  # an interval that reaches 0 holds it
    assert tables.better(paired(-0.4, -0.8, 0.0)) == "within noise"


def test_pairs_table_has_a_row_only_where_both_cells_ran_formatted_as_the_chosen_table():
    diff = differences(VS, missing={"W2A8-channel": {QDROP}})
    table = tables.technique_pairs(diff)
    assert list(table.columns) == ["setting", "difference", "points [95 % CI]", "McNemar"]
    assert table.values.tolist() == [
        ["4/8 per tensor", "BRECQ − AdaRound", "+0.30 [−0.20, +0.80]", "p = 0.24"],
        ["4/8 per tensor", "QDrop − BRECQ", "−1.00 [−1.60, −0.40]", "p < 0.001"],
        ["2/8 per channel", "BRECQ − AdaRound", "+3.00 [+2.00, +4.00]", "p < 0.001"]]
    # the differences print as techniques_chosen prints its own
    chosen = tables.techniques_chosen(diff)
    assert chosen.loc[0, "− nearest"] == tables.difference(paired(1.0, 0.5, 1.5)) == "+1.00 [+0.50, +1.50]"
    assert tables.technique_pairs(differences({})).empty  # a run from before the pairs: no row


def test_verdicts_group_the_settings_by_what_the_interval_says():
    verdicts = tables.technique_verdicts(differences(VS, missing={"W2A8-channel": {QDROP}}))
    assert [(v["label"], v["other"]) for v in verdicts] == [("BRECQ", "AdaRound"), ("QDrop", "BRECQ")]
    brecq, qdrop = verdicts
    assert [(g["word"], [c["setting"] for c in g["cells"]]) for g in brecq["groups"]] == [
        ("better", ["2/8 per channel"]), ("within noise", ["4/8 per tensor"])]
    assert [(g["word"], [c["setting"] for c in g["cells"]]) for g in qdrop["groups"]] == [("worse", ["4/8 per tensor"])]
    assert tables.technique_verdicts(differences({})) == []


@pytest.mark.parametrize("fmt", ["markdown", "latex"])
def test_section_states_every_row_the_pairs_and_what_each_buys(fmt):
    diff = differences(VS)  # QDrop's cell at 2/8 has no vs_brecq: no row, no word
    text, escape = section(diff, fmt), ESCAPE[fmt]
    for name in NAMES:  # every combination's row, by its label
        assert escape(combination_label(name)) in text
    assert escape("BRECQ − AdaRound") in text and escape("QDrop − BRECQ") in text
    assert escape("+3.00 [+2.00, +4.00]") in text and "p = 0.24" in text and escape("p < 0.001") in text
    # "better" only where the interval excludes 0; within noise named without a claim
    assert escape("Against AdaRound, BRECQ is better at 2/8 per channel (+3.00 [+2.00, +4.00] points); "
                  "within noise at 4/8 per tensor.") in " ".join(text.split())
    assert escape("Against BRECQ, QDrop is worse at 4/8 per tensor (−1.00 [−1.60, −0.40] points).") in text
    assert "better at 4/8 per tensor" not in text
    # the weight scale of the comparison, from techniques.weight_scale
    assert "techniques.weight_scale" in text.replace("\\_", "_")
    assert "clipped scale with the least squared error" in text
    assert "largest magnitude" in section(diff, fmt, weight_scale="max")
    # at the fewest weight bits (2/8 per channel), the chosen combination leaves fc1 80 % of its error
    flat = " ".join(text.split())
    assert (f"At 2/8 per channel, the comparison's fewest weight bits, the chosen {escape('AdaRound + BC')} helps "
            f"fc1 least: its output keeps 80 {escape('%')} of its mean squared error with nearest rounding in the "
            "same network (2.4 against 3), the largest share of any layer.") in flat


@pytest.mark.parametrize("fmt", ["markdown", "latex"])
def test_section_without_the_pairs_renders_without_their_table(fmt):
    text = section(differences({}), fmt)
    assert "against the one it is measured against" not in text and "Against AdaRound" not in text
    assert "McNemar" not in text


def test_remaining_error_says_so_where_nearest_rounding_is_chosen():
    diff = differences(VS)
    diff["techniques"]["W2A8-channel"]["best"] = NEAREST
    error = tables.remaining_error(diff, layers(diff))
    assert error["nearest_chosen"] and error["setting"] == "2/8 per channel"
    assert "every layer keeps all of its rounding error" in " ".join(section(diff, "markdown").split())
    assert tables.remaining_error(diff, layers(diff).iloc[0:0]) is None  # no diagnostics of that cell
