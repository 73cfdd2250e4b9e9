"""CIFAR-10: fetch and verify the official archive, read it safely, and load the compact copy the stages use.

The archive's batches are Python pickles. They are read straight out of the tar file in memory, never
extracted to disk by member name (so no member can write outside a folder), and unpickled by an unpickler
that can build nothing but NumPy arrays, so a tampered archive cannot run code.
"""

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import zlib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from quantlab import paths
from quantlab.config import Params
from quantlab.errors import UserError
from quantlab.io import load_npz

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
IMAGE_SHAPE = (3, 32, 32)
MAX_MEMBER = 64 * 2 ** 20  # bytes of one batch member: each official batch is 30 MiB, checked before reading
MAX_HEADER = 2 ** 16  # bytes of a pax or GNU long-name header (the official archive has none): tarfile reads it whole
MAX_MEMBERS = 1000  # members of an archive (the official one has 9): tarfile keeps a record of each


class BoundedTarInfo(tarfile.TarInfo):
    """A tar header whose extension blocks (pax headers, GNU long names) are refused beyond MAX_HEADER bytes before
    tarfile reads them: a 4 GiB pax header in a 4 MB .tar.gz would otherwise be read whole into memory."""

    def _bounded(self, tarfile):
        if self.size > MAX_HEADER:
            raise UserError(f"archive {tarfile.name} has a {self.size}-byte extended header (at most {MAX_HEADER}): "
                            f"it is not an official CIFAR-10 archive; download it again from {OFFICIAL_URL}")

    def _proc_pax(self, tarfile):
        self._bounded(tarfile)
        return super()._proc_pax(tarfile)

    def _proc_gnulong(self, tarfile):
        self._bounded(tarfile)
        return super()._proc_gnulong(tarfile)


def archive_name(url: str) -> str:
    """The archive's file name, from a URL or a local path: what the report prints of the data source (with
    the md5, it identifies the data; a local path would print the machine's folders)."""
    return Path(urlparse(url).path).name


def md5_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def fetch_archive(url: str, md5: str, download_dir: Path) -> Path:
    """The verified archive: `url` itself when it is a local path, else a download into `download_dir`.

    A download is reused when a file of the right md5 is already there; a file whose md5 differs is never
    overwritten, it is an error.
    """
    if urlparse(url).scheme in ("http", "https", "ftp"):
        from torchvision.datasets.utils import download_url

        path = download_dir / archive_name(url)
        if not path.exists():
            download_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=download_dir, prefix=".download-") as scratch:
                try:
                    download_url(url, scratch, path.name)
                except Exception as error:  # urllib and torchvision raise many kinds; all mean "no archive"
                    raise UserError(f"cannot download {url} ({error.__class__.__name__}: {error}); offline, set "
                                    f"data.url to a local copy of cifar-10-python.tar.gz and data.md5 to its "
                                    f"md5") from None
                os.replace(Path(scratch) / path.name, path)  # complete downloads only, never a partial one
    else:
        path = Path(urlparse(url).path if url.startswith("file://") else url).expanduser()
        if path.is_dir():
            raise UserError(f"data.url {path} is a folder: set it to the archive inside it, "
                            f"e.g. {path / 'cifar-10-python.tar.gz'}")
        if not path.is_file():
            raise UserError(f"archive {path} not found: set data.url to an existing cifar-10-python.tar.gz "
                            f"or to {OFFICIAL_URL}")
    found = md5_of(path)
    if found != md5:
        raise UserError(f"md5 mismatch for {path}: expected {md5} (data.md5), found {found}; re-download the "
                        f"archive, or set data.md5 to {found} if you trust this file")
    return path


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only NumPy arrays, dtypes and plain containers: anything else in a pickle is refused."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(payload: bytes, member: str) -> dict:
    try:
        batch = _ArrayUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except Exception as error:
        raise UserError(f"{member} is not a CIFAR-10 batch ({error}): re-download the archive") from None
    if not isinstance(batch, dict):
        raise UserError(f"{member} is not a CIFAR-10 batch (a {type(batch).__name__}, not a dict): re-download "
                        f"the archive")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}


def _images(batch: dict, member: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get("labels")
    integers = isinstance(labels, list) and all(type(label) is int and 0 <= label <= 9 for label in labels)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == np.prod(IMAGE_SHAPE) and integers and len(labels) == len(data) > 0):
        raise UserError(f"{member} does not hold uint8 N x 3072 images with a list of N integer labels 0-9: "
                        f"re-download the archive")
    return data.reshape(-1, *IMAGE_SHAPE), np.array(labels, np.uint8)


