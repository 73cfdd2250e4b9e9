"""`python -m bench.measure MODULE [ARG]`: run MODULE as `python -m MODULE [ARG]` would, then record this
process's peak resident memory, in bytes, in .peak-memory/<stage> (bench.pipeline reads it)."""

import resource
import runpy
import sys
from pathlib import Path


def main() -> None:
    module, *args = sys.argv[1:]
    stage = module.rsplit(".", 1)[-1] + "".join(f"@{arg}" for arg in args)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        Path(".peak-memory").mkdir(exist_ok=True)
        (Path(".peak-memory") / stage).write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


if __name__ == "__main__":
    main()
