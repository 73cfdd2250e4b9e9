"""The exported integer network as an ONNX model, for ONNX Runtime and the tools that read ONNX.

Built from an export (`quantlab.inference.export_format`), operator by operator, in the "QOperator" form
ONNX Runtime runs with its integer kernels:

    pixels (uint8, N x 3 x 32 x 32) -> Cast -> Gather(input LUT)       the input quantization, as the engine
    conv layer   QLinearConv (int32 bias where the layer has one) -> Clip (the ReLU / a low-bit range)
                 -> MaxPool
    fc layer     QLinearMatMul -> Clip; with a bias: MatMulInteger -> Add(int32 bias) -> Cast(float)
                 -> Mul(M) -> Clip -> Round -> Cast, the same arithmetic written out (QLinearMatMul has no bias)
    logits       quantized_logits (the integers), and logits = DequantizeLinear(quantized_logits)

ONNX Runtime requantizes with a float32 multiplier M = (S_in * S_W[o]) / S_out (evaluated in float32, as
`ComputeOutputScale` in onnxruntime/core/providers/cpu/quantization/qlinearconv.cc), then
q = round_half_even(clamp(float32(acc + bias) * M)) (`MlasRequantizeOutput` in onnxruntime/core/mlas/lib/
quantize.cpp): the engine's "onnxruntime" rounding (`quantlab.inference.fixed_point.onnxruntime_multiplier`).

Tensor types: every 8-bit tensor is uint8, "U8U8" in ONNX Runtime's terms. A signed one (an activation, a
weight) carries the zero point 128, so that q = stored - 128 exactly; an unsigned activation the zero point 0.
ONNX Runtime's quantization guide ("Data type selection") says why: its x86 kernels are built for uint8
activations (int8 ones ran twice as slowly here), and with int8 weights (U8S8) AVX2 and AVX-512 without VNNI
multiply with VPMADDUBSW, whose pairwise int16 sums saturate (onnxruntime/core/mlas/lib/intrinsics/avx2/
saturation_check_avx2.cpp detects exactly that). U8U8 sums exactly on every x86 CPU.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantlab.architecture import INPUT_SHAPE, LAYERS, POOL
from quantlab.errors import UserError
from quantlab.inference.export_format import INPUT_LUT
from quantlab.inference.fixed_point import onnxruntime_multiplier
from quantlab.io import require

OPSET = 21
PRODUCER = "quantlab"
FILE = "model.onnx"
SIGNED_ZERO_POINT = 128  # of a signed tensor (stored as uint8)
# The x86 extensions among which ONNX Runtime's integer kernels (MLAS) choose; its results must not depend on them.
CPU_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "amx_int8")


class Graph:
    """Nodes and initializers of a graph under construction; a tensor's quantization parameters are one
    initializer, shared by the layer that writes the tensor and the one that reads it."""

    def __init__(self):
        self.nodes, self.initializers = [], {}

    def constant(self, name: str, value) -> str:
        self.initializers.setdefault(name, numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def model(self, name: str, outputs: list, doc_string: str = "") -> onnx.ModelProto:
        """The checked model of this graph, from uint8 pixels (N, 3, 32, 32) to `outputs` (value infos), at
        this project's opset and producer."""
        pixels = helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", *INPUT_SHAPE])
        body = helper.make_graph(self.nodes, name, [pixels], outputs, list(self.initializers.values()))
        model = helper.make_model(body, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER,
                                  producer_version="1", **({"doc_string": doc_string} if doc_string else {}))
        onnx.checker.check_model(model, full_check=True)
        return model


def zero_points(manifest: dict) -> dict[str, int]:
    """The zero point of every activation tensor (by tensor: input, conv1, ...), stored as uint8."""
    ranges = {"input": manifest["input"]["range"], **{layer["name"]: layer["output_range"]
                                                      for layer in manifest["layers"]}}
    return {name: SIGNED_ZERO_POINT if low < 0 else 0 for name, (low, high) in ranges.items()}


def stored(q: np.ndarray, zero_point: int) -> np.ndarray:
    """Integers as uint8 with `zero_point` (stored - zero_point = q)."""
    return (q.astype(np.int64) + zero_point).astype(np.uint8)


