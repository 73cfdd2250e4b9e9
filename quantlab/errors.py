"""One exception for every mistake a user can fix, and the wrapper every stage runs in: it turns that exception
into a one-line error, and sets the process up (and down) for speed."""

import ctypes
import gc
import sys
from collections.abc import Callable

from quantlab import compute


class UserError(Exception):
    """Bad input: the message names the problem and the fix, and is printed as one line."""


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
