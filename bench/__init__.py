"""Benchmark scripts that print figures: python -m bench.<name>."""


def verdict(met: bool) -> str:
    """How every benchmark states whether a goal was met."""
    return "met" if met else "MISSED"
