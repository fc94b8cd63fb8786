"""Citations of the design notes resolve: every ``docs/PAGE.md, "Section"`` (or a citation
of ``DESIGN.md``) in the code and configs names a page under ``docs/`` and a heading of
it, and every ``bench/RESULTS.md, "Title"`` in the pages names a recorded section. The
API reference (``docs/api/``) has a directive for every name the packages export."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: trees whose docstrings and comments may cite the design notes
SOURCE_TREES = ("pico", "baselines", "configs")
SOURCE_SUFFIXES = (".py", ".yaml", ".yml")

#: a cited file: a page under docs/, or DESIGN.md anywhere (no such file is kept)
TARGET = re.compile(r"(?<![\w/.-])((?:docs/[\w./-]+?\.md)|(?:[\w./-]*DESIGN\.md))`?")
#: what may follow a cited file: ``, "Section"`` (single or double quotes), the quoted
#: title possibly wrapped onto the next comment or docstring line; then ``; "Other"``
FIRST_SECTION = re.compile(r",[ \t]*(?:\n[ \t#]*)?([\"'])(.+?)\1", re.DOTALL)
MORE_SECTION = re.compile(r";[ \t]*(?:\n[ \t#]*)?([\"'])(.+?)\1", re.DOTALL)
RESULTS_CITATION = re.compile(r"bench/RESULTS\.md`?")


def _normalise(title: str) -> str:
    """A quoted title as one line: a line break, with any comment marker and indentation
    after it, becomes one space."""
    return re.sub(r"\s*\n[\s#]*", " ", title).strip()


def _sections(text: str, end: int) -> list[str]:
    """The quoted section titles that follow a citation ending at ``end``."""
    found = []
    match = FIRST_SECTION.match(text, end)
    while match and "\n\n" not in match.group(2):
        found.append(_normalise(match.group(2)))
        end = match.end()
        match = MORE_SECTION.match(text, end)
    return found


def citations(text: str) -> list[tuple[str, list[str], int]]:
    """(cited file, cited section titles, line number) of every citation in ``text``."""
    out = []
    for match in TARGET.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        out.append((match.group(1), _sections(text, match.end()), line))
    return out


def headings(page: Path) -> set[str]:
    """Markdown heading texts of ``page`` (outside fenced code blocks)."""
    found, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)):
            found.add(match.group(1))
    return found


def source_files() -> list[Path]:
    return sorted(
        path
        for tree in SOURCE_TREES
        for path in (ROOT / tree).rglob("*")
        if path.suffix in SOURCE_SUFFIXES and path.is_file()
    )


def _problems(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    where = path.relative_to(ROOT)
    problems = []
    for target, sections, line in citations(text):
        page = ROOT / target
        if not target.startswith("docs/") or not page.is_file():
            problems.append(f"{where}:{line} cites {target}, which does not exist")
            continue
        missing = [s for s in sections if s not in headings(page)]
        problems += [f"{where}:{line} cites {target}, {s!r}: no such heading" for s in missing]
    return problems


def test_code_citations_of_the_design_notes_resolve():
    problems = [problem for path in source_files() for problem in _problems(path)]
    assert not problems, "\n".join(problems)


def test_the_code_cites_the_design_notes():
    """The scan is not vacuous: the code does cite pages and headings under docs/."""
    cited = [
        (target, sections)
        for path in source_files()
        for target, sections, _ in citations(path.read_text(encoding="utf-8"))
    ]
    assert any(target.startswith("docs/") and sections for target, sections in cited)


@pytest.mark.parametrize(
    "page", sorted(DOCS.rglob("*.md")), ids=lambda p: p.relative_to(DOCS).as_posix()
)
def test_page_citations_resolve(page: Path):
    """A page's citations of other pages and of ``bench/RESULTS.md`` sections resolve
    (a recorded section's heading starts with the cited title: it carries a date after
    it), and its relative links name files that exist."""
    text = page.read_text(encoding="utf-8")
    problems = _problems(page)
    results = ROOT / "bench" / "RESULTS.md"
    recorded = headings(results) if results.is_file() else set()
    for match in RESULTS_CITATION.finditer(text):
        for title in _sections(text, match.end()):
            if not any(heading.startswith(title) for heading in recorded):
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{page.name}:{line} cites bench/RESULTS.md, {title!r}: not there")
    for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in link and not (page.parent / link).exists():
            problems.append(f"{page.name} links to {link}, which does not exist")
    assert not problems, "\n".join(problems)


def test_citation_parsing():
    text = (
        'x (docs/design.md, "PiCO step") y\n'
        "# see docs/evaluation.md, 'Label-free\n#   selection'\n"
        'z DESIGN.md section 3; w `bench/RESULTS.md`, "A"; "B".\n'
    )
    assert citations(text) == [
        ("docs/design.md", ["PiCO step"], 1),
        ("docs/evaluation.md", ["Label-free selection"], 2),
        ("DESIGN.md", [], 4),
    ]
    assert _sections(text, RESULTS_CITATION.search(text).end()) == ["A", "B"]


#: the API reference pages: mkdocstrings renders each ``::: dotted.path`` line
API_PAGES = DOCS / "api"
#: the packages whose ``__all__`` the API reference covers, with the file defining it
PUBLIC_PACKAGES = {
    "pico": ROOT / "pico" / "__init__.py",
    **{
        f"pico.{sub}": ROOT / "pico" / sub / "__init__.py"
        for sub in ("core", "pll", "models", "data", "eval", "engine")
    },
    "pico.baselines": ROOT / "baselines" / "__init__.py",
}
DIRECTIVE = re.compile(r"^::: ([\w.]+)[ \t]*$", re.MULTILINE)


def exported_names(init: Path) -> list[str]:
    """The ``__all__`` list of a package's ``__init__.py``, read without importing it."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{init} defines no __all__")


