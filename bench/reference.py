"""The reference runs: the SHA-256 of every result file of a finished run, per dataset, and the README's results
generated from them.

    python -m bench.reference verify    (make verify) this workspace's result files against the reference of
                                        its dataset (params.yaml's data.md5): same or different, file by file
    python -m bench.reference record    after `make pipeline` at the default params: this workspace becomes the
                                        reference of its dataset (bench/reference/<md5>.json) and the README's
                                        generated blocks are rewritten from it
    python -m bench.reference readme    the README's generated blocks, rewritten from the committed references

A reference holds the fingerprints and the metrics the README shows, so the README's tables are the reference
run's, and tests/test_reference.py checks that they still are. ONNX Runtime's own quantizer (stage
ort_quantize) is the one part that may differ on another CPU: MLAS picks its kernels by the CPU at run time
with no switch to cap them, and its int8 products saturate without VNNI. Its files, and the files that quote
it (the differences and the report), are named as such when they differ.
"""

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from quantlab.config import load_params
from quantlab.errors import UserError, run_main
from quantlab.io import load_json, save_json, save_text
from quantlab.report import tables
from quantlab.report.render import markdown_table

REFERENCES = Path(__file__).parent / "reference"
README_DATA = "5fb6e4e932840b32ddf703fa39bf4bb3"  # the dataset whose reference run the README shows: ../shared/data's
README = Path("README.md")
RESULTS = ("models/float.npz", "models/bias.npz", "quant/float/network.json", "quant/float/network.npz",
           "quant/bias/network.json", "quant/bias/network.npz", "export/float/model.npz", "export/float/model.onnx",
           "export/bias/model.npz", "export/bias/model.onnx", "metrics/accuracy.json", "metrics/calibration.json",
           "metrics/differences.json", "metrics/engine.json", "metrics/onnxruntime.json",
           "metrics/techniques.json", "compare/layers.csv", "compare/techniques.csv", "reports/build/report.md",
           "reports/build/report.tex")
MACHINE_DEPENDENT = ("metrics/onnxruntime.json",)  # ONNX Runtime's kernels, chosen by the CPU
QUOTES_IT = ("metrics/differences.json", "reports/build/report.md", "reports/build/report.tex")
SHOWN = ("accuracy", "differences", "engine", "calibration", "techniques")  # metrics/<name>.json in the README
BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n).*?(<!-- end generated -->)", re.S)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference_path(md5: str) -> Path:
    return REFERENCES / f"{md5}.json"


def fingerprints(root: Path = Path(".")) -> dict[str, str]:
    missing = [name for name in RESULTS if not (root / name).is_file()]
    if missing:
        raise UserError(f"{missing[0]} is missing: run the pipeline first (make pipeline), then this again")
    return {name: sha256(root / name) for name in RESULTS}


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
    differ = {name for name in RESULTS if found[name] != reference[name]}
    for name in RESULTS:
        note = ""
        if name in differ and name in MACHINE_DEPENDENT:
            note = " (ONNX Runtime's quantizer: its kernels are chosen by this CPU, see the README)"
        elif name in differ and name in QUOTES_IT and differ & set(MACHINE_DEPENDENT):
            note = " (it quotes ONNX Runtime's quantizer, which differs here)"
        print(f"{'different' if name in differ else 'same':9}  {name}{note}")
    print(f"{len(RESULTS) - len(differ)} of {len(RESULTS)} files the same as the reference run "
          f"(bench/reference/{md5}.json)")
    return not differ


def blocks(reference: dict) -> dict[str, str]:
    """The README's generated blocks, by name, from a reference."""
    metrics = reference["metrics"]
    accuracy, differences, engine = metrics["accuracy"], metrics["differences"], metrics["engine"]
    onnxruntime = engine["onnxruntime"]
    return {
        "accuracy": markdown_table(tables.variants(accuracy, differences)),
        "engine": (f"The engine's logits equal the float-rescale forward's on {100 * engine['identical_logits']:.2f} % "
                   f"of the test values (at most {engine['max_logit_diff_lsb']} LSB apart) and its predictions on "
                   f"{100 * engine['identical_predictions']:.2f} % of the images; in ONNX Runtime's rounding, ONNX "
                   f"Runtime {onnxruntime['version']} gives the engine's logits on "
                   f"{100 * onnxruntime['identical_logits']:.2f} % of the values (at most "
                   f"{onnxruntime['max_logit_diff_lsb']} LSB apart) on `export/float/model.onnx`."),
        "calibration": markdown_table(tables.calibration(metrics["calibration"])),
        "choices": markdown_table(tables.choices(differences)),
        "onnxruntime": markdown_table(tables.onnxruntime(differences)),
        "techniques": markdown_table(tables.techniques(metrics["techniques"], differences)),
        "fingerprints": "\n\n".join(f"Dataset md5 `{path.stem}`:\n\n" + markdown_table(fingerprint_table(
            load_json(path)["fingerprints"])) for path in sorted(REFERENCES.glob("*.json"))),
    }


def fingerprint_table(found: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame([{"file": f"`{name}`", "SHA-256": f"`{digest}`"} for name, digest in found.items()])


def rewrite_readme(reference: dict, readme: Path = README) -> None:
    generated = blocks(reference)
    text = readme.read_text(encoding="utf-8")
    unknown = [name for _, name, _ in BLOCK.findall(text) if name not in generated]
    if unknown:
        raise UserError(f"{readme}: unknown generated block {unknown[0]!r}; known: {', '.join(generated)}")
    save_text(readme, BLOCK.sub(lambda m: f"{m.group(1)}{generated[m.group(2)]}\n{m.group(3)}", text))


def record(md5: str) -> None:
    """This workspace as the reference run of its dataset; the README rewritten from it."""
    status = subprocess.run(["dvc", "status", "--quiet"], capture_output=True, text=True)
    if status.returncode != 0:
        raise UserError("the workspace is not what dvc.lock records (`dvc status` lists changes): run "
                        "`dvc repro` first, then record")
    reference = {"data_md5": md5, "fingerprints": fingerprints(),
                 "metrics": {name: load_json(Path("metrics") / f"{name}.json") for name in SHOWN}}
    save_json(reference_path(md5), reference)
    if md5 == README_DATA:
        rewrite_readme(reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("verify", "record", "readme"))
    args = parser.parse_args()
    md5 = load_params().data.md5
    if args.command == "verify":
        sys.exit(0 if verify(md5) else 1)
    if args.command == "record":
        record(md5)
    else:
        rewrite_readme(load_json(reference_path(README_DATA)))


if __name__ == "__main__":
    run_main(main)
