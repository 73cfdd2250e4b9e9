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


def training(histories: dict[str, "pd.DataFrame"]):  # noqa: F821
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


def fine_tuning(histories: dict[str, "pd.DataFrame"]):  # noqa: F821
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
