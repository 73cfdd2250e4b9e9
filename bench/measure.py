"""`python -m bench.measure MODULE [ARG]`: run MODULE as `python -m MODULE [ARG]` would, then record this
process's wall time (the stage's imports included) and peak resident memory in .stage-measures/<stage>
as JSON (bench.pipeline reads it)."""

import json
import resource
import runpy
import sys
import time
from pathlib import Path


def main() -> None:
    start = time.perf_counter()
    module, *args = sys.argv[1:]
    stage = module.rsplit(".", 1)[-1] + "".join(f"@{arg}" for arg in args)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        Path(".stage-measures").mkdir(exist_ok=True)
        (Path(".stage-measures") / stage).write_text(json.dumps({
            "seconds": round(time.perf_counter() - start, 2),
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


if __name__ == "__main__":
    main()
