"""The report's figures, drawn with matplotlib from the pipeline's data, as PDF (LaTeX) and PNG (Markdown).

Sized for an IEEE two-column page (3.5 in column, 7.16 in page width) with 7-8 pt text, and written
byte-stably: no creation date in the PDF, no software version in the PNG, fixed hash salt, and atomic
writes, so the same data gives the same bytes.
"""

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from quantlab.io import save_bytes  # noqa: E402
from quantlab.profiling import TensorProfile  # noqa: E402
from quantlab.quantize.calibration import FINE_TUNED  # noqa: E402
from quantlab.quantize.symmetric import Setting  # noqa: E402
from quantlab.quantize.techniques import combination_label  # noqa: E402

COLUMN, PAGE = 3.5, 7.16  # inches
KL_TENSOR = "conv2"  # the tensor whose KL divergence per candidate threshold the report plots
MARKERS = "osD^v<>"  # one per line of a comparison, in turn
STYLE = {
    "font.size": 7, "axes.titlesize": 7.5, "axes.labelsize": 7, "xtick.labelsize": 6.5, "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5, "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "quantlab",
    "pdf.fonttype": 42, "figure.dpi": 100, "savefig.dpi": 200,
}


def save(figure, directory: Path, name: str) -> None:
    """`name`.pdf and `name`.png in `directory`, without timestamps or version strings."""
    for suffix, metadata in (("pdf", {"CreationDate": None, "Producer": None, "Creator": None}),
                             ("png", {"Software": None})):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=suffix, metadata=metadata)
        save_bytes(directory / f"{name}.{suffix}", buffer.getvalue())
    plt.close(figure)


def training(histories: dict[str, pd.DataFrame]):
    """Loss and accuracy per epoch of the trained models."""
    with plt.rc_context(STYLE):
        figure, (loss, acc) = plt.subplots(1, 2, figsize=(COLUMN, 1.7), layout="constrained")
        for (name, history), colour in zip(histories.items(), ("C0", "C1"), strict=False):
            loss.plot(history["epoch"], history["loss"], "o-", ms=2.5, lw=1, color=colour, label=name)
            acc.plot(history["epoch"], history["train_accuracy"], "o-", ms=2.5, lw=1, color=colour)
            acc.plot(history["epoch"], history["test_accuracy"], "s--", ms=2.5, lw=1, color=colour)
        acc.plot([], [], "o-", ms=2.5, lw=1, color="0.3", label="train")
        acc.plot([], [], "s--", ms=2.5, lw=1, color="0.3", label="test")
        loss.set(xlabel="epoch", ylabel="cross-entropy loss")
        acc.set(xlabel="epoch", ylabel="accuracy (%)")
        for axes in (loss, acc):
            axes.xaxis.get_major_locator().set_params(integer=True)
        handles = [h for axes in (loss, acc) for h in axes.get_legend_handles_labels()[0]]
        figure.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False)
        return figure


def fine_tuning(histories: dict[str, pd.DataFrame]):
    """Loss and train accuracy (running, per logged interval) of each quantization-aware fine-tune."""
    with plt.rc_context(STYLE):
        figure, (loss, acc) = plt.subplots(1, 2, figsize=(COLUMN, 1.7), layout="constrained")
        for name, history in histories.items():
            loss.plot(history["step"], history["loss"], lw=1, label=name)
            acc.plot(history["step"], history["train_accuracy"], lw=1)
        loss.set(xlabel="step", ylabel="cross-entropy loss")
        acc.set(xlabel="step", ylabel="train accuracy (%)")
        figure.legend(*loss.get_legend_handles_labels(), loc="outside lower center", ncol=3, frameon=False)
        return figure


