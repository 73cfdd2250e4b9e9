"""Golden bytes: the same weights and metrics on every x86-64 CPU with AVX2 and any core count, whatever the
environment says about kernels and threads, since quantlab.compute pins them. `make golden` runs this file
under every combination of ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and OMP_NUM_THREADS.

A change of the code that changes these bytes on purpose changes the constants: the failing assertion prints
the new digest.

ONNX Runtime's peer (metrics/onnxruntime.json, and its section of metrics/differences.json) is left out: its
kernels are chosen by the CPU at run time, with no switch to pin them (see docs/reproducibility.md, "The same
bytes on every machine")."""

import hashlib
import json

import numpy as np
import pytest
import torch

from bench.sandbox import make_repo, run
from quantlab import compute
from quantlab.architecture import MODELS
from quantlab.data import md5_of
from quantlab.evaluation import Split
from quantlab.model import Net, state_to_arrays
from quantlab.training import fit, make_deterministic

from cifar_fixture import class_templates, images, make_archive

TRAINED_WEIGHTS = "8f05b6d84efd4098d73e8bf387fdb35ebf75e1c7ed40e7a05de1a1da4a747e01"
PIPELINE = {
    "models/float.npz": "56b8b8b5ae0258c786b8c0d70f5b93072e8e1f34734f064ef2fa4f81e38a6780",
    "models/bias.npz": "42dd11b3f46f70fb019b59c471adce9f7e207f7e6269333b509841f9522e0cef",
    "metrics/accuracy.json": "b224518b9b10c714eca69376b3cfd6e640d19d9e83601b745e2fc1dc6b775b00",
    "metrics/calibration.json": "0dae0131c2ec7be3056811c50ca56fe382188c5c0c2ed698b206bd31d49fd3d8",
    "metrics/differences.json": "bf2872504c0ca161a3f9d3b0f31f5c6dbaf41ac3c1eaf07149c8bf8c419adf2a",
    "metrics/engine.json": "65c7681cf246c8b7c7fa50900aa859b9fd22bf42fe9eb7d5fd95d323f7b39ede",
    "metrics/headline.json": "1c2c86e709a0c758f15dbcae8c213b1c710f6ecdd1280a8b1591c2cf29519f31",
    "metrics/techniques.json": "4f8cfb0d77fc87123655d64b478599bc52833ad3119b2aeaaaeea96e1291b06c",
}
MACHINE_DEPENDENT = "onnxruntime"  # ONNX Runtime's peer: its file in metrics/ and its section of the others


def digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes, in name order."""
    sha = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        sha.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def test_the_arithmetic_is_pinned_whatever_the_environment_says():
    assert compute.pinned()
    assert torch.backends.cpu.get_cpu_capability() == "AVX2" and torch.get_num_threads() == compute.THREADS


def test_training_gives_the_golden_weights():
    rng = np.random.default_rng(0)
    pixels, labels = images(1800, rng, class_templates(rng))
    train = Split(torch.from_numpy(pixels.reshape(-1, 3, 32, 32)), torch.tensor(labels))
    make_deterministic(0)
    model = Net(MODELS["bias"])
    fit(model, train, Split(train.x[:100], train.y[:100]), epochs=1, batch_size=50, lr=0.004, weight_decay=0.0,
        flip=True, seed=0, desc="golden")  # 36 steps
    assert digest(state_to_arrays(model)) == TRAINED_WEIGHTS


def result_digests(repo) -> dict[str, str]:
    """SHA-256 of the models and of every metrics file, without ONNX Runtime's peer."""
    digests = {path: hashlib.sha256((repo / path).read_bytes()).hexdigest()
               for path in ("models/float.npz", "models/bias.npz")}
    for path in sorted((repo / "metrics").glob("*.json")):
        if MACHINE_DEPENDENT not in path.name:
            data = json.loads(path.read_text())
            data.pop(MACHINE_DEPENDENT, None)
            digests[f"metrics/{path.name}"] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def golden_repo(tmp_path_factory):
    archive = make_archive(tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz", train_per_batch=100,
                           test=200)
    path = make_repo(tmp_path_factory.mktemp("golden") / "repo", data__url=str(archive),
                     data__md5=md5_of(archive), data__validation=100, train__epochs=1, train__batch_size=50,
                     profile__calib_images=100, qat__start=2, ptq__images=64, ptq__iterations=5,
                     compare__methods=["minmax", "kl"], compare__widths=[[8, 8], [4, 4]],
                     techniques__widths=[[4, 8]], techniques__iterations=5)
    run(path, "dvc", "repro", "statistics")  # every metric; not the figures, the report, the PDF
    return path


@pytest.mark.slow  # `dvc repro statistics`
def test_the_pipeline_gives_the_golden_models_and_metrics(golden_repo):
    assert result_digests(golden_repo) == PIPELINE
