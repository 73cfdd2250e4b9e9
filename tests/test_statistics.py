"""Paired statistics against cases with known answers, an independent interval and a coverage simulation; the
spread over seeds; and the pipeline's one choice, which reads the validation images only."""

import math

import numpy as np
import pytest

from quantlab.differences import differences
from quantlab.report.tables import difference as printed
from quantlab.report.tables import verdict
from quantlab.statistics import mcnemar, paired, spread, standard_error, t_cdf, t_quantile
from quantlab.variants import VARIANTS

RNG = np.random.default_rng(3)


def correctness(n: int, both: int, only_a: int, only_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of A and B with the given cells of the 2 x 2 table (the rest wrong for both)."""
    a = np.zeros(n, bool)
    b = np.zeros(n, bool)
    a[:both + only_a] = True
    b[:both] = True
    b[both + only_a:both + only_a + only_b] = True
    order = RNG.permutation(n)
    return a[order], b[order]


def test_identical_predictions_differ_by_nothing():
    a = RNG.random(1000) < 0.7
    difference = paired(a, a)
    assert (difference["delta"], difference["ci_low"], difference["ci_high"], difference["p"]) == (0.0, 0.0, 0.0, 1.0)
    assert verdict(difference) == "within noise"
    assert printed(difference) == "+0.00 [+0.00, +0.00]"


def test_a_hand_computed_table():
    # 100 images: A alone right on 10, B alone on 2. Difference (10 - 2) / 100 = 8 points. McNemar: 12
    # discordant, P(X <= 2 | Bin(12, 1/2)) = (1 + 12 + 66) / 4096, two-sided 158 / 4096.
    a, b = correctness(100, both=60, only_a=10, only_b=2)
    difference = paired(a, b)
    assert difference["delta"] == 8.0 and (difference["only_a_right"], difference["only_b_right"]) == (10, 2)
    assert difference["p"] == pytest.approx(158 / 4096, rel=1e-12)
    assert mcnemar(2, 10) == mcnemar(10, 2) and mcnemar(0, 0) == 1.0 and mcnemar(5, 5) == 1.0
    assert 0 < difference["ci_low"] < 8.0 < difference["ci_high"]  # 10 against 2 is a real difference
    assert verdict(difference) == "higher" and verdict(paired(b, a)) == "lower"
    assert paired(b, a)["delta"] == -8.0 and printed(paired(b, a)).startswith("\u22128.00 [")


def newcombe(n: int, both: int, only_a: int, only_b: int) -> tuple[float, float]:
    """Newcombe's (1998) hybrid score interval, method 10, for paired proportions: an independent reference."""
    z = 1.959964
    neither = n - both - only_a - only_b

    def wilson(successes):
        p = successes / n
        centre, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)

    p1, p2 = (both + only_a) / n, (both + only_b) / n
    (l1, u1), (l2, u2) = wilson(both + only_a), wilson(both + only_b)
    denominator = math.sqrt((both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither))
    phi = (both * neither - only_a * only_b) / denominator
    delta = math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    epsilon = math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return 100 * (p1 - p2 - delta), 100 * (p1 - p2 + epsilon)


@pytest.mark.parametrize("cells", [(6800, 120, 95), (7000, 40, 10), (6500, 300, 350), (7100, 5, 0)])
def test_bootstrap_interval_agrees_with_newcombes_score_interval(cells):
    a, b = correctness(10_000, *cells)
    difference = paired(a, b)
    low, high = newcombe(10_000, *cells)
    assert (difference["ci_low"], difference["ci_high"]) == pytest.approx((low, high), abs=0.06)


def test_the_interval_covers_the_true_difference_95_percent_of_the_time():
    n, cells = 2000, np.array([0.66, 0.05, 0.04, 0.25])  # true difference: 1 point
    covered = 0
    for seed in range(300):
        a_only, b_only = np.random.default_rng(seed + 1000).multinomial(n, cells)[1:3]
        a, b = correctness(n, both=0, only_a=a_only, only_b=b_only)
        difference = paired(a, b)
        covered += difference["ci_low"] <= 1.0 <= difference["ci_high"]
    assert 0.92 <= covered / 300 <= 0.98


