"""Stage evaluate_float: the two float models' predictions on the validation and test images
(evaluation/float.npz), their test accuracy (evaluation/float.json), and the float model's per-class accuracy
and confusion matrix (DVC plots). Apart from evaluate, because nothing about quantization changes them:
switching `calib` or the bit widths never reruns this stage."""

from quantlab import paths
from quantlab.evaluation import evaluation_images, predict, save_class_plots, save_predictions
from quantlab.io import save_json
from quantlab.stage import load_params, run_main
from quantlab.statistics import accuracy
from quantlab.variants import FLOAT


def main() -> None:
    params = load_params()
    images, classes = evaluation_images(params.data.validation, params.seed)
    predictions = {}
    for variant in FLOAT:
        model = variant.build()
        predictions[variant.name] = {name: predict(model, split) for name, split in images.items()}
    save_predictions(paths.predictions("float"), predictions)
    test = images["test"]
    save_json(paths.FLOAT_ACCURACY, {variant: accuracy(p["test"], test.y) for variant, p in predictions.items()})
    save_class_plots("float", predictions["float"]["test"], test.y, classes)


if __name__ == "__main__":
    run_main(main)
