"""Benchmark scripts that print figures: python -m bench.<name>. They run under the pipeline's arithmetic
(quantlab.compute), as params.yaml's compute.reproducible says."""

from quantlab.compute import pin_from_params

pin_from_params()


def verdict(met: bool) -> str:
    """How every benchmark states whether a goal was met."""
    return "met" if met else "MISSED"
