"""The project's documents are in the tree and every citation of them resolves.

A citation is ``docs/<name>.md`` followed by its sections: ``docs/protocol.md §A.2 #7, §I.1``,
``docs/scale.md §3``, ``docs/protocol.md §B.3-§B.5``. Each ``§X`` must be the identifier of a heading of that
file (``## A. Methods`` is §A, ``### A.3 Parameter counts`` §A.3, ``## 4. Results layout`` §4). Inside docs/,
a ``§X`` with no file before it is a section of the same document. Nothing may cite a document the tree does not
hold: the reference notes the project started from lived outside the repository.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

SECTION = r"§[A-Z0-9](?:[\w.]*\w)?"
# The sections after a document's name: §X tokens and method rows (#7, #10-12), joined by ", ", "-" or " and ",
# possibly after a line break (a wrapped comment or docstring: its "# " or indent comes first).
CITATION = re.compile(
    rf"docs/(?P<name>[\w-]+)\.md(?P<sections>(?:[ \t]*\n?[ \t]*(?:#[ \t]+)?{SECTION}"
    rf"(?:(?:[ \t]+|,[ \t]+|-|[ \t]+and[ \t]+)(?:{SECTION}|#\d+(?:-\d+)?))*)?)"
)
SECTION_TOKEN = re.compile(SECTION)
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<id>[A-Z0-9][\w.]*?)\.?(?:[ \t]|$)", re.MULTILINE)
# Documents that were never in the repository, and the folder outside it where they lived.
OUTSIDE = re.compile(r"\b(?:STUDY|DESIGN|CHECKPOINTS|CPU_FIGURES|LOCAL_SLURM|STYLE)\.md\b|shared/docs\b")
SKIP_SUFFIXES = {".png", ".jpg", ".jpeg", ".npz", ".npy", ".safetensors", ".pt", ".pth", ".gz", ".zip", ".ipynb"}


def tree_files() -> list[Path]:
    """The repository's text files: what git tracks or would track, or, outside a git checkout, every file
    but the ignored folders."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        paths = [REPO / name for name in listing.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        ignored = {".git", ".venv", "results", ".snakemake", "__pycache__", ".pytest_cache", ".ruff_cache"}
        paths = [p for p in REPO.rglob("*") if not ignored & set(p.relative_to(REPO).parts)]
    return [p for p in paths if p.is_file() and p.suffix not in SKIP_SUFFIXES and p.stat().st_size < 2_000_000]


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def headings(text: str) -> set[str]:
    """The section identifiers of a Markdown document: the first word of each heading that starts with a capital
    or a digit, without its trailing dot (``## A. Methods`` -> A, ``### I.20 ...`` -> I.20)."""
    inside_code = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return {match["id"] for match in HEADING.finditer(inside_code)}


def unresolved(text: str, where: str, docs_dir: Path, own: str | None = None) -> list[str]:
    """Every citation in `text` whose document is not in `docs_dir` or whose section is not a heading of it.
    `own`: the document `text` is (inside docs/), whose bare §X are its own sections."""
    problems = []
    cache: dict[str, set[str] | None] = {}

    def sections_of(name: str) -> set[str] | None:
        if name not in cache:
            path = docs_dir / f"{name}.md"
            cache[name] = headings(path.read_text(encoding="utf-8")) if path.is_file() else None
        return cache[name]

    def line_of(offset: int) -> int:
        return text.count("\n", 0, offset) + 1

    cited_spans = []
    for match in CITATION.finditer(text):
        cited_spans.append(match.span())
        found = sections_of(match["name"])
        if found is None:
            problems.append(f"{where}:{line_of(match.start())}: docs/{match['name']}.md is not in docs/")
            continue
        for token in SECTION_TOKEN.findall(match["sections"]):
            if token[1:] not in found:
                problems.append(f"{where}:{line_of(match.start())}: docs/{match['name']}.md has no section {token}")
    if own is not None:
        found = sections_of(own) or set()
        for match in SECTION_TOKEN.finditer(text):
            if any(start <= match.start() < end for start, end in cited_spans):
                continue
            if match.group()[1:] not in found:
                problems.append(f"{where}:{line_of(match.start())}: {own}.md has no section {match.group()}")
    return problems


