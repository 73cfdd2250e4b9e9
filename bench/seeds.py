"""The seed sweep: every accuracy and every difference of the pipeline over N seeds, through DVC's queue.

    python -m bench.seeds --seeds N [--jobs J] [--timeout SECONDS]      (make seeds N=5 J=2)

queues `dvc exp run -S seed=k` for k = 0 .. N-1 from the workspace, runs the queue with J workers, waits for
it with a timeout, stops the workers it started, and aggregates `dvc exp show --json` into the mean, standard
deviation and 95 % Student-t interval of every value of metrics/accuracy.json and of every variant's
difference to its float model in metrics/differences.json: seeds/summary.json, seeds/summary.md and
seeds/summary.png. DVC's queue has known hangs (treeverse/dvc#8165, #10398, #10427): a worker that does not
finish in time, or an experiment that fails, is one line `error: …` and exit status 2.
"""

import argparse
import contextlib
import os
import re
import signal
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.experiments import dvc, revisions  # noqa: E402
from quantlab import paths  # noqa: E402
from quantlab.differences import HEADLINE  # noqa: E402
from quantlab.errors import UserError  # noqa: E402
from quantlab.io import save_json, save_text  # noqa: E402
from quantlab.report import figures  # noqa: E402
from quantlab.stage import run_main
from quantlab.statistics import spread  # noqa: E402
from quantlab.variants import BY_NAME  # noqa: E402

OUT = Path("seeds")


def queue(seeds: int) -> dict[str, int]:
    """The queued experiments' names, each with its seed."""
    names = {}
    for seed in range(seeds):
        output = dvc("exp", "run", "--queue", "-S", f"seed={seed}")
        match = re.search(r"Queued experiment '([^']+)'", output)
        if not match:
            raise UserError(f"`dvc exp run --queue -S seed={seed}` queued nothing: {output.strip()}")
        names[match.group(1)] = seed
    return names


def wait(names: dict[str, int], jobs: int, timeout: float) -> None:
    """Run the queue and wait until every experiment of `names` succeeded; a failure or a timeout is an error
    (after the workers are stopped)."""
    # the workers inherit the command's output: not captured, or a worker that never exits keeps the pipe open
    dvc("queue", "start", "-j", str(jobs), quiet=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            states = {name: state for name, state in re.findall(r"^\S+\s+(\S+)\s+.*?\s(\w+)\s*$",
                                                               dvc("queue", "status"), re.M) if name in names}
            failed = [name for name, state in states.items() if state == "Failed"]
            if failed:
                raise UserError(f"experiment {failed[0]} (seed={names[failed[0]]}) failed: `dvc queue logs "
                                f"{failed[0]}` shows why")
            if len(states) == len(names) and all(state == "Success" for state in states.values()):
                return
            if time.monotonic() > deadline:
                waiting = [name for name in names if states.get(name) != "Success"]
                raise UserError(f"the DVC queue did not finish {', '.join(waiting)} in {timeout:.0f} s (a hung "
                                f"worker, treeverse/dvc#10427?): the workers were stopped; rerun with a longer "
                                f"--timeout, or see `dvc queue logs {waiting[0]}`")
            time.sleep(2)
    finally:
        dvc("queue", "stop", "--kill", check=False, quiet=True)
        stop_workers(Path.cwd().resolve())


def queue_workers(workspace: Path) -> list[int]:
    """The processes of DVC's queue (`dvc queue start`, `dvc exp queue-worker`) that run in `workspace`
    (Linux's /proc; elsewhere none are found)."""
    found = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            command = (process / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(process / "cwd"))
        except OSError:  # gone, or not ours
            continue
        queue_process = b"queue-worker" in command or any(command[i:i + 2] == [b"queue", b"start"]
                                                          for i in range(len(command)))
        if queue_process and (cwd == workspace or workspace in cwd.parents):
            found.append(int(process.name))
    return found


def stop_workers(workspace: Path, grace: float = 10.0) -> None:
    """End the queue's processes in `workspace`: `dvc queue stop --kill` stops the experiments, but a worker
    can outlive it (treeverse/dvc#10427), and nothing may stay behind."""
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        pids = queue_workers(workspace)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal_number)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = queue_workers(workspace)
        if not pids:
            return


