"""Stage report: the lab report as LaTeX (IEEEtran) and Markdown, with the activation histograms that show the
chosen calibration's thresholds, from the pipeline's artifacts."""

import pandas as pd

from quantlab import paths
from quantlab.inference import export_format
from quantlab.io import load_json, load_npz, require, save_text
from quantlab.profiling import load_profiles
from quantlab.quantize.network import QuantizedNetwork
from quantlab.report import figures
from quantlab.report.provenance import code_version, source_date
from quantlab.report.render import render
from quantlab.report.sections import Run, context
from quantlab.stage import load_params, run_main


def main() -> None:
    params = load_params()
    network, bias_network = (QuantizedNetwork.load(paths.quantized(name)) for name in ("float", "bias"))
    dataset = load_npz(paths.DATASET, ["train_y", "test_y"])
    activations = load_profiles(paths.profile("float"), "activations")
    run = Run(params, network, bias_network, load_json(paths.ACCURACY), load_json(paths.DIFFERENCES),
              load_profiles(paths.profile("float"), "weights"), activations, load_json(paths.CALIBRATION),
              pd.read_csv(require(paths.CALIBRATION_LAYERS)), len(dataset["train_y"]), len(dataset["test_y"]),
              export_format.read(paths.export("float")), load_json(paths.ENGINE),
              load_json(paths.ONNXRUNTIME)["version"], load_json(paths.TECHNIQUES),
              pd.read_csv(require(paths.TECHNIQUES_LAYERS)), load_json(paths.MIXED_PRECISION))
    figures.save(figures.histograms(activations, "activation value", log=True,
                                    thresholds={n: a.threshold for n, a in network.activations.items()},
                                    threshold_label=f"threshold ({network.provenance.calib})"),
                 paths.REPORT / "figures", "activations")
    values = context(run, code_version=code_version(), date=source_date().strftime("%Y-%m-%d"))
    for fmt, suffix in (("latex", "tex"), ("markdown", "md")):
        save_text(paths.REPORT / f"report.{suffix}", render("report.j2", values, fmt))


if __name__ == "__main__":
    run_main(main)
