"""The archive: verification, safe reading, and one clear error for each kind of bad archive."""

import hashlib
import pickle

import numpy as np
import pytest
import torch

from quantlab.data import fetch_archive, md5_of, normalize, read_archive
from quantlab.errors import UserError

from cifar_fixture import batches, write_archive


@pytest.fixture(scope="module")
def members():
    return batches(train_per_batch=20, test=30)


@pytest.fixture
def archive(tmp_path, members):
    return write_archive(tmp_path / "cifar-10-python.tar.gz", members)


def test_read_archive_returns_images_labels_and_classes(archive, members):
    data = read_archive(archive)
    assert data["train_x"].shape == (100, 3, 32, 32) and data["train_x"].dtype == np.uint8
    assert data["test_x"].shape == (30, 3, 32, 32)
    first = pickle.loads(members["data_batch_1"])
    np.testing.assert_array_equal(data["train_x"][:20].reshape(20, -1), first["data"])
    assert data["train_y"][:20].tolist() == first["labels"]
    assert data["classes"][0] == "airplane" and len(data["classes"]) == 10


def test_fetch_accepts_local_path_with_matching_md5(archive, tmp_path):
    assert fetch_archive(str(archive), md5_of(archive), tmp_path / "downloads") == archive
    assert md5_of(archive) == hashlib.md5(archive.read_bytes()).hexdigest()


def test_wrong_md5_names_file_expected_and_found(archive, tmp_path):
    expected = "0" * 32
    with pytest.raises(UserError) as error:
        fetch_archive(str(archive), expected, tmp_path)
    message = str(error.value)
    assert str(archive) in message and expected in message and md5_of(archive) in message


def test_missing_local_archive(tmp_path):
    with pytest.raises(UserError, match="not found"):
        fetch_archive(str(tmp_path / "nope.tar.gz"), "0" * 32, tmp_path)


def test_offline_download_fails_with_the_offline_fix(tmp_path, monkeypatch):
    import torchvision.datasets.utils as utils

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(utils, "download_url", offline)
    with pytest.raises(UserError, match="set data.url to a local copy"):
        fetch_archive("https://example.invalid/cifar-10-python.tar.gz", "0" * 32, tmp_path)
    assert not any(tmp_path.iterdir())


def test_truncated_archive(archive):
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_archive(archive)


def test_member_escaping_the_folder_is_refused(tmp_path, members):
    bad = write_archive(tmp_path / "bad.tar.gz", {**members, "../evil": b"x"})
    with pytest.raises(UserError, match="unsafe member '../evil'"):
        read_archive(bad)


def test_missing_batch(tmp_path, members):
    partial = {name: payload for name, payload in members.items() if name != "data_batch_3"}
    with pytest.raises(UserError, match="lacks cifar-10-batches-py/data_batch_3"):
        read_archive(write_archive(tmp_path / "partial.tar.gz", partial))


def test_pickle_that_would_run_code_is_refused(tmp_path, members):
    class Exploit:
        def __reduce__(self):
            return (print, ("owned",))

    evil = {**members, "test_batch": pickle.dumps({"data": Exploit(), "labels": [0]}, protocol=2)}
    with pytest.raises(UserError, match="refusing to load .*print"):
        read_archive(write_archive(tmp_path / "evil.tar.gz", evil))


def test_normalize_maps_pixels_to_minus_one_one():
    assert normalize(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]
