"""The docs in docs/: code comments cite pages and headings that exist, and links between pages resolve."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CODE = ("calls", "providers", "routing", "voicecall_project")
# "(docs/compatibility.md, Greeting and initial message)" or "(…; docs/x.md, A; B)"
CITATION = re.compile(r"docs/([\w-]+)\.md, ([^)\n]+)\)")


def headings(page: Path) -> set[str]:
    return {match.strip() for match in re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)}


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def code_files():
    for package in CODE:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_every_docs_page_is_listed_in_the_index():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        if page.name != "README.md":
            assert f"({page.name})" in index, page.name


def test_code_comments_cite_pages_and_headings_that_exist():
    missing = []
    for file in code_files():
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            for page, sections in CITATION.findall(line):
                path = DOCS / f"{page}.md"
                if not path.exists():
                    missing.append(f"{file.relative_to(ROOT)}:{number}: no docs/{page}.md")
                    continue
                for section in sections.split("; "):
                    if section.strip() not in headings(path):
                        missing.append(f"{file.relative_to(ROOT)}:{number}: no heading {section!r} in docs/{page}.md")
    assert missing == []


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")) + [ROOT / "README.md"], ids=lambda p: p.name)
def test_links_between_pages_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target, fragment in re.findall(r"\]\(((?:docs/)?[\w-]*\.md)?(?:#([\w-]+))?\)", text):
        if not target and not fragment:
            continue
        file = (page.parent / target) if target else page
        if not file.exists():
            broken.append(target)
        elif fragment and fragment not in {anchor(h) for h in headings(file)}:
            broken.append(f"{target}#{fragment}")
    assert broken == []


OUTSIDE = re.compile(r"behaviour\.md|carriers\.md|ai-providers\.md|field-notes\.md|\bSPEC\b|\bDESIGN\b")


def test_the_docs_name_no_files_from_outside_the_repository():
    for page in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        assert not OUTSIDE.search(page.read_text(encoding="utf-8")), page.name


def test_code_comments_point_into_the_repository_only():
    """Comments and docstrings cite docs/ pages, never documents that are not in the repository."""
    this_file = Path(__file__).resolve()
    sources = [
        path
        for package in ("core", "calls", "providers", "routing", "voicecall_project", "tests", "bench")
        for path in (ROOT / package).rglob("*.py")
        if path.resolve() != this_file
    ]
    sources += [ROOT / "requirements.txt", ROOT / "requirements-test.txt", ROOT / "Makefile", ROOT / "pytest.ini"]
    cited = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sources
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert cited == []
