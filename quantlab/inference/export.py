"""An export built and packaged: the integer network of a QuantizedNetwork in the format of
quantlab.inference.export_format, with its ONNX model (quantlab.inference.onnx_graph) and the standalone NumPy
runner. `integer_network` builds the manifest and arrays, `package` completes and serializes them, `write`
writes the folder (stage export)."""

import ast
import hashlib
from pathlib import Path

import numpy as np

from quantlab import files
from quantlab.architecture import INPUT_SHAPE, LAYERS, POOL, shapes
from quantlab.inference import export_format, fixed_point, onnx_graph, runner
from quantlab.inference.export_format import INPUT_LUT, array_name, layer_record
from quantlab.io import npz_bytes, save_bytes, save_json, save_text
from quantlab.quantize.network import QuantizedNetwork


def integer_network(network: QuantizedNetwork, classes: list[str], headroom: bool = True,
                    rounding: str = fixed_point.GEMMLOWP) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest (without its ONNX model and checksum) and the arrays of the integer network; with
    `headroom`, each layer's accumulators are pre-shifted into the int32 headroom its worst case leaves (see
    fixed_point); `rounding`: how the engine and the runner requantize."""
    steps = {step.name: step for step in shapes()}
    arrays = {INPUT_LUT: network.input_table()}
    layers = []
    input_range = network.activations["input"].range
    for layer in LAYERS:
        quantized = network.layers[layer.name]
        rescale = np.broadcast_to(network.multiplier(layer.name), (layer.outputs,))
        m0, shift = zip(*(fixed_point.quantize_multiplier(float(m)) for m in rescale), strict=True)
        names = {key: array_name(layer.name, key) for key in ("weight", "bias", "m0", "shift")}
        arrays[names["weight"]] = quantized.weight
        arrays[names["m0"]] = np.array(m0, np.int32)
        arrays[names["shift"]] = np.array(shift, np.int32)
        if quantized.q_bias is not None:
            arrays[names["bias"]] = quantized.q_bias
        qmin, qmax = network.activations[layer.name].range
        bound = fixed_point.accumulator_bound(quantized.weight, input_range, quantized.q_bias)
        clamp = [max(qmin, 0) if layer.relu else qmin, qmax]
        layers.append(layer_record(
            name=layer.name, kind=layer.kind, input_shape=list(steps[layer.name].input),
            output_shape=list(steps[layer.name].output), weight=names["weight"],
            weight_bits=network.weight_bits[layer.name],
            weight_scale=quantized.scale.tolist(), bias=names["bias"] if quantized.q_bias is not None else None,
            multiplier=names["m0"], shift=names["shift"], real_multiplier=rescale.tolist(), accumulator_bound=bound,
            pre_shift=fixed_point.headroom_shift(bound, arrays[names["shift"]]) if headroom else 0,
            output_scale=network.activations[layer.name].scale, output_range=[qmin, qmax], clamp=clamp,
            relu=layer.relu, pool=POOL if layer.pool else 0))
        input_range = tuple(clamp)
    first = network.activations["input"]
    manifest = {
        "format": export_format.FORMAT, "version": export_format.VERSION, "model": network.provenance.model,
        "provenance": vars(network.provenance), "rounding": rounding,
        "activation_bits": {n: a.bits for n, a in network.activations.items()},
        "input": {"shape": list(INPUT_SHAPE), "lut": INPUT_LUT, "normalization": "x = pixel / 127.5 - 1 (float32)",
                  "scale": first.scale, "range": list(first.range)},
        "layers": layers, "classes": classes,
    }
    return manifest, arrays


def standalone_runner() -> str:
    """runner.py of an export: the runner with the bounded file readers, the fixed-point arithmetic and the
    export format it imports, in one file that needs NumPy only, under the runner's docstring (their own
    docstrings and quantlab imports left out; the `__future__` import lets it run on Pythons older than the
    project's)."""
    bodies = []
    for module in (files, fixed_point, export_format, runner):
        source = Path(module.__file__).read_text(encoding="utf-8")
        tree = ast.parse(source)
        dropped = {line for node in tree.body
                   if node is tree.body[0] or isinstance(node, ast.ImportFrom) and node.module.startswith("quantlab.")
                   for line in range(node.lineno - 1, node.end_lineno)}
        kept = "".join(line for i, line in enumerate(source.splitlines(keepends=True)) if i not in dropped)
        bodies.append(f"# --- {module.__name__} ".ljust(110, "-") + "\n" + kept.strip("\n") + "\n")
    docstring = ast.get_source_segment(source, tree.body[0])  # the runner's, the last module
    return f"{docstring}\n\nfrom __future__ import annotations\n\n" + "\n\n".join(bodies)


def package(manifest: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, bytes, bytes]:
    """The files of an export from `integer_network`'s manifest and arrays: the manifest completed with the ONNX
    model's and the arrays' checksums, the arrays (.npz bytes) and the ONNX model (bytes)."""
    payload, model = npz_bytes(arrays), onnx_graph.build(manifest, arrays).SerializeToString()
    manifest = {**manifest, "onnx": {"file": onnx_graph.FILE, "opset": onnx_graph.OPSET,
                                     "sha256": hashlib.sha256(model).hexdigest()}}
    return {**manifest, "sha256": export_format.checksum(manifest, payload)}, payload, model


def write(directory: Path, manifest: dict, payload: bytes, model: bytes) -> None:
    """A `package` into `directory`, with the standalone runner."""
    save_bytes(directory / export_format.ARRAYS, payload)
    save_bytes(directory / onnx_graph.FILE, model)
    save_json(directory / export_format.MANIFEST, manifest)
    save_text(directory / "runner.py", standalone_runner())
