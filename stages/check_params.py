"""Stage check_params: params.yaml read and checked whole. Every stage checks it when it runs, but a change
that no stage depends on (a misspelled key such as `calibration: kl` beside `calib`) would otherwise run
nothing and fail nothing: this stage depends on every param, so `dvc repro` stops on it with one line."""

from quantlab.config import load_params
from quantlab.errors import run_main


def main() -> None:
    load_params()


if __name__ == "__main__":
    run_main(main)
