"""Stage bias: fc3's bias of the `bias` model as int32 on the scale of fc3's integer accumulator,
S_bias = S_W * S_in (S_in: the scale of fc2's output, which feeds fc3), q_b = round(b / S_bias)."""

from quantlab import paths
from quantlab.config import load_params
from quantlab.errors import UserError, run_main
from quantlab.io import load_json, load_npz, load_state, save_npz
from quantlab.quant import bias_scale, quantize_bias


def quantized_fc3_bias(bias, weight_scale, input_scale: float) -> dict:
    try:
        q = quantize_bias(bias, weight_scale, input_scale)
    except OverflowError as error:
        raise UserError(f"{error}; check the bias model's scales in {paths.QUANT_BIAS.parent}") from None
    return {"fc3.bias": q, "fc3.bias_scale": bias_scale(weight_scale, input_scale)}


def main() -> None:
    params = load_params()
    model = load_state(paths.quantized_state("bias", params))
    weights = load_npz(paths.quant_weights("bias", params))
    activations = load_json(paths.quant_activations("bias"))
    save_npz(paths.QUANT_BIAS, quantized_fc3_bias(model["fc3.bias"], weights["fc3.scale"],
                                                  activations["scales"]["fc2"]))


if __name__ == "__main__":
    run_main(main)
