"""The quantized network: one typed artifact, written by the stage that decides it and read by every stage after.

    quant/<model>/network.json   provenance (model, calibration method, which float weights from which file),
                                 every layer's weight bits, the granularity, and every activation's bits, sign,
                                 threshold T and scale S = T / qmax
    quant/<model>/network.npz    every layer's integer weight (int8 storage) and scale S_W (one, or one per
                                 output channel); where a layer has a bias, the bias as trained and as int32 on
                                 the accumulator's scale, q_b = round(b / (S_W S_in))

Whatever produces a quantized network (a calibration method, a quantization-aware fine-tune, a post-training
technique) writes these two files with `QuantizedNetwork.save`; the export, the evaluation and the report read
them with `QuantizedNetwork.load`, which checks them against the architecture, and read nothing else.
"""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from quantlab.architecture import ACTIVATIONS, LAYER_NAMES, LAYERS, MODELS, input_of
from quantlab.data import normalize
from quantlab.errors import UserError
from quantlab.io import load_json, load_npz, save_json, save_npz
from quantlab.quantize.symmetric import (
    BITS,
    bias_scale,
    channel_shaped,
    int_range,
    quantize,
    quantize_bias,
    quantize_weight,
    scale_for,
)

FORMAT = "quantlab-quantized-network"
FILES = ("network.json", "network.npz")


@dataclass(frozen=True)
class Activation:
    bits: int
    signed: bool
    threshold: float  # T: values beyond +-T are clipped

    @property
    def scale(self) -> float:
        return float(scale_for(self.threshold, self.bits, self.signed))

    @property
    def range(self) -> tuple[int, int]:
        return int_range(self.bits, self.signed)


@dataclass(frozen=True)
class QuantizedLayer:
    weight: np.ndarray  # int8 holding integers of the network's weight bits, in the float weight's shape
    scale: np.ndarray  # S_W, float64: shape () per tensor, (outputs,) per channel
    bias: np.ndarray | None = None  # the float bias as trained (the lab's "weights quantized, bias not")
    q_bias: np.ndarray | None = None  # int32, round(bias / (S_W S_in)), added to the integer accumulator


@dataclass(frozen=True)
class Provenance:
    model: str  # a name in quantlab.architecture.MODELS
    calib: str  # the calibration method that chose the activation thresholds
    weights: str  # which float weights were quantized: a calibration.Weights, "trained" or "qat" (the fine-tune)
    source: str  # the file they came from
    techniques: list[str] = dataclasses.field(default_factory=list)  # post-training techniques applied, in order


