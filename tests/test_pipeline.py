"""End to end: the real `dvc repro` on a small generated CIFAR-10 archive in a temporary repository."""

import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from bench.sandbox import make_repo, run, set_params
from bench.seeds import queue_workers, stop_workers
from quantlab.data import md5_of, split
from quantlab.inference import export_format, runner
from quantlab.inference.engine import FixedPointEngine
from quantlab.quantize.network import QuantizedNetwork
from quantlab.report.tables import difference, layer_factors
from quantlab.statistics import paired, signed
from quantlab.variants import VARIANTS
from stages.pdf import build_pdf

from cifar_fixture import make_archive

# LaTeX's special characters, its ligatures (--- and quotes must come out as typed) and names in Greek,
# Cyrillic, Chinese, Japanese and Korean
AUTHOR = r"""Ada_Lovelace & Co. 100% {x} #1 ~ $y$ ^ \\ --- "q" 'q' ``q'' Ελένη Ирина 李小龍 山田 김철수"""
pytestmark = pytest.mark.slow  # the whole pipeline through `dvc repro`, and more runs after it


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    archive = make_archive(tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz")
    path = make_repo(tmp_path_factory.mktemp("pipeline") / "repo", extra=["bench", "Makefile", "requirements.txt"],
                     data__url=str(archive), data__md5=md5_of(archive), data__validation=200,
                     train__epochs=3, train__batch_size=50, profile__calib_images=200, qat__start=5,
                     compare__widths=[[8, 8], [4, 4]], techniques__widths=[[4, 8], [8, 8]],
                     techniques__per_channel=[False, True], techniques__iterations=10, report__author=AUTHOR)
    run(path, "dvc", "repro")
    return path


def test_metrics_hold_every_variant_and_quantization_tracks_float(repo):
    accuracy = json.loads((repo / "metrics/accuracy.json").read_text())
    assert list(accuracy) == [variant.name for variant in VARIANTS]
    assert all(round(value, 2) == value for value in accuracy.values())
    assert accuracy["float"] > 60  # ten classes: chance is 10 %
    for variant in ("quant_weights", "quant_weights_activations"):
        assert abs(accuracy[variant] - accuracy["float"]) <= 5
    assert accuracy["bias_float"] > 60
    assert abs(accuracy["bias_quant"] - accuracy["bias_float"]) <= 5


def leaves(tree) -> int:
    return sum(map(leaves, tree.values())) if isinstance(tree, dict) else 1


def test_dvc_compares_only_the_headline_numbers(repo):
    shown = json.loads(run(repo, "dvc", "metrics", "show", "--json").stdout)
    metrics = {path: entry["data"] for path, entry in shown[""]["data"].items()}
    assert set(metrics) == {"metrics/accuracy.json", "metrics/headline.json"}
    assert sum(map(leaves, metrics.values())) <= 30
    headline = metrics["metrics/headline.json"]
    differences = json.loads((repo / "metrics/differences.json").read_text())
    for variant in ("quant_weights", "quant_weights_activations", "bias_quant_raw_bias", "bias_quant"):
        record = differences["variants"][variant]
        assert headline[variant] == {key: record[key] for key in ("delta", "ci_low", "ci_high")}
    assert headline["best"] == {width: row["best"] for width, row in differences["calibration"].items()}
    engine = json.loads((repo / "metrics/engine.json").read_text())
    assert headline["identical_logits"] == engine["identical_logits"]
    assert headline["onnxruntime"]["identical_logits"] == engine["onnxruntime"]["identical_logits"]


def test_exported_network_runs_standalone_as_the_engine_does(repo, tmp_path):
    test_x = np.load(repo / "data/cifar10.npz")["test_x"]
    np.save(tmp_path / "images.npy", test_x)
    result = subprocess.run([sys.executable, str(repo / "export/float/runner.py"), str(repo / "export/float"),
                             str(tmp_path / "images.npy")], capture_output=True, text=True, check=True)
    engine = FixedPointEngine(*export_format.read(repo / "export/float"))
    assert [int(c) for c in result.stdout.split()] == engine(torch.from_numpy(test_x)).argmax(1).tolist()
    agreement = json.loads((repo / "metrics/engine.json").read_text())
    accuracy = json.loads((repo / "metrics/accuracy.json").read_text())
    assert agreement["accuracy"] == accuracy["integer_engine"]
    assert agreement["identical_predictions"] >= 0.99 and agreement["max_logit_diff_lsb"] <= 2
    # the export's ONNX model in ONNX Runtime, against the engine in ONNX Runtime's rounding
    assert agreement["rounding"] == "gemmlowp" and agreement["machine_independent"] is True
    assert agreement["onnxruntime"]["identical_logits"] == 1.0 and agreement["onnxruntime"]["max_logit_diff_lsb"] == 0
    assert set(agreement["rounding_modes"]["accuracy"]) == {"gemmlowp", "onnxruntime"}


def test_onnxruntimes_quantizer_is_compared_with_intervals(repo):
    peers = json.loads((repo / "metrics/onnxruntime.json").read_text())
    cells = {f"W8A8-{granularity}/{name}" for granularity in ("tensor", "channel")
             for name in ("minmax", "entropy", "percentile")}
    assert set(peers) == cells | {"version"}
    differences = json.loads((repo / "metrics/differences.json").read_text())["onnxruntime"]
    versus = differences["W8A8-tensor"]["vs_project"]  # the project's comparison is per tensor here
    assert versus["ci_low"] <= versus["delta"] <= versus["ci_high"] and "vs_project" not in differences["W8A8-channel"]
    text = pdf_text(repo)
    assert all(f"{peers[cell]:.2f}" in text for cell in cells) and difference(versus) in text


def test_plots_and_profiles_are_written(repo):
    assert (repo / "plots/train/float.csv").read_text().startswith("epoch,step,loss,train_accuracy,test_accuracy\n")
    assert (repo / "plots/qat/float-W4A4.csv").read_text().startswith("epoch,step,loss,train_accuracy")
    assert len((repo / "plots/confusion/quant.csv").read_text().splitlines()) == 1 + 500
    assert (repo / "plots/per_class/float.csv").read_text().startswith("class,accuracy\nairplane,")
    stats = json.loads((repo / "profile/float/stats.json").read_text())
    assert list(stats["activations"]) == ["input", "conv1", "conv2", "fc1", "fc2", "fc3"]
    assert stats["activations"]["conv1"]["min"] == 0.0  # post-ReLU


def test_layer_plots_state_the_headline_network_as_the_comparison_does(repo):
    layers = list(csv.DictReader(io.StringIO((repo / "plots/layers/activations.csv").read_text())))
    network = json.loads((repo / "quant/float/network.json").read_text())["activations"]
    assert [row["tensor"] for row in layers] == list(network)
    assert all(float(row["threshold"]) == network[row["tensor"]]["threshold"] for row in layers)
    # calib=minmax at 8 bits: the comparison's minmax row at 8 bits, value for value
    compared = [{key: row[key] for key in ("tensor", "threshold", "clipped", "sqnr_db")}
                for row in csv.DictReader(io.StringIO((repo / "compare/layers.csv").read_text()))
                if row["method"] == "minmax" and row["activation_bits"] == "8"]
    assert layers == compared and all(float(row["clipped"]) == 0 for row in layers)
    weights = list(csv.DictReader(io.StringIO((repo / "plots/layers/weights.csv").read_text())))
    assert [row["layer"] for row in weights] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert all(30 < float(row["sqnr_db"]) < 60 for row in weights)  # 8 bits: about 6 dB per bit, less the range


def test_plots_page_renders_offline(repo, tmp_path):
    """`dvc plots show`'s page carries vega, vega-lite and vega-embed (reports/plots.html), and loads nothing from
    the network; every plot of dvc.yaml is on it under an id its script can select."""
    run(repo, "dvc", "plots", "show", "-o", str(tmp_path))
    page = (tmp_path / "index.html").read_text()
    assert "<script src" not in page and "https://cdn" not in page
    template = (repo / "reports/plots.html").read_text()
    scripts = re.findall(r"<script type=\"text/javascript\">.*?</script>", template, re.S)
    assert len(scripts) == 3 and all(script in page for script in scripts)
    plots = [next(iter(plot)) for plot in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]]
    ids = re.findall(r"vegaEmbed\('#([^']*)', spec\)", page)
    assert len(ids) == len(plots) and all(re.fullmatch(r"[\w-]+", plot_id) for plot_id in ids)


