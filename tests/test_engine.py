"""The fixed-point helpers against exact rational arithmetic, and the integer engine against the runner."""

import ast
import json
import os
import subprocess
import sys
from fractions import Fraction
from math import floor
from pathlib import Path

import numpy as np
import pytest
import torch

from quantlab import compute
from quantlab.evaluation import Split, outputs
from quantlab.inference import engine as engine_module
from quantlab.inference import export_format, runner
from quantlab.inference.engine import EngineLayer, FixedPointEngine
from quantlab.inference.export import standalone_runner
from quantlab.inference.fixed_point import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from quantlab.quantize.symmetric import int_range

from quant_fixture import IMAGES, random_export

RNG = np.random.default_rng(0)
EDGES = [INT32_MIN, INT32_MIN + 1, -(2 ** 30), -3, -1, 0, 1, 3, 2 ** 30, INT32_MAX - 1, INT32_MAX]


def half_up(value: Fraction) -> int:
    return floor(value + Fraction(1, 2))


def half_away(value: Fraction) -> int:
    return half_up(value) if value >= 0 else -half_up(-value)


def srdhm_as_in_c(a: int, b: int) -> int:
    """gemmlowp's code, line by line, with C's truncating division."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudged = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    return nudged // 2 ** 31 if nudged >= 0 else -((-nudged) // 2 ** 31)


def int32s(n):
    return RNG.integers(INT32_MIN, INT32_MAX, n, endpoint=True, dtype=np.int64)


def test_doubling_high_mul_is_exact_rounding_half_up_and_saturates_once():
    a = np.concatenate([int32s(20_000), np.repeat(EDGES, len(EDGES)),
                        RNG.integers(-(2 ** 20), 2 ** 20, 2_000) * 2 + 1])  # odd a with b = 2^30: ties
    b = np.concatenate([int32s(20_000), np.tile(EDGES, len(EDGES)), np.full(2_000, 2 ** 30)])
    got = saturating_rounding_doubling_high_mul(a, b)
    for x, y, value in zip(a.tolist(), b.tolist(), got.tolist(), strict=True):
        expected = INT32_MAX if x == y == INT32_MIN else half_up(Fraction(x * y, 2 ** 31))
        assert value == expected == srdhm_as_in_c(x, y), (x, y)
    ties = got[-2_000:]
    assert np.array_equal(ties, (a[-2_000:] + 1) // 2)  # x / 2 with x odd: ties go toward +infinity


def test_rounding_divide_by_power_of_two_rounds_ties_away_from_zero():
    exponents = RNG.integers(0, 32, 20_000)
    x = np.concatenate([int32s(20_000), [INT32_MIN, INT32_MAX, -1, 1, 0] * 32])
    e = np.concatenate([exponents, np.repeat(np.arange(32), 5)])
    tie_e = RNG.integers(1, 31, 2_000)
    tie_x = (RNG.integers(-(2 ** 10), 2 ** 10, 2_000) * 2 + 1) << (tie_e - 1)  # exactly k + 1/2, both signs
    x, e = np.concatenate([x, tie_x]), np.concatenate([e, tie_e])
    got = rounding_divide_by_pot(x, e)
    for value, xi, ei in zip(got.tolist(), x.tolist(), e.tolist(), strict=True):
        assert value == half_away(Fraction(xi, 2 ** ei)), (xi, ei)
    with pytest.raises(ValueError):
        rounding_divide_by_pot(np.array([1]), np.array([32]))


def test_quantize_multiplier_against_exact_rounding():
    edges = [1 - 2 ** -40, 1.0, 0.5, 2 ** -31, 2 ** -32, 2 ** -33, 2 ** -40, 0.0, 3.7]
    for multiplier in [*np.exp2(RNG.uniform(-45, 8, 5_000)).tolist(), *edges]:
        m0, shift = quantize_multiplier(multiplier)
        if m0 == 0:
            assert multiplier * 2 ** 31 < 0.5  # a shift beyond 31: every int32 times it rounds to zero
            continue
        assert 2 ** 30 <= m0 < 2 ** 31 and -31 <= shift
        exact = Fraction(multiplier) * 2 ** (31 - shift)
        # rounded half away from zero; a mantissa that rounds up to 2^31 becomes 2^30 with shift + 1
        assert m0 == half_away(exact) or (half_away(exact * 2) == 2 ** 31 and m0 == 2 ** 30)
        assert abs(Fraction(m0) * Fraction(2) ** (shift - 31) - Fraction(multiplier)) <= Fraction(2) ** (shift - 32)
    assert quantize_multiplier(1 - 2 ** -40) == (2 ** 30, 1)


def test_multiply_by_quantized_multiplier_is_the_exact_composition_within_one_lsb():
    x = np.concatenate([RNG.integers(-(2 ** 24), 2 ** 24, 5_000), [INT32_MIN, INT32_MAX, 0, -1, 1]])
    for multiplier in (0.000731, 0.0123, 0.49999, 0.75, 1.5, 2.0 ** -31):
        m0, shift = quantize_multiplier(multiplier)
        if multiplier > 1:
            x = x[np.abs(x) < 2 ** 24]
        got = multiply_by_quantized_multiplier(x, np.int64(m0), np.int64(shift))
        left, right = max(shift, 0), max(-shift, 0)
        for value, xi in zip(got.tolist(), x.tolist(), strict=True):
            high = half_up(Fraction((xi << left) * m0, 2 ** 31))
            assert value == half_away(Fraction(high, 2 ** right))
            assert abs(value - Fraction(xi * m0) * Fraction(2) ** (shift - 31)) <= 1


def test_left_shift_overflow_fails_loudly():
    m0, shift = quantize_multiplier(4.0)
    with pytest.raises(OverflowError, match="int32 overflow"):
        multiply_by_quantized_multiplier(np.array([2 ** 30]), np.int64(m0), np.int64(shift))


# --- the engine, the runner and the float-rescale forward on one exported random network -------------------


@pytest.mark.parametrize("bits, per_channel, unsigned, headroom, logit_bits", [
    (8, False, False, True, None), (8, True, False, True, None), (8, False, True, True, None),
    (4, True, True, True, None), (4, True, True, True, 8), (6, False, False, False, None),
    (8, False, False, False, None)])
def test_engine_runner_and_float_rescale_agree(tmp_path, monkeypatch, bits, per_channel, unsigned, headroom,
                                               logit_bits):
    directory, reference = random_export(tmp_path, bits, per_channel, unsigned, headroom, logit_bits=logit_bits)
    manifest, arrays = export_format.read(directory)
    engine = FixedPointEngine(manifest, arrays)
    engine_logits = engine(IMAGES)
    assert engine_logits.dtype == torch.int32
    assert engine.layers[0].table is not None  # conv1 looks its rescale up
    monkeypatch.setattr(engine_module, "TABLE_LIMIT", 0)  # every layer computes its rescale instead
    computed = FixedPointEngine(manifest, arrays)
    assert all(layer.table is None for layer in computed.layers)
    np.testing.assert_array_equal(computed(IMAGES).numpy(), engine_logits.numpy())
    np.testing.assert_array_equal(runner.run(manifest, arrays, IMAGES.numpy()), engine_logits.numpy())
    split = Split(IMAGES, torch.zeros(len(IMAGES), dtype=torch.int64))
    float_rescale = outputs(reference, split, batch_size=16)
    difference = (engine_logits.double() - float_rescale).abs()
    assert difference.max() <= 3 and (difference == 0).double().mean() >= 0.8
    if headroom and bits == 8:
        assert torch.equal(engine_logits.double(), float_rescale)  # the fixed point keeps every rounding
    qmin, qmax = int_range(logit_bits or bits)
    assert manifest["layers"][-1]["output_range"] == [qmin, qmax] and manifest["layers"][-2]["clamp"][1] < 2 ** bits
    assert qmin <= engine_logits.min() and engine_logits.max() <= qmax


def test_accumulator_overflow_fails_loudly(tmp_path):
    directory, _ = random_export(tmp_path)
    manifest, arrays = export_format.read(directory)
    arrays["fc3.bias"] = np.full(10, INT32_MAX - 5, np.int32)
    with pytest.raises(OverflowError, match="fc3: the int32 accumulator can overflow"):
        FixedPointEngine(manifest, arrays)
    with pytest.raises(OverflowError, match="fc3"):
        runner.run(manifest, arrays, IMAGES.numpy())


@pytest.mark.parametrize("index", [1, 2])  # conv2, fc1
def test_engine_sums_exactly_beyond_float32(tmp_path, index):
    """Sums that pass 2^24, where float32 rounds, are summed in float64 and equal the runner's int64 sums."""
    directory, _ = random_export(tmp_path)
    manifest, arrays = export_format.read(directory)
    spec = dict(manifest["layers"][index], weight="wide", bias=None, pool=0, pre_shift=0, clamp=[-INT32_MAX, INT32_MAX],
                multiplier="m0", shift="shift", weight_scale=1.0, output_scale=1.0)
    shape = (2, 600, 3, 3) if spec["kind"] == "conv" else (2, 1152)
    wide = {"wide": np.full(shape, 127, np.int8), "m0": np.full(2, 2 ** 30), "shift": np.ones(2)}  # M = 1
    input_shape = (600, 4, 4) if spec["kind"] == "conv" else (1152,)
    layer = EngineLayer(spec, wide, (0, 255), 1.0, "gemmlowp", torch.int64, input_shape)
    assert layer.weight.dtype == torch.float64
    q = RNG.integers(200, 256, (3, *input_shape[1:], input_shape[0]))  # channels last
    expected = runner.accumulate(spec, wide, q)
    assert (expected.astype(np.float32).astype(np.int64) != expected).any()  # float32 cannot hold these sums
    assert layer(torch.from_numpy(q).double()).tolist() == expected.tolist()


