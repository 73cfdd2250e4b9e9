"""Bad input through the real stage commands: one line on stderr, exit status 2, no output written."""

import numpy as np
import pytest

from bench.sandbox import make_repo, run, set_params
from quantlab.data import md5_of
from quantlab.io import save_npz
from quantlab.model import Net, state_to_arrays

from cifar_fixture import batches, make_archive, write_archive


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path / "repo")


def fails_cleanly(repo, *command, message):
    result = run(repo, "python", "-m", *command, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    return lines[0]


def test_truncated_archive(repo, tmp_path):
    archive = make_archive(tmp_path / "cifar.tar.gz", train_per_batch=10, test=10)
    archive.write_bytes(archive.read_bytes()[:3000])
    set_params(repo, data__url=str(archive), data__md5=md5_of(archive))
    fails_cleanly(repo, "stages.download", message="truncated or corrupt")
    assert not (repo / "data").exists()


def test_wrong_md5(repo, tmp_path):
    archive = make_archive(tmp_path / "cifar.tar.gz", train_per_batch=10, test=10)
    set_params(repo, data__url=str(archive), data__md5="0" * 32)
    line = fails_cleanly(repo, "stages.download", message=f"md5 mismatch for {archive}")
    assert md5_of(archive) in line
    assert not (repo / "data").exists()


def test_missing_archive(repo, tmp_path):
    set_params(repo, data__url=str(tmp_path / "absent.tar.gz"))
    fails_cleanly(repo, "stages.download", message="not found")


def test_unknown_calib(repo):
    set_params(repo, calib="kll")
    fails_cleanly(repo, "stages.quantize", "float", message="calib is 'kll'; valid: minmax")
    assert not (repo / "quant").exists()


def test_missing_upstream_output(repo):
    fails_cleanly(repo, "stages.quantize", "bias", message="missing upstream output models/bias.npz")
    assert not (repo / "quant").exists()


def test_unknown_model_argument(repo):
    fails_cleanly(repo, "stages.train", "big", message="MODEL is one of float, bias")


def test_member_escaping_the_folder(repo, tmp_path):
    archive = write_archive(tmp_path / "evil.tar.gz", {**batches(train_per_batch=10, test=10), "../escape": b"x"})
    set_params(repo, data__url=str(archive), data__md5=md5_of(archive))
    fails_cleanly(repo, "stages.download", message="unsafe member '../escape'")
    assert not (repo / "data").exists() and not (tmp_path / "escape").exists()


def test_archive_missing_a_batch(repo, tmp_path):
    members = {k: v for k, v in batches(train_per_batch=10, test=10).items() if k != "data_batch_4"}
    archive = write_archive(tmp_path / "partial.tar.gz", members)
    set_params(repo, data__url=str(archive), data__md5=md5_of(archive))
    fails_cleanly(repo, "stages.download", message="lacks cifar-10-batches-py/data_batch_4")


def test_offline_without_a_local_archive(repo):
    set_params(repo, data__url="http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing listens: as offline
    fails_cleanly(repo, "stages.download", message="set data.url to a local copy of cifar-10-python.tar.gz")
    assert not (repo / "data" / "cifar10.npz").exists()


@pytest.mark.parametrize("bits", [0, 1, 17])
def test_bits_out_of_range(repo, bits):
    set_params(repo, quant__weight_bits=bits)
    fails_cleanly(repo, "stages.quantize", "float",
                  message=f"quant.weight_bits must be between 2 and 8 bits, got {bits}")


@pytest.mark.parametrize("epochs", [0, -3])
def test_zero_or_negative_epochs(repo, epochs):
    set_params(repo, train__epochs=epochs)
    fails_cleanly(repo, "stages.train", "float", message=f"train.epochs must be at least 1, got {epochs}")


def test_checkpoint_with_nan_weights(repo):
    state = state_to_arrays(Net())
    state["fc1.weight"][0, 0] = np.nan
    save_npz(repo / "models" / "float.npz", state)
    fails_cleanly(repo, "stages.quantize", "float", message="models/float.npz: fc1.weight holds NaN")
    assert not (repo / "quant").exists()
