"""Bad input through the real stage commands: one line on stderr, exit status 2, no output written."""

import io
import json
import pickle
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import yaml

from bench.bombs import lying_npy, npz_bomb, tar_bomb
from bench.sandbox import make_repo, run, set_params
from quantlab.architecture import load_state
from quantlab.data import MAX_MEMBER, md5_of, read_archive
from quantlab.io import save_npz
from quantlab.model import Net, state_to_arrays

from cifar_fixture import batches, make_archive, write_archive


# The tests in a sandbox are marked slow: each runs `dvc init` (make_repo) and the real stage command
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


@pytest.mark.slow
def test_truncated_archive(repo, tmp_path):
    archive = make_archive(tmp_path / "cifar.tar.gz", train_per_batch=10, test=10)
    archive.write_bytes(archive.read_bytes()[:3000])
    set_params(repo, data__url=str(archive), data__md5=md5_of(archive))
    fails_cleanly(repo, "stages.download", message="truncated or corrupt")
    assert not (repo / "data").exists()


@pytest.mark.slow
def test_wrong_md5(repo, tmp_path):
    archive = make_archive(tmp_path / "cifar.tar.gz", train_per_batch=10, test=10)
    set_params(repo, data__url=str(archive), data__md5="0" * 32)
    line = fails_cleanly(repo, "stages.download", message=f"md5 mismatch for {archive}")
    assert md5_of(archive) in line
    assert not (repo / "data").exists()


@pytest.mark.slow
def test_missing_archive(repo, tmp_path):
    set_params(repo, data__url=str(tmp_path / "absent.tar.gz"))
    fails_cleanly(repo, "stages.download", message="not found")


@pytest.mark.slow
def test_unknown_calib(repo):
    set_params(repo, calib="kll")
    fails_cleanly(repo, "stages.quantize", message="calib is 'kll'; valid: minmax")
    assert not (repo / "quant").exists()


@pytest.mark.slow
def test_missing_upstream_output(repo):
    fails_cleanly(repo, "stages.quantize", message="missing upstream output models/float.npz")
    assert not (repo / "quant").exists()
    figure = repo / "reports/build/figures/training.png"  # a figure of an earlier run, left as it was
    figure.parent.mkdir(parents=True, exist_ok=True)
    figure.write_bytes(before := b"\x89PNG an earlier run's figure")
    fails_cleanly(repo, "stages.figures", message="missing upstream output plots/train/float.csv")
    assert figure.read_bytes() == before


@pytest.mark.slow
def test_unknown_model_argument(repo):
    fails_cleanly(repo, "stages.train", "big", message="MODEL is one of float, bias")


@pytest.mark.slow
def test_member_escaping_the_folder(repo, tmp_path):
    archive = write_archive(tmp_path / "evil.tar.gz", {**batches(train_per_batch=10, test=10), "../escape": b"x"})
    set_params(repo, data__url=str(archive), data__md5=md5_of(archive))
    fails_cleanly(repo, "stages.download", message="unsafe member '../escape'")
    assert not (repo / "data").exists() and not (tmp_path / "escape").exists()


@pytest.mark.slow
def test_archive_missing_a_batch(repo, tmp_path):
    members = {k: v for k, v in batches(train_per_batch=10, test=10).items() if k != "data_batch_4"}
    archive = write_archive(tmp_path / "partial.tar.gz", members)
    set_params(repo, data__url=str(archive), data__md5=md5_of(archive))
    fails_cleanly(repo, "stages.download", message="lacks cifar-10-batches-py/data_batch_4")


