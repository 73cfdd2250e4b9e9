"""Small CIFAR-10 archives in the official layout, with classes a small CNN learns in a few epochs."""

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def images(n: int, rng: np.random.Generator, templates: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """n images (n x 3072 uint8): a noisy, randomly shifted copy of their class's template."""
    labels = rng.integers(0, 10, n)
    shifts = rng.integers(-2, 3, size=(n, 2))
    base = np.stack([np.roll(templates[c], tuple(s), axis=(1, 2)) for c, s in zip(labels, shifts, strict=True)])
    noisy = base + rng.normal(0, 40, base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8).reshape(n, -1), labels.tolist()


def class_templates(rng: np.random.Generator) -> np.ndarray:
    """One 3x32x32 pattern per class: an 8x8 random colour grid, upsampled to 32x32."""
    coarse = rng.uniform(0, 255, size=(10, 3, 8, 8))
    return coarse.repeat(4, axis=2).repeat(4, axis=3)


def batches(train_per_batch: int = 200, test: int = 500, seed: int = 0) -> dict[str, bytes]:
    """The pickled members of cifar-10-batches-py/, by file name."""
    rng = np.random.default_rng(seed)
    templates = class_templates(rng)
    members = {}
    for name, n in [*((f"data_batch_{i}", train_per_batch) for i in range(1, 6)), ("test_batch", test)]:
        data, labels = images(n, rng, templates)
        members[name] = pickle.dumps({"batch_label": name, "labels": labels, "data": data,
                                      "filenames": [f"{i}.png" for i in range(n)]}, protocol=2)
    members["batches.meta"] = pickle.dumps({"label_names": CLASSES, "num_cases_per_batch": train_per_batch,
                                            "num_vis": 3072}, protocol=2)
    return members


def write_archive(path: Path, members: dict[str, bytes], folder: str = "cifar-10-batches-py") -> Path:
    """A .tar.gz of `members` under `folder`/ (names with '/' or '..' are kept as given, for fault tests)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name if name.startswith(("/", "..")) else f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def make_archive(path: Path, **kwargs) -> Path:
    return write_archive(path, batches(**kwargs))
