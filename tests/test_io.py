"""Outputs are byte-stable and written atomically."""

import numpy as np
import pytest

from quantlab.architecture import load_state
from quantlab.errors import UserError
from quantlab.io import atomic_write, load_npz, require, save_json, save_npz
from quantlab.model import Net, state_to_arrays


def test_npz_is_byte_stable_and_loads(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.int8).reshape(2, 3), "b/c": np.array(["x", "yz"]), "s": np.float64(0.5)}
    save_npz(tmp_path / "1.npz", arrays)
    save_npz(tmp_path / "2.npz", arrays)
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    loaded = load_npz(tmp_path / "1.npz")
    np.testing.assert_array_equal(loaded["a"], arrays["a"])
    assert loaded["b/c"].tolist() == ["x", "yz"]
    assert loaded["s"].shape == () and loaded["s"] == 0.5  # a scalar stays a scalar


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    save_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write('{"v": 2')
            raise RuntimeError("killed")
    assert path.read_text() == '{\n  "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        save_json(tmp_path / "x.json", {"v": float("nan")})
    assert not any(tmp_path.iterdir())


def test_missing_upstream_output_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="missing upstream output .*run `dvc repro`"):
        require(tmp_path / "models" / "float.npz")


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    state = state_to_arrays(Net())
    state["conv1.weight"][0, 0, 0, 0] = np.nan
    save_npz(tmp_path / "float.npz", state)
    with pytest.raises(UserError, match="conv1.weight holds NaN or infinite values; retrain it"):
        load_state(tmp_path / "float.npz", "float")


def test_a_killed_write_leaves_nothing_the_next_write_keeps(tmp_path):
    stale = tmp_path / ".out.json.abc123.tmp"  # what SIGKILL between write and rename leaves
    stale.write_text("{")
    save_json(tmp_path / "out.json", {"v": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
