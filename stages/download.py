"""Stage download: fetch and verify cifar-10-python.tar.gz, then store its images as data/cifar10.npz."""

from quantlab import paths
from quantlab.data import fetch_archive, read_archive
from quantlab.io import save_npz
from quantlab.stage import load_params, run_main


def main() -> None:
    params = load_params()
    archive = fetch_archive(params.data.url, params.data.md5, paths.DOWNLOADS)
    dataset = read_archive(archive)
    save_npz(paths.DATASET, dataset)
    print(f"{archive}: {len(dataset['train_y'])} training and {len(dataset['test_y'])} test images "
          f"-> {paths.DATASET}")


if __name__ == "__main__":
    run_main(main)
