"""Report rendering: escaping of every printed value, tables, byte-stable figures, the code version."""

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from markupsafe import Markup

from quantlab.profiling import profile_tensor
from quantlab.report import figures
from quantlab.report.provenance import code_version
from quantlab.report.render import (
    TEMPLATES,
    environment,
    latex_escape,
    latex_table,
    markdown_escape,
    markdown_table,
    render,
)

SPECIAL = r"A_b & C% $x$ #1 {y} ~z ^w \v <u>"


def test_latex_escape_every_special_character():
    assert latex_escape(SPECIAL) == (r"A\_b \& C\% \$x\$ \#1 \{y\} \textasciitilde{}z \textasciicircum{}w "
                                     r"\textbackslash{}v \textless{}u\textgreater{}")


def test_markdown_escape():
    assert markdown_escape("a_b *c* [d](e) | f") == r"a\_b \*c\* \[d\](e) \| f"


def test_templates_escape_values_but_not_markup():
    tex = environment("latex").from_string(r"\title{<< name >>} << fragment >>")
    assert tex.render(name="50%_x", fragment=Markup(r"\alpha")) == r"\title{50\%\_x} \alpha"
    md = environment("markdown").from_string("# << name >>")
    assert md.render(name="a_b") == r"# a\_b"
    # a constant is escaped as a value is: jinja2 folds it at compile time, where finalize must still apply
    constant = environment("latex").from_string('<< "95 %" >> and << "a_b" if flag >> and << 50 >>%')
    assert constant.render(flag=True) == r"95 \% and a\_b and 50%"


def test_the_report_templates_own_text_has_no_bare_percent_sign():
    """The prose of report.j2 and its sections is LaTeX as written: a bare % would make the rest of its line a
    comment, in the PDF only. A percent sign is printed as a value, << "%" >>, which each format escapes."""
    sources = [TEMPLATES / "report.j2", *sorted((TEMPLATES / "sections").glob("*.j2"))]
    assert len(sources) > 5
    text = re.sub(r"<#.*?#>|<%.*?%>|<<.*?>>", "", "".join(path.read_text() for path in sources), flags=re.S)
    assert [line for line in text.splitlines() if re.search(r"(?<!\\)%", line)] == []


ONE_SOURCE = """<% import macros as f with context %>
<< f.section("Setup") >>
<< f.ref("tab:b") >> follows << f.ref("tab:a") >> and << f.ref("fig:c") >>; << f.bold(f.pct(71.234)) >><<f.cite("k")>>.
<< f.table(frame, "First_table", "tab:a") >>
<< f.table(frame, "Second", "tab:b") >>
<< f.figure("plot", "A plot", "fig:c") >>
With
<% call f.display() %>
a = b,
c = d.
<% endcall %>
<< f.references({"k": "A. Author, 2017."}) >>
"""


def test_one_template_renders_both_formats_with_numbers_known_before_they_appear(tmp_path):
    (tmp_path / "t.j2").write_text(ONE_SOURCE)
    for macros in ("latex.j2", "markdown.j2"):
        shutil.copy(TEMPLATES / macros, tmp_path)
    tex, md = (render("t.j2", {"frame": pd.DataFrame({"x": ["1"]})}, fmt, tmp_path) for fmt in ("latex", "markdown"))
    assert md.startswith("## I. Setup\nTable II follows Table I and Fig. 1; **71.23 %** [1].\n")
    assert "*Table I. First\\_table*" in md and "*Table II. Second*" in md
    assert "![A plot](figures/plot.png)\n\n*Fig. 1. A plot*" in md
    assert "With\n\n$$a = b, \\qquad c = d.$$\n\n" in md and "1. A. Author, 2017." in md
    # LaTeX gets the numbers written, as Markdown does: one LuaLaTeX pass, with no \\ref or \\cite to resolve
    assert tex.startswith("\\section{Setup}\nTable~II follows Table~I and Fig.~1; \\textbf{71.23\\,\\%}~[1].\n")
    assert "\\ref" not in tex and "\\cite" not in tex
    assert "\\placetable{First\\_table}" in tex and "figures/plot.pdf" in tex
    assert "With\n\\begin{gather}\na = b,\\\\\nc = d.\n\\end{gather}\n" in tex
    assert "\\bibitem{k} A. Author, 2017." in tex