def results(names: dict[str, int]) -> dict[int, dict[str, float]]:
    """Per seed, the accuracies and the variants' differences to float, from `dvc exp show --json`."""
    found = {}
    for revision in revisions():
        if revision.get("name") in names:
            metrics = revision["data"]["metrics"]
            values = dict(metrics[paths.ACCURACY.as_posix()]["data"])
            headline = metrics[paths.HEADLINE.as_posix()]["data"]
            values |= {f"{variant} − {BY_NAME[variant].reference}": headline[variant]["delta"] for variant in HEADLINE}
            found[names[revision["name"]]] = values
    missing = sorted(set(names.values()) - set(found))
    if missing:
        raise UserError(f"`dvc exp show` has no metrics for seed {missing[0]}: see `dvc exp show`")
    return dict(sorted(found.items()))


def summary(by_seed: dict[int, dict[str, float]]) -> dict:
    keys = list(next(iter(by_seed.values())))
    return {"seeds": list(by_seed), "values": {key: [by_seed[seed][key] for seed in by_seed] for key in keys},
            "spread": {key: spread([by_seed[seed][key] for seed in by_seed]) for key in keys}}


def markdown(result: dict, seconds: float) -> str:
    lines = [f"Over seeds {', '.join(map(str, result['seeds']))} ({len(result['seeds'])} runs through DVC's queue, "
             f"{seconds / 60:.1f} min); accuracies in %, differences in points:", "",
             "| value | mean | sd | 95 % t-interval of the mean | per seed |", "|---|---|---|---|---|"]
    for key, s in result["spread"].items():
        values = ", ".join(f"{v:.2f}" for v in result["values"][key])
        lines.append(f"| {key} | {s['mean']:.2f} | {s['sd']:.2f} | [{s['low']:.2f}, {s['high']:.2f}] | {values} |")
    return "\n".join(lines) + "\n"


def figure(result: dict):
    """Every value per seed, with its mean and 95 % t-interval: the accuracies on the left, the differences to
    float (on a scale of their own, with 0 marked) on the right."""
    with plt.rc_context(figures.STYLE):
        keys = list(result["spread"])
        panels = [[key for key in keys if " − " not in key], [key for key in keys if " − " in key]]
        figure, axes = plt.subplots(1, 2, figsize=(figures.PAGE, 0.3 * max(map(len, panels)) + 0.9),
                                    layout="constrained")
        for ax, panel, label in zip(axes, panels, ("accuracy (%)", "difference (points)"), strict=True):
            for row, key in enumerate(panel):
                s = result["spread"][key]
                ax.plot(result["values"][key], [row] * len(result["values"][key]), "o", ms=3, color="0.55")
                ax.errorbar(s["mean"], row, xerr=[[s["mean"] - s["low"]], [s["high"] - s["mean"]]], fmt="D",
                            ms=4, color="C3", capsize=3)
            ax.set_yticks(range(len(panel)), panel)
            ax.invert_yaxis()
            ax.set_xlabel(label)
        axes[1].axvline(0, color="0.3", lw=0.8)
        figure.suptitle("each seed (grey), and the mean with its 95 % t-interval (red)", fontsize="small")
        return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, required=True, help="run seeds 0 .. N-1")
    parser.add_argument("--jobs", type=int, default=2, help="DVC queue workers")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds to wait for the queue")
    args = parser.parse_args()
    if args.seeds < 2:
        raise UserError(f"--seeds must be at least 2 for a spread, got {args.seeds}")
    start = time.monotonic()
    names = queue(args.seeds)
    wait(names, args.jobs, args.timeout)
    result = summary(results(names))
    seconds = time.monotonic() - start
    save_json(OUT / "summary.json", {**result, "seconds": round(seconds, 1), "jobs": args.jobs})
    save_text(OUT / "summary.md", markdown(result, seconds))
    figures.save(figure(result), OUT, "summary")
    print(markdown(result, seconds), end="")


if __name__ == "__main__":
    run_main(main)
