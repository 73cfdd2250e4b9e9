"""Checks the Makefile runs before DVC changes the workspace, where DVC itself would go ahead silently.

    python -m bench.workspace outputs   an output that differs from the run DVC recorded (edited by hand, say)
                                        stops `make pipeline` and `make pull`: `dvc repro` would replace it, and
                                        where DVC's run-cache holds the stage's run, without a copy
    python -m bench.workspace pulled    after `dvc pull --run-cache`: a remote without a run of this code and
                                        these params stops `make pull`, which would otherwise rebuild every stage
                                        here (and, offline, fail at the download)
"""

import argparse
import json

from bench.experiments import dvc
from quantlab.errors import UserError
from quantlab.stage import run_main

FIRST_STAGE = "download"  # the one stage whose run-cache entry a fresh clone can look up: it depends on no output


def modified_outputs() -> list[str]:
    """The outputs in the workspace that differ from what dvc.lock records (`dvc status`: modified)."""
    status = json.loads(dvc("status", "--json") or "{}")
    return sorted(path for changes in status.values() for change in changes if isinstance(change, dict)
                  for path, state in change.get("changed outs", {}).items() if state == "modified")


def has_run_cache_entry(stage_name: str) -> bool:
    """Whether DVC's run-cache holds a run of the stage with the code and params of this workspace."""
    from dvc.repo import Repo

    with Repo() as repo:
        (stage,) = repo.stage.collect(stage_name)
        stage.save_deps()  # its dependencies' hashes, as `dvc repro` computes them
        return repo.stage_cache._load(stage) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=("outputs", "pulled"))
    parser.add_argument("--remote", default="the remote", help="pulled: the remote's name, for the message")
    args = parser.parse_args()
    if args.check == "outputs":
        modified = modified_outputs()
        if modified:
            more = f" (and {len(modified) - 1} more)" if len(modified) > 1 else ""
            raise UserError(f"{modified[0]}{more} differs from the run DVC recorded: DVC would replace it. Keep it as "
                            f"the stage's output with `dvc commit {modified[0]}`, or copy it elsewhere; discard it "
                            f"with `dvc checkout {modified[0]}`")
    elif not has_run_cache_entry(FIRST_STAGE):
        raise UserError(f"{args.remote} holds no run of this code and these params (no run-cache entry for stage "
                        f"{FIRST_STAGE}): nothing to restore. Run `make pipeline` to build it here, or pull from "
                        f"the remote where it ran (REMOTE=...)")


if __name__ == "__main__":
    run_main(main)
