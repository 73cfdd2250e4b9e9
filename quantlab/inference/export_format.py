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
from pathlib import Path

import numpy as np

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


def read(directory: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and the arrays of an export, after checking its format, its version, every layer record's
    keys and the arrays' checksum."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{directory / MANIFEST} is not a {FORMAT} manifest of version {VERSION}")
    if any(tuple(layer) != LAYER_KEYS for layer in manifest["layers"]):
        raise ValueError(f"{directory / MANIFEST} has a layer record without the keys {', '.join(LAYER_KEYS)}")
    payload = (directory / ARRAYS).read_bytes()
    if checksum(manifest, payload) != manifest["sha256"]:
        raise ValueError(f"{directory} does not match the checksum in its manifest: it was edited or damaged; "
                         f"export it again")
    with np.load(directory / ARRAYS, allow_pickle=False) as archive:
        return manifest, {name: archive[name] for name in archive.files}
