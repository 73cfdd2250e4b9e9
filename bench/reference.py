"""The reference runs: the SHA-256 of every result file of a finished run, per dataset, and the README's results
generated from them.

    python -m bench.reference verify    (make verify) this workspace's result files against the reference of
                                        its dataset (params.yaml's data.md5): same or different, file by file
    python -m bench.reference record    after `make pipeline` at the default params: this workspace becomes the
                                        reference of its dataset (bench/reference/<md5>.json) and the generated
                                        blocks of the README and docs/*.md are rewritten from it
    python -m bench.reference record --experiment NAME
                                        after `dvc exp run -S …` on the README's dataset: the experiment's
                                        changed params and metrics (bench/reference/experiments/NAME.json), for
                                        the README's tables of it
    python -m bench.reference compare EXPERIMENT EXPERIMENT …
                                        after `dvc exp run -n NAME -S …` on the README's dataset: what
                                        `dvc exp show --only-changed --md …` and `bench.compare` show of those
                                        experiments, and `dvc plots diff` of the layer plots (in headless
                                        Chromium), in bench/reference/comparison/, for the README
    python -m bench.reference readme    the generated blocks of the README and of every docs/*.md page,
                                        rewritten from the committed references and experiments

A reference holds the fingerprints and the metrics the README shows, so the README's tables (and those of its
pages under docs/) are the reference run's, and tests/test_reference.py checks that they still are. A block,
`<!-- generated: NAME -->` … `<!-- end generated -->`, may stand in README.md or in any docs/*.md page.
ONNX Runtime's own quantizer (stage ort_quantize) is the one part that may differ on another CPU: MLAS picks
its kernels by the CPU at run time with no switch to cap them, and its int8 products saturate without VNNI.
Its files, and the files that quote it (the differences and the report), are named as such when they differ.
"""

import argparse
import hashlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from bench.offline_plots import screenshot
from quantlab.config import parse_yaml
from quantlab.errors import UserError
from quantlab.io import load_json, save_bytes, save_json, save_text
from quantlab.report import tables
from quantlab.report.provenance import code_version
from quantlab.report.render import markdown_table
from quantlab.stage import load_params, run_main

REFERENCES = Path(__file__).parent / "reference"
EXPERIMENTS = REFERENCES / "experiments"  # experiments on the README's dataset, for the README's other tables
# experiments.json (what the two commands print), experiments.png (bench.compare's figure) and plots.png (what
# `dvc plots diff` shows of the layer plots)
COMPARISON = REFERENCES / "comparison"
LAYER_PLOTS = "plots/layers/"  # the plots of dvc.yaml drawn from files here: the README's `dvc plots diff`
PLOTS_WINDOW = "1100x740"
# The README's `dvc exp show`: what changed and its results, without the changed files' hashes
EXP_SHOW = ("dvc", "exp", "show", "--only-changed", "--md", "--drop", "Created|.*/|qat$|quant$")
QAT_EXPERIMENTS = "qat-"  # the experiments of the README's table of QAT fine-tunes at 4/4
README_DATA = "5fb6e4e932840b32ddf703fa39bf4bb3"  # the dataset whose reference run the README shows: ../shared/data's
ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"  # the README's pages: their generated blocks are rewritten as the README's are
RESULTS = ("models/float.npz", "models/bias.npz", "quant/float/network.json", "quant/float/network.npz",
           "quant/bias/network.json", "quant/bias/network.npz", "export/float/model.npz", "export/float/model.onnx",
           "export/bias/model.npz", "export/bias/model.onnx", "metrics/accuracy.json", "metrics/calibration.json",
           "metrics/differences.json", "metrics/headline.json", "metrics/engine.json", "metrics/onnxruntime.json",
           "metrics/techniques.json", "metrics/mixed_precision.json", "compare/layers.csv", "compare/techniques.csv",
           "compare/mixed_precision/sensitivity.csv", "compare/mixed_precision/configurations.csv",
           "reports/build/report.md", "reports/build/report.tex")
REPORT = "reports/build/report.md"
MACHINE_DEPENDENT = ("metrics/onnxruntime.json",)  # ONNX Runtime's kernels, chosen by the CPU
QUOTES_IT = ("metrics/differences.json", "reports/build/report.md", "reports/build/report.tex")
SHOWN = ("accuracy", "differences", "engine", "calibration", "techniques", "mixed_precision")  # metrics/<name>.json
BLOCK = re.compile(r"(<!-- generated: ([\w:-]+) -->\n).*?(<!-- end generated -->)", re.S)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference_path(md5: str) -> Path:
    return REFERENCES / f"{md5}.json"


