"""One exception for every mistake a user can fix, and the wrapper that turns it into a one-line error."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input: the message names the problem and the fix, and is printed as one line."""


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's `main()`; a UserError becomes `error: <message>` on stderr and exit status 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    # Done, and every output written and closed. Python's shutdown would otherwise garbage-collect the
    # hundreds of thousands of objects that torch, pandas and matplotlib create on import, as it clears the
    # modules: 0.3-0.8 s a stage (measured). Frozen, they are left to the operating system.
    gc.freeze()
