"""Stage evaluate: test accuracy of every variant on all test images (metrics/accuracy.json); the integer
engine's agreement with the float-rescale forward (metrics/engine.json); per-class accuracy and confusion
matrices of the float and the fully quantized network (DVC plots)."""

import pandas as pd
import torch

from quantlab import paths
from quantlab.errors import run_main
from quantlab.evaluation import Split, accuracy, outputs
from quantlab.io import load_npz, save_csv, save_json
from quantlab.variants import ENGINE_REFERENCES, PIXEL_VARIANTS, VARIANTS, build, integer_engine

# The two variants whose per-class accuracy and confusion matrix are plotted.
PLOTTED = {"float": "float", "quant": "quant_weights_activations"}


def agreement(engine: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> dict:
    """How closely the engine's integer logits follow the float-rescale forward's (both in output LSBs)."""
    difference = (engine.to(torch.int64) - reference.to(torch.int64)).abs()
    return {"accuracy": accuracy(engine.argmax(1), labels),
            "identical_predictions": round((engine.argmax(1) == reference.argmax(1)).double().mean().item(), 6),
            "identical_logits": round((difference == 0).double().mean().item(), 6),
            "max_logit_diff_lsb": int(difference.max().item())}


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, classes) -> pd.DataFrame:
    return pd.DataFrame({"class": classes, "accuracy": [accuracy(predictions[labels == c], labels[labels == c])
                                                        for c in range(len(classes))]})


def main() -> None:
    dataset = load_npz(paths.DATASET)
    test = Split.of(dataset["test_x"], dataset["test_y"], torch.device("cpu"))
    logits = {variant: outputs(build(variant), test, pixels=variant in PIXEL_VARIANTS) for variant in VARIANTS}
    predictions = {variant: values.argmax(1) for variant, values in logits.items()}
    accuracies = {variant: accuracy(predictions[variant], test.y) for variant in VARIANTS}
    save_json(paths.ACCURACY, accuracies)
    engines = {"float": logits["integer_engine"],
               "bias": outputs(integer_engine("bias"), test, pixels=True)}
    save_json(paths.ENGINE, {model: {"reference": reference, **agreement(engines[model], logits[reference], test.y)}
                             for model, reference in ENGINE_REFERENCES.items()})
    classes = dataset["classes"]
    for name, variant in PLOTTED.items():
        save_csv(paths.PLOTS / "per_class" / f"{name}.csv", per_class_accuracy(predictions[variant], test.y, classes))
        save_csv(paths.PLOTS / "confusion" / f"{name}.csv",
                 pd.DataFrame({"actual": classes[test.y.numpy()], "predicted": classes[predictions[variant].numpy()]}))
    print("test accuracy (%):", ", ".join(f"{variant} {value:.2f}" for variant, value in accuracies.items()))


if __name__ == "__main__":
    run_main(main)