@dataclass(frozen=True)
class QuantizedNetwork:
    provenance: Provenance
    weight_bits: dict[str, int]  # per layer
    per_channel: bool
    layers: dict[str, QuantizedLayer]
    activations: dict[str, Activation]

    def multiplier(self, layer_name: str) -> np.ndarray:
        """M = S_in * S_W / S_out of a layer: S_in the scale of the activation entering it, S_out its own."""
        return (self.activations[input_of(layer_name)].scale * self.layers[layer_name].scale
                / self.activations[layer_name].scale)

    def bias_scale(self, layer_name: str) -> np.ndarray:
        """S_bias = S_W * S_in: the unit of the layer's integer accumulator."""
        return bias_scale(self.layers[layer_name].scale, self.activations[input_of(layer_name)].scale)

    def input_table(self) -> np.ndarray:
        """The quantized input q_x of each of the 256 pixel values (int16), normalized as the float model's input."""
        pixels = normalize(np.arange(256, dtype=np.uint8)).astype(np.float64)
        first = self.activations["input"]
        return quantize(pixels, first.scale, first.bits, first.signed).astype(np.int16)

    def dequantized_state(self) -> dict[str, np.ndarray]:
        """The float state dict with every weight replaced by S_W q_W: the "quantized weights" model."""
        state = {}
        for name, layer in self.layers.items():
            scale = channel_shaped(layer.scale, layer.weight.ndim, 0)
            state[f"{name}.weight"] = (layer.weight * scale).astype(np.float32)
            if layer.bias is not None:
                state[f"{name}.bias"] = layer.bias
        return state

    def save(self, directory: Path) -> None:
        save_npz(directory / FILES[1], {f"{name}.{key}": value for name, layer in self.layers.items()
                                        for key, value in vars(layer).items() if value is not None})
        save_json(directory / FILES[0], {
            "format": FORMAT, "provenance": dataclasses.asdict(self.provenance), "weight_bits": self.weight_bits,
            "per_channel": self.per_channel,
            "activations": {name: {**dataclasses.asdict(a), "scale": a.scale} for name, a in self.activations.items()}})

    @classmethod
    def load(cls, directory: Path) -> Self:
        """The network saved in `directory`, checked against the architecture: a damaged or hand-edited file
        is one clear error, never a silently different network."""
        meta, arrays = load_json(directory / FILES[0]), load_npz(directory / FILES[1])
        where = f"{directory}/{FILES[0]}"
        try:
            check(meta.get("format") == FORMAT, f"is not a {FORMAT} file")
            activations = {name: Activation(**{k: v for k, v in record.items() if k != "scale"})
                           for name, record in meta["activations"].items()}
            network = cls(Provenance(**meta["provenance"]), meta["weight_bits"], meta["per_channel"],
                          {layer.name: QuantizedLayer(*(arrays.pop(f"{layer.name}.{key}", None)
                                                        for key in ("weight", "scale", "bias", "q_bias")))
                           for layer in LAYERS}, activations)
            check(not arrays, f"has unknown arrays {sorted(arrays)} in {FILES[1]}")
            network.validate()
            check(all(meta["activations"][name]["scale"] == a.scale for name, a in activations.items()),
                  "has a scale that does not follow from its threshold")
        except (KeyError, TypeError) as error:
            raise UserError(f"{where} is incomplete ({error!r}): rerun the stage that wrote it") from None
        except ValueError as error:
            raise UserError(f"{where} {error}: rerun the stage that wrote it") from None
        return network

    def validate(self) -> None:
        """Raise ValueError where the network does not fit the architecture or its own bit widths."""
        check(self.provenance.model in MODELS, f"names an unknown model {self.provenance.model!r}")
        check(list(self.activations) == list(ACTIVATIONS), f"must describe the activations {', '.join(ACTIVATIONS)}")
        for name, a in self.activations.items():
            check(a.bits in BITS and isinstance(a.signed, bool) and math.isfinite(a.threshold)
                  and a.threshold >= 0, f"has an invalid quantization of activation {name}")
        check(isinstance(self.weight_bits, dict) and list(self.weight_bits) == list(LAYER_NAMES)
              and all(bits in BITS for bits in self.weight_bits.values()),
              f"must give the weight bits ({BITS.start}-{BITS.stop - 1}) of the layers {', '.join(LAYER_NAMES)}")
        for spec in LAYERS:
            layer = self.layers[spec.name]
            shape = spec.weight_shape
            qmin, qmax = int_range(self.weight_bits[spec.name])
            check(layer.weight is not None and layer.weight.dtype == np.int8 and layer.weight.shape == shape,
                  f"needs {spec.name}.weight as int8 of shape {shape}")
            check(qmin <= layer.weight.min() and layer.weight.max() <= qmax,
                  f"has {spec.name}.weight beyond {self.weight_bits[spec.name]} bits")
            check(layer.scale is not None and layer.scale.shape == ((spec.outputs,) if self.per_channel else ())
                  and bool(np.all(layer.scale > 0)) and bool(np.all(np.isfinite(layer.scale))),
                  f"needs a positive, finite {spec.name}.scale {'per channel' if self.per_channel else 'per tensor'}")
            check((layer.bias is None) == (layer.q_bias is None) and (layer.q_bias is None or (
                layer.q_bias.dtype == np.int32 and layer.q_bias.shape == layer.bias.shape == (spec.outputs,))),
                  f"needs {spec.name}.bias and {spec.name}.q_bias (int32) of shape ({spec.outputs},) together")


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def activations_of(thresholds: dict[str, float], widths: dict[str, int],
                   signs: dict[str, bool]) -> dict[str, Activation]:
    return {name: Activation(widths[name], signs[name], thresholds[name]) for name in ACTIVATIONS}


def quantize_network(state: dict[str, np.ndarray], activations: dict[str, Activation],
                     weight_bits: dict[str, int], per_channel: bool, provenance: Provenance,
                     integers: dict[str, np.ndarray] | None = None,
                     scales: dict[str, np.ndarray] | None = None) -> QuantizedNetwork:
    """Every layer's weight quantized at its `weight_bits` (S_W = max|W| / qmax, per tensor or per channel, or
    the layer's scale in `scales`; rounded to nearest, or the `integers` a post-training technique learned on that
    scale) and every bias as int32 on its accumulator's scale S_W * S_in; the activations as given."""
    layers = {}
    for layer in LAYERS:
        q, scale = quantize_weight(state[f"{layer.name}.weight"], weight_bits[layer.name], per_channel,
                                   None if scales is None else scales[layer.name])
        q = q if integers is None else integers[layer.name]
        bias = state.get(f"{layer.name}.bias")
        try:
            q_bias = None if bias is None else quantize_bias(bias, scale, activations[input_of(layer.name)].scale)
        except OverflowError as error:
            raise UserError(f"{layer.name}: {error}; check the scales of {provenance.source}") from None
        layers[layer.name] = QuantizedLayer(q, scale, bias, q_bias)
    return QuantizedNetwork(provenance, weight_bits, per_channel, layers, activations)