@pytest.mark.parametrize("kind", ["fc", "conv"])
def test_runner_sums_exactly_beyond_float32(kind):
    """The runner sums in a float64 matrix product: sums far above 2^24 (where float32 would round) are exact."""
    weight = RNG.integers(100, 128, (4, 1152) if kind == "fc" else (4, 32, 6, 6)).astype(np.int8)
    q = RNG.integers(200, 256, (3, 1152) if kind == "fc" else (3, 6, 6, 32))  # conv: channels last
    acc = runner.accumulate({"name": "layer", "kind": kind, "weight": "w", "bias": None}, {"w": weight}, q)
    columns = weight if kind == "fc" else weight.transpose(0, 2, 3, 1)
    expected = q.reshape(3, -1) @ columns.astype(np.int64).reshape(4, -1).T  # exact int64 sums
    assert acc.reshape(3, 4).tolist() == expected.tolist() and expected.min() > 2 ** 24


def test_runner_is_standalone_and_checks_the_checksum(tmp_path):
    directory, _ = random_export(tmp_path)
    source = (directory / "runner.py").read_text()
    assert source == standalone_runner()
    imports = {alias.name.split(".")[0] for node in ast.walk(ast.parse(source))
               if isinstance(node, (ast.Import, ast.ImportFrom))
               for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert imports <= {"__future__", "argparse", "hashlib", "json", "math", "os", "stat", "sys", "pathlib", "zipfile",
                       "numpy"}  # the standard library and NumPy only
    manifest, arrays = export_format.read(directory)
    expected = FixedPointEngine(manifest, arrays)(IMAGES).argmax(1).tolist()
    (tmp_path / "alone").mkdir()
    script = tmp_path / "alone" / "runner.py"  # outside the repository: nothing of quantlab to import
    script.write_text(source)
    np.save(tmp_path / "images.npy", IMAGES.numpy())
    result = subprocess.run([sys.executable, str(script), str(directory), str(tmp_path / "images.npy"),
                             "--out", str(tmp_path / "logits.npy")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [int(line) for line in result.stdout.split()] == expected
    assert np.load(tmp_path / "logits.npy").dtype == np.int32
    payload = bytearray((directory / "model.npz").read_bytes())
    payload[-100] ^= 1
    (directory / "model.npz").write_bytes(bytes(payload))
    result = subprocess.run([sys.executable, str(script), str(directory), str(tmp_path / "images.npy")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "does not match the checksum" in result.stderr
    assert json.loads((directory / "manifest.json").read_text())["format"] == export_format.FORMAT


def test_manifest_records_follow_the_schema(tmp_path):
    directory, _ = random_export(tmp_path)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert [layer["input_shape"] for layer in manifest["layers"]] == [[3, 32, 32], [12, 14, 14], [1152], [256], [64]]
    manifest["layers"][0].pop("clamp")
    manifest["sha256"] = export_format.checksum(manifest, (directory / "model.npz").read_bytes())  # edited whole
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"layers\[0\] must be a record of the keys name, kind, "):
        export_format.read(directory)
    with pytest.raises(ValueError, match="a layer record has the keys"):
        export_format.layer_record(name="conv1")


ENGINE_AGAINST_RUNNER = """
import sys
from pathlib import Path
sys.path[:0] = ["tests", "."]
import numpy as np
from quant_fixture import IMAGES, random_export
from quantlab.inference import export_format, runner
from quantlab.inference.engine import FixedPointEngine
for number, (bits, per_channel, unsigned) in enumerate([(8, False, False), (8, True, True), (4, True, True)]):
    directory, _ = random_export(Path(sys.argv[1]) / str(number), bits, per_channel, unsigned)
    manifest, arrays = export_format.read(directory)
    np.testing.assert_array_equal(FixedPointEngine(manifest, arrays)(IMAGES).numpy(),
                                  runner.run(manifest, arrays, IMAGES.numpy()))
"""


@pytest.mark.slow  # a process each, which imports torch
@pytest.mark.parametrize("cap", ["AVX2", "AVX512_CORE", None])
def test_engine_equals_the_runner_whatever_isa_onednn_runs(tmp_path, cap):
    """Unpinned, in a process of its own: oneDNN capped at AVX2 (no VNNI), at AVX512_CORE (no VNNI), and not
    capped; the engine's exact float sums give the runner's logits under each."""
    env = {name: value for name, value in os.environ.items() if name not in compute.PINNED}
    env |= {compute.REPRODUCIBLE: "0"} | ({"ONEDNN_MAX_CPU_ISA": cap} if cap else {})
    subprocess.run([sys.executable, "-c", ENGINE_AGAINST_RUNNER, str(tmp_path)], env=env, check=True,
                   cwd=Path(__file__).parents[1])
