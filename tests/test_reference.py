"""The reference runs: `make verify` against fingerprints, and the results of the README and its docs/ pages as
generated from them."""

import hashlib
import json

import pytest

from bench import reference
from quantlab.report.provenance import code_version


def workspace(root, content: bytes = b"x") -> dict[str, str]:
    for index, name in enumerate(reference.RESULTS):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content + bytes([index]))
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in reference.RESULTS}


def test_verify_says_same_or_different_for_every_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reference, "REFERENCES", tmp_path / "references")
    (tmp_path / "references").mkdir()
    found = workspace(tmp_path / "run")
    (tmp_path / "references" / "a.json").write_text(json.dumps({"fingerprints": found}))
    assert reference.verify("a", tmp_path / "run")
    assert capsys.readouterr().out.count("\nsame ") == len(reference.RESULTS) - 1  # after the first line
    (tmp_path / "run/metrics/onnxruntime.json").write_bytes(b"other CPU")
    (tmp_path / "run/reports/build/report.md").write_text(f"code version {code_version(tmp_path / 'run')}")
    assert not reference.verify("a", tmp_path / "run")
    out = capsys.readouterr().out
    assert "different  metrics/onnxruntime.json (ONNX Runtime's quantizer" in out
    assert "different  reports/build/report.md (it quotes ONNX Runtime's quantizer" in out
    assert f"{len(reference.RESULTS) - 2} of {len(reference.RESULTS)} files the same" in out
    (tmp_path / "run/reports/build/report.md").write_text("code version 0123456789ab")
    reference.verify("a", tmp_path / "run")
    assert "report.md (reports/build/report.md states code version 0123456789ab, the code is" in capsys.readouterr().out
    del found["metrics/headline.json"]  # a reference recorded before the file existed
    (tmp_path / "references" / "a.json").write_text(json.dumps({"fingerprints": found}))
    assert not reference.verify("a", tmp_path / "run")
    assert "different  metrics/headline.json (the reference has no fingerprint of it" in capsys.readouterr().out


def test_verify_says_when_a_dataset_has_no_reference(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reference, "REFERENCES", tmp_path)
    assert not reference.verify("0" * 32, tmp_path)
    assert "no reference yet for the dataset with md5 00000000" in capsys.readouterr().out


def test_verify_refuses_an_unfinished_run_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "REFERENCES", tmp_path)
    (tmp_path / "a.json").write_text(json.dumps({"fingerprints": {}}))
    with pytest.raises(reference.UserError, match="models/float.npz is missing: run the pipeline first"):
        reference.verify("a", tmp_path)


def generated_blocks() -> dict[str, str]:
    return reference.blocks(json.loads(reference.reference_path(reference.README_DATA).read_text()),
                            reference.recorded_experiments())


def test_the_readme_and_its_pages_show_the_reference_run():
    """The generated blocks of the README and of every docs/*.md page are what `python -m bench.reference readme`
    writes from the committed reference run: no number in them was typed by hand."""
    generated = generated_blocks()
    assert reference.documents()[0] == reference.README and len(reference.documents()) > 1
    for path in reference.documents():
        text = path.read_text(encoding="utf-8")
        found = {m.group(2): text[m.end(1):m.start(3)] for m in reference.BLOCK.finditer(text)}
        assert set(found) <= set(generated), f"{path.name}: unknown blocks {set(found) - set(generated)}"
        for name, body in found.items():
            assert body == generated[name] + "\n", f"{path.name} block {name!r} is not the reference run's"


def test_readme_rewrites_the_blocks_of_every_file_and_refuses_an_unknown_one(tmp_path):
    """`readme` rewrites a block in whichever of its files it stands; a name that is no block is refused by
    file and name before any file is written."""
    generated = generated_blocks()
    readme, page = tmp_path / "README.md", tmp_path / "page.md"
    readme.write_text("# R\n\n<!-- generated: accuracy -->\nstale\n<!-- end generated -->\n")
    page.write_text("# P\n\ntext <!-- generated: engine -->\nold\n<!-- end generated -->.\n")
    reference.rewrite_readme([readme, page])
    end = "<!-- end generated -->"
    assert readme.read_text() == f"# R\n\n<!-- generated: accuracy -->\n{generated['accuracy']}\n{end}\n"
    assert page.read_text() == f"# P\n\ntext <!-- generated: engine -->\n{generated['engine']}\n{end}.\n"
    reference.rewrite_readme([readme, page])  # idempotent
    assert generated["accuracy"] in readme.read_text() and generated["engine"] in page.read_text()
    readme.write_text("<!-- generated: accuracy -->\nstale\n<!-- end generated -->\n")
    page.write_text("<!-- generated: no-such-table -->\nx\n<!-- end generated -->\n")
    with pytest.raises(reference.UserError, match=r"page\.md: unknown generated block 'no-such-table'"):
        reference.rewrite_readme([readme, page])
    assert readme.read_text() == "<!-- generated: accuracy -->\nstale\n<!-- end generated -->\n"


def test_an_experiment_is_named_by_the_params_it_changes():
    committed = {"seed": 0, "data": {"url": "a", "md5": "b"}, "quant": {"per_channel": False, "weight_bits": 8},
                 "techniques": {"widths": [[4, 8]]}, "qat": {"ranges": "mse"}}
    params = {"seed": 0, "data": {"url": "/local/copy", "md5": "c"}, "quant": {"per_channel": True, "weight_bits": 8},
              "techniques": {"widths": [[4, 8], [3, 8]]}, "qat": {"ranges": "lsq"}}
    changes = reference.changed_params(params, committed)
    assert changes == {"quant.per_channel": True, "techniques.widths": [[4, 8], [3, 8]], "qat.ranges": "lsq"}
    assert reference.command(changes) == ("`dvc exp run -S quant.per_channel=true -S 'techniques.widths=[[4,8],[3,8]]' "
                                          "-S qat.ranges=lsq`")
