"""Stage pdf: reports/build/report.pdf from report.tex with latexmk (pdfLaTeX), byte-reproducibly.

Kept apart from the report stage so that a machine without TeX fails only here, with one line saying what
to install, and everything before stays cached.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from quantlab import paths
from quantlab.errors import UserError, run_main
from quantlab.io import require, save_bytes
from quantlab.report.render import source_date

INSTALL = ("install TeX Live: on Debian/Ubuntu `apt-get install texlive-latex-recommended texlive-publishers "
           "texlive-fonts-recommended latexmk`, elsewhere TeX Live or MiKTeX with latexmk and IEEEtran")


def build_pdf(tex: Path) -> bytes:
    """The PDF of `tex`, compiled in a scratch folder (figures are found relative to `tex`)."""
    if shutil.which("latexmk") is None or shutil.which("pdflatex") is None:
        raise UserError(f"latexmk or pdflatex not found: {INSTALL}")
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(int(source_date().timestamp())), FORCE_SOURCE_DATE="1")
    with tempfile.TemporaryDirectory(prefix="latex-") as scratch:
        # no trailer ID (pdfTeX derives it from the output path) and no dates: the same .tex, the same bytes
        result = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-quiet",
                                 r"-usepretex=\pdftrailerid{}\pdfinfoomitdate=1", f"-output-directory={scratch}",
                                 tex.name],
                                cwd=tex.parent, env=env, capture_output=True, text=True)
        pdf = Path(scratch) / tex.with_suffix(".pdf").name
        if result.returncode != 0 or not pdf.exists():
            log = Path(scratch) / tex.with_suffix(".log").name
            first_error = next((line for line in log.read_text(errors="replace").splitlines()
                                if line.startswith("!")), "see latexmk's output") if log.exists() else ""
            if "not found" in first_error and (".cls" in first_error or ".sty" in first_error):
                raise UserError(f"LaTeX is missing a package ({first_error.lstrip('! ')}): {INSTALL}")
            raise UserError(f"latexmk failed on {tex}: {first_error.lstrip('! ')}")
        return pdf.read_bytes()


def main() -> None:
    tex = require(paths.REPORT / "report.tex")
    save_bytes(paths.REPORT / "report.pdf", build_pdf(tex))


if __name__ == "__main__":
    run_main(main)