def test_calibration_comparison_covers_every_method_and_width(repo):
    table = json.loads((repo / "metrics/calibration.json").read_text())
    assert list(table) == ["W8A8", "W4A4"]
    assert all(list(row) == ["minmax", "sigma3", "percentile", "kl", "mse", "qat"] for row in table.values())
    accuracy = json.loads((repo / "metrics/accuracy.json").read_text())
    assert table["W8A8"]["minmax"] == accuracy["quant_weights_activations"]  # the same integer forward
    layers = (repo / "compare/layers.csv").read_text().splitlines()
    assert layers[0] == "method,activation_bits,tensor,threshold,clipped,sqnr_db"
    assert len(layers) == 1 + 5 * 2 * 6  # methods x activation widths x tensors


def test_techniques_comparison_covers_every_setting_and_combination_and_chooses_on_validation(repo):
    table = json.loads((repo / "metrics/techniques.json").read_text())
    settings = ["W4A8-tensor", "W4A8-channel", "W8A8-tensor", "W8A8-channel"]
    combinations = ["nearest", "equalize", "bias_correction", "adaround", "brecq", "qdrop", "equalize+bias_correction",
                    "adaround+bias_correction", "equalize+adaround+bias_correction"]
    assert list(table) == settings and all(list(row) == combinations for row in table.values())
    chosen = json.loads((repo / "metrics/differences.json").read_text())["techniques"]
    predictions = np.load(repo / "evaluation/techniques.npz")
    validation_y = json.loads((repo / "metrics/differences.json").read_text())["images"]["validation"]
    for setting, row in chosen.items():
        assert row["best"] == max(combinations, key=lambda name: row[name]["validation_accuracy"])
        assert all(row[name]["test_accuracy"] == table[setting][name] for name in combinations)
        assert len(predictions[f"{setting}/nearest/validation"]) == validation_y
    layers = (repo / "compare/techniques.csv").read_text().splitlines()
    assert layers[0] == "setting,techniques,layer,spread_before,spread_after,nearest,final"
    assert len(layers) == 1 + len(settings) * len(combinations) * 5
    markdown = (repo / "reports/build/report.md").read_text()
    assert "Post-training techniques" in markdown and "](figures/techniques.png)" in markdown
    assert (repo / "reports/build/figures/techniques.pdf").stat().st_size > 0


