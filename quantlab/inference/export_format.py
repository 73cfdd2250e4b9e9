"""The export format of an integer network, defined once for its writer (stage export) and its readers (the
integer engine, the standalone runner). Standard library and NumPy only: the export stage copies this module
into the runner.

    manifest.json   format, version, model, provenance, rounding, activation_bits, input, layers, classes, onnx,
                    sha256
    model.npz       the arrays the manifest names: per layer <name>.weight (int8), <name>.bias (int32,
                    where the layer has one), <name>.m0 and <name>.shift (int32, one per output channel); and
                    input.lut (int16), the quantized input of each of the 256 pixel values
    model.onnx      the same network as an ONNX model (quantlab.inference.onnx_graph)

`input` holds the image shape, the lookup table's name, the normalization, the input's scale and integer
range. `layers` holds one record per conv/fc layer, in order, with the keys LAYER_KEYS: integer shapes, the
names of its arrays, its scales, its fixed-point rescale (pre-shift, real multiplier), its accumulator bound,
its output's integer range and clamp (the ReLU included), and its max pooling window (0: none). `rounding`
is how the engine and the runner requantize (quantlab.inference.fixed_point.REQUANTIZATIONS); `onnx` names
the ONNX model's file, opset and SHA-256. `sha256` is the checksum of the manifest's content and model.npz
together.
"""

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from quantlab.files import MIB, npz_arrays, regular_file
from quantlab.inference.fixed_point import INT32_MAX, REQUANTIZATIONS, accumulator_bound

FORMAT = "quantlab-integer-network"
VERSION = 3
MANIFEST, ARRAYS = "manifest.json", "model.npz"
INPUT_LUT = "input.lut"
LAYER_KEYS = ("name", "kind", "input_shape", "output_shape", "weight", "weight_bits", "weight_scale", "bias",
              "multiplier", "shift", "real_multiplier", "accumulator_bound", "pre_shift", "output_scale",
              "output_range", "clamp", "relu", "pool")


def array_name(layer: str, key: str) -> str:
    """The name in model.npz of a layer's "weight", "bias", "m0" or "shift"."""
    return f"{layer}.{key}"


def layer_record(**fields) -> dict:
    """One entry of the manifest's `layers`, with exactly the keys LAYER_KEYS, in that order."""
    if set(fields) != set(LAYER_KEYS):
        raise ValueError(f"a layer record has the keys {', '.join(LAYER_KEYS)}, not {', '.join(fields)}")
    return {key: fields[key] for key in LAYER_KEYS}


def checksum(manifest: dict, payload: bytes) -> str:
    """The SHA-256 of the manifest's content (all but its "sha256") and of model.npz: an edit to either shows."""
    content = json.dumps({key: value for key, value in manifest.items() if key != "sha256"}, sort_keys=True)
    return hashlib.sha256(content.encode() + b"\0" + payload).hexdigest()


# Bounds of what is read before anything is checked: this network's export is about 0.3 MB.
MANIFEST_LIMIT, ARRAYS_LIMIT = MIB, 64 * MIB
KINDS = ("conv", "fc")
M0_RANGE = (2 ** 30, 2 ** 31 - 1)  # a normalized fixed-point multiplier: M = M0 * 2^(shift - 31), M0 in [2^30, 2^31)


