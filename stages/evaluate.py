"""Stage evaluate: test accuracy of every variant on all test images (metrics/accuracy.json), per-class
accuracy and confusion matrices of the float and the fully quantized network (DVC plots)."""

import pandas as pd
import torch

from quantlab import paths
from quantlab.errors import run_main
from quantlab.evaluation import Split, accuracy, predict
from quantlab.io import load_npz, save_csv, save_json
from quantlab.variants import VARIANTS, build

# The two variants whose per-class accuracy and confusion matrix are plotted.
PLOTTED = {"float": "float", "quant": "quant_weights_activations"}


def evaluate(test: Split) -> dict[str, torch.Tensor]:
    """Predictions of every variant on the test split."""
    return {variant: predict(build(variant), test) for variant in VARIANTS}


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, classes) -> pd.DataFrame:
    return pd.DataFrame({"class": classes, "accuracy": [accuracy(predictions[labels == c], labels[labels == c])
                                                        for c in range(len(classes))]})


def main() -> None:
    dataset = load_npz(paths.DATASET)
    test = Split.of(dataset["test_x"], dataset["test_y"], torch.device("cpu"))
    predictions = evaluate(test)
    accuracies = {variant: accuracy(predictions[variant], test.y) for variant in VARIANTS}
    save_json(paths.ACCURACY, accuracies)
    classes = dataset["classes"]
    for name, variant in PLOTTED.items():
        save_csv(paths.PLOTS / "per_class" / f"{name}.csv", per_class_accuracy(predictions[variant], test.y, classes))
        save_csv(paths.PLOTS / "confusion" / f"{name}.csv",
                 pd.DataFrame({"actual": classes[test.y.numpy()], "predicted": classes[predictions[variant].numpy()]}))
    print("test accuracy (%):", ", ".join(f"{variant} {value:.2f}" for variant, value in accuracies.items()))


if __name__ == "__main__":
    run_main(main)
