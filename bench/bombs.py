"""Benchmark: small files built to make a reader allocate gigabytes, each through the real command that reads
it, which must refuse it in one line with a peak memory of at most 200 MB (issue 30). Prints, per bomb, the size
of the file, what it claims, the command's exit status, its peak resident memory (/usr/bin/time's %M) and its
time.

    a .tar.gz whose first member is a 4 GiB pax header                       stages.download
    a .tar.gz whose first member is a 2.5 GiB GNU long name                  stages.download
    models/float.npz: the right weights and a deflated 8 GiB member          stages.quantize
    params.yaml: nine levels of ten YAML aliases (10^9 strings)              stages.check_params
    images.npy of 30 KB whose header claims 10^9 images                      the standalone runner
    model.npz, then manifest.json, a link to /dev/zero                       the standalone runner

Run: python -m bench.bombs   (about a minute, most of it compressing the bombs)
"""

import gzip
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import yaml

from bench import verdict
from bench.sandbox import make_repo, set_params
from quantlab.data import md5_of
from quantlab.io import save_npz
from quantlab.model import Net, state_to_arrays
from quantlab.stage import run_main

GOAL = 200 * 2 ** 20
GIB = 2 ** 30
CHUNK = 2 ** 24


def zeros(stream, size: int) -> None:
    for start in range(0, size, CHUNK):
        stream.write(bytes(min(CHUNK, size - start)))


def tar_bomb(path: Path, kind: bytes, size: int) -> Path:
    """A .tar.gz whose first member is an extension header (pax or GNU long name) of `size` bytes."""
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = kind, size
    with gzip.open(path, "wb", compresslevel=1) as stream:
        stream.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        zeros(stream, size)
    return path


def npz_bomb(path: Path, size: int) -> Path:
    """A model's .npz: the right weights, and a member of `size` zero bytes, deflated."""
    save_npz(path, state_to_arrays(Net()))
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("huge.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": (size,)})
        zeros(member, size)
    return path


# Nine levels of ten YAML aliases each: 10^9 strings once expanded
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(9))


def lying_npy(path: Path) -> Path:
    """An .npy of 30 KB whose header claims 10^9 images (N, 3, 32, 32)."""
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "|u1", "fortran_order": False,
                                                    "shape": (10 ** 9, 3, 32, 32)})
        file.write(bytes(30_000))
    return path


def measured(command: list[str], cwd: Path) -> tuple[int, int, float, str]:
    """Exit status, peak resident memory (bytes), seconds and stderr's last line of a command."""
    result = subprocess.run(["/usr/bin/time", "-f", "%M %e", *command], cwd=cwd, capture_output=True, text=True)
    *lines, usage = result.stderr.strip().splitlines()
    peak, seconds = usage.split()
    return result.returncode, int(peak) * 1024, float(seconds), next((line for line in lines
                                                                     if line.startswith("error: ")), "")


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-bombs-") as tmp:
        tmp = Path(tmp)
        repo = make_repo(tmp / "repo")
        python = [sys.executable, "-m"]
        for what, kind, size in (("4 GiB pax header", tarfile.XHDTYPE, 4 * GIB),
                                 ("2.5 GiB GNU long name", tarfile.GNUTYPE_LONGNAME, 5 * GIB // 2)):
            archive = tar_bomb(tmp / "bomb.tar.gz", kind, size)
            set_params(repo, data__url=str(archive), data__md5=md5_of(archive))
            rows.append((f".tar.gz, {what}", archive.stat().st_size, measured([*python, "stages.download"], repo)))
        params = (repo / "params.yaml").read_text()
        set_params(repo, data__url="unused.tar.gz")
        bomb = npz_bomb(repo / "models" / "float.npz", 8 * GIB)
        rows.append(("model .npz with an 8 GiB member", bomb.stat().st_size,
                     measured([*python, "stages.quantize"], repo)))
        (repo / "params.yaml").write_text(params)
        (repo / "params.yaml").write_text(params + ALIAS_BOMB)
        rows.append(("params.yaml, 10^9 aliased strings", (repo / "params.yaml").stat().st_size,
                     measured([*python, "stages.check_params"], repo)))
        (repo / "params.yaml").write_text(yaml.safe_dump(yaml.safe_load(params), sort_keys=False))

        from quant_fixture import random_export  # tests/, one small export and its runner

        directory, _ = random_export(tmp)
        liar = lying_npy(tmp / "liar.npy")
        runner = [sys.executable, str(directory / "runner.py"), str(directory)]
        rows.append(("images.npy claiming 10^9 images", liar.stat().st_size, measured([*runner, str(liar)], tmp)))
        for name in ("model.npz", "manifest.json"):
            (directory / name).unlink()
            (directory / name).symlink_to("/dev/zero")
            rows.append((f"{name} linked to /dev/zero", 0, measured([*runner, str(liar)], tmp)))
    print(f"{'bomb':<38} {'file':>10} {'exit':>4} {'peak':>9} {'time':>7}  refusal")
    for what, size, (status, peak, seconds, line) in rows:
        print(f"{what:<38} {size / 2 ** 20:8.1f} MB {status:>4} {peak / 2 ** 20:6.0f} MB {seconds:6.2f} s  "
              f"{line[:100]}")
    worst = max(peak for _, _, (_, peak, _, _) in rows)
    refused = all(status == 2 for _, _, (status, _, _, _) in rows)
    print(f"every bomb refused with exit 2: {verdict(refused)}; largest peak {worst / 2 ** 20:.0f} MB, goal <= "
          f"{GOAL / 2 ** 20:.0f} MB: {verdict(worst <= GOAL)}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    run_main(main)
