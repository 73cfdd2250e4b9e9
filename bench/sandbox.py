"""Throw-away copies of this project, each its own git + DVC repository, where tests and benchmarks run the
real `dvc` commands without touching the working copy."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ["dvc.yaml", "params.yaml", "stages", "quantlab", "reports", ".gitignore", ".dvcignore"]


def environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` is this interpreter
    env.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com")
    return env


def run(cwd: Path, *command: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env={**environment(), **(env or {})}, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def set_params(repo: Path, **changes) -> None:
    """Change params.yaml: keys are dotted paths written with '__' (train__epochs=2)."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = params
        for parent in parents:
            node = node[parent]
        node[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_repo(path: Path, extra: list[str] | tuple[str, ...] = (), **params) -> Path:
    """A git + DVC repository at `path` with the project's files (and the `extra` ones) as git sees them here,
    tracked or new but never ignored (so no output of a run here, no __pycache__), params changed."""
    path.mkdir(parents=True, exist_ok=True)
    listed = run(ROOT, "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *PROJECT, *extra)
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():  # not a tracked file deleted here
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, path / name)
    set_params(path, **params)
    run(path, "git", "init", "-q", "-b", "main")
    run(path, "dvc", "init", "-q")
    shutil.copy2(ROOT / ".dvc" / "config", path / ".dvc" / "config")  # the project's settings: the plots' page
    run(path, "git", "add", "-A")
    run(path, "git", "commit", "-qm", "project")
    return path
