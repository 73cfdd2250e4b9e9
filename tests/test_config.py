"""params.yaml: every key is known, present, typed and in range, or the stage stops with one clear line."""

import pytest
import yaml

from bench.bombs import ALIAS_BOMB
from quantlab.architecture import LAYER_NAMES
from quantlab.errors import UserError
from quantlab.quantize.symmetric import activation_widths, weight_widths
from quantlab.stage import load_params

PARAMS = yaml.safe_load(open("params.yaml"))


def write(tmp_path, **changes):
    params = yaml.safe_load(yaml.safe_dump(PARAMS))
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = params
        for parent in parents:
            node = node[parent]
        if value is KeyError:
            del node[key]
        else:
            node[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_repository_params_load():
    params = load_params()
    assert params.calib == "minmax" and params.train.epochs >= 1


@pytest.mark.parametrize("logit_bits", [None, 8, 2])
def test_logit_bits_may_be_null_or_a_width(tmp_path, logit_bits):
    assert load_params(write(tmp_path, quant__logit_bits=logit_bits)).quant.logit_bits == logit_bits


@pytest.mark.parametrize("changes, message", [
    ({"train__epoch": 3}, "unknown key train.epoch; valid keys in train: epochs"),
    ({"train__epochs": KeyError}, "missing key train.epochs"),
    ({"train__epochs": 0}, "train.epochs must be at least 1, got 0"),
    ({"train__epochs": -2}, "train.epochs must be at least 1, got -2"),
    ({"train__epochs": "3"}, "train.epochs must be int, got '3'"),
    ({"train__lr": 0}, "train.lr must be in (0, 10], got 0"),
    ({"train__lr": 1e308}, "train.lr must be in (0, 10], got 1e+308"),
    ({"qat__lr": 1e308}, "qat.lr must be in (0, 10], got 1e+308"),
    ({"train__weight_decay": 1}, "train.weight_decay must be in [0, 1), got 1"),
    ({"calib": "kll"}, "calib is 'kll'; valid: minmax"),
    ({"data__md5": "xyz"}, "data.md5 must be 32 lowercase hex digits"),
    ({"profile__calib_selection": "best"}, "profile.calib_selection is 'best'; valid: random, stratified, first"),
    ({"extra": 1}, "unknown key extra"),
    ({"quant__weight_bits": 0}, "quant.weight_bits must be between 2 and 8 bits, got 0"),
    ({"quant__activation_bits": 1}, "quant.activation_bits must be between 2 and 8 bits, got 1"),
    ({"quant__weight_bits": 17}, "quant.weight_bits must be between 2 and 8 bits, got 17"),
    ({"quant__percentile": 0}, "quant.percentile must be in (0, 100]"),
    ({"quant__logit_bits": 9}, "quant.logit_bits must be between 2 and 8 bits, got 9"),
    ({"quant__logit_bits": "8"}, "quant.logit_bits must be int or null, got '8'"),
    ({"compare__widths": [[8, 8], [4]]}, "compare.widths must hold [weight bits, activation bits] pairs, got [4]"),
    ({"compare__widths": [[8, 9]]}, "compare.widths must be between 2 and 8 bits, got 9"),
    ({"compare__methods": ["kl", "entropy"]}, "compare.methods is 'entropy'; valid: minmax, sigma3, percentile"),
    ({"ptq__rounding": "stochastic"}, "ptq.rounding is 'stochastic'; valid: nearest, adaround, brecq, qdrop"),
    ({"ptq__drop": 1.5}, "ptq.drop must be a probability in [0, 1], got 1.5"),
    ({"ptq__blocks": [["conv1"], ["fc1", "conv2"], ["fc2", "fc3"]]}, "ptq.blocks must split the layers conv1, "
     "conv2, fc1, fc2, fc3 into consecutive blocks, each layer once and in order"),
    ({"ptq__blocks": [["conv1", "conv2", "fc1", "fc2"]]}, "ptq.blocks must split the layers"),
    ({"ptq__blocks": [["conv1"], [], ["conv2", "fc1", "fc2", "fc3"]]}, "ptq.blocks must be a list of lists of layer"),
    ({"ptq__blocks": "conv1"}, "ptq.blocks must be list, got 'conv1'"),
    ({"ptq__weight_scale": "percentile"}, "ptq.weight_scale is 'percentile'; valid: max, mse"),
    ({"techniques__weight_scale": "MSE"}, "techniques.weight_scale is 'MSE'; valid: max, mse"),
    ({"ptq__weight_scale": "mse", "calib": "ema"}, "ptq.weight_scale cannot apply to calib=ema"),
    ({"techniques__layer_bits__fc3": [8]}, "techniques.layer_bits.fc3 must be [weight bits, input bits] or null"),
    ({"techniques__layer_bits__fc3": [8, 1]}, "techniques.layer_bits.fc3 must be between 2 and 8 bits, got 1"),
    ({"techniques__layer_bits__conv1": KeyError}, "techniques.layer_bits.conv1 is missing; add it"),
    ({"ptq__iterations": -5}, "ptq.iterations must be between 1 and 100000, got -5"),
    ({"ptq__batch_size": 0}, "ptq.batch_size must be between 1 and 8192, got 0"),
    ({"ptq__lr": 0}, "ptq.lr must be in (0, 10], got 0"),
    ({"ptq__lr": 11}, "ptq.lr must be in (0, 10], got 11"),
    ({"compare__methods": ["mse"]}, "compare.methods must include minmax, the lab's method that every other"),
    ({"compare__widths": [[8, 8], list(range(10 ** 5))]}, "pairs, got [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13"),
    ({"ptq__equalize": "yes"}, "ptq.equalize must be bool, got 'yes'"),
    ({"ptq__equalize": True, "calib": "ema"}, "ptq.equalize cannot apply to calib=ema: its ranges were learned"),
    ({"ptq__images": 0}, "ptq.images must be at least 1, got 0"),
    ({"qat__ranges": "max"}, "qat.ranges is 'max'; valid: minmax, mse, lsq"),
    ({"qat__distill": 1.5}, "qat.distill must be in [0, 1], got 1.5"),
    ({"qat__distill": -0.1}, "qat.distill must be in [0, 1], got -0.1"),
    ({"qat__distill": "0.5"}, "qat.distill must be a finite number, got '0.5'"),
    ({"techniques__widths": [[4, 9]]}, "techniques.widths must be between 2 and 8 bits, got 9"),
    ({"techniques__per_channel": []}, "techniques.per_channel must list false (per tensor), true (per channel)"),
    ({"techniques__per_channel": [True, True]}, "techniques.per_channel must list false (per tensor), true"),
    ({"techniques__calib": "ema"}, "techniques.calib is 'ema'; valid: minmax, sigma3, percentile, kl, mse"),
    ({"techniques__iterations": 0}, "techniques.iterations must be between 1 and 100000, got 0"),
    ({"quant__layer_bits": [2, 8]}, "quant.layer_bits must be dict, got [2, 8]"),
    ({"quant__layer_bits__fc2": KeyError}, "quant.layer_bits.fc2 is missing; add it (null: the widths above)"),
    ({"quant__layer_bits__fc4": [2, 8]}, "quant.layer_bits is 'fc4'; valid: conv1, conv2, fc1, fc2, fc3"),
    ({"quant__layer_bits__fc1": [2]}, "quant.layer_bits.fc1 must be [weight bits, input bits] or null, got [2]"),
    ({"quant__layer_bits__fc1": [2, 9]}, "quant.layer_bits.fc1 must be between 2 and 8 bits, got 9"),
    ({"quant__layer_bits__fc1": [2, 8], "calib": "ema"}, "quant.layer_bits cannot apply to calib=ema"),
    ({"mixed_precision__weight_bits": [2, 2]}, "mixed_precision.weight_bits must list distinct bit widths"),
    ({"mixed_precision__activation_bits": []}, "mixed_precision.activation_bits must list distinct bit widths"),
    ({"mixed_precision__weight_bits": [1, 8]}, "mixed_precision.weight_bits must be between 2 and 8 bits, got 1"),
    ({"mixed_precision__budgets": [0.25, 0]}, "mixed_precision.budgets must list fractions in (0, 1]"),
    ({"mixed_precision__budgets": [1.5]}, "mixed_precision.budgets must list fractions in (0, 1]"),
    ({"mixed_precision__candidates": 0}, "mixed_precision.candidates must be between 1 and 1024, got 0"),
    ({"mixed_precision__calib": "ema"}, "mixed_precision.calib is 'ema'; valid: minmax, sigma3, percentile"),
])
def test_bad_params_give_one_clear_line(tmp_path, changes, message):
    with pytest.raises(UserError, match="^params.yaml: ") as error:
        load_params(write(tmp_path, **changes))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_layer_bits_name_only_the_layers_that_differ(tmp_path):
    quant = load_params(write(tmp_path, quant__layer_bits__fc1=[2, 4])).quant
    assert weight_widths(quant.weight_bits, quant.layer_bits) == {"conv1": 8, "conv2": 8, "fc1": 2, "fc2": 8, "fc3": 8}
    assert activation_widths(quant.activation_bits, quant.logit_bits, quant.layer_bits)["conv2"] == 4  # fc1's input
    assert load_params(write(tmp_path, calib="ema")).quant.layer_bits == dict.fromkeys(LAYER_NAMES)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_params(path)


def test_every_scalar_means_to_the_stages_what_it_means_to_dvc(tmp_path):
    """YAML 1.1 and 1.2 differ: `010` is 8 in one and 10 in the other, `1:30` 90 or a string. The stages read
    params.yaml with DVC's own parser, so whatever DVC shows and passes with -S, the stages use."""
    from dvc.utils.serialize import parse_yaml as dvc_parse_yaml

    text = yaml.safe_dump(PARAMS, sort_keys=False)
    for line, dvc_value in (("seed: 010", 10), ("seed: 0x1f", 31), ("seed: 1_000", 1000)):
        path = tmp_path / "params.yaml"
        path.write_text(text.replace("seed: 0", line, 1))
        assert dvc_parse_yaml(path.read_text(), str(path))["seed"] == dvc_value == load_params(path).seed
    path.write_text(text.replace("seed: 0", "seed: 1:30", 1))
    assert dvc_parse_yaml(path.read_text(), str(path))["seed"] == "1:30"
    with pytest.raises(UserError, match="seed must be int, got '1:30'"):
        load_params(path)
    path.write_text(text.replace("lr: 0.004", "lr: 4e-03", 1))
    assert load_params(path).train.lr == dvc_parse_yaml(path.read_text(), str(path))["train"]["lr"] == 0.004


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    """Nine levels of ten aliases each are 10^9 strings: refused from the parser's events, in no time."""
    path = tmp_path / "params.yaml"
    path.write_text(ALIAS_BOMB)
    with pytest.raises(UserError, match=r"params.yaml uses a YAML alias \(\*name\): write the value out instead$"):
        load_params(path)