def test_the_report_names_the_data_by_its_file_not_a_machine_path(repo):
    archive = Path(yaml.safe_load((repo / "params.yaml").read_text())["data"]["url"])
    assert archive.is_absolute()
    for name in ("report.md", "report.tex"):
        text = (repo / "reports/build" / name).read_text().replace(r"\allowbreak{}", "").replace("\\", "")
        assert str(archive.parent) not in text and str(repo) not in text, name
        assert "cifar-10-python.tar.gz" in text, name
        assert ABSOLUTE_PATH.findall(text) == [], name


# A path from the root: a slash after a space, a bracket, a quote or an equals sign (not a fraction such as 1/S,
# nor a URL's //), then at least two path components.
ABSOLUTE_PATH = re.compile(r"(?:^|(?<=[\s(\[{'\"=]))/[\w.-]+/[\w./-]+", re.MULTILINE)


def test_the_report_is_laid_out_without_faults_and_states_the_labs_material(repo):
    _, problems = build_pdf(repo / "reports/build/report.tex")
    assert problems == []
    pages = subprocess.run(["pdfinfo", str(repo / "reports/build/report.pdf")], capture_output=True, text=True,
                           check=True).stdout
    assert int(re.search(r"^Pages:\s+(\d+)", pages, re.MULTILINE)[1]) <= 10
    text = pdf_text(repo)
    for section in ("Introduction", "Results", "Discussion", "Conclusion"):  # numbered: "VIII. Results"
        assert re.search(rf"\b[IVX]+\. {section}\b", text), section
    assert "Appendix: the run" in text
    assert "Q = [2, 0, 2, 2, 4, 4, 4, 4]" in text and "P = [1, 0, 2, 3, 5, 3, 1, 7]" in text
    network = QuantizedNetwork.load(repo / "quant/float")
    for layer in ("conv1", "conv2"):
        factors = layer_factors(network, layer)
        for key in ("n_w", "n_in", "n_out", "product"):
            assert factors[key] in text, (layer, key)


def pdf_text(repo) -> str:
    """The PDF's text, spaces collapsed, in Unicode's composed form (NFC): Noto CJK maps some ideographs to
    their compatibility code points, such as U+F9E1 for 李 (U+674E), in the text it gives a PDF reader."""
    text = subprocess.run(["pdftotext", "-layout", str(repo / "reports/build/report.pdf"), "-"],
                          capture_output=True, text=True, check=True).stdout
    return unicodedata.normalize("NFC", " ".join(text.split()))


def prose(markdown: str) -> list[str]:
    """The sentences of report.md that the PDF must show as text: those of its paragraphs (no heading, table,
    image, caption or display math, each of which ends a paragraph), cut at inline math, without Markdown's
    markup, of four words or more."""
    paragraphs, lines = [], []
    body = markdown.split("\n\n", 2)[2].split("\n## References")[0]  # after the title block, before the list
    for line in body.splitlines() + [""]:
        if line.strip() and not re.match(r"\s*(#|\||!\[|\$\$|\*(Table|Fig\.|Index terms))", line):
            lines.append(line)
        elif lines:
            paragraphs, lines = paragraphs + [" ".join(lines)], []
    sentences = []
    for paragraph in paragraphs:
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", paragraph)  # a link's text
        text = re.sub(r"\\(.)", r"\1", re.sub(r"[*`]", "", text))  # emphasis, code and escapes
        sentences += [piece.strip() for part in re.split(r"\$[^$]*\$", text)
                      for piece in re.split(r"(?<=[.;:!?])\s+(?=[A-Z])", part) if len(piece.split()) >= 4]
    return sentences


def comparable(text: str) -> str:
    """Text as a PDF reader's copy and the Markdown both give it: compatibility forms (ligatures, CJK) folded,
    TeX's curly quotes straight, no whitespace, no hyphens (a word hyphenated at a line's end)."""
    text = unicodedata.normalize("NFKC", text).translate(str.maketrans("\u2018\u2019\u201c\u201d", "''\"\""))
    return re.sub(r"[\s\-\u2010\u2011]", "", text)


