"""Benchmark: the post-training techniques of `ptq` on the trained float model, at the widths and
granularities where rounding to nearest loses most, each combination chosen on the validation images and
reported on the test images with its paired 95 % interval against float; and what each costs.

Run after `dvc repro` (it reads data/, models/float.npz and profile/float/), with the workspace's params:
    python -m bench.techniques [--iterations 1000] [--only "W4A8 per tensor"]
The logits have 8 bits at every width; "per channel" means per-channel weights and unsigned activations.
"""

import argparse
import dataclasses
import json
import time

from quantlab import paths
from quantlab.architecture import load_state
from quantlab.config import TECHNIQUES, load_params
from quantlab.data import calibration_images
from quantlab.errors import UserError, run_main
from quantlab.evaluation import evaluation_images, predict
from quantlab.inference.float_rescale import FloatRescaleNet
from quantlab.io import load_npz
from quantlab.model import load_model
from quantlab.profiling import load_profiles
from quantlab.quantize.calibration import calibrator
from quantlab.quantize.network import Provenance, quantize_network
from quantlab.quantize.ptq import apply_techniques
from quantlab.quantize.symmetric import activation_signs, activation_widths, width_label, width_name
from quantlab.statistics import paired

SETTINGS = [((4, 8), False), ((4, 8), True), ((3, 8), True), ((2, 8), True), ((4, 4), True)]
COMBINATIONS = [(), ("equalize",), ("bias_correction",), ("equalize", "bias_correction"), ("adaround",),
                ("adaround", "bias_correction"), ("equalize", "adaround", "bias_correction")]
LOGIT_BITS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, help="AdaRound's steps per layer (default: ptq.iterations)")
    parser.add_argument("--only", help='one setting, e.g. "W4A8 per channel"')
    parser.add_argument("--calib", default="mse", help="the calibration method of every network (default mse)")
    args = parser.parse_args()
    params = load_params()
    ptq = params.ptq if args.iterations is None else dataclasses.replace(params.ptq, iterations=args.iterations)
    state = load_state(paths.model("float"), "float")
    images = calibration_images(load_npz(paths.DATASET), params.data.validation, params.seed,
                                params.profile.calib_images, params.profile.calib_selection)
    profiles = load_profiles(paths.profile("float"), "activations")
    splits, _ = evaluation_images(params.data.validation, params.seed)
    if "validation" not in splits:
        raise UserError("the techniques are chosen on the validation images: set data.validation above 0")
    reference = {name: predict(load_model(state), split) for name, split in splits.items()}
    results = []
    for (weight_bits, activation_bits), per_channel in SETTINGS:
        setting = f"{width_name(weight_bits, activation_bits)} {'per channel' if per_channel else 'per tensor'}"
        if args.only and args.only != setting:
            continue
        widths, signs = activation_widths(activation_bits, LOGIT_BITS), activation_signs(per_channel)
        rows = []
        for combination in COMBINATIONS:
            start = time.perf_counter()
            chosen = dataclasses.replace(ptq, equalize="equalize" in combination,
                                         bias_correction="bias_correction" in combination,
                                         rounding="adaround" if "adaround" in combination else "nearest")
            ready = apply_techniques(state, images, profiles, calibrator(args.calib), widths, signs, weight_bits,
                                     per_channel, chosen, params.profile.bins, params.seed)
            seconds = time.perf_counter() - start
            network = quantize_network(ready.state, ready.activations, weight_bits, per_channel,
                                       Provenance("float", args.calib, "trained", "bench", list(combination)),
                                       ready.integers)
            predictions = {name: predict(FloatRescaleNet(network), split) for name, split in splits.items()}
            right = {name: (predictions[name] == split.y).numpy() for name, split in splits.items()}
            float_right = {name: (reference[name] == split.y).numpy() for name, split in splits.items()}
            test = paired(right["test"], float_right["test"], seed=params.seed)
            rows.append({"techniques": list(combination), "seconds": round(seconds, 1),
                         "validation": round(100 * right["validation"].mean(), 2),
                         "test": round(100 * right["test"].mean(), 2), "delta": test.delta, "low": test.low,
                         "high": test.high, "layers": ready.diagnostics})
            names = " + ".join(TECHNIQUES[name] for name in combination) or "nearest"
            print(f"{setting:<18} {names:<70} val {rows[-1]['validation']:6.2f}  test {rows[-1]['test']:6.2f}  "
                  f"{test.delta:+.2f} [{test.low:+.2f}, {test.high:+.2f}]  {seconds:5.1f} s", flush=True)
        best = max(rows, key=lambda row: row["validation"])  # the choice sees no test image
        print(f"{setting:<18} chosen on validation: {' + '.join(best['techniques']) or 'nearest'}, test "
              f"{best['test']:.2f}, {best['delta']:+.2f} [{best['low']:+.2f}, {best['high']:+.2f}] against float",
              flush=True)
        results.append({"setting": setting, "width": width_label(width_name(weight_bits, activation_bits)),
                        "per_channel": per_channel, "rows": rows, "chosen": best["techniques"]})
    print(json.dumps({"float_test": round(100 * float((reference["test"] == splits["test"].y).float().mean()), 2),
                      "iterations": ptq.iterations, "calib": args.calib, "settings": results}, sort_keys=True))


if __name__ == "__main__":
    run_main(main)
