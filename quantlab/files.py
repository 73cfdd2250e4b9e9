"""Files that may have been replaced or crafted, read only after their bounds are checked, so that a small file
cannot make a reader allocate gigabytes:

- a regular file (not a link to /dev/zero, not a FIFO or a folder) of at most a given size;
- an .npz whose members' sizes, as its zip directory declares them, fit a bound before any member is read
  (zipfile never inflates a member beyond its declared size);
- an .npy whose header's shape and dtype account for exactly the file's size (a 30 KB file cannot claim 10^9
  images), mapped rather than read whole.

NumPy and the standard library only: the export stage copies this module into the standalone runner. Errors are
ValueErrors of one line; the pipeline's readers (quantlab.io) turn them into UserErrors.
"""

import os
import stat
import zipfile
from pathlib import Path

import numpy as np

MIB = 2 ** 20


def regular_file(path: str | Path, limit: int) -> Path:
    """`path`, if it is a regular file (links followed) of at most `limit` bytes."""
    path = Path(path)
    mode = os.stat(path)
    if not stat.S_ISREG(mode.st_mode):
        raise ValueError(f"{path} is not a regular file (a device, a pipe or a folder): give the file itself")
    if mode.st_size > limit:
        raise ValueError(f"{path} is {mode.st_size} bytes, more than the {limit} such a file can be")
    return path


def npz_arrays(path: str | Path, limit: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz (only `names`, if given), after checking that it is a regular file of at most `limit`
    bytes whose members to read are .npy files declaring at most `limit` bytes in all."""
    with zipfile.ZipFile(regular_file(path, limit)) as archive:
        declared = {info.filename[:-len(".npy")]: info.file_size for info in archive.infolist()
                    if info.filename.endswith(".npy")}
    wanted = list(declared) if names is None else names
    missing = [name for name in wanted if name not in declared]
    if missing:
        raise KeyError(f"{path} has no array {missing[0]!r}")
    total = sum(declared[name] for name in wanted)
    if total > limit:
        raise ValueError(f"{path} declares {total} bytes of arrays, more than the {limit} it can hold")
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in wanted}


def npy_array(path: str | Path, limit: int) -> np.ndarray:
    """The array of an .npy of at most `limit` bytes whose header accounts for exactly its size, memory-mapped
    (read as it is used)."""
    path = regular_file(path, limit)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        if version not in readers:
            raise ValueError(f"{path} is an .npy of format version {version}, not 1.0 or 2.0")
        shape, _, dtype = readers[version](file, max_header_size=10_000)
        header = file.tell()
    if dtype.hasobject:
        raise ValueError(f"{path} holds Python objects, not numbers")
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != path.stat().st_size:
        raise ValueError(f"{path} is {path.stat().st_size} bytes, but its header says {shape} {dtype} "
                         f"({expected} bytes): it is truncated or damaged")
    return np.load(path, mmap_mode="r", allow_pickle=False)