def fingerprints(root: Path = Path(".")) -> dict[str, str]:
    missing = [name for name in RESULTS if not (root / name).is_file()]
    if missing:
        raise UserError(f"{missing[0]} is missing: run the pipeline first (make pipeline), then this again")
    return {name: sha256(root / name) for name in RESULTS}


def stale_report(root: Path = Path(".")) -> str | None:
    """Why the workspace's report is not what its code renders, or None. The report states the version of the
    code (quantlab.report.provenance), but DVC reruns it only where its own dependencies change."""
    stated = re.search(r"code version ([0-9a-f]{12})", (root / REPORT).read_text(encoding="utf-8"))
    current = code_version(root)
    if stated is None or stated.group(1) != current:
        return (f"{REPORT} states code version {stated.group(1) if stated else 'none'}, the code is {current}: "
                f"`dvc repro -f -s report` and `dvc repro` render it anew")
    return None


def verify(md5: str, root: Path = Path(".")) -> bool:
    """Print same or different for every result file against the reference of dataset `md5`; True if all
    are the same."""
    if not reference_path(md5).exists():
        known = ", ".join(sorted(p.stem for p in REFERENCES.glob("*.json"))) or "none"
        print(f"no reference yet for the dataset with md5 {md5} (references exist for: {known}); after a run at "
              f"the default params, `python -m bench.reference record` makes one")
        return False
    reference = load_json(reference_path(md5))["fingerprints"]
    found = fingerprints(root)
    differ = {name for name in RESULTS if found[name] != reference.get(name)}
    stale = stale_report(root) if any(name.startswith("reports/") for name in differ) else None
    for name in RESULTS:
        note = ""
        if name not in reference:
            note = " (the reference has no fingerprint of it: it was recorded by older code)"
        elif name in differ and name in MACHINE_DEPENDENT:
            note = " (ONNX Runtime's quantizer: its kernels are chosen by this CPU, see docs/reproducibility.md)"
        elif name in differ and name.startswith("reports/") and stale:
            note = f" ({stale})"
        elif name in differ and name in QUOTES_IT and differ & set(MACHINE_DEPENDENT):
            note = " (it quotes ONNX Runtime's quantizer, which differs here)"
        print(f"{'different' if name in differ else 'same':9}  {name}{note}")
    print(f"{len(RESULTS) - len(differ)} of {len(RESULTS)} files the same as the reference run "
          f"(bench/reference/{md5}.json)")
    return not differ


def run_blocks(prefix: str, metrics: dict) -> dict[str, str]:
    """The tables of one run (the reference, or a recorded experiment), as the report builds them."""
    differences = metrics["differences"]
    return mixed_precision_blocks(prefix, metrics.get("mixed_precision")) | {
            f"{prefix}accuracy": markdown_table(tables.variants(metrics["accuracy"], differences)),
            f"{prefix}calibration": markdown_table(tables.calibration(metrics["calibration"])),
            f"{prefix}choices": markdown_table(tables.choices(differences)),
            f"{prefix}techniques": markdown_table(tables.techniques(metrics["techniques"], differences)),
            f"{prefix}techniques_chosen": markdown_table(tables.techniques_chosen(differences)),
            f"{prefix}technique_pairs": markdown_table(tables.technique_pairs(differences)),
            f"{prefix}qat": markdown_table(tables.qat(metrics["calibration"], differences)),
            f"{prefix}engine": engine_text(metrics["engine"])}


def mixed_precision_blocks(prefix: str, results: dict | None) -> dict[str, str]:
    """The mixed-precision stage's choices and uniform widths; with its exhaustive run, Kendall's tau of each
    measure and the allocator's regret (none for a run recorded before the stage existed)."""
    if results is None:
        return {}
    blocks = {f"{prefix}mixed_precision": f"{markdown_table(tables.mixed_precision_chosen(results))}\n\n"
                                          f"{markdown_table(tables.mixed_precision_uniform(results))}"}
    exhaustive = results["exhaustive"]
    if exhaustive:
        taus = ", ".join(f"{measure} {tau:+.3f}" for measure, tau in exhaustive["kendall_tau"].items())
        blocks[f"{prefix}mixed_precision_exhaustive"] = (
            f"{exhaustive['configurations']:,} configurations, inputs at {exhaustive['input_bits']} bits. Kendall's "
            f"τ of each measure's prediction against the test accuracies: {taus}.\n\n"
            f"{markdown_table(tables.regret(exhaustive))}")
    return blocks


