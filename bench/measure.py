"""`python -m bench.measure MODULE [ARG]`: run MODULE as `python -m MODULE [ARG]` would, then record this
process's wall time, the part of it spent before the stage's main() starts (its imports: the start-up that
one process for every stage would pay once), and its peak resident memory in .stage-measures/<stage> as
JSON (bench.pipeline reads it)."""

import json
import resource
import runpy
import sys
import time
from pathlib import Path

from quantlab import stage


def main() -> None:
    start, marks = time.perf_counter(), {}
    run_main = stage.run_main

    def timed_run_main(main) -> None:  # every stage ends in run_main(main): its imports are done by then
        marks["startup"] = round(time.perf_counter() - start, 2)
        run_main(main)

    stage.run_main = timed_run_main  # before the stage's `from quantlab.stage import run_main`
    module, *args = sys.argv[1:]
    measured = module.rsplit(".", 1)[-1] + "".join(f"@{arg}" for arg in args)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        Path(".stage-measures").mkdir(exist_ok=True)
        (Path(".stage-measures") / measured).write_text(json.dumps({
            "seconds": round(time.perf_counter() - start, 2), **marks,
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


if __name__ == "__main__":
    main()
