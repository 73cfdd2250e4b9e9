"""Benchmark: the pipeline through the real `dvc` commands, in a throw-away copy of this working tree that
uses this workspace's params.yaml (so the same data source). Prints wall times:

    cold `dvc repro`                  every stage, from the archive
    no-op `dvc repro`                 nothing to run
    `dvc exp run -S calib=kl`         only the stages that depend on `calib`   goal < 20 s

Run: python -m bench.pipeline   (takes as long as a cold run, about 5 minutes on 2 cores)
"""

import tempfile
import time
from pathlib import Path

from quantlab.errors import run_main
from quantlab.sandbox import ROOT, make_repo, run

EXP_GOAL_SECONDS = 20.0


def timed(repo: Path, *command: str) -> tuple[float, str]:
    start = time.perf_counter()
    result = run(repo, *command)
    return time.perf_counter() - start, result.stdout


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        repo = make_repo(Path(tmp) / "repo")
        (repo / "params.yaml").write_text((ROOT / "params.yaml").read_text())
        run(repo, "git", "commit", "-qam", "workspace params")
        cold, _ = timed(repo, "dvc", "repro")
        noop, _ = timed(repo, "dvc", "repro")
        exp, out = timed(repo, "dvc", "exp", "run", "-S", "calib=kl")
        rerun = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
    print(f"{'cold dvc repro':<34} {cold:7.1f} s")
    print(f"{'no-op dvc repro':<34} {noop:7.1f} s")
    print(f"{'dvc exp run -S calib=kl':<34} {exp:7.1f} s   goal < {EXP_GOAL_SECONDS:.0f} s: "
          f"{'met' if exp < EXP_GOAL_SECONDS else 'MISSED'}")
    print(f"  stages rerun: {', '.join(rerun)}")


if __name__ == "__main__":
    run_main(main)
