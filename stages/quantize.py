"""Stage quantize: each model's quantized network (quant/float/, quant/bias/), decided here once and saved as the
artifact every later stage reads (quantlab.quantize.network). The lab's three steps:

- weights (section III): S_W = max|W| / (2^(b-1) - 1), q = clamp(round(W / S_W), -2^(b-1), 2^(b-1) - 1) at
  `quant.weight_bits`, per tensor or, with `quant.per_channel`, per output channel; a layer that
  `quant.layer_bits` names takes its own weight bits and input bits there (mixed precision);
- activations (section V): S = T / qmax for the input and every layer's output, the clipping threshold T from
  the calibration method `calib`: from the stored histograms, or with `calib=ema` the thresholds learned by
  the quantization-aware fine-tune at the configured bits, whose weights are then the ones quantized;
- bias (section VI): every bias as int32 on its integer accumulator's scale S_bias = S_W * S_in,
  q_b = round(b / S_bias).

With any of the post-training techniques of `ptq` switched on (quantlab.quantize.ptq), they run first, on the
calibration images: equalization (and the activations profiled again), then the weights rounded as
`ptq.rounding` says and the biases corrected, layer by layer.

Beside them, the float model's per-layer diagnostics, for `dvc plots diff` across experiments: every
activation's threshold, clipped share and SQNR on its calibration histogram (plots/layers/activations.csv), and
every layer's weight SQNR (plots/layers/weights.csv).
"""

import numpy as np
import pandas as pd

from quantlab import paths
from quantlab.architecture import MODELS, load_state
from quantlab.config import Params
from quantlab.data import calibration_images
from quantlab.io import load_json, save_csv
from quantlab.profiling import TensorProfile, load_profiles
from quantlab.quantize.calibration import FINE_TUNED, METHODS, TRAINED, calibrator, diagnose, sqnr_db
from quantlab.quantize.network import Provenance, QuantizedNetwork, activations_of, quantize_network
from quantlab.quantize.symmetric import Setting, activation_signs, activation_widths, weight_scales, weight_widths
from quantlab.quantize.techniques import switched_on
from quantlab.stage import load_params, run_main


def quantized(model_name: str, params: Params) -> tuple[QuantizedNetwork, dict[str, np.ndarray],
                                                        dict[str, TensorProfile]]:
    """The quantized network of one model (`model_name` in MODELS), as the params say; and the float state and
    activation profiles it was quantized from (equalized and profiled again where `ptq.equalize` says)."""
    quant = params.quant
    fine_tune = paths.qat(model_name, Setting(quant.weight_bits, quant.activation_bits).name)
    weights = METHODS[params.calib].weights  # the float weights the method's thresholds belong to
    source = {TRAINED: paths.model(model_name), FINE_TUNED: fine_tune.with_suffix(".npz")}[weights]
    state = load_state(source, model_name)
    method = calibrator(params.calib, quant.percentile, load_json(fine_tune.with_suffix(".json"))["thresholds"])
    profiles = load_profiles(paths.profile(model_name), "activations")
    techniques = switched_on(params.ptq)
    provenance = Provenance(model_name, params.calib, weights, source.as_posix(), [t.name for t in techniques])
    widths = activation_widths(quant.activation_bits, quant.logit_bits, quant.layer_bits)
    weight_bits = weight_widths(quant.weight_bits, quant.layer_bits)
    signs = activation_signs(quant.unsigned_activations)
    if not techniques:
        activations = activations_of(method.thresholds(profiles, widths, signs), widths, signs)
        scales = weight_scales(state, weight_bits, quant.per_channel, params.ptq.weight_scale)
        return quantize_network(state, activations, weight_bits, quant.per_channel, provenance, scales=scales), \
            state, profiles
    from quantlab.quantize.ptq import apply_techniques, prepare  # torch, imported only when a technique is on

    start = prepare(state, calibration_images(params), profiles, techniques, params.profile.bins)
    network, _ = apply_techniques(start, method, widths, signs, weight_bits, quant.per_channel, techniques,
                                  params.ptq, params.seed, provenance)
    return network, start.state, start.profiles


def diagnostics(network: QuantizedNetwork, state: dict[str, np.ndarray],
                profiles: dict[str, TensorProfile]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per activation: its threshold T, the share of its calibration values beyond +-T and its SQNR (dB), as the
    comparison's compare/layers.csv states them; per layer: the SQNR (dB) of its quantized weights S_W q_W
    against the float weights, 10 log10(sum W^2 / sum (W - S_W q_W)^2)."""
    activations = pd.DataFrame([{"tensor": name, **diagnose(profiles[name], a.threshold, a.bits, a.signed)}
                                for name, a in network.activations.items()])
    dequantized = network.dequantized_state()

    def weight_sqnr(layer: str) -> float | None:
        weight = state[f"{layer}.weight"].astype(np.float64)
        return sqnr_db(float(np.square(weight).sum()), float(np.square(weight - dequantized[f"{layer}.weight"]).sum()))

    return activations, pd.DataFrame({"layer": list(network.layers), "sqnr_db": list(map(weight_sqnr, network.layers))})


def main() -> None:
    params = load_params()
    decided = {name: quantized(name, params) for name in MODELS}  # all decided before any is written
    for name, (network, _, _) in decided.items():
        network.save(paths.quantized(name))
    for frame, name in zip(diagnostics(*decided["float"]), ("activations", "weights"), strict=True):
        save_csv(paths.PLOTS / "layers" / f"{name}.csv", frame)


if __name__ == "__main__":
    run_main(main)