def api_directives() -> set[str]:
    """The objects the API reference pages render, as written after ``:::``."""
    return {
        path
        for page in API_PAGES.glob("*.md")
        for path in DIRECTIVE.findall(page.read_text(encoding="utf-8"))
    }


def undocumented(package: str, names: list[str], directives: set[str]) -> list[str]:
    """The ``names`` exported by ``package`` without a ``::: package.name`` directive, or
    one at a module under it (``::: pico.pll.PiCO`` documents ``pico.PiCO``)."""
    return [
        name
        for name in names
        if not any(d.startswith(f"{package}.") and d.endswith(f".{name}") for d in directives)
    ]


@pytest.mark.parametrize("package", sorted(PUBLIC_PACKAGES))
def test_api_reference_covers_every_export(package: str):
    """A name added to a package's ``__all__`` needs its line in ``docs/api/*.md``: the
    reference cannot drift from the public API (``mkdocs build --strict`` then checks
    that every line names an object)."""
    missing = undocumented(package, exported_names(PUBLIC_PACKAGES[package]), api_directives())
    assert not missing, (
        f"{package} exports names the API reference (docs/api/*.md) does not document: "
        + ", ".join(missing)
        + f"; add a '::: {package}.NAME' line to the page of its package"
    )


def test_api_coverage_check():
    """The check reads directives and ``__all__`` as meant."""
    directives = {"pico.pll", "pico.pll.PiCO", "pico.api.train", "pico.__version__"}
    assert undocumented("pico", ["PiCO", "train", "__version__", "CC"], directives) == ["CC"]
    assert undocumented("pico.pll", ["PiCO", "PiCOPlus"], directives) == ["PiCOPlus"]
    assert undocumented("pico.core", ["PiCO"], directives) == ["PiCO"]
    assert "PiCO" in exported_names(PUBLIC_PACKAGES["pico"])
    page = "x\n\n::: pico.pll.PiCO\n    options:\n      members: false\n\n::: pico.api.train  \n"
    assert DIRECTIVE.findall(page) == ["pico.pll.PiCO", "pico.api.train"]