def _rebinned(profile: TensorProfile, bins: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """The profile's histogram summed into about `bins` bins over the occupied range [min, max]."""
    occupied = np.flatnonzero(profile.counts)
    if not len(occupied):
        return np.array([profile.count]), np.array([-0.5, 0.5])
    counts = profile.counts[occupied[0]:occupied[-1] + 1]
    edges = profile.edges[occupied[0]:occupied[-1] + 2]
    group = max(1, -(-len(counts) // bins))
    pad = (-len(counts)) % group
    counts = np.concatenate([counts, np.zeros(pad, counts.dtype)]).reshape(-1, group).sum(1)
    return counts, edges[0] + (edges[1] - edges[0]) * group * np.arange(len(counts) + 1)


def histograms(profiles: dict[str, TensorProfile], xlabel: str, log: bool,
               thresholds: dict[str, float] | None = None, threshold_label: str = ""):
    """One panel per tensor: its histogram, the actual range (solid), the 3-sigma range (dashed) and, when
    given, the calibration threshold +-T (dotted)."""
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(2, 3, figsize=(PAGE, 2.9), layout="constrained")
        for ax, (name, profile) in zip(axes.flat, profiles.items(), strict=False):
            counts, edges = _rebinned(profile)
            ax.stairs(counts, edges, fill=True, color="0.65", lw=0)
            ax.axvline(profile.min, color="C0", lw=1, label="actual range")
            ax.axvline(profile.max, color="C0", lw=1)
            ax.axvline(profile.sigma3[0], color="C1", lw=1, ls="--", label="3-sigma range")
            ax.axvline(profile.sigma3[1], color="C1", lw=1, ls="--")
            if thresholds is not None:
                t = thresholds[name]
                ax.axvline(t, color="C3", lw=1.2, ls=":", label=threshold_label)
                if profile.min < 0:
                    ax.axvline(-t, color="C3", lw=1.2, ls=":")
            if log:
                ax.set_yscale("log")
            ax.set(title=name, xlabel=xlabel, ylabel="count")
        for ax in list(axes.flat)[len(profiles):]:
            ax.axis("off")
        figure.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, frameon=False)
        return figure


def kl_curve(name: str, thresholds: np.ndarray, divergences: np.ndarray, absmax: float):
    """KL(P || Q) of every candidate threshold of one tensor, the least one marked (the KL calibration's T)."""
    finite = np.isfinite(divergences)
    chosen = thresholds[np.argmin(divergences)]
    with plt.rc_context(STYLE):
        figure, ax = plt.subplots(figsize=(COLUMN, 1.6), layout="constrained")
        ax.plot(thresholds[finite], divergences[finite], lw=1, color="C0")
        ax.axvline(chosen, color="C3", lw=1.2, ls=":", label=f"least divergence: T = {chosen:.3g}")
        ax.axvline(absmax, color="0.4", lw=0.8, ls="--", label=f"max |x| = {absmax:.3g}")
        ax.set_yscale("log")
        ax.set(xlabel=f"threshold T of {name}", ylabel="KL(P || Q)")
        ax.legend(frameon=False, loc="upper right")
        return figure


def calibration(results: dict[str, dict[str, float]], float_accuracy: float):
    """Test accuracy of every calibration method at every [weight/activation] bit width."""
    widths = list(results)
    with plt.rc_context(STYLE):
        figure, ax = plt.subplots(figsize=(COLUMN, 1.9), layout="constrained")
        x = np.arange(len(widths))
        for i, method in enumerate(next(iter(results.values()))):
            ax.plot(x, [results[w][method] for w in widths], marker=MARKERS[i % len(MARKERS)], ms=3, lw=1,
                    label=method)
        ax.axhline(float_accuracy, color="0.4", lw=0.8, ls="--", label="float")
        ax.set_xticks(x, [Setting.parse(w).label for w in widths])
        ax.set(xlabel="weight / activation bits", ylabel="test accuracy (%)")
        ax.legend(frameon=False, ncol=3, loc="lower left")
        return figure


def techniques(results: dict[str, dict[str, float]], calibration: dict[str, dict[str, float]],
               float_accuracy: float):
    """Test accuracy of every combination of post-training techniques against the weight/activation bits, one
    panel per weight granularity; the quantization-aware fine-tune of the calibration comparison (where it ran
    at that width) and the float model as references."""
    settings = {name: Setting.parse(name) for name in results}
    granularities = list(dict.fromkeys(setting.granularity for setting in settings.values()))
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(1, len(granularities), figsize=(COLUMN, 2.1), layout="constrained",
                                    sharey=True, squeeze=False)
        for ax, granularity in zip(axes[0], granularities, strict=True):
            panel = [name for name, setting in settings.items() if setting.granularity == granularity]
            widths = [settings[name].width for name in panel]
            x = np.arange(len(panel))
            for i, combination in enumerate(next(iter(results.values()))):
                ax.plot(x, [results[name][combination] for name in panel], marker=MARKERS[i % len(MARKERS)],
                        ms=3, lw=1, label=combination_label(combination))
            qat = [i for i, w in enumerate(widths) if w.name in calibration]
            if qat:
                ax.plot(qat, [calibration[widths[i].name][FINE_TUNED] for i in qat], "kx", ms=5, label="QAT")
            ax.axhline(float_accuracy, color="0.4", lw=0.8, ls="--", label="float")
            ax.set_xticks(x, [w.label for w in widths])
            ax.set(title=f"per {granularity}", xlabel="weight / activation bits")
        axes[0][0].set(ylabel="test accuracy (%)")
        figure.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=3, frameon=False)
        return figure


def _label_points(ax, points: list[tuple[float, float, str]], height: float = 7.0) -> None:
    """Each point's label beside it; the labels of points at the same x closer in y than `height` points (of
    type, at the axes' final size: call it once the figure is laid out) joined, so that they do not overprint."""
    low, high = ax.get_ylim()
    spread = height / 72 * ax.figure.dpi * (high - low) / ax.bbox.height
    groups: list[list[tuple[float, float, str]]] = []
    for point in sorted(points):
        near = next((g for g in groups if g[-1][0] == point[0] and point[1] - g[-1][1] < spread), None)
        near.append(point) if near else groups.append([point])
    for group in groups:
        ax.annotate(", ".join(label for *_, label in group), (group[-1][0], group[-1][1]), xytext=(3, 2),
                    textcoords="offset points", fontsize=5.5, color="C0")


def _exhaustive_points(configurations: pd.DataFrame, layers: list[str], input_bits: int) -> pd.DataFrame:
    """The configurations the exhaustive run measured: every input at `input_bits`, with a test accuracy."""
    measured = configurations.dropna(subset=["test_accuracy"])
    return measured[measured[layers].apply(lambda column: column.str.endswith(f"/{input_bits}")).all(axis=1)]


def _broken_range(values: list[float], gap: float = 0.4, pad: float = 0.03) -> list[tuple[float, float]]:
    """The y ranges that show `values`: one, or where a gap between them spans more than `gap` of their range
    (a few collapsed networks far below the rest), the values above it and those below, each padded."""
    ordered = np.sort(values)
    steps = np.diff(ordered)
    span = ordered[-1] - ordered[0] or 1.0
    margin = pad * span
    if not len(steps) or steps.max() <= gap * span:
        return [(ordered[0] - margin, ordered[-1] + margin)]
    split = int(np.argmax(steps))
    return [(ordered[split + 1] - margin, ordered[-1] + margin), (ordered[0] - margin, ordered[split] + margin)]


def _mixed_precision_panel(ax, results: dict, configurations: pd.DataFrame, kind: str) -> None:
    """One panel of `mixed_precision`: everything drawn against `kind`'s cost."""
    float_accuracy, uniform, exhaustive = results["float"]["test_accuracy"], results["uniform"], results["exhaustive"]
    if exhaustive:
        layers = list(next(iter(uniform.values()))["layer_bits"])
        measured = _exhaustive_points(configurations, layers, exhaustive["input_bits"])
        ax.plot(100 * measured[kind], measured["test_accuracy"], ".", ms=2, color="0.8", zorder=1,
                label=f"every configuration, inputs at {exhaustive['input_bits']} bits")
        front = exhaustive["frontier"][kind]
        ax.step([100 * r[kind] for r in front], [r["test_accuracy"] for r in front], where="post", lw=0.8,
                color="0.45", zorder=2, label="best at each cost")
    ax.plot([100 * r[kind] for r in uniform.values()], [r["test_accuracy"] for r in uniform.values()], "s", ms=4.5,
            mfc="none", mew=0.9, color="C0", zorder=3, label="uniform")
    chosen = [e["choice"] for e in results["budgets"] if e["kind"] == kind and e["choice"] is not None]
    if chosen:
        delta, low, high = np.array([[c["vs_float"][k] for k in ("delta", "ci_low", "ci_high")] for c in chosen]).T
        ax.errorbar([100 * c[kind] for c in chosen], float_accuracy + delta, yerr=[delta - low, high - delta],
                    fmt="o", ms=2.5, lw=0.9, capsize=1.5, color="C3", zorder=4, label="chosen under a budget")
    ax.axhline(float_accuracy, color="0.4", lw=0.8, ls="--", label="float")


def mixed_precision(results: dict, configurations: pd.DataFrame):
    """Test accuracy against size and against BOPs (% of uniform 8/8), one column each: the uniform widths
    (labelled), the configurations chosen under that column's budgets with the 95 % interval of their difference
    to float (shifted by float's accuracy) as bars, and float; where every configuration was run (`exhaustive`),
    each as a grey dot and the best test accuracy at each cost as a step line. The y axis is broken where a gap
    spans most of the accuracies, so that the networks near float stay apart."""
    records = [*results["uniform"].values(), *(e["choice"] for e in results["budgets"] if e["choice"] is not None)]
    values = [results["float"]["test_accuracy"], *(r["test_accuracy"] for r in records)]
    if results["exhaustive"]:
        values += configurations["test_accuracy"].dropna().tolist()
    ranges = _broken_range(values)
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(len(ranges), 2, figsize=(PAGE, 2.4), layout="constrained", sharex="col",
                                    sharey="row", squeeze=False, height_ratios=[3, 1][:len(ranges)])
        for row, ylim in zip(axes, ranges, strict=True):
            for ax, kind in zip(row, ("size", "bops"), strict=True):
                ax.set_ylim(ylim)
                _mixed_precision_panel(ax, results, configurations, kind)
        for ax, title in zip(axes[0], ("size", "BOPs"), strict=True):
            ax.set(title=f"by {title}")
        for ax, title in zip(axes[-1], ("size", "BOPs"), strict=True):
            ax.set(xlabel=f"{title} (% of uniform 8/8)")
        for ax in axes[:-1].flat:  # the break: no x axis between the ranges, a cut mark at each end
            ax.spines.bottom.set_visible(False)
            ax.tick_params(axis="x", bottom=False)
            ax.plot([0], [0], transform=ax.transAxes, marker=[(-1, -0.5), (1, 0.5)], ms=6, color="k", mew=0.8,
                    clip_on=False)
        for ax in axes[1:].flat:
            ax.plot([0], [1], transform=ax.transAxes, marker=[(-1, -0.5), (1, 0.5)], ms=6, color="k", mew=0.8,
                    clip_on=False)
        figure.supylabel("test accuracy (%)", fontsize=STYLE["axes.labelsize"])
        figure.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=5, frameon=False)
        figure.draw_without_rendering()  # the labels' spacing needs the axes' final heights
        for row in axes:
            for ax, kind in zip(row, ("size", "bops"), strict=True):
                _label_points(ax, [(100 * r[kind], r["test_accuracy"], Setting.parse(name).label)
                                   for name, r in results["uniform"].items()])
        return figure


