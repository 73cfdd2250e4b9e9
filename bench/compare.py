"""Experiments compared on their predictions, with paired intervals.

    python -m bench.compare EXPERIMENT EXPERIMENT [EXPERIMENT ...] [--images validation]
                                                                     (make compare EXPS="kl mse")

`dvc exp show` compares each experiment's numbers; this compares what they predicted. An experiment is named as
`dvc exp show` names it: its name (`dvc exp run -n kl …`), a prefix of its commit, or `workspace`. Its
per-image predictions on the test images come from DVC's cache by the hashes that `dvc exp show --json` lists
(no stage reruns). Then:

- each experiment's accuracies (metrics/accuracy.json) and the params in which the experiments differ;
- for every pair (A, B) and every quantized variant, B's accuracy minus A's on the same test images, its 95 %
  interval and McNemar's p (quantlab.statistics.paired), and "B better", "A better" or "no difference shown"
  as the interval says.

On the test images it reports; to choose between experiments, compare them with `--images validation`, the
training images every experiment held out (choose on validation, report on test).

Paired differences need the same test images and, to mean "this change to the quantization", the same float
models: the command refuses experiments whose data or trained models differ, in one line. Writes
compare/experiments.md (the tables, also printed) and compare/experiments.png and .pdf (every difference with its
interval); they are this command's, not the pipeline's outputs.
"""

import argparse
import itertools
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench.experiments import dvc, revisions  # noqa: E402
from quantlab import paths  # noqa: E402
from quantlab.data import split  # noqa: E402
from quantlab.differences import HEADLINE  # noqa: E402
from quantlab.errors import UserError  # noqa: E402
from quantlab.io import load_npz, load_npz_tree, save_text  # noqa: E402
from quantlab.report import figures  # noqa: E402
from quantlab.stage import run_main
from quantlab.statistics import paired, signed  # noqa: E402
from quantlab.variants import BY_NAME  # noqa: E402

OUT = Path("compare")
WORKSPACE = "workspace"
# What must be the same for a paired comparison: the test images, and the trained float models.
SHARED = {paths.DATASET.as_posix(): "data", paths.model("float").as_posix(): "float models",
          paths.model("bias").as_posix(): "bias models"}
VARIANTS = tuple(dict.fromkeys([*(BY_NAME[v].reference for v in HEADLINE), *HEADLINE]))  # float models first
PREDICTIONS = (paths.predictions("float").as_posix(), paths.predictions("quantized").as_posix())


def experiments_shown() -> dict[str, dict]:
    """Every revision of `dvc exp show --json` by each name it answers to (name, full commit, workspace)."""
    found = {}
    for revision in revisions():
        if revision.get("data"):
            for key in filter(None, (revision.get("name"), revision["rev"])):
                found.setdefault(key, revision)
    return found


def resolve(names: list[str], shown: dict[str, dict]) -> dict[str, dict]:
    """The revision of each name: an exact name, or the one commit it is a prefix of (at least 4 digits)."""
    resolved = {}
    for name in names:
        matches = [shown[name]] if name in shown else \
            list({id(rev): rev for key, rev in shown.items() if len(name) >= 4 and key.startswith(name)}.values())
        if len(matches) != 1:
            what = "no experiment" if not matches else f"{len(matches)} experiments"
            raise UserError(f"{what} named {name!r} in `dvc exp show`: name experiments as it lists them "
                            f"(`dvc exp run -n NAME …`, a commit prefix, or {WORKSPACE})")
        resolved[name] = matches[0]
    if len({revision["rev"] for revision in resolved.values()}) < 2:
        raise UserError("name at least two different experiments to compare")
    return resolved


def output_hash(revision: dict, path: str) -> str:
    entry = (revision["data"].get("outs") or {}).get(path) or {}
    if not entry.get("hash"):
        raise UserError(f"experiment {revision.get('name') or revision['rev']} has no {path} in `dvc exp show`: "
                        f"run the pipeline in it first")
    return entry["hash"]


def check_paired(revisions: dict[str, dict]) -> None:
    """Refuse, in one line, experiments that do not share the test images and the trained models."""
    first, *others = revisions
    for path, what in SHARED.items():
        for other in others:
            if output_hash(revisions[first], path) != output_hash(revisions[other], path):
                raise UserError(f"{first} and {other} have different {what} ({path}): paired differences need "
                                f"the same test images and float models; compare experiments that change only "
                                f"what follows training (calib, quant, ptq, export)")


def cached(cache: Path, revision: dict, path: str) -> Path:
    md5 = output_hash(revision, path)
    found = cache / "files" / "md5" / md5[:2] / md5[2:]
    if not found.is_file():
        raise UserError(f"{path} of {revision.get('name') or revision['rev']} is not in DVC's cache ({found}): "
                        f"`dvc exp pull` or `dvc pull` it, or rerun that experiment")
    return found


def params_of(revision: dict) -> dict:
    """An experiment's params.yaml as dotted keys."""
    def flat(tree: dict, prefix: str = "") -> dict:
        items = {}
        for key, value in tree.items():
            items |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
        return items

    return flat(((revision["data"].get("params") or {}).get("params.yaml") or {}).get("data") or {})


def changed_params(revisions: dict[str, dict]) -> dict[str, list]:
    """The params (dotted keys) whose values differ between the experiments, with each experiment's value."""
    values = [params_of(revision) for revision in revisions.values()]
    keys = dict.fromkeys(key for params in values for key in params)
    return {key: [params.get(key) for params in values] for key in keys
            if len({json.dumps(params.get(key)) for params in values}) > 1}