def test_standard_error_of_one_accuracy():
    assert standard_error(71.0, 10_000) == pytest.approx(0.4538, abs=1e-4)  # the figure the project states


def test_student_t_against_closed_forms_and_the_spread_over_seeds():
    for t in (-4.0, -1.0, 0.0, 0.3, 2.5, 12.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert t_cdf(t_quantile(0.975, 4), 4) == pytest.approx(0.975, abs=1e-12)
    assert t_quantile(0.975, 10_000) == pytest.approx(1.96, abs=1e-3)  # the normal limit
    result = spread([1.0, 2.0, 3.0, 4.0, 5.0])
    half = t_quantile(0.975, 4) * math.sqrt(2.5) / math.sqrt(5)
    assert (result["mean"], result["sd"], result["n"]) == (3.0, round(math.sqrt(2.5), 3), 5)
    assert result["low"] == pytest.approx(3 - half, abs=1e-3) and result["high"] == pytest.approx(3 + half, abs=1e-3)


def synthetic(seed: int = 0) -> tuple[dict, dict, dict, dict, dict]:
    """Labels of 500 validation and 1000 test images, predictions of the variants and of two widths'
    calibration cells, of two settings' techniques cells and of ONNX Runtime's quantizer at two settings, each
    right on a chosen share of images."""
    rng = np.random.default_rng(seed)
    labels = {"validation": rng.integers(0, 10, 500), "test": rng.integers(0, 10, 1000)}

    def predicted(share: float) -> dict[str, np.ndarray]:
        return {images: np.where(rng.random(len(y)) < share, y, (y + 1) % 10).astype(np.uint8)
                for images, y in labels.items()}

    def grid(groups, shares: dict[str, float]) -> dict:
        return {group: {name: predicted(share) for name, share in shares.items()} for group in groups}

    variants = {variant.name: predicted(0.7) for variant in VARIANTS}
    calibration = grid(("W8A8", "W4A4"), {"minmax": 0.70, "sigma3": 0.74, "kl": 0.72, "qat": 0.73})
    techniques = grid(("W4A8-tensor", "W3A8-channel"),
                      {"nearest": 0.60, "equalize": 0.65, "adaround": 0.69, "adaround+bias_correction": 0.68})
    peers = grid(("W8A8-tensor", "W8A8-channel"), {"minmax": 0.69, "entropy": 0.71, "percentile": 0.70})
    return labels, variants, calibration, techniques, peers


def choices(result: dict) -> dict:
    return {f"{part}/{group}": row["best"] for part in ("calibration", "techniques", "onnxruntime")
            for group, row in result[part].items()}


def test_the_choices_read_the_validation_images_only():
    labels, variants, calibration, techniques, peers = synthetic()
    chosen = choices(differences(labels, variants, calibration, techniques, peers, False))

    def shuffled(tree: dict) -> dict:
        return {key: shuffled(value) if isinstance(value, dict) else
                np.random.default_rng(1).permutation(value) if key == "test" else value for key, value in tree.items()}

    relabelled = {**labels, "test": np.random.default_rng(9).permutation(labels["test"])}
    assert choices(differences(relabelled, shuffled(variants), shuffled(calibration), shuffled(techniques),
                               shuffled(peers), False)) == chosen

    def on_validation(cells: dict, names) -> str:
        return max(names, key=lambda name: np.mean(cells[name]["validation"] == labels["validation"]))

    expected = {f"calibration/{width}": on_validation(cells, ("minmax", "sigma3", "kl"))
                for width, cells in calibration.items()}
    expected |= {f"techniques/{setting}": on_validation(cells, cells) for setting, cells in techniques.items()}
    expected |= {f"onnxruntime/{setting}": on_validation(cells, cells) for setting, cells in peers.items()}
    assert chosen == expected
    right = labels["validation"].astype(np.uint8)
    calibration["W8A8"]["kl"]["validation"] = right
    techniques["W3A8-channel"]["equalize"]["validation"] = right
    flipped = differences(labels, variants, calibration, techniques, peers, False)
    assert flipped["calibration"]["W8A8"]["best"] == "kl"
    assert flipped["techniques"]["W3A8-channel"]["best"] == "equalize"


def test_without_validation_images_the_choice_is_on_the_test_images():
    labels, variants, calibration, techniques, peers = synthetic()
    result = differences({"test": labels["test"]}, variants, calibration, techniques, peers, True)
    assert result["choices_on"] == "test" and "validation_accuracy" not in result["variants"]["quant_weights"]
    row = result["calibration"]["W8A8"]
    assert row["best"] == max(("minmax", "sigma3", "kl"), key=lambda m: row[m]["test_accuracy"])
    assert set(row["qat"]) >= {"delta", "ci_low", "ci_high", "p", "vs_best_test"}
    techniques_row = result["techniques"]["W4A8-tensor"]
    assert techniques_row["best"] == max(("nearest", "equalize", "adaround", "adaround+bias_correction"),
                                         key=lambda name: techniques_row[name]["test_accuracy"])
    assert "vs_nearest" in techniques_row["adaround"] and "vs_nearest" not in techniques_row["nearest"]


def test_onnxruntimes_choice_is_held_against_this_projects_at_the_same_granularity():
    labels, variants, calibration, techniques, peers = synthetic()
    for per_channel, setting in ((False, "W8A8-tensor"), (True, "W8A8-channel")):
        result = differences(labels, variants, calibration, techniques, peers, per_channel)
        ours, theirs = result["calibration"]["W8A8"]["best"], result["onnxruntime"][setting]["best"]
        record = result["onnxruntime"][setting]["vs_project"]
        assert record["project"] == ours
        right = [np.mean(cells == labels["test"]) * 100
                 for cells in (peers[setting][theirs]["test"], calibration["W8A8"][ours]["test"])]
        assert record["delta"] == pytest.approx(right[0] - right[1], abs=0.01)
        assert record["ci_low"] <= record["delta"] <= record["ci_high"]
        other = "W8A8-channel" if setting == "W8A8-tensor" else "W8A8-tensor"
        assert "vs_project" not in result["onnxruntime"][other]


def test_block_and_dropping_are_measured_against_what_they_extend():
    """BRECQ's cell against AdaRound's (block against layer) and QDrop's against BRECQ's (with against without
    dropping), paired on the same test images, where both cells ran."""
    labels, variants, calibration, techniques, peers = synthetic()
    rng = np.random.default_rng(3)
    right = {name: rng.random(1000) < share for name, share in (("brecq", 0.72), ("qdrop", 0.75))}
    setting = techniques["W4A8-tensor"]
    for name, correct in right.items():
        setting[name] = {"validation": setting["adaround"]["validation"],
                         "test": np.where(correct, labels["test"], (labels["test"] + 1) % 10).astype(np.uint8)}
    result = differences(labels, variants, calibration, techniques, peers, False)["techniques"]
    row = result["W4A8-tensor"]
    adaround = setting["adaround"]["test"] == labels["test"]
    assert row["brecq"]["vs_adaround"] == paired(right["brecq"], adaround)
    assert row["qdrop"]["vs_brecq"] == paired(right["qdrop"], right["brecq"])
    assert "vs_adaround" not in row["qdrop"] and "vs_brecq" not in row["brecq"]
    assert not any(key.startswith("vs_") and key != "vs_nearest" for cell in result["W3A8-channel"].values()
                   if isinstance(cell, dict) for key in cell)  # no block cells there: nothing measured