def engine_text(engine: dict) -> str:
    onnxruntime = engine["onnxruntime"]
    return (f"The engine's logits equal the float-rescale forward's on {100 * engine['identical_logits']:.2f} % of "
            f"the test values (at most {engine['max_logit_diff_lsb']} LSB apart) and its predictions on "
            f"{100 * engine['identical_predictions']:.2f} % of the images; in ONNX Runtime's rounding, ONNX Runtime "
            f"{onnxruntime['version']} gives the engine's logits on {100 * onnxruntime['identical_logits']:.2f} % "
            f"of the values (at most {onnxruntime['max_logit_diff_lsb']} LSB apart) on `export/float/model.onnx`.")


def command(changes: dict) -> str:
    """The `dvc exp run` that makes an experiment of the reference run."""
    def text(value) -> str:
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))

    settings = (f"-S '{key}={text(value)}'" if isinstance(value, list) else f"-S {key}={text(value)}"
                for key, value in changes.items())
    return "`dvc exp run " + " ".join(settings) + "`"


def qat_cells(experiments: dict[str, dict], width: str, defaults: dict) -> pd.DataFrame:
    """QAT's cell at `width` in each experiment: its ranges, epochs and distillation, validation and test accuracy,
    and its difference to float (the choice among them is the validation column's)."""
    rows = []
    for experiment in experiments.values():
        cell = experiment["metrics"]["differences"]["calibration"][width]["qat"]
        changes = experiment["changes"]
        rows.append({"qat.ranges": changes.get("qat.ranges", defaults["ranges"]),
                     "epochs": str(changes.get("qat.epochs", defaults["epochs"])),
                     "qat.distill": f"{changes.get('qat.distill', defaults['distill']):g}",
                     "validation (%)": f"{cell['validation_accuracy']:.2f}",
                     "test (%)": f"{cell['test_accuracy']:.2f}", "− float [95 % CI]": tables.difference(cell)})
    return pd.DataFrame(rows)


def blocks(reference: dict, experiments: dict[str, dict]) -> dict[str, str]:
    """The README's generated blocks, by name: the reference run's tables, each recorded experiment's
    (`<experiment>:<table>`, and `<experiment>:command`), and the fingerprints of every reference."""
    generated = {**run_blocks("", reference["metrics"]),
                 "onnxruntime": markdown_table(tables.onnxruntime(reference["metrics"]["differences"])),
                 "qat_at_4_4": markdown_table(qat_cells({name: experiment for name, experiment in experiments.items()
                                                         if name.startswith(QAT_EXPERIMENTS)}, "W4A4",
                                                        yaml.safe_load((ROOT / "params.yaml").read_text())["qat"])),
                 "fingerprints": "\n\n".join(f"Dataset md5 `{path.stem}`:\n\n" + markdown_table(fingerprint_table(
                     load_json(path)["fingerprints"])) for path in sorted(REFERENCES.glob("*.json")))}
    for name, experiment in experiments.items():
        generated |= run_blocks(f"{name}:", experiment["metrics"]) | {f"{name}:command": command(experiment["changes"])}
    if (COMPARISON / "experiments.json").exists():
        comparison = load_json(COMPARISON / "experiments.json")
        compare = f'make compare EXPS="{" ".join(comparison["experiments"])}"'
        generated |= {"exp-show": comparison["exp_show"].strip(), "compare": comparison["compare"].strip(),
                      "compare:command": f"```sh\n{shlex.join(EXP_SHOW)}\n{compare}\n```",
                      "plots:command": f"```sh\n{shlex.join(['dvc', 'plots', 'diff', *comparison['experiments']])}"
                                       f"\n```"}
    return generated


