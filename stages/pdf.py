"""Stage pdf: reports/build/report.pdf from report.tex with one LuaLaTeX pass, byte-reproducibly (the report
writes every table, figure and reference number itself, so there is nothing for a second pass to resolve).

Kept apart from the report stage so that a machine without TeX fails only here, with one line saying what
to install, and everything before stays cached.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from quantlab import paths
from quantlab.errors import UserError
from quantlab.io import require, save_bytes
from quantlab.report.provenance import source_date
from quantlab.stage import run_main

PACKAGES = ("texlive-latex-recommended texlive-publishers texlive-fonts-recommended texlive-luatex "
            "fonts-freefont-otf fonts-noto-cjk")
INSTALL = (f"install TeX Live and the fonts: on Debian/Ubuntu `apt-get install {PACKAGES}`, elsewhere TeX Live with "
           f"LuaLaTeX, IEEEtran and the fonts FreeSerif and Noto Serif CJK")
RECOVER = "`dvc checkout reports/build/report.pdf` brings back the last PDF built"


# What a reader sees as a layout fault: a line sticking out by more than OVERFULL_PT, an unresolved reference,
# a float LaTeX could not place where asked, a table whose type had to shrink below 7 pt (latex.j2).
OVERFULL_PT = 5.0
LAYOUT_FAULTS = (re.compile(r"^Overfull \\[hv]box \((?P<points>[\d.]+)pt too (wide|high)\)"),
                 re.compile(r"(Reference|Citation) .* undefined"),
                 re.compile(r"Float too large|Too many unprocessed floats|float specifier changed"),
                 re.compile(r"Table type below 7 pt"))


def layout_problems(lines: list[str]) -> list[str]:
    """The lines of a LaTeX log that report a layout fault (overfull boxes up to OVERFULL_PT excepted)."""
    return [line.strip() for line in lines for pattern in LAYOUT_FAULTS if (found := pattern.search(line))
            and not ("points" in found.groupdict() and float(found["points"]) <= OVERFULL_PT)]


def build_pdf(tex: Path) -> tuple[bytes, list[str]]:
    """The PDF of `tex`, compiled with LuaLaTeX (Unicode text: Greek, Cyrillic and CJK names) in a scratch folder
    (figures are found relative to `tex`), and the layout problems of its log. A glyph missing from the fonts
    is an error, not a silent gap."""
    if shutil.which("lualatex") is None:
        raise UserError(f"lualatex not found: {INSTALL}")
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(int(source_date().timestamp())), FORCE_SOURCE_DATE="1")
    with tempfile.TemporaryDirectory(prefix="latex-") as scratch:
        # no dates and no trailer ID (LuaTeX derives it from the time and the output path): the same bytes
        first_line = r"\pdfvariable suppressoptionalinfo 1023 \pdfvariable trailerid{}" + rf"\input{{{tex.name}}}"
        result = subprocess.run(["lualatex", "-interaction=nonstopmode", "-halt-on-error", f"-jobname={tex.stem}",
                                 f"-output-directory={scratch}", first_line],
                                cwd=tex.parent, env=env, capture_output=True, text=True)
        pdf, log = (Path(scratch) / tex.with_suffix(suffix).name for suffix in (".pdf", ".log"))
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        if result.returncode != 0 or not pdf.exists():
            first_error = next((line for line in lines if line.startswith("!")), "see lualatex's output")
            if "not found" in first_error and (".cls" in first_error or ".sty" in first_error) \
                    or "cannot be found" in first_error:
                raise UserError(f"LaTeX is missing a package or font ({first_error.lstrip('! ')}): {INSTALL}")
            raise UserError(f"lualatex failed on {tex}: {first_error.lstrip('! ')}; {RECOVER}")
        missing = next((line for line in lines if line.startswith("Missing character")), None)
        if missing:
            raise UserError(f"{tex}: {missing} (a glyph the fonts lack); {RECOVER}")
        return pdf.read_bytes(), layout_problems(lines)


def main() -> None:
    tex = require(paths.REPORT / "report.tex")
    pdf, problems = build_pdf(tex)
    save_bytes(paths.REPORT / "report.pdf", pdf)
    for problem in problems:
        print(f"warning: {tex}: {problem}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
