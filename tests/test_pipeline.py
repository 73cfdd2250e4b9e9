"""End to end: the real `dvc repro` on a small generated CIFAR-10 archive in a temporary repository."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from quantlab import runner
from quantlab.data import md5_of
from quantlab.engine import IntegerEngine
from quantlab.sandbox import make_repo, run

from cifar_fixture import make_archive

AUTHOR = r"Ada_Lovelace & Co. 100% {x} #1 ~ $y$ ^ \\"
KEYS = ["float", "quant_weights", "quant_weights_activations", "bias_float", "bias_quant_raw_bias", "bias_quant",
        "integer_engine"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    archive = make_archive(tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz")
    path = make_repo(tmp_path_factory.mktemp("pipeline") / "repo",
                     data__url=str(archive), data__md5=md5_of(archive),
                     train__epochs=3, train__batch_size=50, profile__calib_images=200, qat__start=5,
                     report__author=AUTHOR)
    run(path, "dvc", "repro")
    return path


def test_metrics_hold_every_variant_and_quantization_tracks_float(repo):
    accuracy = json.loads((repo / "metrics/accuracy.json").read_text())
    assert list(accuracy) == KEYS
    assert all(round(value, 2) == value for value in accuracy.values())
    assert accuracy["float"] > 60  # ten classes: chance is 10 %
    for variant in ("quant_weights", "quant_weights_activations"):
        assert abs(accuracy[variant] - accuracy["float"]) <= 5
    assert accuracy["bias_float"] > 60
    assert abs(accuracy["bias_quant"] - accuracy["bias_float"]) <= 5


def test_exported_network_runs_standalone_as_the_engine_does(repo, tmp_path):
    test_x = np.load(repo / "data/cifar10.npz")["test_x"]
    np.save(tmp_path / "images.npy", test_x)
    result = subprocess.run([sys.executable, str(repo / "export/float/runner.py"), str(repo / "export/float"),
                             str(tmp_path / "images.npy")], capture_output=True, text=True, check=True)
    engine = IntegerEngine(*runner.load(repo / "export/float"))
    assert [int(c) for c in result.stdout.split()] == engine(torch.from_numpy(test_x)).argmax(1).tolist()
    agreement = json.loads((repo / "metrics/engine.json").read_text())
    accuracy = json.loads((repo / "metrics/accuracy.json").read_text())
    assert agreement["float"]["accuracy"] == accuracy["integer_engine"]
    for model in ("float", "bias"):
        assert agreement[model]["identical_predictions"] >= 0.99 and agreement[model]["max_logit_diff_lsb"] <= 2


def test_plots_and_profiles_are_written(repo):
    assert (repo / "plots/train/float.csv").read_text().startswith("epoch,step,loss,train_accuracy,test_accuracy\n")
    assert (repo / "plots/qat/float-W4A4.csv").read_text().startswith("epoch,step,loss,train_accuracy")
    assert len((repo / "plots/confusion/quant.csv").read_text().splitlines()) == 1 + 500
    assert (repo / "plots/per_class/float.csv").read_text().startswith("class,accuracy\nairplane,")
    stats = json.loads((repo / "profile/float/stats.json").read_text())
    assert list(stats["activations"]) == ["input", "conv1", "conv2", "fc1", "fc2", "fc3"]
    assert stats["activations"]["conv1"]["min"] == 0.0  # post-ReLU


def test_calibration_comparison_covers_every_method_and_width(repo):
    table = json.loads((repo / "metrics/calibration.json").read_text())
    assert list(table) == ["W8A8", "W6A6", "W4A8", "W8A4", "W4A4"]
    assert all(list(row) == ["minmax", "sigma3", "percentile", "kl", "mse", "qat"] for row in table.values())
    accuracy = json.loads((repo / "metrics/accuracy.json").read_text())
    assert table["W8A8"]["minmax"] == accuracy["quant_weights_activations"]  # the same integer forward
    layers = (repo / "compare/layers.csv").read_text().splitlines()
    assert layers[0] == "method,activation_bits,tensor,threshold,clipped,sqnr_db"
    assert len(layers) == 1 + 5 * 3 * 6  # methods x activation widths x tensors


REPORT_FILES = ["report.tex", "report.md", "report.pdf", "figures/training.pdf", "figures/training.png",
                "figures/weights.pdf", "figures/activations.pdf", "figures/activations.png", "figures/calibration.pdf"]


def pdf_text(repo) -> str:
    text = subprocess.run(["pdftotext", "-layout", str(repo / "reports/build/report.pdf"), "-"],
                          capture_output=True, text=True, check=True).stdout
    return " ".join(text.split())


def test_pdf_states_every_accuracy_and_the_escaped_author(repo):
    text = pdf_text(repo)
    accuracy = json.loads((repo / "metrics/accuracy.json").read_text())
    for key, value in accuracy.items():
        assert f"{value:.2f}" in text, key
    for width, row in json.loads((repo / "metrics/calibration.json").read_text()).items():
        for method, value in row.items():
            assert f"{value:.2f}" in text, (width, method)
    assert AUTHOR in text
    markdown = (repo / "reports/build/report.md").read_text()
    assert all(f"{value:.2f}" in markdown for value in accuracy.values())
    assert "![Distributions of the activations](figures/activations.png)" in markdown


def test_forced_rebuild_is_byte_identical(repo):
    before = {name: (repo / "reports/build" / name).read_bytes() for name in REPORT_FILES}
    result = run(repo, "dvc", "repro", "-f", "-s", "report")
    run(repo, "dvc", "repro", "-f", "-s", "pdf")
    assert stages_run(result.stdout) == ["report"]
    for name in REPORT_FILES:
        assert (repo / "reports/build" / name).read_bytes() == before[name], name
    assert "up to date" in run(repo, "dvc", "status").stdout


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_second_repro_runs_nothing_and_status_is_clean(repo):
    again = run(repo, "dvc", "repro")
    assert stages_run(again.stdout) == []
    assert "up to date" in run(repo, "dvc", "status").stdout


def test_switching_calib_reruns_only_what_depends_on_it(repo):
    before = json.loads((repo / "metrics/accuracy.json").read_text())
    result = run(repo, "dvc", "exp", "run", "-S", "calib=kl")
    assert sorted(stages_run(result.stdout)) == ["bias", "evaluate", "export@bias", "export@float", "pdf",
                                                 "quantize_activations@bias", "quantize_activations@float",
                                                 "quantize_weights@bias", "quantize_weights@float", "report"]
    after = json.loads((repo / "metrics/accuracy.json").read_text())
    assert json.loads((repo / "quant/float/activations.json").read_text())["calib"] == "kl"
    assert after["float"] == before["float"] and after["quant_weights"] == before["quant_weights"]
    table = json.loads((repo / "metrics/calibration.json").read_text())
    assert after["quant_weights_activations"] == table["W8A8"]["kl"]
    assert "up to date" in run(repo, "dvc", "status").stdout


def test_calib_ema_takes_the_quantization_aware_fine_tune(repo):
    run(repo, "dvc", "exp", "run", "-S", "calib=ema")
    accuracy = json.loads((repo / "metrics/accuracy.json").read_text())
    table = json.loads((repo / "metrics/calibration.json").read_text())
    assert json.loads((repo / "quant/float/activations.json").read_text())["calib"] == "ema"
    assert accuracy["quant_weights_activations"] == table["W8A8"]["qat"] == accuracy["integer_engine"]
