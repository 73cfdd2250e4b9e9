"""Stage export: each model's quantized network as an integer-only artifact in export/<model>/ (the format of
quantlab.inference.export_format): model.npz (int8 weights, int32 biases, fixed-point multipliers M0 and
shifts, the input lookup table), manifest.json (layer order, shapes, bit widths, scales, integer ranges, the
engine's rounding, the SHA-256 of the arrays and of the ONNX model), model.onnx (the same network for ONNX
Runtime, quantlab.inference.onnx_graph) and runner.py, the standalone NumPy runner that executes it."""

from quantlab import paths
from quantlab.architecture import MODELS
from quantlab.inference.export import integer_network, package, write
from quantlab.io import load_npz
from quantlab.quantize.network import QuantizedNetwork
from quantlab.stage import load_params, run_main


def main() -> None:
    params = load_params()
    classes = load_npz(paths.DATASET, ["classes"])["classes"].tolist()
    exports = {name: package(*integer_network(QuantizedNetwork.load(paths.quantized(name)), classes,
                                              params.export.headroom, params.export.rounding))
               for name in MODELS}  # all built before any is written
    for name, files in exports.items():
        write(paths.export(name), *files)


if __name__ == "__main__":
    run_main(main)
