"""Stage quantize_weights@<model>: symmetric per-tensor int8 weights, S_W = max|W| / 127,
q = clamp(round(W / S_W), -128, 127); stores the integer weights and their scales."""

import sys

from quantlab import paths
from quantlab.errors import run_main
from quantlab.io import load_npz, save_npz
from quantlab.model import model_name_argument
from quantlab.quant import quantize_weights


def main() -> None:
    model_name = model_name_argument(sys.argv, "quantize_weights")
    save_npz(paths.quant_weights(model_name), quantize_weights(load_npz(paths.model(model_name))))


if __name__ == "__main__":
    run_main(main)
