"""Malformed input, generated: seeded mutations of params.yaml, of the CIFAR-10 archive and of a model's weights,
each run through the stage's entry point (`run_main(main)`, as `python -m stages.<name>` runs it), in this
process. Every one must end in exit status 2 with one line `error: …`, no traceback, and no existing output
changed."""

import gc
import hashlib
import io
import logging
import pickle
import tarfile
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml

from bench.sandbox import make_repo, run, set_params
from quantlab import stage as process
from quantlab.data import md5_of
from quantlab.io import npz_bytes
from quantlab.model import Net, state_to_arrays
from stages import check_params, download, quantize

from cifar_fixture import batches, write_archive

RNG = np.random.default_rng(12)
# Values of the wrong type for a param of each type (None: quant.logit_bits, which may be null or an int)
WRONG = {int: ["3", 2.5, [], {}, True], float: ["0.1", [], {}, True, float("nan")], bool: ["yes", 1, [], None],
         str: [7, [], {}, None, True], list: ["x", 5, {}, None], type(None): ["8", 2.5, [], True]}


def params_mutations(params: dict) -> list[str]:
    """Malformed params.yaml texts: every key dropped, a value of the wrong type for every key, unknown keys,
    values out of range, and broken YAML."""
    def leaves(node, path=()):
        for key, value in node.items():
            yield from leaves(value, (*path, key)) if isinstance(value, dict) else [((*path, key), value)]

    def changed(path, value=KeyError):
        copy = yaml.safe_load(yaml.safe_dump(params))
        node = copy
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return yaml.safe_dump(copy, allow_unicode=True)

    texts = []
    for path, value in leaves(params):
        wrong = WRONG[type(value)]
        texts += [changed(path), changed(path, wrong[RNG.integers(len(wrong))])]
    texts += [changed(("calibration",), "kl"), changed(("train", "epoch"), 3), changed(("quant",), [8, 8]),
              changed(("seed",), -1), changed(("profile", "bins"), 10 ** 8), changed(("train", "lr"), -0.1),
              changed(("report", "title"), "x" * 24_000), changed(("data", "url"), "http://example.com"),
              changed(("data", "url"), "/tmp/a\x00b.tar.gz"), changed(("report", "author"), "Ada 😀"),
              changed(("report", "affiliation"), "a\u200bb"), changed(("data", "md5"), "A" * 32),
              "train: [unclosed\n", "seed: 0\n\tcalib: kl\n", "- 1\n- 2\n", "just text\n", "", "{{{{\n",
              "calib: !!python/object/apply:os.system ['true']\n"]
    return texts


def test_malformed_params_files(tmp_path, stage):
    repo = make_repo(tmp_path / "repo")
    valid = yaml.safe_load((repo / "params.yaml").read_text())
    texts = params_mutations(valid)
    assert len(texts) >= 50
    for text in texts:
        (repo / "params.yaml").write_text(text, encoding="utf-8")
        fails_in_one_line(repo, stage, check_params, case=text)
    # `python -m stages.check_params` first pins the arithmetic as params.yaml says (`import stages`), which does
    # nothing in this process (torch is loaded): that reading of every malformed text, in one fresh process
    (tmp_path / "texts").mkdir()
    files = [tmp_path / "texts" / f"{i}.yaml" for i in range(len(texts))]
    for file, text in zip(files, texts, strict=True):
        file.write_text(text, encoding="utf-8")
    result = run(repo, "python", "-c", "import sys; from quantlab.compute import pin_from_params\n"
                 "for path in sys.argv[1:]: pin_from_params(path)", *map(str, files))
    assert result.stdout + result.stderr == ""


