"""The pipeline's stages, one module each, run as `python -m stages.<name>`. Importing the package pins the
arithmetic as params.yaml's compute.reproducible says (quantlab.compute), before any stage imports torch or
NumPy."""

from quantlab.compute import pin_from_params

pin_from_params()
