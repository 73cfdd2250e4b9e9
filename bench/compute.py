"""Benchmark: what the pinned arithmetic (quantlab.compute) costs. In one run, alternating pinned and unpinned,
each in a fresh process (the libraries read the pin when they load): one epoch of float training on a share of
the training images, the same with QAT's fake quantization at W4/A4 (EMA of the mse ranges, as the qat stage),
and the float model's and the integer engine's forward on the 10,000 test images. Prints the best of
--repeat runs of each and the ratio pinned / unpinned.

Run after `dvc repro` (it reads data/, models/ and export/): python -m bench.compute [--repeat N] [--fraction F]
"""

import argparse
import json
import subprocess
import sys

from quantlab.stage import run_main

WORKER = """
import json, sys, time
from quantlab import compute
compute.pin(sys.argv[1] == "pinned")
import torch
compute.set_threads()
from quantlab import paths
from quantlab.architecture import MODELS, load_state
from quantlab.evaluation import Split, outputs
from quantlab.io import load_npz
from quantlab.model import Net, load_model
from quantlab.quantize.qat import QATNet
from quantlab.quantize.symmetric import activation_widths
from quantlab.training import fit, make_deterministic, training_subset
from quantlab.variants import BY_NAME, fixed_point_engine

fraction = float(sys.argv[2])
data = load_npz(paths.DATASET, ["train_x", "train_y", "test_x", "test_y"])
cpu = torch.device("cpu")
train = training_subset(Split.of(data["train_x"], data["train_y"], cpu), fraction, 0)
test = Split.of(data["test_x"], data["test_y"], cpu)
few = Split(test.x[:500], test.y[:500])
seconds = {}

def timed(name, work):
    start = time.perf_counter()
    work()
    seconds[name] = time.perf_counter() - start

def epoch(model):
    make_deterministic(0)
    fit(model, train, few, epochs=1, batch_size=128, lr=0.001, weight_decay=0.0, flip=True, seed=0, desc=" ")

timed("training, one epoch", lambda: epoch(Net(MODELS["float"])))
trained = load_model(load_state(paths.model("float"), "float"))
timed("QAT W4/A4, one epoch", lambda: epoch(QATNet(trained, 4, activation_widths(4, None), False, False, 0.99, 0,
                                                    "mse", 0, None)))
model, engine = BY_NAME["float"].build(), fixed_point_engine("float")
timed("float model, 10,000 test images", lambda: outputs(model, test))
timed("integer engine, 10,000 test images", lambda: outputs(engine, test))
print(json.dumps(seconds))
"""


def measure(pinned: bool, fraction: float) -> dict[str, float]:
    result = subprocess.run([sys.executable, "-c", WORKER, "pinned" if pinned else "unpinned", str(fraction)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, metavar="N", help="runs of each (default 3), alternating")
    parser.add_argument("--fraction", type=float, default=0.25, help="share of the training images (default 0.25)")
    args = parser.parse_args()
    runs = {True: [], False: []}
    for i in range(args.repeat):
        for pinned in (True, False) if i % 2 == 0 else (False, True):
            runs[pinned].append(measure(pinned, args.fraction))
    print(f"pinned (AVX2 kernels, 2 threads) against unpinned, best of {args.repeat}, alternating:")
    for work in runs[True][0]:
        pinned, unpinned = (min(run[work] for run in runs[mode]) for mode in (True, False))
        print(f"  {work:<36} {pinned:6.2f} s  {unpinned:6.2f} s   ratio {pinned / unpinned:.2f}")


if __name__ == "__main__":
    run_main(main)