MEASURE_TITLES = {"output": "output: increase of the logits' MSE", "sqnr": "sqnr: added noise-to-signal ratio"}


def sensitivity(frame: pd.DataFrame):
    """One heat map per measure of quantlab.mixed_precision: every layer's sensitivity (rows) at every weight/input
    option (columns), on a log scale and written in its cell; values not above 0 (the widest option, the
    reference) written but not coloured."""
    measures = list(dict.fromkeys(frame["measure"]))
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(len(measures), 1, figsize=(COLUMN, 1.45 * len(measures)), layout="constrained",
                                    squeeze=False)
        for ax, measure in zip(axes[:, 0], measures, strict=True):
            rows = frame[frame["measure"] == measure]
            table = rows.pivot(index="layer", columns=["weight_bits", "input_bits"], values="sensitivity")
            table = table.loc[list(dict.fromkeys(rows["layer"]))].sort_index(axis=1)
            values = table.to_numpy()
            positive = values[values > 0]
            norm = matplotlib.colors.LogNorm(positive.min(), positive.max()) if len(positive) else None
            image = ax.imshow(np.ma.masked_less_equal(values, 0), norm=norm, cmap="Blues", aspect="auto")
            for (i, j), value in np.ndenumerate(values):
                dark = norm is not None and value > 0 and norm(value) > 0.6
                ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=5, color="white" if dark else "0.1")
            ax.set_xticks(range(values.shape[1]), [f"{w}/{a}" for w, a in table.columns])
            ax.set_yticks(range(values.shape[0]), table.index)
            ax.tick_params(length=0)
            ax.spines[:].set_visible(False)
            ax.set(title=MEASURE_TITLES.get(measure, measure), xlabel="weight / input bits")
            figure.colorbar(image, ax=ax, pad=0.02, aspect=12)
        return figure
