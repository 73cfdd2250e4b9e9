"""The lab report's one template, rendered by jinja2 to LaTeX and to Markdown.

The prose exists once, in reports/report.j2; the two formats differ only in their macros, reports/latex.j2 and
reports/markdown.j2 (sections, emphasis, display math, tables, figures, references). Every value a template
prints goes through the format's escaping unless it is markup built on purpose (`Markup`), so a `_`, `%` or
`&` in a param or a path prints as itself and cannot break or change the document.
"""

import re
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup

from quantlab.report.glyphs import CJK, within

TEMPLATES = Path("reports")


# Quotes and runs of hyphens too: a value prints as typed, not as TeX's ligatures (curly quotes, dashes).
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
          ">": r"\textgreater{}", "'": r"\textquotesingle{}", '"': r"\textquotedbl{}", "`": r"\textasciigrave{}"}
_LATEX_PATTERN = re.compile("|".join(re.escape(c) for c in _LATEX))
_MARKDOWN_PATTERN = re.compile(r"([\\`*_{}\[\]<>#|~$])")


# TeX's ligatures of two characters: -- and --- (dashes), << and >> (guillemets), ,, (low quotes), !` and ?`
_LIGATURE = frozenset("-<>,!?`")
LONG_WORD = 24  # characters without a space: a word that long may break anywhere (a name, an address)


def latex_escape(value) -> str:
    """Every character printed as itself: TeX's specials escaped, and a zero kern between two characters that
    TeX would join into a ligature."""
    text = str(value)
    return "".join((r"\kern0pt{}" if i and char in _LIGATURE and text[i - 1] in _LIGATURE else "")
                   + _LATEX.get(char, char) for i, char in enumerate(text))


def latex_breakable(value) -> str:
    """Escaped, with break points after / . _ - so long paths and URLs wrap inside a column."""
    return re.sub(r"(/|\.|\\_|-)", r"\1\\allowbreak{}", latex_escape(value))


def latex_wrappable(value) -> str:
    """Escaped, and a word longer than LONG_WORD characters may break after any character: an unbroken name
    in the title block wraps instead of running off the page."""
    return "".join(r"\allowbreak{}".join(map(latex_escape, word)) if len(word) > LONG_WORD else latex_escape(word)
                   for word in re.split(r"(\s+)", str(value)))


def latex_code(value) -> str:
    """Escaped, and no line break after a hyphen (TeX breaks after any, in code too): a command such as
    `dvc exp run -S key=value` keeps its option whole."""
    return latex_escape(value).replace("-", r"\mbox{-}")


def markdown_escape(value) -> str:
    return _MARKDOWN_PATTERN.sub(r"\\\1", str(value))


def markdown_code(value) -> str:
    """A code span, its text as typed (a backslash inside one would print): fenced by one backtick more than its
    longest run of them, and padded where it starts or ends with one."""
    text = str(value)
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return f"{fence}{padded}{fence}"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def alignments(frame: pd.DataFrame) -> list[str]:
    """Right for columns of numbers, left for the others."""
    return ["right" if all(_is_number(str(v)) for v in frame[c]) else "left" for c in frame.columns]


def latex_table(frame: pd.DataFrame) -> Markup:
    """A booktabs tabular of a frame of strings, every cell and header escaped."""
    align = "".join(a[0] for a in alignments(frame))
    header, *rows = (" & ".join(map(latex_escape, cells)) + r" \\"
                     for cells in [frame.columns, *frame.itertuples(index=False)])
    return Markup("\n".join([rf"\begin{{tabular}}{{{align}}}", r"\toprule", header, r"\midrule", *rows,
                             r"\bottomrule", r"\end{tabular}"]))


def markdown_table(frame: pd.DataFrame) -> Markup:
    escaped = frame.map(markdown_escape).rename(columns=markdown_escape)
    return Markup(escaped.to_markdown(index=False, colalign=alignments(frame), disable_numparse=True))


def roman(number: int) -> str:
    """1 -> I, 4 -> IV, 12 -> XII: how IEEEtran numbers sections and tables."""
    out = ""
    for value, letters in ((10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        count, number = divmod(number, value)
        out += letters * count
    return out


class Numbering:
    """Sections and tables (I, II, ...), figures (1, 2, ...) and references (1, 2, ...), numbered in order of
    appearance as IEEEtran numbers them, for a format that has to write the numbers itself. A reference may
    name a table that comes later: `render` renders twice, the second time knowing what the first found."""

    def __init__(self, known: dict[str, int] | None = None):
        self.known, self.found = known or {}, {}

    def add(self, label: str) -> str:
        """The number of a new section ("sec:..."), table ("tab:..."), figure ("fig:...") or reference."""
        kind = label.split(":")[0]
        self.found[label] = sum(other.split(":")[0] == kind for other in self.found) + 1
        return self.text(label, self.found[label])

    def __call__(self, label: str) -> str:
        """The number of a label anywhere in the document; "?" in the first pass, before it is known."""
        return self.text(label, self.known.get(label))

    @staticmethod
    def text(label: str, number: int | None) -> str:
        return "?" if number is None else roman(number) if label.split(":")[0] in ("sec", "tab") else str(number)


def environment(fmt: str, numbers: Numbering | None = None, directory: Path = TEMPLATES) -> jinja2.Environment:
    """The report's templates in format `fmt`, with <% %> and << >> delimiters so that TeX's braces need no
    escaping: every << value >> is escaped for the format unless it is markup built on purpose (a table, a
    macro's output)."""
    escape, table, code = {"latex": (latex_escape, latex_table, latex_code),
                           "markdown": (markdown_escape, markdown_table, markdown_code)}[fmt]

    # Needing the evaluation context, it runs when the template renders: jinja2 would otherwise fold a constant
    # such as << "95 %" >> at compile time, HTML-escape it into Markup, and so print it unescaped.
    @jinja2.pass_eval_context
    def finalize(_, value) -> Markup:
        return value if isinstance(value, Markup) else Markup(escape(value))

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(directory), undefined=jinja2.StrictUndefined,
                             autoescape=True, finalize=finalize,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             block_start_string="<%", block_end_string="%>", variable_start_string="<<",
                             variable_end_string=">>", comment_start_string="<#", comment_end_string="#>")
    env.filters.update(table=table, breakable=lambda v: Markup(latex_breakable(v)),
                       wrappable=lambda v: Markup(latex_wrappable(v)), code=lambda v: Markup(code(v)))
    env.globals.update(has_cjk=lambda text: any(within(char, CJK) for char in text), macros=f"{fmt}.j2",
                       numbers=numbers or Numbering())
    return env


def render(template: str, context: dict, fmt: str, directory: Path = TEMPLATES) -> str:
    """`template` in format `fmt` ("latex" or "markdown"; its macros: <fmt>.j2 beside it), rendered twice so
    that the second pass knows every section's, table's, figure's and reference's number."""
    first = Numbering()
    env = environment(fmt, first, directory)
    env.get_template(template).render(**context)
    env.globals["numbers"] = Numbering(first.found)  # the compiled templates are kept: compiling is the costly part
    return env.get_template(template).render(**context)
