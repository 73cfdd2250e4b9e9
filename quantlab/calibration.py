"""Calibration methods: how the clipping threshold T of an activation is chosen from its profile.

Every method reads only the tensor's persisted profile (`TensorProfile`: range, moments and histogram), so
switching `calib` never reruns the network. The scale follows from the threshold: S = T / qmax.
Adding a method is one subclass of `Calibrator` decorated with `@register("name")`.
"""

from __future__ import annotations

from quantlab.errors import UserError
from quantlab.profiling import TensorProfile

METHODS: dict[str, type["Calibrator"]] = {}


def register(name: str):
    def add(cls):
        cls.name = name
        METHODS[name] = cls
        return cls
    return add


class Calibrator:
    """Base class: `threshold(profile, bits, signed)` returns T >= 0; values beyond +-T are clipped."""

    name = ""

    def threshold(self, profile: TensorProfile, bits: int, signed: bool = True) -> float:
        raise NotImplementedError


@register("minmax")
class MinMax(Calibrator):
    """The actual range: T = max(|min x|, |max x|). Nothing is clipped; outliers stretch the scale."""

    def threshold(self, profile, bits, signed=True):
        return profile.absmax


def calibrator(name: str) -> Calibrator:
    """The registered method `name`; an unknown name is an error that lists the valid ones."""
    if name not in METHODS:
        raise UserError(f"unknown calibration method {name!r}: set calib to one of {', '.join(METHODS)}")
    return METHODS[name]()
