"""Stage export@<model>: the integer network as a self-describing artifact in export/<model>/:
model.npz (int8 weights, int32 biases, fixed-point multipliers M0 and shifts, the input lookup table),
manifest.json (layer order, shapes, bit widths, scales, integer ranges, the arrays' SHA-256) and runner.py,
the standalone NumPy runner that executes it."""

import hashlib
import sys
from pathlib import Path

import numpy as np

from quantlab import paths, runner
from quantlab.architecture import LAYERS, MODELS, model_name_argument
from quantlab.config import load_params
from quantlab.data import normalize
from quantlab.errors import run_main
from quantlab.io import load_json, load_npz, save_json, save_npz, save_text
from quantlab.quant import activation_range, multiplier, quantize, split_weights


def input_lut(activations: dict) -> np.ndarray:
    """The quantized input of each of the 256 pixel values, exactly as the float-rescale forward computes it."""
    pixels = normalize(np.arange(256, dtype=np.uint8)).astype(np.float64)
    return quantize(pixels, activations["scales"]["input"], activations["bits"]["input"],
                    activations["signed"]["input"]).astype(np.int16)


def export(model_name: str, weights: dict[str, np.ndarray], activations: dict, bias: np.ndarray | None,
           classes: list[str], architecture: list[dict], headroom: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest (without its checksum) and the arrays of the integer network; with `headroom`, each
    layer's accumulators are pre-shifted into the int32 headroom its worst case leaves (see runner)."""
    q_weights, weight_scales = split_weights(weights)
    shapes = {row["layer"]: row for row in architecture}
    arrays = {"input.lut": input_lut(activations)}
    layers = []
    input_range = network_input = activation_range(activations, "input")
    for layer in LAYERS:
        channels = len(q_weights[layer.name])
        rescale = np.broadcast_to(multiplier(activations, weight_scales[layer.name], layer.name), (channels,))
        m0, shift = zip(*(runner.quantize_multiplier(float(m)) for m in rescale), strict=True)
        names = {key: f"{layer.name}.{key}" for key in ("weight", "m0", "shift")}
        arrays[names["weight"]] = q_weights[layer.name].astype(np.int8)
        arrays[names["m0"]] = np.array(m0, np.int32)
        arrays[names["shift"]] = np.array(shift, np.int32)
        has_bias = bias is not None and layer.name == "fc3"
        if has_bias:
            arrays["fc3.bias"] = bias.astype(np.int32)
        qmin, qmax = activation_range(activations, layer.name)
        bound = runner.accumulator_bound(q_weights[layer.name], input_range, bias if has_bias else None)
        clamp = [max(qmin, 0) if layer.relu else qmin, qmax]
        layers.append({
            "name": layer.name, "kind": layer.kind,
            "input_shape": [int(d) for d in shapes[layer.name]["input"].split("x")],
            "output_shape": [int(d) for d in shapes[layer.name]["output"].split("x")],
            "weight": names["weight"], "weight_bits": int(weights["bits"]),
            "weight_scale": np.asarray(weight_scales[layer.name]).tolist(),
            "bias": "fc3.bias" if has_bias else None,
            "multiplier": names["m0"], "shift": names["shift"], "real_multiplier": rescale.tolist(),
            "accumulator_bound": bound,
            "pre_shift": runner.headroom_shift(bound, arrays[names["shift"]]) if headroom else 0,
            "output_scale": activations["scales"][layer.name], "output_range": [qmin, qmax],
            "clamp": clamp, "relu": layer.relu, "pool": 2 if layer.pool else 0,
        })
        input_range = tuple(clamp)
    manifest = {
        "format": runner.FORMAT, "version": 1, "model": model_name, "calib": activations["calib"],
        "activation_bits": activations["bits"],
        "input": {"shape": [3, 32, 32], "lut": "input.lut", "normalization": "x = pixel / 127.5 - 1 (float32)",
                  "scale": activations["scales"]["input"], "range": list(network_input)},
        "layers": layers, "classes": classes, "arrays": "model.npz",
    }
    return manifest, arrays


def main() -> None:
    model_name = model_name_argument(sys.argv, "export")
    params = load_params()
    activations = load_json(paths.quant_activations(model_name))
    bias = load_npz(paths.QUANT_BIAS)["fc3.bias"] if MODELS[model_name] else None
    classes = load_npz(paths.DATASET, ["classes"])["classes"].tolist()
    architecture = load_json(paths.profile(model_name) / "stats.json")["architecture"]
    weights = load_npz(paths.quant_weights(model_name, params))
    manifest, arrays = export(model_name, weights, activations, bias, classes, architecture, params.export.headroom)
    directory = paths.export(model_name)
    save_npz(directory / manifest["arrays"], arrays)
    manifest["sha256"] = hashlib.sha256((directory / manifest["arrays"]).read_bytes()).hexdigest()
    save_json(directory / "manifest.json", manifest)
    save_text(directory / "runner.py", Path(runner.__file__).read_text(encoding="utf-8"))


if __name__ == "__main__":
    run_main(main)