FLOAT_TEXT = ("TABLE", "Fig.")  # how a table's or a figure's text starts in pdftotext's output


def in_reading_order(sentence: str, text: str, gaps: int = 3, first: int = 12, piece: int = 24,
                     reach: int = 12000) -> bool:
    """Whether `sentence` is in `text`, allowing `gaps` breaks: pdftotext puts a table's or a figure's text where
    the float falls, inside a sentence, and may read a column's end before its start. The sentence starts with a
    run of at least `first` characters; after a break it resumes within `reach` characters either way, with a run
    of at least `piece` characters, or of any length where the break is a float's text. Text that LaTeX
    swallowed leaves neither. (A sentence's end shorter than `piece` may resume after any break if it has `first`
    characters: a column's last words can come out of order.)"""
    position, rest = None, sentence
    for _ in range(gaps + 1):
        if position is not None and text.startswith(rest, position):
            return True
        low = 0 if position is None else max(0, position - reach)
        window = text[low:] if position is None else text[low:position + reach]
        floats = position is not None and text.startswith(FLOAT_TEXT, position)
        shortest = min(first, len(rest)) if position is None else 1 if floats else min(piece, len(rest))
        if shortest > len(rest) or not floats and position is not None and len(rest) < first:
            return False
        found = max((k for k in range(shortest, len(rest) + 1) if rest[:k] in window), default=0)
        if not found:
            return False
        position = low + window.index(rest[:found]) + found
        rest = rest[found:]
        if not rest:
            return True
    return False


def test_every_sentence_of_the_markdown_report_is_in_the_pdf(repo):
    """The same template renders both formats; a sentence missing from the PDF is LaTeX swallowing text (an
    unescaped % makes the rest of its line a comment)."""
    pdf = comparable(subprocess.run(["pdftotext", str(repo / "reports/build/report.pdf"), "-"],
                                    capture_output=True, text=True, check=True).stdout)
    sentences = prose((repo / "reports/build/report.md").read_text())
    assert len(sentences) > 100
    assert [sentence for sentence in sentences if not in_reading_order(comparable(sentence), pdf)] == []
    # the check bites: the same PDF text with 30 characters of a sentence gone (as after a bare %) fails it
    sentence = comparable(max(sentences, key=len))
    start = pdf.index(sentence[:40]) + 40
    assert not in_reading_order(sentence, pdf[:start] + pdf[start + 30:])


def test_pdf_states_every_accuracy_and_the_escaped_author(repo):
    text = pdf_text(repo)
    accuracy = json.loads((repo / "metrics/accuracy.json").read_text())
    for key, value in accuracy.items():
        assert f"{value:.2f}" in text, key
    for width, row in json.loads((repo / "metrics/calibration.json").read_text()).items():
        for method, value in row.items():
            assert f"{value:.2f}" in text, (width, method)
    assert AUTHOR in text
    differences = json.loads((repo / "metrics/differences.json").read_text())
    markdown = (repo / "reports/build/report.md").read_text()
    for variant, record in differences["variants"].items():  # every difference with its interval
        interval = difference(record)
        assert interval in text and interval.replace("[", "\\[").replace("]", "\\]") in markdown, variant
    assert all(f"{value:.2f}" in markdown for value in accuracy.values())
    assert "![Distributions of the activations (log scale)" in markdown and "](figures/activations.png)" in markdown


OUTPUTS = ["data", "models", "profile", "qat", "quant", "export", "evaluation", "metrics", "plots", "compare",
           "reports/build", "dvc.lock"]


def output_digests(repo) -> dict[str, str]:
    """The SHA-256 of every file under the outputs' folders, but a killed stage's temporary files."""
    files = [p for name in OUTPUTS for p in ([repo / name] if (repo / name).is_file() else
                                             sorted((repo / name).rglob("*"))) if p.is_file() and p.suffix != ".tmp"]
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_forced_rerun_of_everything_is_byte_identical(repo):
    before = output_digests(repo)
    assert len(before) > 60 and any(name.endswith("report.pdf") for name in before)
    run(repo, "dvc", "repro", "-f")
    assert output_digests(repo) == before
    assert "up to date" in run(repo, "dvc", "status").stdout


def test_second_repro_runs_nothing_and_status_is_clean(repo):
    again = run(repo, "dvc", "repro")
    assert stages_run(again.stdout) == []
    assert "up to date" in run(repo, "dvc", "status").stdout


def test_changing_a_report_template_reruns_only_the_report_stages(repo):
    template = repo / "reports/sections/summary.j2"
    original = template.read_text()
    template.write_text(original.replace('f.section("Results")', 'f.section("Results of this run")'))
    assert stages_run(run(repo, "dvc", "repro").stdout) == ["report", "pdf"]
    assert r"\section{Results of this run}" in (repo / "reports/build/report.tex").read_text()
    assert re.search(r"^## [IVX]+\. Results of this run$", (repo / "reports/build/report.md").read_text(), re.MULTILINE)
    template.write_text(original)
    assert stages_run(run(repo, "dvc", "repro").stdout) == ["report", "pdf"]
    assert stages_run(run(repo, "dvc", "repro").stdout) == []