def read_archive(archive: Path) -> dict[str, np.ndarray]:
    """Train and test images (N, 3, 32, 32) uint8 and labels uint8 from an official-layout archive."""
    wanted = [*TRAIN_BATCHES, TEST_BATCH, META]
    payloads = {}
    try:
        with tarfile.open(archive, "r:gz", tarinfo=BoundedTarInfo) as tar:
            for count, member in enumerate(tar, 1):
                if count > MAX_MEMBERS:
                    raise UserError(f"archive {archive} has more than {MAX_MEMBERS} members: it is not an official "
                                    f"CIFAR-10 archive; download it again from {OFFICIAL_URL}")
                name = Path(member.name)
                if member.name.startswith("/") or ".." in name.parts or not (member.isfile() or member.isdir()):
                    raise UserError(f"archive {archive} has an unsafe member {member.name!r} (absolute path, '..' or "
                                    f"link): refusing to read it; re-download the archive from {OFFICIAL_URL}")
                if member.isfile() and name.parent.as_posix() == FOLDER and name.name in wanted:
                    if name.name in payloads or member.size > MAX_MEMBER:
                        problem = "a second" if name.name in payloads else f"an oversized ({member.size} bytes)"
                        raise UserError(f"archive {archive} has {problem} member {member.name}: it is not an "
                                        f"official CIFAR-10 archive; download it again from {OFFICIAL_URL}")
                    payloads[name.name] = tar.extractfile(member).read()
            while tar.fileobj.read(1 << 20):  # to the end of the gzip stream, which checks its CRC
                pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as error:
        message = f"archive {archive} is truncated or corrupt ({error}): delete it and download it again"
        raise UserError(message) from None
    missing = [name for name in wanted if name not in payloads]
    if missing:
        raise UserError(f"archive {archive} lacks {FOLDER}/{missing[0]}: it is not a complete CIFAR-10 archive; "
                        f"download it again from {OFFICIAL_URL}")
    train = [_images(_unpickle(payloads[name], name), name) for name in TRAIN_BATCHES]
    test_x, test_y = _images(_unpickle(payloads[TEST_BATCH], TEST_BATCH), TEST_BATCH)
    classes = _unpickle(payloads[META], META).get("label_names")
    if not (isinstance(classes, list) and len(classes) == 10 and all(isinstance(c, (str, bytes)) for c in classes)):
        raise UserError(f"{META} does not name 10 classes with strings: re-download the archive")
    return {
        "train_x": np.concatenate([x for x, _ in train]),
        "train_y": np.concatenate([y for _, y in train]),
        "test_x": test_x,
        "test_y": test_y,
        "classes": np.array([c.decode() if isinstance(c, bytes) else c for c in classes]),
    }


def split(labels: np.ndarray, validation: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices of the training images that train and calibrate, and of the `validation` images held out
    for every choice: chosen seeded, and stratified by class (as many of each class; the remainder from the
    first classes). The test images are never among either."""
    if validation > len(labels) // 2:
        raise UserError(f"data.validation is {validation}, more than half of the {len(labels)} training images: "
                        f"lower it")
    classes = np.unique(labels)
    counts = [validation // len(classes) + (i < validation % len(classes)) for i in range(len(classes))]
    generator = np.random.default_rng([seed, 1])  # a stream of its own: other uses of `seed` do not shift it
    held = np.sort(np.concatenate([np.zeros(0, np.int64)] + [generator.permutation(np.flatnonzero(labels == c))[:k]
                                                              for c, k in zip(classes, counts, strict=True)]))
    return np.setdiff1d(np.arange(len(labels)), held), held


def without_validation(dataset: dict[str, np.ndarray], validation: int, seed: int) -> dict[str, np.ndarray]:
    """The dataset with its training images and labels reduced to those that train and calibrate."""
    kept, _ = split(dataset["train_y"], validation, seed)
    return {**dataset, "train_x": dataset["train_x"][kept], "train_y": dataset["train_y"][kept]}


def calibration_indices(labels: np.ndarray, size: int, selection: str, seed: int) -> np.ndarray:
    """Sorted indices of the calibration images: the first `size`, a seeded random sample, or a seeded
    random sample with the same number of images from every class (`stratified`)."""
    if size > len(labels):
        raise UserError(f"profile.calib_images is {size} but the training set has only {len(labels)} images: "
                        f"lower it")
    generator = np.random.default_rng(seed)
    if selection == "first":
        return np.arange(size)
    if selection == "random":
        return np.sort(generator.permutation(len(labels))[:size])
    classes = np.unique(labels)
    per_class = -(-size // len(classes))
    picked = np.concatenate([generator.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes])
    return np.sort(generator.permutation(picked)[:size])


def calibration_images(params: Params) -> np.ndarray:
    """The calibration images (uint8): `profile.calib_images` training images that are not held out for
    validation, chosen as `profile.calib_selection` says (see calibration_indices)."""
    dataset = without_validation(load_npz(paths.DATASET), params.data.validation, params.seed)
    return dataset["train_x"][calibration_indices(dataset["train_y"], params.profile.calib_images,
                                                  params.profile.calib_selection, params.seed)]


def normalize(images):
    """uint8 pixels 0..255 to float32 in [-1, 1], as the lab's transforms.Normalize((0.5,)*3, (0.5,)*3);
    a NumPy array or a torch tensor, with the same float32 operations (so the same bits) for both."""
    pixels = images.astype(np.float32) if isinstance(images, np.ndarray) else images.float()
    return pixels / 127.5 - 1.0
