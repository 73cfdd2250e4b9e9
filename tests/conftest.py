"""The tests run under the pinned arithmetic (quantlab.compute), whatever params.yaml and the environment say:
pytest loads this file before any test module imports torch or NumPy."""

from quantlab import compute

compute.pin(reproducible=True)

import torch  # noqa: E402  (after the pin)

compute.set_threads()
assert torch.get_num_threads() == compute.THREADS
