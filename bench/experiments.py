"""DVC's experiments from Python, for the tools that read them (bench.seeds, bench.compare): the `dvc` command
with a one-line error, and every revision that `dvc exp show --json` lists."""

import json
import subprocess

from quantlab.errors import UserError


def dvc(*args: str, check: bool = True, quiet: bool = False) -> str:
    """Run a dvc command in the workspace; its output, or one clear error."""
    result = subprocess.run(["dvc", *args], capture_output=not quiet, text=True,
                            **({"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL} if quiet else {}))
    if check and result.returncode != 0:
        last = (result.stderr or result.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"`dvc {' '.join(args)}` failed: {last[0]}")
    return result.stdout or ""


def revisions() -> list[dict]:
    """Every revision of `dvc exp show --json`: each baseline (the workspace, the commit) and its experiments,
    with their "rev", "name" and "data" (params, metrics, deps, outs)."""
    return [revision for baseline in json.loads(dvc("exp", "show", "--json"))
            for revision in [baseline, *(revision for experiment in baseline.get("experiments") or []
                                         for revision in experiment["revs"])]]
