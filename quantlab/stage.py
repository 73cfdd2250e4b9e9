"""What every stage does around its own work: params.yaml read, with every name in it checked against the module
that defines it; the process set up for speed; and a UserError printed as one line with exit status 2.

The arithmetic is pinned before this runs, when the `stages` package is imported (quantlab.compute).
"""

import ctypes
import gc
import sys
from collections.abc import Callable
from pathlib import Path

from quantlab import compute
from quantlab.architecture import LAYER_NAMES
from quantlab.config import PARAMS_FILE, Params, check, read_params, shown
from quantlab.errors import UserError
from quantlab.inference.fixed_point import REQUANTIZATIONS
from quantlab.quantize import calibration, techniques
from quantlab.quantize.symmetric import BITS, WEIGHT_SCALES
from quantlab.report.glyphs import untypesettable


def check_name(key: str, name, valid) -> None:
    check(name in valid, key, f"is {shown(name)}; valid: {', '.join(valid)}")


def check_bits(key: str, bits: int) -> None:
    check(bits in BITS, key, f"must be between {BITS.start} and {BITS.stop - 1} bits, got {bits}")


def check_names(params: Params) -> None:
    """Every name of `params` in its registry, every bit width one the integer networks hold, and the report's
    text in its fonts."""
    check_name("calib", params.calib, calibration.METHODS)
    for method in params.compare.methods:
        check_name("compare.methods", method, calibration.POST_TRAINING)
    check(calibration.BASELINE in params.compare.methods, "compare.methods",
          f"must include {calibration.BASELINE}, the lab's method that every other is compared with, got "
          f"{shown(params.compare.methods)}")
    check_name("qat.ranges", params.qat.ranges, calibration.QAT_RANGES)
    check_name("techniques.calib", params.techniques.calib, calibration.POST_TRAINING)
    check_name("mixed_precision.calib", params.mixed_precision.calib, calibration.POST_TRAINING)
    check_name("ptq.rounding", params.ptq.rounding, techniques.roundings())
    check_name("ptq.weight_scale", params.ptq.weight_scale, WEIGHT_SCALES)
    check_name("techniques.weight_scale", params.techniques.weight_scale, WEIGHT_SCALES)
    blocks = [name for block in params.ptq.blocks for name in block]
    check(blocks == list(LAYER_NAMES), "ptq.blocks", f"must split the layers {', '.join(LAYER_NAMES)} into "
          f"consecutive blocks, each layer once and in order, got {shown(params.ptq.blocks)}")
    check_name("export.rounding", params.export.rounding, REQUANTIZATIONS)
    widths = [("quant.weight_bits", params.quant.weight_bits), ("quant.activation_bits", params.quant.activation_bits),
              ("quant.logit_bits", params.quant.logit_bits)]
    widths += [(key, bits) for key, pairs in (("compare.widths", params.compare.widths),
                                              ("techniques.widths", params.techniques.widths))
               for pair in pairs for bits in pair]
    widths += [(f"mixed_precision.{key}", bits) for key in ("weight_bits", "activation_bits")
               for bits in getattr(params.mixed_precision, key)]
    for key, bits_of_layers in (("quant.layer_bits", params.quant.layer_bits),
                                ("techniques.layer_bits", params.techniques.layer_bits)):
        for layer, pair in bits_of_layers.items():
            check_name(key, layer, LAYER_NAMES)
            widths += [(f"{key}.{layer}", bits) for bits in pair or ()]
        missing = [layer for layer in LAYER_NAMES if layer not in bits_of_layers]
        check(not missing, f"{key}.{missing[0] if missing else ''}", "is missing; add it (null: the widths above)")
    layer_bits = params.quant.layer_bits
    for key, bits in widths:
        if bits is not None:
            check_bits(key, bits)
    check(not (params.ptq.equalize and calibration.METHODS[params.calib].weights != calibration.TRAINED),
          "ptq.equalize", f"cannot apply to calib={params.calib}: its ranges were learned on the network before "
          f"equalization; use a post-training calibration ({', '.join(calibration.POST_TRAINING)})")
    check(not (params.ptq.weight_scale != WEIGHT_SCALES[0] and calibration.METHODS[params.calib].weights
               != calibration.TRAINED), "ptq.weight_scale", f"cannot apply to calib={params.calib}: its fine-tune "
          f"learned weights for S_W = max|W| / qmax; use a post-training calibration or ptq.weight_scale: max")
    check(not (any(layer_bits.values()) and calibration.METHODS[params.calib].weights != calibration.TRAINED),
          "quant.layer_bits", f"cannot apply to calib={params.calib}: its fine-tune ran at the uniform widths; use a "
          f"post-training calibration ({', '.join(calibration.POST_TRAINING)}) or set every layer's to null")
    for key in ("title", "author", "affiliation"):
        char = untypesettable(getattr(params.report, key))
        check(char is None, f"report.{key}", f"holds {char}, which the report cannot typeset: remove it")


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """params.yaml, read and checked whole (quantlab.config), its names included."""
    params = read_params(path)
    check_names(params)
    return params


# glibc's mallopt(3) parameters
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def reuse_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for the next allocation instead of handing it back to the operating
    system: a training step frees and allocates the same large tensors again and again, and every fresh page
    costs a page fault (211 training steps took 5.0-6.3 s instead of 6.2-7.6 s, with the same weights).
    Where the C library is not glibc, nothing changes."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest: allocations below it come from the heap,
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)  # which keeps up to 1 GiB of freed memory at its top,
    libc.mallopt(M_TOP_PAD, 64 << 20)  # and grows 64 MiB at a time


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's `main()`; a UserError becomes `error: <message>` on stderr and exit status 2."""
    reuse_freed_memory()
    compute.set_threads()  # the stage's imports are done: torch is loaded if it uses it
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    # Done, and every output written and closed. Python's shutdown would otherwise garbage-collect the
    # hundreds of thousands of objects that torch, pandas and matplotlib create on import, as it clears the
    # modules: 0.3-0.8 s a stage (measured). Frozen, they are left to the operating system.
    gc.freeze()