def read(directory: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and the arrays of an export, after checking that both are files of bounded size, the
    format, the version and the checksum, and then every field (`check`): a manifest edited with its checksum
    recomputed is refused as surely as a damaged one."""
    directory = Path(directory)
    try:
        manifest = json.loads(regular_file(directory / MANIFEST, MANIFEST_LIMIT).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{directory / MANIFEST} is not JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{directory / MANIFEST} is not a {FORMAT} manifest of version {VERSION}")
    payload = regular_file(directory / ARRAYS, ARRAYS_LIMIT).read_bytes()
    if checksum(manifest, payload) != manifest.get("sha256"):
        raise ValueError(f"{directory} does not match the checksum in its manifest: it was edited or damaged; "
                         f"export it again")
    arrays = npz_arrays(directory / ARRAYS, ARRAYS_LIMIT)
    check(manifest, arrays, directory / MANIFEST)
    return manifest, arrays


class _Checker:
    """The checks of one manifest, each failing with one line that names the field."""

    def __init__(self, manifest: dict, arrays: dict[str, np.ndarray], path: Path):
        self.manifest, self.arrays, self.path = manifest, arrays, path

    def require(self, condition, field: str, expected: str, value) -> None:
        if not condition:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ValueError(f"{self.path}: {field} must be {expected}, got {shown}")

    def integer(self, value, field: str, low: int, high: int) -> int:
        self.require(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high, field,
                     f"an integer in [{low}, {high}]", value)
        return value

    def positive(self, value, field: str, count: int | None = None) -> np.ndarray:
        """A positive finite number, or (where `count` is given) a list of `count` of them, or one."""
        values = value if isinstance(value, list) and count is not None else [value]
        self.require(all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                         for v in values) and len(values) in (1, count or 1), field,
                     "a positive finite number" + (f" or a list of {count}" if count else ""), value)
        return np.asarray(values, np.float64)

    def integer_range(self, value, field: str, low: int, high: int) -> tuple[int, int]:
        """[lo, hi], two integers with low <= lo < hi <= high."""
        self.require(isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value) and low <= value[0] < value[1] <= high,
            field, f"[lo, hi] with {low} <= lo < hi <= {high}", value)
        return value[0], value[1]

    def array(self, name, field: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
        self.require(isinstance(name, str) and name in self.arrays, field, f"the name of an array in {ARRAYS}", name)
        array = self.arrays[name]
        self.require(array.dtype == dtype and array.shape == shape, field,
                     f"an array {np.dtype(dtype).name} of shape {shape}", f"{array.dtype.name} {array.shape}")
        return array


def check(manifest: dict, arrays: dict[str, np.ndarray], path: Path = Path(MANIFEST)) -> None:
    """Every field of a manifest, against its arrays and against each other: types, ranges (bits 2-8, M0 in
    [2^30, 2^31), every shift one the fixed-point arithmetic can apply, clamps ordered and inside the output's
    bits), known kinds and roundings, and shapes that follow from layer to layer. One ValueError per fault."""
    c = _Checker(manifest, arrays, path)
    c.require(manifest.get("rounding") in REQUANTIZATIONS, "rounding", f"one of {', '.join(REQUANTIZATIONS)}",
              manifest.get("rounding"))
    bits = manifest.get("activation_bits")
    c.require(isinstance(bits, dict), "activation_bits", "a mapping of activation names to bits", bits)
    for name, value in bits.items():
        c.integer(value, f"activation_bits.{name}", 2, 8)
    first = manifest.get("input")
    c.require(isinstance(first, dict), "input", "a mapping", first)
    shape = first.get("shape")
    c.require(isinstance(shape, list) and len(shape) == 3 and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 for v in shape), "input.shape",
        "[channels, height, width] of positive integers", shape)
    c.positive(first.get("scale"), "input.scale")
    c.require("input" in bits, "activation_bits", "a mapping that names the input", bits)
    levels = 2 ** bits["input"]
    input_range = c.integer_range(first.get("range"), "input.range", -levels // 2, levels - 1)
    lut = c.array(first.get("lut"), "input.lut", np.int16, (256,))
    c.require(bool((lut >= input_range[0]).all() and (lut <= input_range[1]).all()), "input.lut",
              f"256 values within input.range {list(input_range)}", f"values {lut.min()} to {lut.max()}")
    layers = manifest.get("layers")
    c.require(isinstance(layers, list) and layers and all(isinstance(layer, dict) for layer in layers), "layers",
              "a non-empty list of layer records", layers)
    shape, previous = tuple(shape), input_range
    for i, layer in enumerate(layers):
        field = f"layers[{i}]"
        c.require(tuple(layer) == LAYER_KEYS, field, f"a record of the keys {', '.join(LAYER_KEYS)}", list(layer))
        name, kind = layer["name"], layer["kind"]
        c.require(isinstance(name, str) and name in bits, f"{field}.name", "an activation named in activation_bits",
                  name)
        c.require(kind in KINDS, f"{field}.kind", f"one of {', '.join(KINDS)}", kind)
        field = f"layers[{i}] ({name})"
        if kind == "fc" and len(shape) > 1:
            shape = (math.prod(shape),)  # flattened
        c.require(layer["input_shape"] == list(shape), f"{field}.input_shape", f"the previous output's {list(shape)}",
                  layer["input_shape"])
        outputs = layer["output_shape"][0] if isinstance(layer["output_shape"], list) and layer["output_shape"] else 0
        c.integer(outputs, f"{field}.output_shape[0]", 1, 65536)
        if kind == "conv":
            c.require(len(shape) == 3, f"{field}.kind", "fc after a flattened input", kind)
            weight = arrays.get(layer["weight"]) if isinstance(layer["weight"], str) else None
            kernel = weight.shape[-1] if isinstance(weight, np.ndarray) and weight.ndim == 4 else 0
            c.integer(kernel, f"{field}.weight's kernel", 1, min(shape[1:]))
            weight = c.array(layer["weight"], f"{field}.weight", np.int8, (outputs, shape[0], kernel, kernel))
            expected = [outputs, shape[1] - kernel + 1, shape[2] - kernel + 1]
        else:
            weight = c.array(layer["weight"], f"{field}.weight", np.int8, (outputs, shape[0]))
            expected = [outputs]
        c.require(layer["output_shape"] == expected, f"{field}.output_shape", f"{expected}", layer["output_shape"])
        weight_bits = c.integer(layer["weight_bits"], f"{field}.weight_bits", 2, 8)
        low, high = -2 ** (weight_bits - 1), 2 ** (weight_bits - 1) - 1
        c.require(bool((weight >= low).all() and (weight <= high).all()), f"{field}.weight",
                  f"integers of {weight_bits} bits, in [{low}, {high}]", f"values {weight.min()} to {weight.max()}")
        c.positive(layer["weight_scale"], f"{field}.weight_scale", outputs)
        bias = None if layer["bias"] is None else c.array(layer["bias"], f"{field}.bias", np.int32, (outputs,))
        m0 = c.array(layer["multiplier"], f"{field}.multiplier", np.int32, (outputs,)).astype(np.int64)
        c.require(bool((m0 >= M0_RANGE[0]).all() and (m0 <= M0_RANGE[1]).all()), f"{field}.multiplier",
                  "M0 values in [2^30, 2^31)", f"values {m0.min()} to {m0.max()}")
        pre_shift = c.integer(layer["pre_shift"], f"{field}.pre_shift", 0, 31)
        shift = c.array(layer["shift"], f"{field}.shift", np.int32, (outputs,)).astype(np.int64)
        c.require(bool((shift >= pre_shift - 31).all() and (shift <= 31).all()), f"{field}.shift",
                  f"values in [pre_shift - 31, 31] = [{pre_shift - 31}, 31]", f"values {shift.min()} to {shift.max()}")
        real = c.positive(layer["real_multiplier"], f"{field}.real_multiplier", outputs)
        fixed = m0 * np.exp2(shift - 31.0)
        c.require(bool((np.abs(fixed - real) <= real * 2.0 ** -29).all()), f"{field}.real_multiplier",
                  "M0 * 2^(shift - 31) of its multiplier and shift", layer["real_multiplier"])
        bound = accumulator_bound(weight, previous, bias)
        c.require(layer["accumulator_bound"] == bound, f"{field}.accumulator_bound", f"{bound}, its weights' worst "
                  f"case", layer["accumulator_bound"])
        c.require(bound <= INT32_MAX and bound << pre_shift <= INT32_MAX, f"{field}.pre_shift",
                  "a shift that keeps the worst accumulator within int32", pre_shift)
        c.positive(layer["output_scale"], f"{field}.output_scale")
        levels = 2 ** bits[name]
        output_range = c.integer_range(layer["output_range"], f"{field}.output_range", -levels // 2, levels - 1)
        c.require(output_range[1] - output_range[0] == levels - 1, f"{field}.output_range",
                  f"the {levels} levels of {bits[name]} bits", layer["output_range"])
        previous = c.integer_range(layer["clamp"], f"{field}.clamp", *output_range)
        c.require(isinstance(layer["relu"], bool), f"{field}.relu", "true or false", layer["relu"])
        pool = c.integer(layer["pool"], f"{field}.pool", 0, 0 if kind == "fc" else min(expected[1:]))
        c.require(pool != 1 and (pool == 0 or all(side % pool == 0 for side in expected[1:])), f"{field}.pool",
                  f"0 (none) or a window dividing {expected[1:]}", pool)
        shape = tuple(expected) if not pool else (outputs, *(side // pool for side in expected[1:]))
    classes = manifest.get("classes")
    c.require(isinstance(classes, list) and len(classes) == shape[0] and len(shape) == 1 and all(
        isinstance(name, str) for name in classes), "classes", f"{shape[0]} class names, one per output", classes)
