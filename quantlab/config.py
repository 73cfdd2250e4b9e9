"""params.yaml, read into frozen dataclasses that reject unknown keys, missing keys, wrong types and values out
of range, with one line that names the key and says what is valid, instead of silently running with a default.

The names in params.yaml (a calibration method, a rounding, a bit width the integer networks hold) belong to
the modules that define them: quantlab.stage.load_params, which every stage calls, checks them there, after
`read_params` here.
"""

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from quantlab.errors import UserError

PARAMS_FILE = "params.yaml"
MAX_VALIDATION = 25_000  # half of CIFAR-10's training images
# A peak learning rate beyond this moves a weight by more than its whole trained range in one Adam step (about
# lr per step), and far beyond it overflows float32: the bound of every learning rate.
MAX_LR = 10.0
SHOWN = 60  # characters of a bad value quoted in an error


def check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise UserError(f"{PARAMS_FILE}: {key} {message}")


def shown(value) -> str:
    """A value as an error quotes it: its repr, cut to SHOWN characters (a huge list is not printed whole)."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN - 3] + "..."


def _check_lr(key: str, lr: float) -> None:
    check(0 < lr <= MAX_LR, key, f"must be in (0, {MAX_LR:g}], got {lr}")


@dataclass(frozen=True)
class DataParams:
    url: str  # official URL, any http(s) URL, or a local path to cifar-10-python.tar.gz
    md5: str  # expected md5 of that archive
    validation: int  # training images held out, seeded and stratified by class, for every choice (0: none)

    def __post_init__(self):
        check(bool(self.url.strip()), "data.url", "is empty: set it to the archive's URL or local path")
        check(self.url.isprintable(), "data.url", f"holds a control character: {self.url!r}")
        check(0 <= self.validation <= MAX_VALIDATION, "data.validation",
              f"must be between 0 and {MAX_VALIDATION} images, got {self.validation}")
        name = PurePosixPath(urlparse(self.url).path).name
        check(name not in ("", ".", ".."), "data.url",
              f"must end in the archive's file name (cifar-10-python.tar.gz), got {self.url!r}")
        check(bool(re.fullmatch(r"[0-9a-f]{32}", self.md5)), "data.md5",
              f"must be 32 lowercase hex digits, got {self.md5!r}")


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    lr: float  # peak learning rate of the one-cycle schedule
    weight_decay: float
    flip: bool  # random horizontal flips of training images
    fraction: float  # share of the training images used (a seeded random subset), for scaling studies

    def __post_init__(self):
        check(self.epochs >= 1, "train.epochs", f"must be at least 1, got {self.epochs}")
        check(0 < self.fraction <= 1, "train.fraction", f"must be in (0, 1], got {self.fraction}")
        check(1 <= self.batch_size <= MAX_BATCH, "train.batch_size",
              f"must be between 1 and {MAX_BATCH}, got {self.batch_size}")
        _check_lr("train.lr", self.lr)
        # AdamW shrinks a weight by lr * weight_decay per step: from 1 on, by its whole value or more
        check(0 <= self.weight_decay < 1, "train.weight_decay", f"must be in [0, 1), got {self.weight_decay}")


CALIB_SELECTIONS = ("random", "stratified", "first")
MAX_BINS = 2 ** 16  # 2 * 65536 int64 counts (1 MiB) per histogram
MAX_BATCH = 8192  # a training batch of 8192 images needs about 1 GiB for conv1's activations and gradients


@dataclass(frozen=True)
class ProfileParams:
    calib_images: int  # size of the calibration subset of the training set
    calib_selection: str  # how it is chosen: one of CALIB_SELECTIONS
    bins: int  # histogram bins per sign: each histogram has 2*bins bins over [-max|x|, max|x|]

    def __post_init__(self):
        check(self.calib_images >= 1, "profile.calib_images", f"must be at least 1, got {self.calib_images}")
        check(self.calib_selection in CALIB_SELECTIONS, "profile.calib_selection",
              f"is {self.calib_selection!r}; valid: {', '.join(CALIB_SELECTIONS)}")
        # KL's candidates start at 2^bits levels: 256 for 8-bit unsigned activations; KL's cost grows with bins
        check(256 <= self.bins <= MAX_BINS, "profile.bins", f"must be between 256 and {MAX_BINS}, got {self.bins}")


@dataclass(frozen=True)
class QuantParams:
    weight_bits: int
    activation_bits: int
    per_channel: bool  # one weight scale per output channel instead of one per tensor
    unsigned_activations: bool  # post-ReLU outputs on [0, 2^b - 1] instead of [-2^(b-1), 2^(b-1) - 1]
    percentile: float  # the |x| percentile of calib=percentile
    logit_bits: int | None  # bits of the last layer's output (the logits); None: activation_bits, as the lab
    layer_bits: dict  # {layer: [weight bits, input bits] or None}: None keeps the two widths above

    def __post_init__(self):
        check(0 < self.percentile <= 100, "quant.percentile", f"must be in (0, 100], got {self.percentile}")
        _check_layer_bits("quant.layer_bits", self.layer_bits)


def _check_layer_bits(key: str, layer_bits: dict) -> None:
    for layer, pair in layer_bits.items():
        check(pair is None or _is_pair(pair), f"{key}.{layer}", f"must be [weight bits, input bits] or null, got "
              f"{shown(pair)}")


def _is_pair(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_matches(b, int) for b in value)


def _check_widths(key: str, widths: list) -> None:
    check(bool(widths), key, "is empty: list [weight bits, activation bits] pairs")
    for width in widths:
        check(_is_pair(width), key, f"must hold [weight bits, activation bits] pairs, got {shown(width)}")


@dataclass(frozen=True)
class CompareParams:
    methods: list  # calibration methods to compare
    widths: list  # [weight bits, activation bits] pairs

    def __post_init__(self):
        _check_widths("compare.widths", self.widths)


@dataclass(frozen=True)
class QATParams:
    epochs: int
    lr: float  # peak learning rate of the fine-tune's one-cycle schedule
    decay: float  # EMA decay of the activation ranges
    start: int  # the training step from which activations are fake-quantized
    ranges: str  # the calibration method whose batch threshold the EMA tracks, or lsq (quantlab.quantize.qat)
    distill: float  # weight of the distillation from the float model in the loss; 0: cross-entropy only

    def __post_init__(self):
        check(self.epochs >= 1, "qat.epochs", f"must be at least 1, got {self.epochs}")
        _check_lr("qat.lr", self.lr)
        check(0 <= self.decay < 1, "qat.decay", f"must be in [0, 1), got {self.decay}")
        check(self.start >= 0, "qat.start", f"must be at least 0, got {self.start}")
        check(0 <= self.distill <= 1, "qat.distill", f"must be in [0, 1], got {self.distill}")


MAX_ITERATIONS = 100_000


@dataclass(frozen=True)
class PTQParams:
    """The post-training techniques' switches (quantlab.quantize.techniques) and AdaRound's optimization."""

    equalize: bool  # cross-layer equalization of the weight ranges before quantizing
    bias_correction: bool  # subtract each layer's mean output error on the calibration images, as a bias
    rounding: str  # nearest, or a rounding technique
    iterations: int  # adaround: optimizer steps per layer
    batch_size: int  # adaround: calibration images per step
    lr: float  # adaround: Adam's learning rate
    images: int  # the layers are reconstructed on the first this many calibration images (at most)
    weight_scale: str  # max (S_W = max|W| / qmax, the lab's) or mse (the clipped scale of least squared error)
    blocks: list  # brecq, qdrop: the layers reconstructed together, in order, e.g. [[conv1], [conv2], [fc1, fc2, fc3]]
    drop: float  # qdrop: the probability that an activation's quantization is dropped during reconstruction

    def __post_init__(self):
        check(1 <= self.iterations <= MAX_ITERATIONS, "ptq.iterations",
              f"must be between 1 and {MAX_ITERATIONS}, got {self.iterations}")
        check(0 <= self.drop <= 1, "ptq.drop", f"must be a probability in [0, 1], got {self.drop}")
        check(all(isinstance(block, list) and block and all(isinstance(name, str) for name in block)
                  for block in self.blocks), "ptq.blocks",
              f"must be a list of lists of layer names, e.g. [[conv1], [conv2], [fc1, fc2, fc3]], got "
              f"{shown(self.blocks)}")
        check(1 <= self.batch_size <= MAX_BATCH, "ptq.batch_size",
              f"must be between 1 and {MAX_BATCH}, got {self.batch_size}")
        _check_lr("ptq.lr", self.lr)
        check(self.images >= 1, "ptq.images", f"must be at least 1, got {self.images}")


@dataclass(frozen=True)
class TechniquesParams:
    widths: list  # [weight bits, activation bits] pairs; the logits keep 8 bits
    per_channel: list  # the weight granularities compared: false (per tensor), true (per channel)
    unsigned_activations: bool  # post-ReLU outputs on [0, 2^b - 1]
    calib: str  # the calibration method of every network of the comparison
    iterations: int  # reconstruction steps per layer or block in the comparison (ptq.iterations: the headline's)
    weight_scale: str  # the weight scale of every network of the comparison: max or mse (as ptq.weight_scale)
    layer_bits: dict  # {layer: [weight bits, input bits] or None} at every setting, as quant.layer_bits

    def __post_init__(self):
        _check_widths("techniques.widths", self.widths)
        _check_layer_bits("techniques.layer_bits", self.layer_bits)
        check(bool(self.per_channel) and all(isinstance(v, bool) for v in self.per_channel)
              and len(set(self.per_channel)) == len(self.per_channel), "techniques.per_channel",
               f"must list false (per tensor), true (per channel) or both, got {shown(self.per_channel)}")
        check(1 <= self.iterations <= MAX_ITERATIONS, "techniques.iterations",
              f"must be between 1 and {MAX_ITERATIONS}, got {self.iterations}")


@dataclass(frozen=True)
class MixedPrecisionParams:
    weight_bits: list  # the weight bits each layer may take
    activation_bits: list  # the bits each layer's input may take; the logits keep 8
    per_channel: bool  # one weight scale per output channel
    unsigned_activations: bool  # post-ReLU outputs on [0, 2^b - 1]
    calib: str  # the calibration method of every configuration
    budgets: list  # fractions of uniform W8A8's weight bits, and of its bit operations, in (0, 1]
    candidates: int  # the configurations each sensitivity measure predicts best, compared on validation
    exhaustive: bool  # also evaluate every configuration of weight_bits with the inputs at 8 bits (minutes)

    def __post_init__(self):
        for key in ("weight_bits", "activation_bits"):
            values = getattr(self, key)
            check(bool(values) and all(_matches(b, int) for b in values) and len(set(values)) == len(values),
                  f"mixed_precision.{key}", f"must list distinct bit widths, got {shown(values)}")
        check(bool(self.budgets) and all(_matches(b, float) and 0 < b <= 1 for b in self.budgets),
              "mixed_precision.budgets", f"must list fractions in (0, 1], got {shown(self.budgets)}")
        check(1 <= self.candidates <= MAX_CANDIDATES, "mixed_precision.candidates",
              f"must be between 1 and {MAX_CANDIDATES}, got {self.candidates}")


MAX_CANDIDATES = 1024


@dataclass(frozen=True)
class ExportParams:
    headroom: bool  # pre-shift accumulators into their int32 headroom before the fixed-point rescale
    rounding: str  # the engine's requantization: one of fixed_point.REQUANTIZATIONS


DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class ComputeParams:
    reproducible: bool  # pinned kernels and threads (quantlab.compute): the same bytes on any x86-64 CPU
    device: str  # where training and fine-tuning run: one of DEVICES; cuda's numbers are not the CPU's

    def __post_init__(self):
        check(self.device in DEVICES, "compute.device", f"is {self.device!r}; valid: {', '.join(DEVICES)}")

    @property
    def machine_independent(self) -> bool:
        """Whether the run's numbers are the same on every machine, or this machine's only."""
        return self.reproducible and self.device == "cpu"


@dataclass(frozen=True)
class ReportParams:
    title: str
    author: str
    affiliation: str  # institution, e-mail: printed under the author

    def __post_init__(self):
        for key in ("title", "author", "affiliation"):
            _check_text(f"report.{key}", getattr(self, key))


MAX_TEXT = 200  # characters of a title, name or affiliation (which characters: quantlab.report.render)


def _check_text(key: str, text: str) -> None:
    check(0 < len(text.strip()) and len(text) <= MAX_TEXT, key,
          f"must be 1 to {MAX_TEXT} characters, got {len(text)}{'' if text.strip() else ' of white space'}")


@dataclass(frozen=True)
class Params:
    seed: int  # seeds training and the choice of the calibration subset: 0 to 2^63 - 1, as torch accepts
    calib: str  # activation calibration method, a name in quantlab.quantize.calibration.METHODS
    data: DataParams
    train: TrainParams
    profile: ProfileParams
    quant: QuantParams
    compare: CompareParams
    qat: QATParams
    ptq: PTQParams
    techniques: TechniquesParams
    mixed_precision: MixedPrecisionParams
    export: ExportParams
    compute: ComputeParams
    report: ReportParams

    def __post_init__(self):
        check(0 <= self.seed < 2 ** 63, "seed", f"must be between 0 and 2^63 - 1, got {self.seed}")


def _matches(value, kind) -> bool:
    if isinstance(kind, types.UnionType):  # e.g. int | None
        return any(_matches(value, option) for option in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _build(cls, raw, prefix: str):
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise UserError(f"{PARAMS_FILE}: {where} must be a mapping of keys to values")
    fields = typing.get_type_hints(cls)  # name: type, in the order the dataclass declares them
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(f"{PARAMS_FILE}: unknown key {prefix}{unknown[0]}; valid keys in {where}: "
                        f"{', '.join(fields)}")
    missing = [name for name in fields if name not in raw]
    if missing:
        raise UserError(f"{PARAMS_FILE}: missing key {prefix}{missing[0]}; add it (see the README)")
    values = {}
    for name in fields:
        kind, value = fields[name], raw[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, f"{prefix}{name}.")
        elif not _matches(value, kind):
            raise UserError(f"{PARAMS_FILE}: {prefix}{name} must be {_type_name(kind)}, got {shown(value)}")
        else:
            values[name] = kind(value) if isinstance(kind, type) else value  # a union (int | None) keeps it
    return cls(**values)


def _type_name(kind) -> str:
    if isinstance(kind, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(kind))
    return {type(None): "null", float: "a finite number"}.get(kind, kind.__name__)


def parse_yaml(text: str, path: str | Path = PARAMS_FILE):
    """YAML as DVC reads it, with DVC's own parser (ruamel's safe loader), so that every value means to the stages
    what it means to `dvc exp show` and `dvc exp run -S`: `010` is 10, `1:30` a string, `1e-05` a float, `No` a
    string. An alias is refused before anything is built: a few KB of nested aliases expand to gigabytes."""
    from ruamel.yaml import YAML, YAMLError
    from ruamel.yaml.events import AliasEvent

    yaml = YAML(typ="safe")
    try:
        if any(isinstance(event, AliasEvent) for event in yaml.parse(text)):
            raise UserError(f"{path} uses a YAML alias (*name): write the value out instead")
        return yaml.load(text)
    except YAMLError as error:
        raise UserError(f"{path} is not valid YAML ({str(error).strip().splitlines()[0]}): fix its syntax") from None


def read_params(path: str | Path = PARAMS_FILE) -> Params:
    """params.yaml with its keys, types and ranges checked (its names: quantlab.stage.load_params)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path} not found: run the stage from the repository root") from None
    return _build(Params, parse_yaml(text, path), "")
