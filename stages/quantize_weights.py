"""Stage quantize_weights@<model>: symmetric weights of `quant.weight_bits` bits, per tensor (or per output
channel with `quant.per_channel`): S_W = max|W| / (2^(b-1) - 1), q = clamp(round(W / S_W), -2^(b-1), 2^(b-1) - 1).
Both the trained model's weights (weights.npz) and those of its quantization-aware fine-tune at the same bits
(qat_weights.npz, what `calib=ema` uses), so that switching `calib` never reruns this stage."""

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
    for state, out in ((paths.model(model_name), paths.quant_weights(model_name)),
                       (paths.qat_state(model_name, params), paths.qat_weights(model_name))):
        save_npz(out, quantize_weights(load_state(state), quant.weight_bits, quant.per_channel))


if __name__ == "__main__":
    run_main(main)