def labels_of(revisions: dict[str, dict], cache: Path, images: str) -> np.ndarray:
    """The labels of the test images, or of the validation images every experiment held out."""
    first = next(iter(revisions.values()))
    dataset = load_npz(cached(cache, first, paths.DATASET.as_posix()), ["train_y", "test_y"])
    if images == "test":
        return dataset["test_y"]
    differ = [key for key in ("data.validation", "seed") if key in changed_params(revisions)]
    if differ:
        raise UserError(f"the experiments hold out different validation images ({differ[0]} differs): compare "
                        f"them on the test images")
    params = params_of(first)
    _, held = split(dataset["train_y"], params["data.validation"], params["seed"])
    if not len(held):
        raise UserError("the experiments hold out no validation images (data.validation is 0): compare them on "
                        "the test images")
    return dataset["train_y"][held]


def compare(revisions: dict[str, dict], cache: Path, images: str = "test") -> dict:
    """Each experiment's accuracies on `images` ("test" or "validation"), and for every pair every quantized
    variant's paired difference."""
    labels = labels_of(revisions, cache, images)
    right = {}
    for name, revision in revisions.items():
        predictions = {variant: classes for path in PREDICTIONS
                       for variant, classes in load_npz_tree(cached(cache, revision, path)).items()}
        right[name] = {variant: predictions[variant][images] == labels for variant in VARIANTS}
    accuracies = {name: {variant: round(100.0 * float(np.mean(correct)), 2) for variant, correct in by_name.items()}
                  for name, by_name in right.items()}
    pairs = [{"a": a, "b": b, "variant": variant, **paired(right[b][variant], right[a][variant])}
             for a, b in itertools.combinations(revisions, 2) for variant in HEADLINE]
    return {"accuracies": accuracies, "params": changed_params(revisions), "pairs": pairs, "images": images,
            "count": len(labels)}


def verdict(pair: dict) -> str:
    if pair["ci_low"] > 0:
        return f"{pair['b']} better"
    if pair["ci_high"] < 0:
        return f"{pair['a']} better"
    return "no difference shown"


def markdown(result: dict) -> str:
    names = list(result["accuracies"])
    variants = list(next(iter(result["accuracies"].values())))
    lines = [f"Accuracy (%) on the same {result['count']:,} {result['images']} images:", "",
             "| experiment | " + " | ".join([*result["params"], *variants]) + " |",
             "|---" * (1 + len(result["params"]) + len(variants)) + "|"]
    for index, name in enumerate(names):
        params = [value if isinstance(value := values[index], str) else json.dumps(value)
                  for values in result["params"].values()]
        lines.append(f"| {name} | " + " | ".join([*params, *(f"{result['accuracies'][name][v]:.2f}" for v in variants)])
                     + " |")
    lines += ["", f"Paired differences B − A on the same {result['images']} images (points), with the 95 % bootstrap "
              "interval and McNemar's exact p:", "",
              "| A | B | variant | A | B | B − A | 95 % interval | p | |", "|---|---|---|---|---|---|---|---|---|"]
    for pair in result["pairs"]:
        a, b = (result["accuracies"][pair[side]][pair["variant"]] for side in ("a", "b"))
        lines.append(f"| {pair['a']} | {pair['b']} | {pair['variant']} | {a:.2f} | {b:.2f} | {signed(pair['delta'])} | "
                     f"[{signed(pair['ci_low'])}, {signed(pair['ci_high'])}] | {pair['p']:.3g} | {verdict(pair)} |")
    return "\n".join(lines) + "\n"


def figure(result: dict):
    """Every pair's difference per variant with its 95 % interval, and 0 marked."""
    pairs = result["pairs"]
    with plt.rc_context(figures.STYLE):
        figure, ax = plt.subplots(figsize=(figures.PAGE, 0.22 * len(pairs) + 0.8), layout="constrained")
        for row, pair in enumerate(pairs):
            ax.errorbar(pair["delta"], row, xerr=[[pair["delta"] - pair["ci_low"]], [pair["ci_high"] - pair["delta"]]],
                        fmt="o", ms=3.5, capsize=3, color="C3" if verdict(pair) != "no difference shown" else "0.35")
        ax.set_yticks(range(len(pairs)), [f"{p['variant']}: {p['b']} − {p['a']}" for p in pairs])
        ax.invert_yaxis()
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_xlabel(f"difference in {result['images']} accuracy (points), with its 95 % interval")
        ax.set_title(f"paired on the same {result['count']:,} {result['images']} images; red: the interval excludes 0")
        return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+", metavar="EXPERIMENT",
                        help="experiment names or commit prefixes as `dvc exp show` lists them, or workspace")
    parser.add_argument("--images", choices=("test", "validation"), default="test",
                        help="the images compared: test (to report, the default) or validation (to choose)")
    args = parser.parse_args()
    start = time.perf_counter()
    shown = experiments_shown()
    revisions = resolve(list(dict.fromkeys(args.experiments)), shown)
    check_paired(revisions)
    result = compare(revisions, Path(dvc("cache", "dir").strip()), args.images)
    text = markdown(result)
    save_text(OUT / "experiments.md", text)
    figures.save(figure(result), OUT, "experiments")
    print(text + f"\n{OUT / 'experiments.md'} and experiments.png written in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    run_main(main)