KILLER = """
import os, signal
_replace = os.replace


def replace(src, dst, *args, **kwargs):  # SIGKILL this process instead of completing one chosen write
    if str(dst).endswith(os.environ["KILL_WHEN_WRITING"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)


os.replace = replace
"""


def test_a_stage_killed_while_writing_reruns_and_dvc_accepts_it(repo, tmp_path):
    before = output_digests(repo)
    (tmp_path / "sitecustomize.py").write_text(KILLER)
    killed = run(repo, "dvc", "repro", "-f", "-s", "evaluate", check=False,
                 env={"PYTHONPATH": str(tmp_path), "KILL_WHEN_WRITING": "metrics/accuracy.json"})
    assert killed.returncode != 0
    assert not (repo / "metrics/accuracy.json").exists() and list((repo / "metrics").glob(".accuracy.json.*.tmp"))
    assert "changed" in run(repo, "dvc", "status").stdout
    restored = run(repo, "dvc", "repro")  # the killed run's outputs come back from the run-cache
    assert "Stage 'evaluate' is cached - skipping run" in restored.stdout
    assert "up to date" in run(repo, "dvc", "status").stdout and output_digests(repo) == before
    assert ".tmp" not in run(repo, "git", "status", "--porcelain", "--untracked-files=all").stdout  # ignored
    run(repo, "dvc", "repro", "-f", "-s", "evaluate")  # the stage's next run removes what it left
    assert not list(repo.rglob("*.tmp")) and output_digests(repo) == before


def test_the_seed_sweep_runs_through_the_queue_and_aggregates(repo):
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "results")  # queued experiments start from the last commit
    try:
        result = run(repo, "python", "-m", "bench.seeds", "--seeds", "2", "--jobs", "2", "--timeout", "900")
    finally:  # nothing of the queue outlives the test, even when it fails
        stop_workers(repo.resolve())
    assert not queue_workers(repo.resolve())
    summary = json.loads((repo / "seeds/summary.json").read_text())
    assert summary["seeds"] == [0, 1] and (repo / "seeds/summary.png").exists()
    rows = list(csv.DictReader(io.StringIO(run(repo, "dvc", "exp", "show", "--csv").stdout)))
    runs = sorted(float(row["float"]) for row in rows if row.get("State") == "Success")
    assert sorted(summary["values"]["float"]) == runs  # what each queued experiment measured
    spread = summary["spread"]["quant_weights_activations − float"]
    values = summary["values"]["quant_weights_activations − float"]
    assert spread["n"] == 2 and spread["mean"] == pytest.approx(sum(values) / 2, abs=1e-3)
    assert spread["low"] <= spread["mean"] <= spread["high"] and "| float |" in result.stdout
    assert "up to date" in run(repo, "dvc", "status").stdout  # the workspace is untouched


