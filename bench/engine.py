"""Benchmark: the bit-exact integer engine against the float model on the 10,000 test images, in one run;
ONNX Runtime on the export's model.onnx, next to the engine in ONNX Runtime's rounding (their logits must be
equal); and the standalone NumPy runner on the same images (its logits must be the engine's).
Goals: the engine within the float model's time (best of 3 each, in this one run); the runner within 2 s.

Run after `dvc repro` (it reads data/, models/ and export/): python -m bench.engine
"""

import time

import numpy as np
import torch

from bench import verdict
from quantlab import paths
from quantlab.evaluation import Split, outputs
from quantlab.inference import export_format, onnx_graph, runner
from quantlab.inference.engine import FixedPointEngine
from quantlab.inference.fixed_point import ONNXRUNTIME
from quantlab.io import load_npz
from quantlab.stage import run_main
from quantlab.variants import BY_NAME, fixed_point_engine

GOAL_RATIO = 1.0
RUNNER_GOAL_S = 2.0


def best_of(repeats: int, work) -> tuple[float, torch.Tensor]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    dataset = load_npz(paths.DATASET, ["test_x", "test_y"])
    test = Split.of(dataset["test_x"], dataset["test_y"], torch.device("cpu"))
    model, engine = BY_NAME["float"].build(), fixed_point_engine("float")
    float_time, _ = best_of(3, lambda: outputs(model, test))
    engine_time, engine_logits = best_of(3, lambda: outputs(engine, test))
    manifest, arrays = export_format.read(paths.export("float"))
    session = onnx_graph.session(onnx_graph.load(paths.export("float"), manifest))
    onnx_time, onnx_logits = best_of(3, lambda: onnx_graph.run(session, manifest, dataset["test_x"]))
    rounded = FixedPointEngine(manifest, arrays, ONNXRUNTIME)
    rounded_time, rounded_logits = best_of(3, lambda: outputs(rounded, test))
    start = time.perf_counter()
    runner_logits = runner.run(manifest, arrays, dataset["test_x"])
    runner_time = time.perf_counter() - start
    same = np.array_equal(runner_logits, engine_logits.numpy())
    ratio = engine_time / float_time
    print(f"{len(test)} test images, {torch.get_num_threads()} threads, best of 3:")
    print(f"  float model              {float_time:6.2f} s")
    print(f"  integer engine           {engine_time:6.2f} s   {ratio:.2f}x float, goal <= {GOAL_RATIO:.1f}x: "
          f"{verdict(ratio <= GOAL_RATIO)}")
    print(f"  engine, ORT's rounding   {rounded_time:6.2f} s   {rounded_time / float_time:.2f}x float")
    print(f"  ONNX Runtime (model.onnx){onnx_time:6.2f} s   {onnx_time / float_time:.2f}x float, logits identical "
          f"to the engine's in its rounding: {np.array_equal(onnx_logits, rounded_logits.numpy())} "
          f"(CPU: {', '.join(onnx_graph.cpu_flags()) or 'no AVX2'})")
    print(f"  standalone NumPy runner  {runner_time:6.2f} s   (once) goal <= {RUNNER_GOAL_S:.0f} s: "
          f"{verdict(runner_time <= RUNNER_GOAL_S)}, logits identical to the engine's: {same}")


if __name__ == "__main__":
    run_main(main)