@pytest.mark.slow
def test_offline_without_a_local_archive(repo):
    set_params(repo, data__url="http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing listens: as offline
    fails_cleanly(repo, "stages.download", message="set data.url to a local copy of cifar-10-python.tar.gz")
    assert not (repo / "data" / "cifar10.npz").exists()


@pytest.mark.slow
@pytest.mark.parametrize("bits", [0, 1, 17])
def test_bits_out_of_range(repo, bits):
    set_params(repo, quant__weight_bits=bits)
    fails_cleanly(repo, "stages.quantize",
                  message=f"quant.weight_bits must be between 2 and 8 bits, got {bits}")


@pytest.mark.slow
@pytest.mark.parametrize("epochs", [0, -3])
def test_zero_or_negative_epochs(repo, epochs):
    set_params(repo, train__epochs=epochs)
    fails_cleanly(repo, "stages.train", "float", message=f"train.epochs must be at least 1, got {epochs}")


@pytest.mark.slow
def test_checkpoint_with_nan_weights(repo):
    state = state_to_arrays(Net())
    state["fc1.weight"][0, 0] = np.nan
    save_npz(repo / "models" / "float.npz", state)
    fails_cleanly(repo, "stages.quantize", message="models/float.npz: fc1.weight holds NaN")
    assert not (repo / "quant").exists()


# --- what a hostile or careless user tried (issue 12): each fails on the code before the fix --------------

@pytest.mark.slow
def test_params_read_the_way_dvc_writes_them(repo):
    """DVC writes YAML 1.2: `1e-05` is a float there and `No` a string (PyYAML's YAML 1.1 says str and false)."""
    from dvc.utils.serialize import dumps_yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"], params["quant"]["percentile"], params["report"]["author"] = 1e-05, 1e-9, "No"
    (repo / "params.yaml").write_text(dumps_yaml(params))
    assert "lr: 1e-05" in (repo / "params.yaml").read_text()
    result = run(repo, "python", "-c", "from quantlab.stage import load_params; p = load_params(); "
                 "print(p.train.lr, p.quant.percentile, p.report.author)")
    assert result.stdout.split() == ["1e-05", "1e-09", "No"]


@pytest.mark.slow
def test_run_main_turns_a_full_disk_into_one_line(repo, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(
        "import errno, os\n"
        "def fsync(fd):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "os.fsync = fsync\n")
    archive = make_archive(tmp_path / "cifar.tar.gz", train_per_batch=10, test=10)
    set_params(repo, data__url=str(archive), data__md5=md5_of(archive))
    result = run(repo, "python", "-m", "stages.download", check=False, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: cannot write data/cifar10.npz (No space left on device): free disk space or fix the folder's "
        "permissions, then rerun"]
    assert not list((repo / "data").iterdir())  # neither the output nor a temporary file


@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("fc2.weight"), "fc2.weight is missing from the float model's weights"),
    (lambda s: s.update({"fc1.weight": s["fc1.weight"][:128]}), "fc1.weight of shape (128, 1152) (float32) is not"),
    (lambda s: s.update({"fc3.weight": s["fc3.weight"].astype(np.float64)}), "fc3.weight of shape (10, 64) (float64)"),
    (lambda s: s.update({"fc3.bias": np.zeros(10, np.float32)}), "fc3.bias of shape (10,) (float32) is not a weight"),
])
def test_a_model_that_does_not_fit_the_architecture(repo, edit, message):
    state = state_to_arrays(Net())
    edit(state)
    save_npz(repo / "models" / "float.npz", state)
    fails_cleanly(repo, "stages.quantize", message=f"models/float.npz: {message}")
    assert not (repo / "quant").exists()