def test_tables_escape_cells_and_headers_and_align_numbers_right():
    frame = pd.DataFrame({"name_x": ["a&b", "c"], "value": ["1.50", "-2"]})
    tex = latex_table(frame)
    assert r"\begin{tabular}{lr}" in tex and r"name\_x & value \\" in tex and r"a\&b & 1.50 \\" in tex
    md = markdown_table(frame)
    assert md.splitlines()[0].split("|")[1].strip() == r"name\_x"
    assert md.splitlines()[1].endswith("--:|")


def test_figures_are_byte_stable(tmp_path):
    profiles = {f"t{i}": profile_tensor(torch.randn(1000, generator=torch.Generator().manual_seed(i)), 256)
                for i in range(3)}
    for name in ("a", "b"):
        figures.save(figures.histograms(profiles, "value", log=True, thresholds={k: 1.0 for k in profiles},
                                        threshold_label="T"), tmp_path / name, "h")
    for suffix in ("pdf", "png"):
        assert (tmp_path / "a" / f"h.{suffix}").read_bytes() == (tmp_path / "b" / f"h.{suffix}").read_bytes()
    assert b"CreationDate" not in (tmp_path / "a" / "h.pdf").read_bytes()


def test_code_version_follows_source_contents(tmp_path):
    (tmp_path / "quantlab").mkdir()
    (tmp_path / "quantlab" / "a.py").write_text("x = 1\n")
    (tmp_path / "quantlab" / "notes.txt").write_text("ignored\n")
    first = code_version(tmp_path)
    (tmp_path / "quantlab" / "notes.txt").write_text("changed\n")
    assert code_version(tmp_path) == first
    (tmp_path / "quantlab" / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) != first and len(first) == 12


@pytest.mark.skipif(shutil.which("lualatex") is None or shutil.which("pdftotext") is None,
                    reason="needs TeX Live and poppler-utils (make test installs them)")
def test_escaped_specials_compile_and_read_back(tmp_path):
    from stages.pdf import build_pdf

    tex = tmp_path / "t.tex"
    body = environment("latex").from_string("<< value >>").render(value=SPECIAL)
    tex.write_text("\\documentclass{article}\\usepackage[T1]{fontenc}\\pagestyle{empty}\\begin{document}\n" + body +
                   "\n\\end{document}\n")
    pdf, problems = build_pdf(tex)
    (tmp_path / "t.pdf").write_bytes(pdf)
    text = subprocess.run(["pdftotext", str(tmp_path / "t.pdf"), "-"], capture_output=True, text=True).stdout
    assert " ".join(text.split()) == SPECIAL and problems == []
    assert build_pdf(tex)[0] == pdf  # byte-reproducible


@pytest.mark.skipif(shutil.which("lualatex") is None, reason="needs TeX Live (make test installs them)")
def test_title_block_wraps_a_long_name_and_prints_ligature_pairs_as_typed(tmp_path):
    from stages.pdf import build_pdf

    for macros in ("latex.j2", "markdown.j2"):
        shutil.copy(TEMPLATES / macros, tmp_path)
    (tmp_path / "t.j2").write_text('<% import macros as f with context %>\n'
                                   '<% call f.document(title, author, "x") %>Text.<% endcall %>\n')
    author = "<<Ada>> ,,Lovelace'' !`a ?`b -- " + "".join(chr(ord("a") + i % 26) for i in range(200))
    tex = tmp_path / "t.tex"
    tex.write_text(render("t.j2", {"title": "Lab 1: Quantization", "author": author}, "latex", tmp_path))
    pdf, problems = build_pdf(tex)
    (tmp_path / "t.pdf").write_bytes(pdf)
    text = subprocess.run(["pdftotext", str(tmp_path / "t.pdf"), "-"], capture_output=True, text=True).stdout
    assert problems == []  # no overfull line: the 200 letters wrap
    assert "".join(author.split()) in "".join(text.split())  # every character as typed, no « » „ ¡ ¿ –


