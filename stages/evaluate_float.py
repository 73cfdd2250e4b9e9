"""Stage evaluate_float: test accuracy of the two float models (evaluation/float.json), and the float
model's per-class accuracy and confusion matrix (DVC plots). Apart from evaluate, because nothing about
quantization changes them: switching `calib` or the bit widths never reruns this stage."""

from quantlab import paths
from quantlab.architecture import load_state
from quantlab.errors import run_main
from quantlab.evaluation import FLOAT_VARIANTS, accuracy, predict, save_class_plots, test_split
from quantlab.io import save_json
from quantlab.model import load_model


def main() -> None:
    test, classes = test_split(with_classes=True)
    predictions = {variant: predict(load_model(load_state(paths.model(model), model), model), test)
                   for variant, model in FLOAT_VARIANTS.items()}
    save_json(paths.FLOAT_ACCURACY, {variant: accuracy(p, test.y) for variant, p in predictions.items()})
    save_class_plots("float", predictions["float"], test.y, classes)


if __name__ == "__main__":
    run_main(main)
