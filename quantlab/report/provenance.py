"""Where a report comes from: the version of the code that built it and its date. Standard library only, so
that the pdf stage, which needs the date, starts without the renderer's imports."""

import datetime as dt
import hashlib
import os
import subprocess
from pathlib import Path

# The code whose version the report states: everything that computes or renders a number.
CODE = ("dvc.yaml", "quantlab", "stages", "reports")
CODE_SUFFIXES = (".py", ".j2", ".yaml")


def code_version(root: Path = Path(".")) -> str:
    """The first 12 hex digits of the SHA-256 of the pipeline's source files (paths and contents)."""
    digest = hashlib.sha256()
    files = sorted(p for name in CODE for p in ([root / name] if (root / name).is_file() else
                                                 (root / name).rglob("*")) if p.suffix in CODE_SUFFIXES)
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def source_date() -> dt.datetime:
    """The report's date: SOURCE_DATE_EPOCH if set, else the time of the last git commit that changed the code
    (CODE), so that the same code and inputs give the same report whatever else was committed since; the Unix
    epoch outside a git repository."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is None:
        try:
            epoch = subprocess.run(["git", "log", "-1", "--format=%ct", "--", *CODE], capture_output=True, text=True,
                                   check=True).stdout.strip() or "0"
        except (OSError, subprocess.CalledProcessError):
            epoch = "0"
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC)