TABLE_SIZES = """<% import macros as f with context %>
<% call f.document("Tables", "A", "B") %>
<< f.table(narrow, "Narrow", "tab:narrow") >>
<< f.table(wide, "Wide", "tab:wide") >>
<< f.table(huge, "Huge", "tab:huge") >>
<% endcall %>
"""


def word_boxes(pdf: Path) -> dict[str, tuple[float, float, float, float]]:
    """Each word's box (xMin, yMin, xMax, yMax, in points) on the PDF's pages (pdftotext -bbox), by word."""
    page = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    number = r'"([\d.]+)"'
    return {word: tuple(map(float, box)) for *box, word in
            re.findall(rf"<word xMin={number} yMin={number} xMax={number} yMax={number}>([^<]+)</word>", page)}


@pytest.mark.skipif(shutil.which("lualatex") is None, reason="needs TeX Live (make test installs them)")
def test_tables_keep_7_pt_type_across_both_columns_or_report_it(tmp_path):
    from stages.pdf import build_pdf

    for macros in ("latex.j2", "markdown.j2"):
        shutil.copy(TEMPLATES / macros, tmp_path)
    (tmp_path / "t.j2").write_text(TABLE_SIZES)

    def columns(n: int, tag: str) -> pd.DataFrame:
        return pd.DataFrame({f"{tag}{i}": [f"{tag}value{i}"] for i in range(n)})

    tex = tmp_path / "t.tex"
    tex.write_text(render("t.j2", {"narrow": columns(2, "n"), "wide": columns(11, "w"), "huge": columns(30, "h")},
                          "latex", tmp_path))
    pdf, problems = build_pdf(tex)
    (tmp_path / "t.pdf").write_bytes(pdf)
    boxes = word_boxes(tmp_path / "t.pdf")
    height = {word: box[3] - box[1] for word, box in boxes.items()}
    # the narrow table at the tables' 8 pt in a column; the wide one, which a column would shrink below 7 pt,
    # at 8 pt too, across both columns (wider than one: IEEEtran's column is 252 pt); the huge one reported
    assert height["wvalue0"] == pytest.approx(height["nvalue0"])
    assert boxes["wvalue10"][2] - boxes["wvalue0"][0] > 252
    assert height["hvalue0"] < 7 / 8 * height["nvalue0"]
    assert len(problems) == 1 and "Table type below 7 pt" in problems[0]


@pytest.mark.skipif(shutil.which("lualatex") is None, reason="needs TeX Live (make test installs them)")
def test_layout_faults_in_the_latex_log_are_reported(tmp_path):
    from stages.pdf import build_pdf, layout_problems

    tex = tmp_path / "t.tex"
    tex.write_text("\\documentclass{article}\\begin{document}\n"
                   "\\hbox to 2in{" + "x" * 60 + "}\n"  # sticks out by far more than 5 pt
                   "See Table~\\ref{nowhere}.\n"
                   "\\begin{figure}[t]\\rule{1pt}{20in}\\end{figure}\n"  # taller than the page
                   "\\end{document}\n")
    _, problems = build_pdf(tex)
    assert any(p.startswith("Overfull \\hbox") for p in problems)
    assert any("Reference `nowhere' on page 1 undefined" in p for p in problems)
    assert any("Float too large for page" in p for p in problems)
    assert layout_problems(["Overfull \\hbox (4.9pt too wide) in paragraph at lines 3--4"]) == []
    assert layout_problems(["Overfull \\vbox (5.1pt too high) has occurred while \\output is active"]) != []


def test_code_prints_as_typed_and_keeps_an_option_whole():
    code = '<% import macros as f with context %><< f.code("dvc exp run -S a_b=`x`") >>'
    assert environment("markdown").from_string(code).render() == "`` dvc exp run -S a_b=`x` ``"  # no backslash
    assert environment("latex").from_string(code).render() == (r"\texttt{dvc exp run \mbox{-}S a\_b="
                                                                r"\textasciigrave{}x\textasciigrave{}}")
