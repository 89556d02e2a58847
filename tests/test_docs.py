"""The docs point at things that exist: relative links resolve inside the repository (anchors to a heading
of the target), nothing points at ../shared (no clone has it), and the lists the docs keep match the code."""

import json
import re
from itertools import takewhile
from pathlib import Path

import pytest

from workflows.reproduce import COLUMNS

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted({ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "cache_schemas" / "README.md",
               ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "workflows").rglob("README.md")})
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _outside_fences(path: Path) -> str:
    return re.sub(r"^(```|~~~).*?^\1", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)


def _links(path: Path) -> list[str]:
    """Relative link targets, outside code blocks and code spans (where a link is a link)."""
    prose = re.sub(r"(`+).+?\1", "", _outside_fences(path))
    return [t for t in LINK.findall(prose) if not re.match(r"[a-z][a-z0-9+.-]*:", t, flags=re.I)]


def _anchors(path: Path) -> set[str]:
    """GitHub's ids for a Markdown file's headings: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered."""
    ids, counts = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _outside_fences(path), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        ids.add(f"{slug}-{counts[slug]}" if slug in counts else slug)
        counts[slug] = counts.get(slug, 0) + 1
    return ids


def test_the_docs_are_found():
    names = {str(p.relative_to(ROOT)) for p in DOCS}
    assert {"README.md", "ARCHITECTURE.md", "docs/RESEARCH.md", "docs/RELIABILITY.md",
            "workflows/world/README.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(doc):
    broken = []
    for link in _links(doc):
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(f"{link}: no such file in the repository")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link}: {path.name} has no heading #{anchor}")
    assert not broken, broken


@pytest.mark.parametrize("doc", [*DOCS, ROOT / "workflows" / "published.json", ROOT / "workflows" / "reproduce.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_points_at_the_shared_folder(doc):
    """../shared exists beside the working copy the project was built in, never in a clone."""
    assert not re.search(r"(\.\./)?shared/(RESEARCH|STYLE|README)", doc.read_text(encoding="utf-8"))


def test_anchor_ids_follow_github():
    assert {"writers-and-what-is-guaranteed-where", "tables-cache_schemastablespy"} <= _anchors(
        ROOT / "cache_schemas" / "README.md")


def test_the_research_table_is_published_json():
    """docs/RESEARCH.md's table of published numbers is workflows/published.json, cell for cell."""
    published = json.loads((ROOT / "workflows" / "published.json").read_text(encoding="utf-8"))["rows"]
    text = (ROOT / "docs" / "RESEARCH.md").read_text(encoding="utf-8")
    header = "| row | " + " | ".join(COLUMNS) + " |"
    assert header in text
    lines = takewhile(lambda line: line.startswith("|"), text[text.index(header):].splitlines()[2:])
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}
    assert rows == {name: [f"{values[c]:.1f}" if c in values else "-" for c in COLUMNS]
                    for name, values in published.items()}


def test_every_bench_script_is_in_the_architecture():
    """ARCHITECTURE.md's bench/ section names every script there is, and only scripts there are."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text[text.index("## bench/"):text.index("\n## ", text.index("## bench/") + 1)]
    named = set(re.findall(r"`([\w/]+\.py)`", section))
    assert named == {p.name for p in (ROOT / "bench").glob("*.py")}
