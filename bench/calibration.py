"""Benchmark: thresholds of every calibration method for every profiled activation tensor, from the stored
histograms, at every activation width of `compare.widths`. Goal: under 1 second on 2 cores.

Run after `dvc repro` (it reads profile/<model>/): python -m bench.calibration
"""

import time

from bench import verdict
from quantlab import paths
from quantlab.architecture import MODELS
from quantlab.profiling import load_profiles
from quantlab.quantize.calibration import POST_TRAINING, calibrator
from quantlab.quantize.symmetric import activation_signs
from quantlab.stage import load_params, run_main

GOAL_SECONDS = 1.0


def main() -> None:
    params = load_params()
    profiles = {(model, name): profile for model in MODELS
                for name, profile in load_profiles(paths.profile(model), "activations").items()}
    bit_widths = sorted({bits for _, bits in params.compare.widths})
    signs = activation_signs(params.quant.unsigned_activations)
    per_method = {}
    for method in POST_TRAINING:
        calib = calibrator(method, params.quant.percentile)
        start = time.perf_counter()
        for (_, name), profile in profiles.items():
            for bits in bit_widths:
                calib.threshold(profile, bits, signs[name])
        per_method[method] = time.perf_counter() - start
    total = sum(per_method.values())
    count = len(profiles) * len(bit_widths)
    print(f"thresholds of {len(POST_TRAINING)} methods x {len(profiles)} tensors x activation bits {bit_widths} "
          f"({count} per method, {profiles[next(iter(profiles))].bins} bins):")
    for method, seconds in per_method.items():
        print(f"  {method:<10} {seconds * 1000:8.1f} ms")
    print(f"  {'total':<10} {total * 1000:8.1f} ms   goal < {GOAL_SECONDS * 1000:.0f} ms: "
          f"{verdict(total < GOAL_SECONDS)}")


if __name__ == "__main__":
    run_main(main)