def build(manifest: dict, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The ONNX model of an export (its manifest and arrays), checked by onnx.checker."""
    zero_point_of = zero_points(manifest)
    graph = Graph()
    x = graph.node("Cast", ["pixels"], "pixel_index", to=TensorProto.INT64)
    x = graph.node("Gather", [graph.constant("input.lut", stored(arrays[INPUT_LUT], zero_point_of["input"])), x],
                   "input")
    previous, scale, spatial = "input", manifest["input"]["scale"], True
    for layer in manifest["layers"]:
        name = layer["name"]
        if layer["kind"] == "fc" and spatial:  # (N, C, H, W) -> (N, C * H * W), the float model's order
            x = graph.node("Flatten", [x], f"{name}.flat", axis=1)
        spatial = layer["kind"] == "conv"
        weight_zero_point = graph.constant(f"{name}.weight.zero_point", np.uint8(SIGNED_ZERO_POINT))
        zero_point = zero_point_of[name]
        low, high = (bound + zero_point for bound in layer["clamp"])
        quantization = [graph.constant(f"{previous}.scale", np.float32(scale)),
                        graph.constant(f"{previous}.zero_point", np.uint8(zero_point_of[previous]))]
        weight_scale = np.asarray(layer["weight_scale"], np.float32).squeeze()  # a scalar for one scale
        output_quantization = [graph.constant(f"{name}.scale", np.float32(layer["output_scale"])),
                               graph.constant(f"{name}.zero_point", np.uint8(zero_point))]
        bias = [graph.constant(f"{name}.bias", arrays[layer["bias"]].astype(np.int32))] if layer["bias"] else []
        weight = stored(arrays[layer["weight"]], SIGNED_ZERO_POINT)
        weight = graph.constant(f"{name}.weight", weight if layer["kind"] == "conv" else weight.T.copy())
        if layer["kind"] == "fc" and bias:
            x = graph.node("MatMulInteger", [x, weight, quantization[1], weight_zero_point], f"{name}.acc")
            x = graph.node("Add", [x, bias[0]], f"{name}.acc_bias")
            x = graph.node("Cast", [x], f"{name}.acc_float", to=TensorProto.FLOAT)
            multiplier = onnxruntime_multiplier(scale, layer["weight_scale"], layer["output_scale"])
            x = graph.node("Mul", [x, graph.constant(f"{name}.multiplier", multiplier)], f"{name}.scaled")
            x = graph.node("Clip", [x, graph.constant(f"{name}.min", np.float32(layer["clamp"][0])),
                                    graph.constant(f"{name}.max", np.float32(layer["clamp"][1]))], f"{name}.clipped")
            x = graph.node("Round", [x], f"{name}.rounded")
            if zero_point:
                x = graph.node("Add", [x, graph.constant(f"{name}.offset", np.float32(zero_point))], f"{name}.shifted")
            x = graph.node("Cast", [x], name, to=TensorProto.UINT8)
        else:
            operands = [x, *quantization, weight, graph.constant(f"{name}.weight.scale", weight_scale),
                        weight_zero_point, *output_quantization, *bias]
            op = "QLinearConv" if layer["kind"] == "conv" else "QLinearMatMul"
            x = graph.node(op, operands, f"{name}.requantized")
            if (low, high) != (0, 255):
                x = graph.node("Clip", [x, graph.constant(f"{name}.min", np.uint8(low)),
                                        graph.constant(f"{name}.max", np.uint8(high))], name)
        if layer["pool"]:
            x = graph.node("MaxPool", [x], f"{name}.pool", kernel_shape=[layer["pool"]] * 2,
                           strides=[layer["pool"]] * 2)
        previous, scale = name, layer["output_scale"]
    graph.nodes[-1].output[0] = "quantized_logits"
    graph.node("DequantizeLinear", ["quantized_logits", *output_quantization], "logits")
    classes = len(manifest["classes"])
    model = graph.model(f"{manifest['model']}_integer",
                        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]),
                         helper.make_tensor_value_info("quantized_logits", TensorProto.UINT8, ["N", classes])],
                        "Integer network exported by quantlab: uint8 pixels (N, 3, 32, 32) in, logits out.")
    helper.set_model_props(model, {"classes": json.dumps(manifest["classes"]),
                                   "provenance": json.dumps(manifest["provenance"], sort_keys=True),
                                   "logit_zero_point": str(zero_point_of[manifest["layers"][-1]["name"]])})
    return model


def float_model(state: dict[str, np.ndarray], classes: int = 10) -> onnx.ModelProto:
    """The float model as ONNX, from uint8 pixels (normalized in the graph, as quantlab.data.normalize) to its
    logits: what ONNX Runtime's own quantizer (`quantize_static`) starts from."""
    graph = Graph()
    x = graph.node("Cast", ["pixels"], "pixels_float", to=TensorProto.FLOAT)
    x = graph.node("Div", [x, graph.constant("half_range", np.float32(127.5))], "pixels_scaled")
    x = graph.node("Sub", [x, graph.constant("one", np.float32(1.0))], "input")
    for layer in LAYERS:
        weights = [graph.constant(f"{layer.name}.{key}", state[f"{layer.name}.{key}"].astype(np.float32))
                   for key in ("weight", "bias") if f"{layer.name}.{key}" in state]
        if layer.kind == "conv":
            x = graph.node("Conv", [x, *weights], layer.name)
        else:
            if x.endswith(".pool"):
                x = graph.node("Flatten", [x], f"{layer.name}.flat", axis=1)
            x = graph.node("Gemm", [x, *weights], layer.name, transB=1)
        if layer.relu:
            x = graph.node("Relu", [x], f"{layer.name}.relu")
        if layer.pool:
            x = graph.node("MaxPool", [x], f"{layer.name}.pool", kernel_shape=[POOL] * 2, strides=[POOL] * 2)
    graph.nodes[-1].output[0] = "logits"
    return graph.model("float", [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])])


