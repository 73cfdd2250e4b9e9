"""Bad input through the real stage commands: one line on stderr, exit status 2, no output written."""

import pytest

from quantlab.data import md5_of
from quantlab.sandbox import make_repo, run, set_params

from cifar_fixture import make_archive


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
    fails_cleanly(repo, "stages.quantize_activations", "float", message="calib is 'kll'; valid: minmax")
    assert not (repo / "quant").exists()


def test_missing_upstream_output(repo):
    fails_cleanly(repo, "stages.bias", message="missing upstream output models/bias.npz")
    assert not (repo / "quant").exists()


def test_unknown_model_argument(repo):
    fails_cleanly(repo, "stages.train", "big", message="MODEL is one of float, bias")
