from quantlab.stage import load_params, run_main

"""Stage check_params: params.yaml read and checked whole. Every stage checks it when it runs, but a change
that no stage depends on (a misspelled key such as `calibration: kl` beside `calib`) would otherwise run
nothing and fail nothing: this stage depends on every param, so `dvc repro` stops on it with one line."""



def main() -> None:
    load_params()


if __name__ == "__main__":
    run_main(main)
