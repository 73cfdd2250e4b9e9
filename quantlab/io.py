"""Deterministic, atomic reading and writing of every file the pipeline produces.

Every output is first written to a temporary file next to its destination and then renamed over it, so a
killed stage never leaves a half-written file behind. Formats are chosen to be byte-stable: the same data
always gives the same bytes (JSON with fixed formatting, .npz archives with fixed timestamps, CSV from
pandas), so DVC never sees a change that is not one.
"""

import contextlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from quantlab import files
from quantlab.errors import UserError

# A fixed timestamp for every member of every .npz archive: zipfile otherwise stores the current time.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`. Temporary files
    of `path` that a killed process left behind are removed first. A failed write (a full disk, say) leaves
    `path` as it was and is one clear error."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(error, OSError):
            raise UserError(f"cannot write {path} ({error.strerror or error}): free disk space or fix the "
                            f"folder's permissions, then rerun") from None
        raise


def save_json(path: str | Path, obj) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")


def save_text(path: str | Path, text: str) -> None:
    save_bytes(path, text.encode("utf-8"))


def save_bytes(path: str | Path, payload: bytes) -> None:
    with atomic_write(path) as f:
        f.write(payload)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz that np.load reads, with the same bytes for the same arrays."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buffer.getvalue()


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    save_bytes(path, npz_bytes(arrays))


def save_npz_tree(path: str | Path, tree: dict) -> None:
    """Nested dicts with arrays at their leaves, as an .npz whose array names are the leaves' keys joined by "/"
    ({"W8A8": {"minmax": {"test": ...}}} -> "W8A8/minmax/test"); `load_npz_tree` nests them again."""
    def flat(node: dict, prefix: str) -> Iterator[tuple[str, np.ndarray]]:
        for key, child in node.items():
            yield from flat(child, f"{prefix}{key}/") if isinstance(child, dict) else [(f"{prefix}{key}", child)]

    save_npz(path, dict(flat(tree, "")))


def save_csv(path: str | Path, frame) -> None:
    """A pandas DataFrame as CSV; floats keep their shortest round-trip repr, so output is stable."""
    with atomic_write(path, "w") as f:
        frame.to_csv(f, index=False, lineterminator="\n")


def require(path: str | Path) -> Path:
    """The path of an upstream output, or a clear error saying how to produce it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"missing upstream output {path}: run `dvc repro` to produce it")
    return path


NPZ_LIMIT = 256 * files.MIB  # an .npz of the pipeline: the dataset's 184 MB the largest


def load_npz(path: str | Path, names: list[str] | None = None, limit: int = NPZ_LIMIT) -> dict[str, np.ndarray]:
    """The arrays of an .npz (only `names`, if given: the others are not read), its size and its members'
    declared sizes checked first (quantlab.files); a damaged or oversized file, or one without a named array,
    is one clear error."""
    try:
        return files.npz_arrays(require(path), limit, names)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise UserError(f"{path} is damaged or incomplete ({error.__class__.__name__}: {error}): delete it and "
                        f"rerun `dvc repro`") from None


def load_json(path: str | Path):
    with open(require(path), encoding="utf-8") as f:
        return json.load(f)


def load_npz_tree(path: str | Path) -> dict:
    """What `save_npz_tree` wrote."""
    tree = {}
    for name, array in load_npz(path).items():
        *parents, leaf = name.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = array
    return tree
