"""The README and its pages under docs/: every relative link resolves, to a file and, where it names one, to a
heading of that file; and the README stays short enough to read in ten minutes."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_LINES = 350

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)  # fenced code blocks, whole
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)  # inline code: `x`, ``x``, within a paragraph or a table row
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, …: not checked


def prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets and parentheses are not links. A code span
    ends within its paragraph, and within its row of a table."""
    blocks = re.split(r"\n[ \t]*\n", FENCE.sub("", text))
    rows = [line for block in blocks for line in (block.split("\n") if block.lstrip().startswith("|") else [block])]
    return "\n\n".join(CODE_SPAN.sub("", row) for row in rows)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than '-' and '_' dropped, spaces as '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in `path`; a repeated heading gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(match.group(2))
        found.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return found


def links(path: Path) -> list[str]:
    return [target for target in LINK.findall(prose(path.read_text(encoding="utf-8"))) if not SCHEME.match(target)]


def test_the_slug_rule_is_githubs():
    assert slug("Quantization-aware training (`calib=ema`)") == "quantization-aware-training-calibema"
    assert slug("Why no output is `cache: false`") == "why-no-output-is-cache-false"
    assert slug("ONNX Runtime's quantizer as a peer") == "onnx-runtimes-quantizer-as-a-peer"
    assert slug("Fingerprints and `make verify`") == "fingerprints-and-make-verify"
    assert slug("snake_case and 2^24 ≤ 10") == "snake_case-and-224--10"


def test_links_are_found_outside_code_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A\n\n[b](b.md#x) and ![c](img/c.png \"t\") and [web](https://example.com/x)\n\n"
                    "`[d](not-a-link.md)`\n\n```sh\n[e](not-either.md)\n```\n\n## A\n\n"
                    "| `a \\`b\\` c` | `x` |\n|---|---|\n| [f](f.md) | `y` |\n\na ` b\n\n[g](g.md) `c`\n")
    assert links(page) == ["b.md#x", "img/c.png", "f.md", "g.md"]
    assert anchors(page) == {"a", "a-1"}


def broken_links(path: Path) -> list[str]:
    """The relative links of `path` that name no file, or a #anchor that is no heading of their target."""
    broken = []
    for target in links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return broken


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Its part\n\n[back](../README.md#top)\n")
    (tmp_path / "README.md").write_text("# Top\n\n[a](docs/a.md#its-part) [gone](docs/b.md) [bad](docs/a.md#no-part) "
                                        "[self](#top) [web](https://example.com/#x)\n")
    assert broken_links(tmp_path / "README.md") == ["docs/b.md: no such file", "docs/a.md#no-part: no heading "
                                                                                 "#no-part in a.md"]
    assert broken_links(tmp_path / "docs" / "a.md") == []


@pytest.mark.parametrize("path", PAGES, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(path):
    """A link to a file names one that exists; a link with #anchor names a heading of its target."""
    broken = broken_links(path)
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme_and_links_back():
    """Every study is one link away from the README, and each page leads back to it."""
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in links(README)}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"the README does not link {page.relative_to(ROOT)}"
        assert "../README.md" in {target.partition("#")[0] for target in links(page)}, f"{page.name} has no link back"
        assert page.read_text(encoding="utf-8").startswith("# "), f"{page.name} does not start with a # title"


def test_the_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_LINES, f"README.md has {lines} lines, more than {README_LINES}: move the detail to docs/"
