"""Stage quantize_weights@<model>: symmetric weights of `quant.weight_bits` bits, per tensor (or per output
channel with `quant.per_channel`): S_W = max|W| / (2^(b-1) - 1), q = clamp(round(W / S_W), -2^(b-1), 2^(b-1) - 1).
With `calib=ema`, the weights are those of the model's quantization-aware fine-tune."""

import sys

from quantlab import paths
from quantlab.architecture import model_name_argument
from quantlab.config import load_params
from quantlab.errors import run_main
from quantlab.io import load_state, save_npz
from quantlab.quant import quantize_weights


def main() -> None:
    model_name = model_name_argument(sys.argv, "quantize_weights")
    params = load_params()
    quant = params.quant
    arrays = quantize_weights(load_state(paths.quantized_state(model_name, params)), quant.weight_bits,
                              quant.per_channel)
    save_npz(paths.quant_weights(model_name), arrays)


if __name__ == "__main__":
    run_main(main)