def check(model: onnx.ModelProto, path: Path) -> None:
    """onnx.checker, then this project's opset and producer; a UserError of one line otherwise."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise UserError(f"{path} is not a valid ONNX model ({str(error).splitlines()[0]}); export it again") from None
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    if opsets != {"ai.onnx": OPSET} or model.producer_name != PRODUCER:
        raise UserError(f"{path} is an ONNX model of opset {opsets} by {model.producer_name!r}, not of opset "
                         f"{OPSET} by {PRODUCER!r}; export it again with this version of the pipeline")


def load(directory: str | Path, manifest: dict) -> bytes:
    """The serialized ONNX model of an export, after checking it against the SHA-256 in the manifest and
    with `check`."""
    path = require(Path(directory) / manifest["onnx"]["file"])
    payload = path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != manifest["onnx"]["sha256"]:
        raise UserError(f"{path} does not match the SHA-256 in its manifest: it was edited or damaged; "
                         f"export it again")
    try:
        model = onnx.load_from_string(payload)
    except Exception as error:  # protobuf's DecodeError, whose module differs between protobuf builds
        raise UserError(f"{path} is not an ONNX model ({error}); export it again") from None
    check(model, path)
    return payload


def session(payload: bytes):
    """An ONNX Runtime session on the CPU for a serialized model."""
    import onnxruntime  # only running the model needs it, not the export

    return onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])


def outputs(session, pixels: np.ndarray, output: str, batch: int = 1000) -> np.ndarray:
    """The output `output` of a `session`'s model for uint8 images (N, 3, 32, 32), `batch` images at a time."""
    return np.concatenate([session.run([output], {"pixels": pixels[start:start + batch]})[0]
                           for start in range(0, len(pixels), batch)])


def run(session, manifest: dict, pixels: np.ndarray, batch: int = 1000) -> np.ndarray:
    """The integer logits (int64) that ONNX Runtime's CPU kernels compute for uint8 images (N, 3, 32, 32) in a
    `session` of the export's model."""
    zero_point = zero_points(manifest)[manifest["layers"][-1]["name"]]
    return outputs(session, pixels, "quantized_logits", batch).astype(np.int64) - zero_point


def cpu_flags() -> list[str]:
    """Which of CPU_FLAGS this machine's CPU has (Linux: /proc/cpuinfo; elsewhere an empty list)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text(encoding="utf-8").split()) if cpuinfo.exists() else set()
    return [flag for flag in CPU_FLAGS if flag in flags]