def archive_mutations(members: dict[str, bytes], tmp_path: Path) -> list[Path]:
    """Malformed archives: truncated, bytes flipped, members missing, doubled, renamed, a link, or holding
    pickles of the wrong things."""
    good = write_archive(tmp_path / "good.tar.gz", members).read_bytes()
    paths = []

    def archive(name, payload=None, **replace):
        path = tmp_path / f"{len(paths)}-{name}.tar.gz"
        if payload is None:
            write_archive(path, {k: v for k, v in {**members, **replace}.items() if v is not None})
        else:
            path.write_bytes(payload)
        paths.append(path)

    for cut in RNG.integers(10, len(good) - 10, 5):
        archive("truncated", good[:cut])
    for spot in RNG.integers(10, len(good) - 10, 4):
        archive("flipped", good[:spot] + bytes([good[spot] ^ 0xFF]) + good[spot + 1:])
    archive("empty", b"")
    archive("not-gzip", b"\x00" * 1000)
    archive("no-meta", **{"batches.meta": None})
    archive("garbage-pickle", **{"data_batch_1": b"\x80\x02garbage"})
    archive("list-pickle", **{"test_batch": pickle.dumps([1, 2, 3], protocol=2)})
    batch = pickle.loads(members["data_batch_3"])
    archive("float-images", **{"data_batch_3": pickle.dumps({**batch, "data": batch["data"].astype(float)})})
    archive("wrong-width", **{"data_batch_3": pickle.dumps({**batch, "data": batch["data"][:, :100]})})
    archive("no-labels", **{"data_batch_3": pickle.dumps({k: v for k, v in batch.items() if k != "labels"})})
    archive("short-labels", **{"data_batch_3": pickle.dumps({**batch, "labels": batch["labels"][:-1]})})
    archive("code-pickle", **{"data_batch_5": b"cos\nsystem\n(S'true'\ntR."})
    meta = pickle.loads(members["batches.meta"])
    archive("nine-classes", **{"batches.meta": pickle.dumps({**meta, "label_names": meta["label_names"][:9]})})
    with tarfile.open(tmp_path / "link.tar.gz", "w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    paths.append(tmp_path / "link.tar.gz")
    return paths


def test_malformed_archives_leave_the_dataset_as_it_was(tmp_path, stage):
    members = batches(train_per_batch=10, test=10)
    repo = make_repo(tmp_path / "repo")
    good = write_archive(tmp_path / "cifar-10-python.tar.gz", members)
    set_params(repo, data__url=str(good), data__md5=md5_of(good))
    status, out, err = stage(repo, download)
    assert status == 0 and (repo / "data" / "cifar10.npz").is_file(), (out, err)
    paths = archive_mutations(members, tmp_path)
    assert len(paths) >= 20
    for path in paths:
        set_params(repo, data__url=str(path), data__md5=md5_of(path))
        fails_in_one_line(repo, stage, download, case=path.name)


def model_mutations() -> list[bytes]:
    """Malformed weight files: not an .npz, truncated, wrong names, shapes or dtypes, NaN, pickled objects."""
    state = state_to_arrays(Net())
    payload = npz_bytes(state)
    files = [b"", b"not an npz", payload[: len(payload) // 3], payload[:-20]]
    for name in state:
        files.append(npz_bytes({k: v for k, v in state.items() if k != name}))
        files.append(npz_bytes({**state, name: state[name][:1]}))
        files.append(npz_bytes({**state, name: state[name].astype(np.float16)}))
        files.append(npz_bytes({**state, name: np.where(RNG.random(state[name].shape) < 0.01, np.inf,
                                                        state[name]).astype(np.float32)}))
    files += [npz_bytes({**state, "extra": np.zeros(3)}), npz_bytes({**state, "fc3.bias": np.zeros(10, np.float32)})]
    buffer = io.BytesIO()
    np.savez(buffer, **{**state, "conv1.weight": np.array([object()], dtype=object)}, allow_pickle=True)
    return [*files, buffer.getvalue()]


def test_malformed_model_files(tmp_path, stage):
    repo = make_repo(tmp_path / "repo")
    files = model_mutations()
    assert len(files) >= 20
    for i, payload in enumerate(files):
        (repo / "models").mkdir(exist_ok=True)
        (repo / "models" / "float.npz").write_bytes(payload)
        fails_in_one_line(repo, stage, quantize, case=f"model file {i}")


class _Shown(logging.Handler):
    """The log records a process without logging set up would print on stderr (logging's last resort)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(f"{self.format(record)}\n")


@pytest.fixture
def stage(monkeypatch, capfd):
    """`stage(repo, stages.<name>)`: the stage's `run_main(main)` in this process, in `repo`, as
    `python -m stages.<name>` runs it there; its exit status, stdout and stderr. What that process would print
    goes to stderr here too: warnings (under Python's default filters, not pytest's) and log records. An
    exception other than SystemExit (a traceback there) propagates."""
    def run_stage(repo: Path, module: ModuleType) -> tuple[int, str, str]:
        capfd.readouterr()
        frozen, shown = gc.get_freeze_count(), _Shown()
        with monkeypatch.context() as patch, warnings.catch_warnings(record=True) as caught:
            patch.chdir(repo)
            patch.setattr(process, "reuse_freed_memory", lambda: None)  # glibc's malloc, tuned for a stage, not here
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            logging.getLogger().addHandler(shown)
            try:
                process.run_main(module.main)
                status = 0
            except SystemExit as exit:
                status = exit.code
            finally:
                logging.getLogger().removeHandler(shown)
                if not frozen:
                    gc.unfreeze()  # run_main's gc.freeze() at a stage's end, for this process's later tests
        out, err = capfd.readouterr()
        if status is None:
            status = 0
        elif not isinstance(status, int):  # sys.exit(message): the message on stderr, status 1
            err, status = f"{err}{status}\n", 1
        shown_warnings = [warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught]
        return status, out, err + "".join(shown_warnings + shown.lines)
    return run_stage


def fails_in_one_line(repo: Path, stage, module: ModuleType, case) -> None:
    """Run a stage; it must fail with exit status 2, one line `error: …` and no traceback, and leave every
    file of the repository but its inputs as it was."""
    before = snapshot(repo)
    try:
        status, out, err = stage(repo, module)
    except Exception as error:
        error.add_note(f"case: {case!r}")
        raise
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (case, err)
    assert "Traceback" not in err + out, case
    assert snapshot(repo) == before, case


def snapshot(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(repo.rglob("*"))
            if p.is_file() and ".git" not in p.parts and ".dvc" not in p.parts}


SPELLINGS = ["010", "0x1f", "0o17", "1:30", "1_000", "1e400", "-.inf", ".nan", "yes", "No", "on", "~", "''", "-0",
             "+5", "2001-12-14", "1e-05", "0.", "[]", "{}", "!!binary aGk="]


def test_every_params_scalar_means_what_dvc_reads_or_is_refused(tmp_path):
    """Every leaf of params.yaml, spelled each way YAML 1.1 and 1.2 read differently: the stages either refuse
    it in one line or use exactly the value DVC reads (and shows, and passes to -S)."""
    from dvc.utils.serialize import parse_yaml as dvc_parse_yaml

    from quantlab.errors import UserError
    from quantlab.stage import load_params

    params = yaml.safe_load(open("params.yaml"))
    path, cases = tmp_path / "params.yaml", 0
    for keys in leaf_paths(params):
        for spelling in SPELLINGS:
            copy = yaml.safe_load(yaml.safe_dump(params))
            node = copy
            for key in keys[:-1]:
                node = node[key]
            node[keys[-1]] = "SPELLING"
            path.write_text(yaml.safe_dump(copy).replace("SPELLING", spelling))
            dvc_value = dvc_parse_yaml(path.read_text(), str(path))
            for key in keys:
                dvc_value = dvc_value[key]
            try:
                loaded = load_params(path)
            except UserError as error:
                assert "\n" not in str(error)
                continue
            value = loaded
            for key in keys:
                value = value[key] if isinstance(value, dict) else getattr(value, key)  # a mapping param's keys
            assert value == dvc_value or (value != value and dvc_value != dvc_value), (keys, spelling)
            cases += 1
    assert cases > 20  # some spellings are valid values: those the stages must read as DVC does


def leaf_paths(node, path=()):
    for key, value in node.items():
        yield from leaf_paths(value, (*path, key)) if isinstance(value, dict) else [(*path, key)]


JUNK = [None, "x", -1, 2 ** 40, 1e308, True, [], {}, [1], [0, 0], ""]


def test_every_manifest_field_edited_is_refused_or_changes_nothing(tmp_path):
    """Every field of an export's manifest, set to junk with the checksum recomputed: the reader (the engine's
    and the runner's) refuses it in one line, or the network computes exactly the logits it computed before
    (an informational field such as the provenance)."""
    import json

    from quantlab.inference import export_format, runner

    from quant_fixture import IMAGES, random_export

    directory, _ = random_export(tmp_path)
    images = IMAGES.numpy()[:8]
    original = json.loads((directory / "manifest.json").read_text())
    payload = (directory / "model.npz").read_bytes()
    expected = runner.run(*export_format.read(directory), images)
    fields = [(key,) for key in original if key not in ("format", "version", "sha256")]
    fields += [("input", key) for key in original["input"]]
    fields += [("layers", i, key) for i in range(len(original["layers"])) for key in original["layers"][i]]
    refused = accepted = 0
    for field in fields:
        for junk in JUNK:
            manifest = json.loads(json.dumps(original))
            node = manifest
            for key in field[:-1]:
                node = node[key]
            node[field[-1]] = junk
            manifest["sha256"] = export_format.checksum(manifest, payload)
            (directory / "manifest.json").write_text(json.dumps(manifest))
            try:
                read = export_format.read(directory)
            except ValueError as error:
                assert "\n" not in str(error) and str(error).startswith(str(directory)), (field, junk, error)
                refused += 1
                continue
            assert np.array_equal(runner.run(*read, images), expected), (field, junk)
            accepted += 1
    assert refused > 10 * accepted  # only the informational fields (model, provenance, onnx, ...) pass