def test_every_cited_section_of_the_docs_exists():
    docs_dir = REPO / "docs"
    problems = []
    for path in tree_files():
        text = read_text(path)
        if text is None or path == THIS:
            continue
        relative = path.relative_to(REPO)
        own = path.stem if relative.parts[0] == "docs" and path.suffix == ".md" else None
        problems += unresolved(text, str(relative), docs_dir, own)
    assert not problems, "citations that do not resolve:\n" + "\n".join(problems)


@pytest.fixture
def docs_dir(tmp_path):
    """Two small documents to check citations against, whatever the real docs/ holds."""
    (tmp_path / "protocol.md").write_text(
        "# Protocol\n\n## A. Methods\n\n### A.2 Catalogue\n\n### A.3 Counts\n\n```\n### B.9 in a code block\n```\n\n"
        "## B. Hyper-parameters\n\n### B.3 Many-shot\n\n### B.5 Inputs\n\n## I. Defects\n\n### I.1 VPT\n",
        encoding="utf-8",
    )
    (tmp_path / "scale.md").write_text("# Scale\n\n## 3. Cold imports\n", encoding="utf-8")
    return tmp_path


def test_citations_are_found_wherever_they_are_written(docs_dir):
    """The checker itself: it sees citations in comments, wrapped lines and lists, and reports bad ones."""
    good = (
        "# (docs/protocol.md §A.2 #7, §I.1)\n"
        "x = 1  # docs/protocol.md §B.3-§B.5: augmentation\n"
        '"""... against docs/protocol.md\n    §A.3 on the meta device (docs/protocol.md §A and docs/scale.md §3)."""'
    )
    assert unresolved(good, "good.py", docs_dir) == []
    assert len(CITATION.findall(good)) == 5
    bad = (
        "# docs/protocol.md §A.2 #7, §I.99\n"  # a section that does not exist, second in a list
        "see docs/protocol.md\n§Z.1 here\n"  # after a line break
        "(docs/nowhere.md §1)\n"  # a document that does not exist
        "docs/protocol.md §B.3-§B.9\n"  # the end of a range; B.9 is only inside a code block
    )
    assert unresolved(bad, "bad.py", docs_dir) == [
        "bad.py:1: docs/protocol.md has no section §I.99",
        "bad.py:2: docs/protocol.md has no section §Z.1",
        "bad.py:4: docs/nowhere.md is not in docs/",
        "bad.py:5: docs/protocol.md has no section §B.9",
    ]


def test_a_document_s_own_bare_sections_resolve_in_it(docs_dir):
    assert unresolved("as §A.3 says, and docs/scale.md §3", "protocol.md", docs_dir, own="protocol") == []
    assert unresolved("as §A.42 says, and docs/scale.md §3", "protocol.md", docs_dir, own="protocol") == [
        "protocol.md:1: protocol.md has no section §A.42"
    ]


@pytest.mark.parametrize(
    ("heading", "identifier"),
    [("## A. Methods", "A"), ("### A.3 Parameter counts", "A.3"), ("## 4. Results layout", "4"), ("### I.20", "I.20")],
)
def test_a_heading_s_identifier_is_its_first_word(heading, identifier):
    assert headings(f"# Title\n\n{heading}\ntext\n") == {"Title", identifier}


def test_nothing_cites_a_document_outside_the_tree():
    stale = []
    for path in tree_files():
        text = read_text(path)
        if text is None or path == THIS:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if OUTSIDE.search(line):
                stale.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not stale, "citations of documents that are not in the repository (cite docs/ instead):\n" + "\n".join(stale)


def test_the_readme_lists_every_document():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for doc in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in readme, f"README.md does not link docs/{doc.name}"
