"""Stage qat: quantization-aware fine-tuning with learned activation ranges (moving averages, or learned step
sizes initialized from the INITIAL calibration of the model's profile), distilled with weight `qat.distill` from
the trained model it starts from (quantlab.training.distillation), starting from the trained models: the
float model at every width of `compare.widths` (the comparison's QAT row) and at the configured bits, the bias
model at the configured bits (both for `calib=ema`). Writes each fine-tuned state, its learned ranges and its
training curve."""

import pandas as pd

from quantlab import paths
from quantlab.architecture import load_state
from quantlab.config import Params
from quantlab.data import without_validation
from quantlab.errors import UserError
from quantlab.evaluation import Split
from quantlab.io import load_npz, save_csv, save_json, save_npz
from quantlab.model import load_model, state_to_arrays
from quantlab.profiling import load_profiles
from quantlab.quantize.calibration import LEARNED_STEP, calibrator
from quantlab.quantize.qat import QATNet
from quantlab.quantize.symmetric import Setting, activation_signs, activation_widths
from quantlab.stage import load_params, run_main
from quantlab.training import (
    cross_entropy,
    device,
    distillation,
    fit,
    make_deterministic,
    steps_per_epoch,
    training_subset,
)

LOG_EVERY = 25  # steps between the points of a training curve
# Learned step sizes start from this post-training method's thresholds: the least squared quantization error,
# which LSQ's training then trades against the loss (the validation choice is made later, downstream).
INITIAL = "mse"


def runs(params: Params) -> list[tuple[str, int, int]]:
    """(model, weight bits, activation bits) of every fine-tune, each once."""
    configured = (params.quant.weight_bits, params.quant.activation_bits)
    widths = dict.fromkeys([*(tuple(w) for w in params.compare.widths), configured])
    return [("float", *width) for width in widths] + [("bias", *configured)]


def fine_tune(model_name: str, weight_bits: int, activation_bits: int, train: Split, test: Split,
              params: Params) -> tuple[dict, dict, list[dict]]:
    """The fine-tuned state, the record of its learned activation thresholds and its training history."""
    make_deterministic(params.seed)
    target = device(params.compute.device)
    trained = load_state(paths.model(model_name), model_name)
    model = load_model(trained).to(target)
    quant, qat = params.quant, params.qat
    widths = activation_widths(activation_bits, quant.logit_bits)
    signs = activation_signs(quant.unsigned_activations)
    initial = calibrator(INITIAL).thresholds(load_profiles(paths.profile(model_name), "activations"), widths, signs) \
        if qat.ranges == LEARNED_STEP else None
    network = QATNet(model, weight_bits, widths, quant.per_channel, quant.unsigned_activations,
                     qat.decay, qat.start, qat.ranges, params.seed, initial).to(target)
    criterion = distillation(load_model(trained).to(target), qat.distill) if qat.distill else cross_entropy
    history = fit(network, train, test, epochs=qat.epochs, batch_size=params.train.batch_size, lr=qat.lr,
                  weight_decay=params.train.weight_decay, flip=params.train.flip, seed=params.seed,
                  desc=f"qat@{model_name} {Setting(weight_bits, activation_bits).name}", log_every=LOG_EVERY,
                  criterion=criterion)
    learned = {"thresholds": network.learned_thresholds(), "bits": widths, "signed": signs,
               "weight_bits": weight_bits, "fake_quant_test_accuracy": history[-1]["test_accuracy"]}
    return state_to_arrays(model.cpu()), learned, history


def main() -> None:
    params = load_params()
    dataset = without_validation(load_npz(paths.DATASET), params.data.validation, params.seed)
    target = device(params.compute.device)
    train = training_subset(Split.of(dataset["train_x"], dataset["train_y"], target), params.train.fraction,
                            params.seed)
    test = Split.of(dataset["test_x"], dataset["test_y"], target)
    steps = params.qat.epochs * steps_per_epoch(len(train), params.train.batch_size)
    if params.qat.start >= steps:  # nothing would be fake-quantized: a float fine-tune reported as QAT
        raise UserError(f"params.yaml: qat.start must be below the fine-tune's {steps} steps ({params.qat.epochs} "
                        f"epoch(s) of {len(train)} images in batches of {params.train.batch_size}), got "
                        f"{params.qat.start}")
    for model_name, weight_bits, activation_bits in runs(params):
        width = Setting(weight_bits, activation_bits).name
        state, learned, history = fine_tune(model_name, weight_bits, activation_bits, train, test, params)
        save_npz(paths.qat(model_name, width).with_suffix(".npz"), state)
        save_json(paths.qat(model_name, width).with_suffix(".json"), learned)
        save_csv(paths.qat_history(model_name, width), pd.DataFrame(history))


if __name__ == "__main__":
    run_main(main)