@pytest.mark.slow
def test_a_damaged_model_file(repo):
    save_npz(repo / "models" / "float.npz", state_to_arrays(Net()))
    payload = (repo / "models" / "float.npz").read_bytes()
    (repo / "models" / "float.npz").write_bytes(payload[: len(payload) // 2])
    fails_cleanly(repo, "stages.quantize", message="models/float.npz is damaged or incomplete")


@pytest.mark.slow
def test_weights_that_overflow_the_float_forward(repo, tmp_path):
    archive = make_archive(tmp_path / "cifar.tar.gz", train_per_batch=10, test=10)
    save_npz(repo / "data" / "cifar10.npz", read_archive(archive))
    state = state_to_arrays(Net())
    state["fc1.weight"][:] = 3e38
    save_npz(repo / "models" / "float.npz", state)
    set_params(repo, profile__calib_images=20, data__validation=10)
    # refused by the one loader every stage uses, before any forward pass (evaluate_float reported 10 %)
    for stage in (("stages.profile", "float"), ("stages.evaluate_float",), ("stages.quantize",)):
        line = fails_cleanly(repo, *stage, message="models/float.npz: fc1's outputs can reach ")
        assert "e+4" in line and "beyond float32's 3.4e+38" in line
    assert not (repo / "profile").exists() and not (repo / "evaluation").exists()
    state["fc1.weight"][:] = 1e-3  # large but harmless weights pass
    save_npz(repo / "models" / "float.npz", state)
    assert load_state(repo / "models" / "float.npz", "float")["fc1.weight"][0, 0] == np.float32(1e-3)


@pytest.mark.slow
def test_qat_start_beyond_the_fine_tune_is_refused(repo, tmp_path):
    archive = make_archive(tmp_path / "cifar.tar.gz", train_per_batch=10, test=10)
    save_npz(repo / "data" / "cifar10.npz", read_archive(archive))
    set_params(repo, data__validation=10, qat__start=10 ** 6)
    fails_cleanly(repo, "stages.qat", message="qat.start must be below the fine-tune's 1 steps (1 epoch(s) of 40 "
                  "images in batches of 128), got 1000000")
    assert not (repo / "qat").exists()


def batch_with(**changes) -> dict:
    members = batches(train_per_batch=10, test=10)
    batch = pickle.loads(members["data_batch_2"])
    batch.update(changes)
    return {**members, "data_batch_2": pickle.dumps(batch, protocol=2)}


@pytest.mark.slow
@pytest.mark.parametrize("labels", [7, "1234567890", None, [1.0] * 10, [True] * 10, [0] * 9 + [10], ["1"] * 10])
def test_batches_whose_labels_are_not_integers_0_to_9(repo, tmp_path, labels):
    archive = write_archive(tmp_path / "labels.tar.gz", batch_with(labels=labels))
    set_params(repo, data__url=str(archive), data__md5=md5_of(archive))
    fails_cleanly(repo, "stages.download", message="data_batch_2 does not hold uint8 N x 3072 images with a list")


@pytest.mark.slow
@pytest.mark.parametrize("names", [list(range(10)), None, "airplane", [None] * 10])
def test_meta_whose_class_names_are_not_strings(repo, tmp_path, names):
    members = batches(train_per_batch=10, test=10)
    meta = {**pickle.loads(members["batches.meta"]), "label_names": names}
    archive = write_archive(tmp_path / "meta.tar.gz", {**members, "batches.meta": pickle.dumps(meta, protocol=2)})
    set_params(repo, data__url=str(archive), data__md5=md5_of(archive))
    fails_cleanly(repo, "stages.download", message="batches.meta does not name 10 classes with strings")


@pytest.mark.slow
def test_duplicate_and_oversized_members(repo, tmp_path):
    members = batches(train_per_batch=10, test=10)
    twice = tmp_path / "twice.tar.gz"
    with tarfile.open(twice, "w:gz") as tar:
        for name in [*members, "data_batch_3"]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    set_params(repo, data__url=str(twice), data__md5=md5_of(twice))
    fails_cleanly(repo, "stages.download", message="has a second member cifar-10-batches-py/data_batch_3")
    huge = tmp_path / "huge.tar.gz"  # 64 MiB + 1 byte of zeros: 65 kB compressed, refused before reading
    with tarfile.open(huge, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = MAX_MEMBER + 1
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    set_params(repo, data__url=str(huge), data__md5=md5_of(huge))
    fails_cleanly(repo, "stages.download", message=f"has an oversized ({MAX_MEMBER + 1} bytes) member")


@pytest.mark.slow
def test_a_folder_given_as_the_archive(repo, tmp_path):
    set_params(repo, data__url=str(tmp_path))
    fails_cleanly(repo, "stages.download", message=f"data.url {tmp_path} is a folder: set it to the archive inside it")


@pytest.mark.slow
@pytest.mark.parametrize("changes, message", [
    ({"seed": -1}, "seed must be between 0 and 2^63 - 1, got -1"),
    ({"seed": 2 ** 63}, f"seed must be between 0 and 2^63 - 1, got {2 ** 63}"),
    ({"data__url": "https://example.com"}, "data.url must end in the archive's file name"),
    ({"data__url": "https://example.com/data/.."}, "data.url must end in the archive's file name"),
    ({"profile__bins": 100_000_000}, "profile.bins must be between 256 and 65536, got 100000000"),
    ({"train__batch_size": 10 ** 6}, "train.batch_size must be between 1 and 8192"),
    ({"train__lr": float("inf")}, "train.lr must be a finite number, got inf"),
    ({"report__author": "Ada 😀 Lovelace"}, "report.author holds GRINNING FACE (U+1F600), which the report cannot"),
    ({"report__author": "Ada\u200bLovelace"}, "report.author holds ZERO WIDTH SPACE (U+200B)"),
    ({"report__title": "Lab 1\n\nQuantization"}, "report.title holds a line break (U+000A)"),
    ({"report__title": "x" * 24_000}, "report.title must be 1 to 200 characters, got 24000"),
    ({"report__affiliation": "a\x00b"}, "report.affiliation holds a control character (U+0000)"),
])
def test_params_out_of_what_the_code_serves(repo, changes, message):
    set_params(repo, **changes)
    fails_cleanly(repo, "stages.check_params", message=f"params.yaml: {message}")


def test_the_runner_on_bad_output_paths_and_empty_input(tmp_path):
    from quant_fixture import IMAGES, random_export  # one small exported network

    directory, _ = random_export(tmp_path)
    np.save(tmp_path / "images.npy", IMAGES.numpy())
    runner = [sys.executable, str(directory / "runner.py"), str(directory)]
    result = subprocess.run([*runner, str(tmp_path / "images.npy"), "--out", str(tmp_path / "no" / "logits.npy")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    np.save(tmp_path / "none.npy", IMAGES.numpy()[:0])
    result = subprocess.run([*runner, str(tmp_path / "none.npy")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == ""
    (tmp_path / "empty.npy").write_bytes(b"")
    result = subprocess.run([*runner, str(tmp_path / "empty.npy")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    manifest = json.loads((directory / "manifest.json").read_text())
    for layer in manifest["layers"]:
        layer["clamp"] = [0, 1]  # an edited manifest changes predictions: refused by its checksum
    (directory / "manifest.json").write_text(json.dumps(manifest))
    result = subprocess.run([*runner, str(tmp_path / "images.npy")], capture_output=True, text=True)
    assert result.returncode == 2 and "does not match the checksum in its manifest" in result.stderr


# --- hardening, third round (issue 30): edits with a recomputed checksum, outputs that are inputs, bombs ---------

def retampered(directory, edit_manifest=None, edit_arrays=None) -> None:
    """An export edited as a careful attacker edits it: model.npz rewritten, the checksum recomputed."""
    from quantlab.inference import export_format

    manifest = json.loads((directory / "manifest.json").read_text())
    with np.load(directory / "model.npz") as archive:
        arrays = {name: archive[name] for name in archive.files}
    if edit_arrays:
        edit_arrays(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (directory / "model.npz").write_bytes(buffer.getvalue())
    if edit_manifest:
        manifest = edit_manifest(manifest) or manifest
    if isinstance(manifest, dict):
        manifest["sha256"] = export_format.checksum(manifest, buffer.getvalue())
    (directory / "manifest.json").write_text(json.dumps(manifest))


def layer(index: int, key: str, value):
    return lambda manifest: manifest["layers"][index].update({key: value})


@pytest.mark.parametrize("edit_manifest, edit_arrays, message", [
    (layer(4, "clamp", [0, 0]), None, "(fc3).clamp must be [lo, hi] with -128 <= lo < hi <= 127, got [0, 0]"),
    (layer(4, "clamp", [127, 0]), None, "layers[4] (fc3).clamp must be [lo, hi] with -128 <= lo < hi <= 127"),
    (layer(0, "kind", "xyz"), None, "layers[0].kind must be one of conv, fc, got 'xyz'"),
    (None, lambda a: a["conv1.m0"].__setitem__(0, -5), "(conv1).multiplier must be M0 values in [2^30, 2^31)"),
    (None, lambda a: a.update({"conv1.m0": a["conv1.m0"].astype(np.int64) << 10}),
     "layers[0] (conv1).multiplier must be an array int32 of shape (12,), got 'int64 (12,)'"),
    (None, lambda a: a["fc3.shift"].__setitem__(slice(None), 100), "layers[4] (fc3).shift must be values in"),
    (lambda m: m.update({"rounding": "foo"}), None, "rounding must be one of gemmlowp, onnxruntime, got 'foo'"),
    (lambda m: [m], None, "is not a quantlab-integer-network manifest of version 3"),
    (lambda m: m.update({"layers": [1]}), None, "layers must be a non-empty list of layer records, got [1]"),
    (layer(2, "pre_shift", "x"), None, "layers[2] (fc1).pre_shift must be an integer in [0, 31], got 'x'"),
    (None, lambda a: a.update({"input.lut": a["input.lut"][:10]}),
     "input.lut must be an array int16 of shape (256,), got 'int16 (10,)'"),
    (layer(2, "input_shape", [1000]), None, "layers[2] (fc1).input_shape must be the previous output's [1152]"),
    (layer(1, "accumulator_bound", 1), None, "layers[1] (conv2).accumulator_bound must be"),
    (layer(0, "real_multiplier", 2.0), None, "layers[0] (conv1).real_multiplier must be M0 * 2^(shift - 31) of its"),
    (layer(0, "real_multiplier", -1.0), None, "layers[0] (conv1).real_multiplier must be a positive finite number"),
])
def test_an_export_edited_with_its_checksum_recomputed_is_refused(tmp_path, edit_manifest, edit_arrays, message):
    """The runner and the engine's reader check every field, not only the checksum: each edit gave garbage
    predictions with exit 0, or a traceback."""
    from quantlab.inference import export_format

    from quant_fixture import IMAGES, random_export

    directory, _ = random_export(tmp_path, per_channel=False)
    retampered(directory, edit_manifest, edit_arrays)
    with pytest.raises(ValueError, match=re.escape(message)):
        export_format.read(directory)
    np.save(tmp_path / "images.npy", IMAGES.numpy())
    runner = [sys.executable, str(directory / "runner.py"), str(directory)]
    result = subprocess.run([*runner, str(tmp_path / "images.npy")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1
    assert message in result.stderr


def test_the_runner_writes_logits_only_where_it_may(tmp_path):
    from quant_fixture import IMAGES, random_export

    directory, _ = random_export(tmp_path)
    images = tmp_path / "images.npy"
    np.save(images, IMAGES.numpy())
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")

    def runner(*args):
        return subprocess.run([sys.executable, str(directory / "runner.py"), str(directory), str(images), *args],
                              capture_output=True, text=True)

    for args, message in ((["--out", str(precious)], "--out must name an .npy file"),
                          (["--out", str(images)], "is one of the runner's inputs"),
                          (["--out", str(images), "--force"], "is one of the runner's inputs"),
                          (["--out", str(directory / "model.npz"), "--force"], "--out must name an .npy file")):
        result = runner(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr
    assert precious.read_text() == "mine" and np.array_equal(np.load(images), IMAGES.numpy())
    assert not (tmp_path / "precious.txt.npy").exists()
    assert runner("--out", str(tmp_path / "logits.npy")).returncode == 0
    first = np.load(tmp_path / "logits.npy")
    result = runner("--out", str(tmp_path / "logits.npy"))
    assert result.returncode == 2 and "exists: give another name, or --force to replace it" in result.stderr
    assert runner("--out", str(tmp_path / "logits.npy"), "--force").returncode == 0
    assert np.array_equal(np.load(tmp_path / "logits.npy"), first)
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []  # no partial file


def test_files_that_lie_about_their_size_or_are_not_files(tmp_path):
    """A 30 KB .npy whose header claims 10^9 images, and links to /dev/zero: refused before any allocation."""
    from quant_fixture import random_export

    directory, _ = random_export(tmp_path)
    liar = lying_npy(tmp_path / "liar.npy")
    runner = [sys.executable, str(directory / "runner.py"), str(directory)]
    result = subprocess.run([*runner, str(liar)], capture_output=True, text=True)
    assert result.returncode == 2 and "but its header says (1000000000, 3, 32, 32) uint8" in result.stderr
    (tmp_path / "zero.npy").symlink_to("/dev/zero")
    result = subprocess.run([*runner, str(tmp_path / "zero.npy")], capture_output=True, text=True)
    assert result.returncode == 2 and "zero.npy is not a regular file" in result.stderr
    for name in ("model.npz", "manifest.json"):
        (directory / name).unlink()
        (directory / name).symlink_to("/dev/zero")
        result = subprocess.run([*runner, str(liar)], capture_output=True, text=True)
        assert result.returncode == 2 and f"{name} is not a regular file" in result.stderr


@pytest.mark.slow
def test_an_npz_with_a_huge_member_is_refused_before_reading_it(repo):
    """The right weights plus 1 GiB of zeros deflated to 1 MB: the zip directory declares the size, and that
    is checked before any member is read."""
    path = npz_bomb(repo / "models" / "float.npz", 2 ** 30)
    assert path.stat().st_size < 4 * 2 ** 20
    line = fails_cleanly(repo, "stages.quantize", message="models/float.npz declares ")
    assert "bytes of arrays, more than the 16777216 it can hold" in line


@pytest.mark.slow
@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_an_archive_with_a_huge_extended_header_is_refused_before_reading_it(repo, tmp_path, kind):
    """A pax header or a GNU long name of 256 MiB, first in a 1 MB .tar.gz: tarfile would read it whole."""
    archive = tar_bomb(tmp_path / "bomb.tar.gz", kind, 2 ** 28)
    set_params(repo, data__url=str(archive), data__md5=md5_of(archive))
    fails_cleanly(repo, "stages.download", message=f"has a {2 ** 28}-byte extended header (at most 65536)")
    assert not (repo / "data").exists()
