"""Benchmark: the whole pipeline through the real `dvc` commands, each run in a throw-away copy of this working
tree with this workspace's params.yaml (so the same data source). Prints:

    cold `dvc repro`, all stages                                 and each stage's peak memory (goal <= 2 GiB)
    the same work in one process (no DVC, one start-up)          the ratio cold / one-process (goal <= 1.15, issue 17)
      (each --repeat times, alternating which goes first; the ratio compares the best of each, as timeit does:
      this machine's speed drifts by more than the goal's margin within a sitting)
    no-op `dvc repro`                                            goal <= 3 s
    `dvc exp run -S calib=kl` after the full run                 goal <= 20 s
    cold `dvc repro` on 1/4 and 1/2 of the training images       (train.fraction)

Run: python -m bench.pipeline [--quick] [--repeat N]   (about 36 minutes on 2 cores; --quick skips the
scaling runs, about 26 minutes)
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from bench import verdict
from bench.sandbox import ROOT, make_repo, run, set_params
from quantlab.stage import run_main

GIB = 2 ** 30
GOALS = {"ratio": 1.15, "noop": 3.0, "exp": 20.0, "memory": 2 * GIB}
MEASURE = "bench.measure"  # wraps each stage command to record its peak memory


def stage_commands(repo: Path) -> list[tuple[str, str]]:
    """(name, command) of every stage of dvc.yaml, foreach expanded, in file order (which is topological)."""
    commands = []
    for name, stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].items():
        if "foreach" in stage:
            commands += [(f"{name}@{item}", stage["do"]["cmd"].replace("${item}", item)) for item in stage["foreach"]]
        else:
            commands.append((name, stage["cmd"]))
    return commands


def sandbox(directory: Path, **params) -> Path:
    repo = make_repo(directory, extra=["bench"])
    (repo / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    if params:
        set_params(repo, **params)
    run(repo, "git", "commit", "-qam", "benchmark params")
    return repo


def timed(repo: Path, *command: str) -> tuple[float, str]:
    start = time.perf_counter()
    result = run(repo, *command)
    return time.perf_counter() - start, result.stdout


def measured_cold_run(repo: Path) -> tuple[float, dict[str, dict]]:
    """Cold `dvc repro` with every stage command wrapped by bench.measure; its time, and each stage's wall time
    and peak memory."""
    dvc_yaml = repo / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("cmd: python -m ", f"cmd: python -m {MEASURE} "))
    run(repo, "git", "commit", "-qam", "measure the stages")
    seconds, _ = timed(repo, "dvc", "repro")
    stages = {path.name: json.loads(path.read_text()) for path in sorted((repo / ".stage-measures").glob("*"))}
    return seconds, stages


def one_process(repo: Path) -> tuple[float, dict[str, float]]:
    """Every stage's main(), in order, in one Python process: the same work without DVC; its time, and each
    stage's (the first to import a module pays for it)."""
    script = ("import json, runpy, sys, time\n"
              "seconds = {}\n"
              f"for name, command in {stage_commands(repo)!r}:\n"
              "    sys.argv, start = command.split()[2:], time.perf_counter()\n"
              "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
              "    seconds[name] = round(time.perf_counter() - start, 2)\n"
              "print(json.dumps(seconds))\n")
    seconds, out = timed(repo, "python", "-c", script)
    return seconds, json.loads(out.splitlines()[-1])


def paired_runs(tmp: Path, repeat: int, changes: dict) -> dict[str, list[tuple[float, dict]]]:
    """`repeat` cold runs and `repeat` one-process runs, each in its own sandbox, in alternating order (cold
    first, then one-process first, ...) so that a slow spell of the machine does not fall on one side only."""
    measures = {"cold": measured_cold_run, "one-process": one_process}
    runs = {kind: [] for kind in measures}
    for i in range(repeat):
        for kind in list(measures)[::1 if i % 2 == 0 else -1]:
            runs[kind].append(measures[kind](sandbox(tmp / f"{kind}-{i}", **changes)))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the runs on 1/4 and 1/2 of the images")
    parser.add_argument("--repeat", type=int, default=3, metavar="N",
                        help="cold runs and one-process runs each (default 3); the ratio compares the best of each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a param for every run, as `dvc exp run -S` takes it (data.validation=0)")
    args = parser.parse_args()
    changes = {key.replace(".", "__"): yaml.safe_load(value) for key, value in (s.split("=", 1) for s in args.set)}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp = Path(tmp)
        runs = paired_runs(tmp, args.repeat, changes)
        results = {f"{kind} runs": [seconds for seconds, _ in kind_runs] for kind, kind_runs in runs.items()}
        repo = tmp / "cold-0"
        results["noop"], _ = timed(repo, "dvc", "repro")
        results["exp"], out = timed(repo, "dvc", "exp", "run", "-S", "calib=kl")
        rerun = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
        scaling = {} if args.quick else {
            fraction: measured_cold_run(sandbox(tmp / f"fraction-{fraction}", **changes, train__fraction=fraction))[0]
            for fraction in (0.25, 0.5)}
    results["cold"], stages = min(runs["cold"], key=lambda run: run[0])
    results["one_process"], together = min(runs["one-process"], key=lambda run: run[0])
    scaling[1.0] = results["cold"]
    ratio = results["cold"] / results["one_process"]
    print(f"{'cold dvc repro, best of ' + str(args.repeat):<40} {results['cold']:7.1f} s   "
          f"({', '.join(f'{s:.1f}' for s in results['cold runs'])})")
    print(f"{'the same work in one process, best of ' + str(args.repeat):<40} {results['one_process']:7.1f} s   "
          f"({', '.join(f'{s:.1f}' for s in results['one-process runs'])})   ratio {ratio:.2f}, "
          f"goal <= {GOALS['ratio']}: {verdict(ratio <= GOALS['ratio'])}")
    print(f"{'no-op dvc repro':<40} {results['noop']:7.1f} s   goal <= {GOALS['noop']:.0f} s: "
          f"{verdict(results['noop'] <= GOALS['noop'])}")
    print(f"{'dvc exp run -S calib=kl':<40} {results['exp']:7.1f} s   goal <= {GOALS['exp']:.0f} s: "
          f"{verdict(results['exp'] <= GOALS['exp'])}")
    print(f"  stages rerun: {', '.join(rerun)}")
    print("cold dvc repro by share of the 50,000 training images:")
    for fraction, seconds in sorted(scaling.items()):
        print(f"  {fraction:>4}  {seconds:7.1f} s")
    peak = max(measure["peak"] for measure in stages.values())
    print(f"each stage in the cold run: wall time of its process, of it the start-up (imports) before its main(), "
          f"its peak memory (goal <= 2 GiB: {verdict(peak <= GOALS['memory'])}); and its time in the one process")
    for stage, m in stages.items():
        print(f"  {stage:<28} {m['seconds']:7.1f} s {m['startup']:5.1f} s {m['peak'] / 2 ** 20:7.0f} MiB "
              f"{together[stage]:7.1f} s")
    total, startup = (sum(m[key] for m in stages.values()) for key in ("seconds", "startup"))
    print(f"  {'all stages':<28} {total:7.1f} s {startup:5.1f} s {'':11} {sum(together.values()):7.1f} s")
    print(f"  the cold run's overhead: start-ups {startup:.1f} s + DVC {results['cold'] - total:.1f} s = "
          f"{100 * (startup + results['cold'] - total) / (total - startup):.1f} % of the stages' work")
    print(json.dumps({**results, "ratio": ratio, "scaling": scaling, "stages": stages, "one_process_stages": together},
                     sort_keys=True))


if __name__ == "__main__":
    run_main(main)
