"""The arithmetic every stage runs under: the same bytes on any x86-64 CPU with AVX2, on any number of cores.

PyTorch, oneDNN, MKL and NumPy pick their kernels by the CPU's instruction set and split their work by the
number of threads; both change float results in the last bits, and a training run amplifies the last bits
into other weights. Pinned (`compute.reproducible: true`, the default), each library runs kernels that every
such CPU has, on THREADS threads whatever the machine's core count:

- ATEN_CPU_CAPABILITY=avx2: ATen's vector kernels (default: the CPU's widest, avx512);
- ONEDNN_MAX_CPU_ISA=AVX2: oneDNN's JIT kernels, the convolutions; ONEDNN_DEFAULT_FPMATH_MODE=STRICT: float32
  computed as float32, never implicitly in bf16 or tf32;
- MKL_CBWR=COMPATIBLE: MKL's code branch for sgemm (the linear layers), the one Intel and AMD CPUs share
  (MKL's "Conditional Numerical Reproducibility"; AVX2 falls back to AUTO on AMD);
- NPY_DISABLE_CPU_FEATURES: NumPy's AVX-512 loops, whose log and exp differ from its AVX2 ones in the last bit;
- OMP_NUM_THREADS, MKL_NUM_THREADS and torch.set_num_threads: THREADS.

Each library reads its variable when it loads, so `pin` must run before torch or NumPy is imported: the
packages `stages`, `bench` and the tests' conftest call it first. The pin overrides whatever the environment
says. Unpinned, every library takes the machine's fastest kernels, and the results hold on this machine only.
"""

import os
import sys

THREADS = 2
PINNED = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ONEDNN_DEFAULT_FPMATH_MODE": "STRICT",
    "MKL_CBWR": "COMPATIBLE",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
}
REPRODUCIBLE = "QUANTLAB_REPRODUCIBLE"  # set by `pin`, so that `set_threads` and child processes know


def pin(reproducible: bool = True) -> None:
    """Pin (or, with False, leave to each library's defaults) the kernels and threads; before they load."""
    loaded = [name for name in ("torch", "numpy") if name in sys.modules]
    if loaded:
        raise RuntimeError(f"quantlab.compute.pin() must run before {' and '.join(loaded)} is imported")
    if reproducible:
        os.environ.update(PINNED)
    else:
        for name in PINNED:
            os.environ.pop(name, None)
    os.environ[REPRODUCIBLE] = "1" if reproducible else "0"


def pinned() -> bool:
    return os.environ.get(REPRODUCIBLE) == "1"


def set_threads() -> None:
    """torch's thread count, where torch is loaded and the arithmetic pinned. OMP_NUM_THREADS alone is not
    enough: torch caps it at the machine's cores."""
    if pinned() and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(THREADS)


def pin_from_params(path: str = "params.yaml") -> None:
    """`pin` as params.yaml's compute.reproducible says (pinned unless it is false; load_params reports a bad
    value). A process that imported torch or NumPy first (a notebook, a test importing a stage's functions)
    keeps the arithmetic it runs: `python -m stages.<name>` imports this before anything else."""
    import yaml  # PyYAML imports neither torch nor NumPy

    if "torch" in sys.modules or "numpy" in sys.modules:
        return
    try:
        with open(path, encoding="utf-8") as file:
            params = yaml.safe_load(file)
        reproducible = params["compute"]["reproducible"] is not False
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        reproducible = True
    pin(reproducible)
