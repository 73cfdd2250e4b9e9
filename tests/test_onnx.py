"""The export's ONNX model in ONNX Runtime against the engine and the runner in ONNX Runtime's rounding."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from quantlab.errors import UserError
from quantlab.inference import export_format, onnx_graph, runner
from quantlab.inference.engine import FixedPointEngine
from quantlab.inference.fixed_point import GEMMLOWP, ONNXRUNTIME, onnxruntime_multiplier, round_scaled

from quant_fixture import IMAGES, random_export

CONFIGURATIONS = [  # bits, per channel, unsigned activations, logit bits, model
    (8, False, False, None, "float"), (8, True, True, None, "bias"), (4, True, True, 8, "bias"),
    (6, False, False, None, "bias"), (3, True, False, None, "float")]


def onnxruntime_logits(directory):
    manifest, _ = export_format.read(directory)
    session = onnx_graph.session(onnx_graph.load(directory, manifest))
    return onnx_graph.run(session, manifest, IMAGES.numpy(), batch=40)


@pytest.mark.parametrize("bits, per_channel, unsigned, logit_bits, model", CONFIGURATIONS)
def test_onnxruntime_computes_the_engines_integers(tmp_path, bits, per_channel, unsigned, logit_bits, model):
    directory, _ = random_export(tmp_path, bits, per_channel, unsigned, model=model, logit_bits=logit_bits,
                                 rounding=ONNXRUNTIME)
    manifest, arrays = export_format.read(directory)
    engine = FixedPointEngine(manifest, arrays)(IMAGES).numpy()
    logits = onnxruntime_logits(directory)
    np.testing.assert_array_equal(logits, engine)
    np.testing.assert_array_equal(runner.run(manifest, arrays, IMAGES.numpy()), engine)
    assert len(np.unique(engine.argmax(1))) > 1  # not a degenerate network
    graph = onnx.load(directory / onnx_graph.FILE).graph
    ops = {node.op_type for node in graph.node}
    assert {"QLinearConv", "MaxPool", "DequantizeLinear"} <= ops
    # U8U8, signed tensors with zero point 128: ONNX Runtime's fast x86 path, exact without VNNI too
    assert onnx.TensorProto.INT8 not in {tensor.data_type for tensor in graph.initializer}
    assert onnx.TensorProto.UINT8 in {tensor.data_type for tensor in graph.initializer}
    assert ("MatMulInteger" in ops) == (model == "bias") and ("QLinearMatMul" in ops)


def test_the_roundings_differ_and_the_export_records_its_own(tmp_path):
    """Fixed point and float32 requantization round some values differently; each mode is the one it names."""
    directory, _ = random_export(tmp_path, 6, False, False, headroom=False)
    manifest, arrays = export_format.read(directory)
    assert manifest["rounding"] == GEMMLOWP
    modes = {mode: FixedPointEngine(manifest, arrays, mode)(IMAGES).numpy() for mode in (GEMMLOWP, ONNXRUNTIME)}
    assert not np.array_equal(modes[GEMMLOWP], modes[ONNXRUNTIME])
    np.testing.assert_array_equal(FixedPointEngine(manifest, arrays)(IMAGES).numpy(), modes[GEMMLOWP])
    np.testing.assert_array_equal(onnxruntime_logits(directory), modes[ONNXRUNTIME])


def test_float_requantization_is_onnxruntimes():
    """float32 arithmetic left to right, then round half to even after the clamp."""
    scaled = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 300.0, -300.0], np.float32)
    assert round_scaled(scaled, (-128, 127)).tolist() == [0, 2, 2, 0, -2, 127, -128]
    assert round_scaled(torch.from_numpy(scaled), (0, 15)).tolist() == [0, 2, 2, 0, 0, 15, 0]
    inputs = (np.float32(0.1), [np.float32(0.3)], np.float32(0.7))
    expected = np.float32(np.float32(inputs[0] * inputs[1][0]) / inputs[2])
    multiplier = onnxruntime_multiplier(*inputs)
    assert multiplier.dtype == np.float32 and multiplier[0] == expected
    assert float(multiplier[0]) != 0.1 * 0.3 / 0.7  # float64 would give another multiplier


def test_the_onnx_file_is_deterministic_and_checked(tmp_path):
    first, _ = random_export(tmp_path / "a", 8, True, True)
    second, _ = random_export(tmp_path / "b", 8, True, True)
    payload = (first / onnx_graph.FILE).read_bytes()
    assert payload == (second / onnx_graph.FILE).read_bytes()
    manifest = json.loads((first / export_format.MANIFEST).read_text())
    assert manifest["onnx"] == {"file": onnx_graph.FILE, "opset": onnx_graph.OPSET,
                                "sha256": hashlib.sha256(payload).hexdigest()}
    model = onnx.load_from_string(onnx_graph.load(first, manifest))
    assert model.producer_name == onnx_graph.PRODUCER and model.opset_import[0].version == onnx_graph.OPSET


def rewrite(directory, manifest, payload: bytes) -> None:
    """Replace the ONNX file and its checksum in the manifest, as a re-export by other code would."""
    (directory / onnx_graph.FILE).write_bytes(payload)
    manifest["onnx"]["sha256"] = hashlib.sha256(payload).hexdigest()


def test_a_tampered_or_foreign_onnx_file_fails_with_one_line(tmp_path):
    directory, _ = random_export(tmp_path)
    manifest, _ = export_format.read(directory)
    path = directory / onnx_graph.FILE
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 2] ^= 1
    path.write_bytes(bytes(payload))
    with pytest.raises(UserError, match=r"^\S+model.onnx does not match the SHA-256 in its manifest") as error:
        onnx_graph.load(directory, manifest)
    assert "\n" not in str(error.value)

    model = onnx.load_from_string(bytes(payload))
    model.opset_import[0].version = 13
    rewrite(directory, manifest, model.SerializeToString())
    with pytest.raises(UserError, match="opset .*13.* not of opset 21 by 'quantlab'; export it again"):
        onnx_graph.load(directory, manifest)

    rewrite(directory, manifest, b"\x08" * 40)
    with pytest.raises(UserError, match="model.onnx is not"):
        onnx_graph.load(directory, manifest)

    (directory / onnx_graph.FILE).unlink()
    with pytest.raises(UserError, match="missing upstream output .*model.onnx: run `dvc repro`"):
        onnx_graph.load(directory, manifest)


def test_the_documented_onnx_runtime_snippet_refuses_a_tampered_model(tmp_path):
    """The way docs/onnx.md (linked from the README) runs model.onnx in ONNX Runtime checks it against the
    manifest's SHA-256: a model with an edited initializer ran and printed wrong classes."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "onnx.md").read_text()
    after = page.split("checked against the SHA-256 its manifest records")[1]
    snippet = after.split("```python\n")[1].split("```")[0]
    directory, _ = random_export(tmp_path)
    (tmp_path / "export").rename(tmp_path / "float")
    (tmp_path / "export").mkdir()
    (tmp_path / "float").rename(tmp_path / "export" / "float")
    np.save(tmp_path / "images.npy", IMAGES.numpy()[:8])
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    ran = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.startswith("[")
    model = onnx.load(tmp_path / "export/float/model.onnx")
    weights = next(tensor for tensor in model.graph.initializer if tensor.raw_data and len(tensor.raw_data) > 100)
    weights.raw_data = bytes(255 - byte for byte in weights.raw_data)  # a valid model, other weights
    onnx.save(model, tmp_path / "export/float/model.onnx")
    refused = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip() == ("export/float/model.onnx is not the exported model (edited or damaged): "
                                      "export it again")