def stages_run(output: str) -> list[str]:
    """The stages `dvc repro` reproduced: ran, or restored from DVC's run-cache (a stage already run elsewhere
    with the same deps and params, e.g. by a queued experiment)."""
    return [line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage") or "is cached - skipping run" in line]


def test_switching_calib_reruns_only_what_depends_on_it(repo):
    before = json.loads((repo / "metrics/accuracy.json").read_text())
    result = run(repo, "dvc", "exp", "run", "-S", "calib=kl")
    # statistics reruns where the predictions changed (not on this tiny data set, where every variant is right)
    calib_dependent = {"check_params", "quantize", "export", "evaluate", "report", "pdf"}
    assert set(stages_run(result.stdout)) - {"statistics"} == calib_dependent
    after = json.loads((repo / "metrics/accuracy.json").read_text())
    assert json.loads((repo / "quant/float/network.json").read_text())["provenance"]["calib"] == "kl"
    assert after["float"] == before["float"] and after["quant_weights"] == before["quant_weights"]
    table = json.loads((repo / "metrics/calibration.json").read_text())
    assert after["quant_weights_activations"] == table["W8A8"]["kl"]
    assert "up to date" in run(repo, "dvc", "status").stdout


def test_calib_ema_takes_the_quantization_aware_fine_tune(repo):
    run(repo, "dvc", "exp", "run", "-S", "calib=ema")
    accuracy = json.loads((repo / "metrics/accuracy.json").read_text())
    table = json.loads((repo / "metrics/calibration.json").read_text())
    provenance = json.loads((repo / "quant/float/network.json").read_text())["provenance"]
    assert provenance == {"model": "float", "calib": "ema", "weights": "qat", "source": "qat/float/W8A8.npz",
                          "techniques": []}
    assert accuracy["quant_weights_activations"] == table["W8A8"]["qat"] == accuracy["integer_engine"]


def test_experiments_compare_on_their_predictions_with_paired_intervals(repo):
    predictions, thresholds = {}, {}
    for name in ("cmp-kl", "cmp-mse"):
        run(repo, "dvc", "exp", "run", "-n", name, "-S", f"calib={name[4:]}")
        predictions[name] = dict(np.load(repo / "evaluation/quantized.npz"))  # what the experiment left here
        network = json.loads((repo / "quant/float/network.json").read_text())["activations"]
        thresholds[name] = {tensor: activation["threshold"] for tensor, activation in network.items()}
    # `dvc plots diff` shows each experiment's thresholds side by side
    plot = "activation threshold, headline network"
    (shown,) = json.loads(run(repo, "dvc", "plots", "diff", "cmp-kl", "cmp-mse", "--json", "--targets", plot)
                          .stdout)["data"][plot]
    assert shown["revisions"] == ["cmp-kl", "cmp-mse"] and thresholds["cmp-kl"] != thresholds["cmp-mse"]
    for name in ("cmp-kl", "cmp-mse"):
        assert {row["tensor"]: float(row["threshold"]) for row in shown["content"]["data"]["values"]
                if row["rev"] == name} == thresholds[name]
    labels = np.load(repo / "data/cifar10.npz")["test_y"]
    result = run(repo, "python", "-m", "bench.compare", "cmp-kl", "cmp-mse")
    written = {suffix: (repo / f"compare/experiments.{suffix}") for suffix in ("md", "png", "pdf")}
    table = written["md"].read_text()
    assert table in result.stdout and written["png"].stat().st_size > 0 and written["pdf"].stat().st_size > 0
    chosen_on = make(repo, "compare", "EXPS=cmp-kl cmp-mse", "IMAGES=validation").stdout
    _, held = split(np.load(repo / "data/cifar10.npz")["train_y"], 200, 0)
    validation_labels = np.load(repo / "data/cifar10.npz")["train_y"][held]
    kl, mse = (predictions[name]["quant_weights_activations/validation"] == validation_labels
               for name in ("cmp-kl", "cmp-mse"))
    assert f"on the same {len(held)} validation images" in chosen_on
    row = next(line for line in chosen_on.splitlines()
               if line.startswith("| cmp-kl | cmp-mse | quant_weights_activations |"))
    assert f"| {100 * kl.mean():.2f} | {100 * mse.mean():.2f} | {signed(paired(mse, kl)['delta'])} |" in row
    for path in written.values():  # not the pipeline's: the later tests compare the pipeline's outputs
        path.unlink()
    assert "| experiment | calib |" in table and "| cmp-mse | mse |" in table
    for variant in ("quant_weights", "quant_weights_activations", "bias_quant_raw_bias", "bias_quant"):
        kl, mse = (predictions[name][f"{variant}/test"] == labels for name in ("cmp-kl", "cmp-mse"))
        expected = paired(mse, kl)
        row = next(line for line in table.splitlines() if line.startswith(f"| cmp-kl | cmp-mse | {variant} |"))
        assert f"| {signed(expected['delta'])} | [{signed(expected['ci_low'])}, {signed(expected['ci_high'])}] |" in row
        assert f"| {100 * kl.mean():.2f} | {100 * mse.mean():.2f} |" in row
    # another float model: paired differences would mix training with quantization, so it refuses in one line
    run(repo, "dvc", "exp", "run", "--temp", "-n", "cmp-retrained", "-S", "train.epochs=2", "train@float")
    refused = run(repo, "python", "-m", "bench.compare", "cmp-kl", "cmp-retrained", check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "different float models (models/float.npz)" in refused.stderr
    unknown = run(repo, "python", "-m", "bench.compare", "cmp-kl", "no-such-experiment", check=False)
    assert unknown.returncode == 2 and "no experiment named 'no-such-experiment'" in unknown.stderr


def test_mixed_precision_chooses_within_every_budget_and_deploys_bit_exact(repo):
    result = json.loads((repo / "metrics/mixed_precision.json").read_text())
    assert result["choices_on"] == "validation" and result["exhaustive"] is None
    assert [(entry["kind"], entry["budget"]) for entry in result["budgets"]] == [
        (kind, budget) for kind in ("size", "bops") for budget in (0.125, 0.1875, 0.25, 0.375, 0.5)]
    # below uniform 2 bits (a quarter of 8/8's weight bits) no configuration fits
    assert [entry["choice"] is None for entry in result["budgets"][:2]] == [True, True]
    evaluated = pd.read_csv(repo / "compare/mixed_precision/configurations.csv")
    for entry in result["budgets"]:
        choice = entry["choice"]
        if choice is None:
            continue
        assert choice[entry["kind"]] <= entry["budget"] + 1e-9
        assert choice["runner_identical_logits"] == 1.0 and choice["onnxruntime_identical_logits"] == 1.0
        assert set(choice["vs_float"]) >= {"delta", "ci_low", "ci_high", "p"}
        labels = {layer: f"{w}/{a}" for layer, (w, a) in choice["layer_bits"].items()}
        row = evaluated[(evaluated[list(labels)] == pd.Series(labels)).all(axis=1)]
        assert row["validation_accuracy"].tolist() == [choice["validation_accuracy"]]
        assert row["test_accuracy"].tolist() == [choice["test_accuracy"]]
    assert result["uniform"]["W8A8"]["size"] == 1.0 and result["uniform"]["W2A4"]["bops"] == 0.125
    sensitivity = pd.read_csv(repo / "compare/mixed_precision/sensitivity.csv")
    assert len(sensitivity) == 2 * 5 * 8 and set(sensitivity["measure"]) == {"output", "sqnr"}
    widest = sensitivity[(sensitivity["weight_bits"] == 8) & (sensitivity["input_bits"] == 8)]
    assert (widest["sensitivity"] == 0).all()


def test_a_layer_at_its_own_bits_through_dvc_exp_run(repo):
    result = run(repo, "dvc", "exp", "run", "-S", "quant.layer_bits.fc1=[2,8]", "-S", "quant.layer_bits.conv1=[4, 8]")
    assert {"quantize", "export", "evaluate"} <= set(stages_run(result.stdout))
    assert "qat" not in stages_run(result.stdout)  # the fine-tunes run at the uniform widths
    run(repo, "dvc", "exp", "run", "-S", "quant.per_channel=true")
    network = json.loads((repo / "quant/float/network.json").read_text())
    assert network["weight_bits"] == {"conv1": 4, "conv2": 8, "fc1": 2, "fc2": 8, "fc3": 8}
    manifest = json.loads((repo / "export/float/manifest.json").read_text())
    assert [layer["weight_bits"] for layer in manifest["layers"]] == [4, 8, 2, 8, 8]
    assert json.loads((repo / "metrics/engine.json").read_text())["onnxruntime"]["identical_logits"] == 1.0
    assert yaml.safe_load((repo / "params.yaml").read_text())["quant"]["layer_bits"]["conv1"] == [4, 8]
    run(repo, "dvc", "exp", "run", "-S", "quant.layer_bits.fc1=null", "-S", "quant.layer_bits.conv1=null",
        "-S", "quant.per_channel=false")


def test_post_training_techniques_make_the_headline_network(repo):
    result = run(repo, "dvc", "exp", "run", "-S", "calib=minmax", "-S", "ptq.equalize=true",
                 "-S", "ptq.bias_correction=true", "-S", "ptq.rounding=adaround", "-S", "ptq.iterations=10")
    ran = set(stages_run(result.stdout))
    assert {"quantize", "export", "evaluate"} <= ran
    assert not ran & {"train@float", "profile@float", "qat", "compare", "evaluate_float"}
    network = json.loads((repo / "quant/float/network.json").read_text())
    assert network["provenance"]["techniques"] == ["equalize", "adaround", "bias_correction"]
    arrays = np.load(repo / "quant/float/network.npz")
    assert all(f"{layer}.q_bias" in arrays for layer in ("conv1", "conv2", "fc1", "fc2", "fc3"))
    # the engine is the standalone runner, bit for bit; the float rescale rounds once per layer in float
    manifest, arrays = export_format.read(repo / "export/float")
    test_x = np.load(repo / "data/cifar10.npz")["test_x"]
    engine_logits = FixedPointEngine(manifest, arrays)(torch.from_numpy(test_x)).numpy()
    np.testing.assert_array_equal(runner.run(manifest, arrays, test_x), engine_logits)
    engine = json.loads((repo / "metrics/engine.json").read_text())
    assert engine["identical_predictions"] >= 0.99 and engine["max_logit_diff_lsb"] <= 2
    # the mixed-precision networks get the techniques too, each layer at its bits, and still deploy bit-exact
    assert "mixed_precision" in ran
    mixed = json.loads((repo / "metrics/mixed_precision.json").read_text())
    assert mixed["techniques"] == ["equalize", "adaround", "bias_correction"]
    assert all(entry["choice"]["onnxruntime_identical_logits"] == entry["choice"]["runner_identical_logits"] == 1.0
               for entry in mixed["budgets"] if entry["choice"] is not None)
    assert "up to date" in run(repo, "dvc", "status").stdout


def test_valid_numbers_in_the_form_dvc_writes_them(repo):
    result = run(repo, "dvc", "exp", "run", "-S", "quant.percentile=1e-9")
    assert "percentile: 1e-09" in (repo / "params.yaml").read_text()  # YAML 1.2, as DVC writes it
    assert {"check_params", "quantize"} <= set(stages_run(result.stdout))
    assert "up to date" in run(repo, "dvc", "status").stdout


def test_a_misspelled_top_level_param_fails_repro(repo):
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params + "calibration: kl\n")
    result = run(repo, "dvc", "repro", check=False)
    assert result.returncode != 0
    assert "error: params.yaml: unknown key calibration; valid keys in the top level: seed, calib" in result.stderr
    (repo / "params.yaml").write_text(params)  # fixed: nothing to rerun
    assert stages_run(run(repo, "dvc", "repro").stdout) == [] and "up to date" in run(repo, "dvc", "status").stdout


def test_a_failed_pdf_build_keeps_the_last_pdf_recoverable(repo):
    template = repo / "reports/sections/summary.j2"
    original, pdf = template.read_text(), (repo / "reports/build/report.pdf").read_bytes()
    template.write_text(original.replace('<< f.section("Results") >>', '<< f.section("Results") >>\n\\undefinedmacro'))
    result = run(repo, "dvc", "repro", check=False)
    assert result.returncode != 0
    assert "error: lualatex failed on reports/build/report.tex: Undefined control sequence." in result.stderr
    run(repo, "dvc", "checkout", "reports/build/report.pdf")  # the last PDF built, from DVC's cache
    assert (repo / "reports/build/report.pdf").read_bytes() == pdf
    template.write_text(original)
    run(repo, "dvc", "repro")
    assert (repo / "reports/build/report.pdf").read_bytes() == pdf and "up to date" in run(repo, "dvc", "status").stdout


def make(repo, *arguments: str, check: bool = True):
    """`make` in a sandbox, with this interpreter's environment standing in for the project's .venv."""
    return run(repo, "make", "--no-print-directory", "-o", ".venv/.installed", *arguments, check=check)


def test_a_fresh_clone_restores_the_run_from_the_remote_alone(repo, tmp_path):
    """make push on one clone, then on a fresh clone elsewhere make pull: the run is not committed (no dvc.lock,
    no output in git), yet every stage with outputs comes back from the remote's run-cache, with the same bytes;
    only check_params, which has none, runs."""
    remote = tmp_path / "remote"
    run(repo, "git", "rm", "-q", "--cached", "--ignore-unmatch", "dvc.lock")  # not the run: no dvc.lock
    run(repo, "git", "commit", "-qam", "the params of the last experiment", "--allow-empty")
    make(repo, "push", f"REMOTE={remote}")
    clone = tmp_path / "elsewhere" / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    start = time.perf_counter()
    pulled = make(clone, "pull", f"REMOTE={remote}")
    assert time.perf_counter() - start <= 30
    ran = [line.split("'")[1] for line in pulled.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["check_params"] and len(stages_run(pulled.stdout)) == len(run(clone, "dvc", "stage", "list",
                                                                                   "--name-only").stdout.split())
    assert output_digests(clone) == output_digests(repo)
    assert "up to date" in run(clone, "dvc", "status").stdout
    missing = make(clone, "pull", f"REMOTE={tmp_path / 'nowhere'}", check=False)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert f"error: the DVC remote {tmp_path / 'nowhere'} does not exist" in missing.stderr.splitlines()[0]
    # an edited output: make stops before DVC replaces it, and says how to keep it
    model = clone / "models/float.npz"
    state = dict(np.load(model))
    state["fc3.weight"][0, 0] += 1
    np.savez(model, **state)
    edited = model.read_bytes()
    for target in (["pipeline"], ["pull", f"REMOTE={remote}"]):
        refused = make(clone, *target, check=False)
        assert refused.returncode != 0 and "Running stage" not in refused.stdout and model.read_bytes() == edited
        assert "error: models/float.npz differs from the run DVC recorded: DVC would replace it. Keep it as the " \
               "stage's output with `dvc commit models/float.npz`" in refused.stderr
    # a remote without this run: make pull says so, and builds nothing
    empty, other = tmp_path / "empty-remote", tmp_path / "other" / "clone"
    empty.mkdir()
    run(tmp_path, "git", "clone", "-q", str(repo), str(other))
    refused = make(other, "pull", f"REMOTE={empty}", check=False)
    assert refused.returncode != 0 and "Running stage" not in refused.stdout
    assert f"error: {empty} holds no run of this code and these params" in refused.stderr
    assert not (other / "data" / "cifar10.npz").exists()


def test_an_unpinned_run_says_its_numbers_are_this_machines_only(repo):
    assert "bit for bit, on any" in (repo / "reports/build/report.md").read_text()
    params = (repo / "params.yaml").read_text()
    try:
        set_params(repo, compute__reproducible=False)
        run(repo, "python", "-m", "stages.report")  # the report alone: the numbers it states are the same
        text = (repo / "reports/build/report.md").read_text()
        assert "its numbers hold on the machine that ran it only" in text and "bit for bit, on any" not in text
    finally:
        (repo / "params.yaml").write_text(params)
        run(repo, "dvc", "checkout", "--force", "-q")
    assert "up to date" in run(repo, "dvc", "status").stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU refuses compute.device: cuda")
def test_the_device_is_a_choice_not_whatever_is_available(repo):
    params = (repo / "params.yaml").read_text()
    try:
        set_params(repo, compute__device="cuda")
        result = run(repo, "python", "-m", "stages.train", "float", check=False)
    finally:
        (repo / "params.yaml").write_text(params)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: compute.device is cuda, but torch finds no CUDA device here: set "
                                     "compute.device: cpu")
    assert "up to date" in run(repo, "dvc", "status").stdout