def fingerprint_table(found: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame([{"file": name, "SHA-256": digest} for name, digest in found.items()])


def recorded_experiments() -> dict[str, dict]:
    return {path.stem: load_json(path) for path in sorted(EXPERIMENTS.glob("*.json"))}


def documents() -> list[Path]:
    """The files whose generated blocks `readme` rewrites: README.md and every docs/*.md page."""
    return [README, *sorted(DOCS.glob("*.md"))]


def rewrite_readme(paths: list[Path] | None = None) -> None:
    """The generated blocks of the README and its docs/ pages (or of `paths`), from the README's dataset's reference
    run and the recorded experiments. A block may stand in any of the files; a name that is no generated block is
    refused, naming its file, before any file is written."""
    generated = blocks(load_json(reference_path(README_DATA)), recorded_experiments())
    texts = {path: path.read_text(encoding="utf-8") for path in (documents() if paths is None else paths)}
    for path, text in texts.items():
        unknown = [name for _, name, _ in BLOCK.findall(text) if name not in generated]
        if unknown:
            raise UserError(f"{path}: unknown generated block {unknown[0]!r}; known: {', '.join(generated)}")
    for path, text in texts.items():
        rewritten = BLOCK.sub(lambda m: f"{m.group(1)}{generated[m.group(2)]}\n{m.group(3)}", text)
        if rewritten != text:
            save_text(path, rewritten)


def shown_metrics() -> dict:
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--quiet"], capture_output=True, text=True)
    if status.returncode != 0:
        raise UserError("the workspace is not what dvc.lock records (`dvc status` lists changes): run "
                        "`dvc repro` first, then record")
    return {name: load_json(Path("metrics") / f"{name}.json") for name in SHOWN}


def changed_params(params: dict, committed: dict, prefix: str = "") -> dict:
    """The params that differ from the committed params.yaml, as `dvc exp run -S` takes them (not data.*, which
    names the dataset)."""
    changes = {}
    for key, value in params.items():
        if isinstance(value, dict):
            changes |= changed_params(value, committed.get(key, {}), f"{prefix}{key}.")
        elif value != committed.get(key) and not f"{prefix}{key}".startswith("data."):
            changes[f"{prefix}{key}"] = value
    return changes


def workspace_changes() -> dict:
    """The workspace's params that differ from the committed params.yaml, but data.*."""
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], capture_output=True, text=True)
    if committed.returncode != 0:
        raise UserError("no committed params.yaml to compare with: record in the project's git repository")
    return changed_params(parse_yaml(Path("params.yaml").read_text()), parse_yaml(committed.stdout))


def record(md5: str, experiment: str | None) -> None:
    """This workspace as the reference run of its dataset (at the committed params), or as the experiment
    `experiment` on it; the README and its docs/ pages rewritten."""
    metrics, changes = shown_metrics(), workspace_changes()
    if experiment is None:
        if stale_report():
            raise UserError(stale_report())
        if changes:
            raise UserError(f"the reference run is at the committed params, and this workspace changes "
                            f"{', '.join(changes)}: record it with --experiment NAME, or run at the committed params")
        save_json(reference_path(md5), {"data_md5": md5, "fingerprints": fingerprints(), "metrics": metrics})
    elif md5 != README_DATA:
        raise UserError(f"experiments are recorded on the README's dataset (data.md5 {README_DATA}), this "
                        f"workspace runs {md5}")
    else:
        save_json(EXPERIMENTS / f"{experiment}.json", {"changes": changes, "metrics": metrics})
    if md5 == README_DATA:
        rewrite_readme()


def layer_plots() -> list[str]:
    """The plots of dvc.yaml drawn from the files in LAYER_PLOTS, as `dvc plots diff --targets` matches them."""
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    return [plot_id for plot in plots for plot_id, spec in plot.items()
            if all(path.startswith(LAYER_PLOTS) for path in spec["y"])]


def record_comparison(md5: str, names: list[str]) -> None:
    """What `dvc exp show --only-changed --md` and `bench.compare NAMES` show now, and bench.compare's figure,
    for the README's pages."""
    if md5 != README_DATA:
        raise UserError(f"the README's comparison is of experiments on its dataset (data.md5 {README_DATA}), this "
                        f"workspace runs {md5}")
    shown = subprocess.run(EXP_SHOW, capture_output=True, text=True)
    compared = subprocess.run([sys.executable, "-m", "bench.compare", *names], capture_output=True, text=True)
    for result in (shown, compared):
        if result.returncode:
            raise UserError(f"`{' '.join(result.args)}` failed: {result.stderr.strip()}")
    save_bytes(COMPARISON / "experiments.png", Path("compare/experiments.png").read_bytes())
    save_bytes(COMPARISON / "plots.png", screenshot(names, layer_plots(), PLOTS_WINDOW))
    save_json(COMPARISON / "experiments.json", {"experiments": names, "exp_show": shown.stdout,
                                                "compare": Path("compare/experiments.md").read_text()})
    rewrite_readme()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("verify", "record", "compare", "readme"))
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT", help="compare: the experiments")
    parser.add_argument("--experiment", metavar="NAME", help="record: as the named experiment, not the reference")
    args = parser.parse_args()
    md5 = load_params().data.md5
    if args.command == "verify":
        sys.exit(0 if verify(md5) else 1)
    if args.command == "record":
        if args.experiment is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", args.experiment):
            raise UserError(f"--experiment must be lowercase letters, digits and dashes, got {args.experiment!r}")
        record(md5, args.experiment)
    elif args.command == "compare":
        record_comparison(md5, args.experiments)
    else:
        rewrite_readme()


if __name__ == "__main__":
    run_main(main)
