"""Generated documents are current with the code; citations of the spec hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cortex_fsm.tables import health_markdown, routing_markdown

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SPEC = DOCS / "semantics.md"

#: Where the project cites its specification.
CITING = ("src", "tests", "docs", "proofs", "benchmarks", "examples", "README.md")
#: "docs/semantics.md §4, §7", "docs/semantics.md §6-§13": every § of the run.
CITATION = re.compile(r"docs/semantics\.md ((?:§\d+(?:\s*(?:-|\u2013|,|and|or)\s*)?)+)")
#: A spec reference that does not name the project's own file.
STRAY = re.compile(r"\.\./shared|spec/semantics|spec/trace-format|(?<!docs/)semantics(\.md)? §")


def _citing_files() -> list[Path]:
    files: list[Path] = []
    for name in CITING:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(
                p for p in sorted(path.rglob("*")) if p.suffix in {".py", ".md"} and p.is_file()
            )
    return files


def _sections() -> set[int]:
    return {int(n) for n in re.findall(r"^## (\d+)\. ", SPEC.read_text(), re.MULTILINE)}


@pytest.mark.parametrize(
    ("name", "render", "command"),
    [
        ("decision-table.md", routing_markdown, "routing"),
        ("health-fsm.md", health_markdown, "health"),
    ],
)
def test_generated_docs_are_current(name: str, render: object, command: str) -> None:
    committed = (DOCS / name).read_text()
    assert committed == render(), (  # type: ignore[operator]
        f"docs/{name} is stale: run `cortex-fsm table {command} > docs/{name}`"
    )


def test_generated_docs_state_the_checks() -> None:
    assert "match exactly one row: no gap, no overlap" in routing_markdown()
    assert "exactly one target for T = 1..6" in health_markdown()


def test_the_spec_has_sections_1_to_13() -> None:
    assert _sections() == set(range(1, 14))


def test_every_spec_citation_names_an_existing_section() -> None:
    sections = _sections()
    wrong = []
    for path in _citing_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for run in CITATION.findall(line):
                wrong += [
                    f"{path.relative_to(ROOT)}:{number}: §{n}"
                    for n in re.findall(r"§(\d+)", run)
                    if int(n) not in sections
                ]
    # inside the spec, every § names one of its own sections
    for number, line in enumerate(SPEC.read_text().splitlines(), 1):
        wrong += [
            f"docs/semantics.md:{number}: §{n}"
            for n in re.findall(r"§(\d+)", line)
            if int(n) not in sections
        ]
    assert not wrong, "citations of missing sections:\n" + "\n".join(wrong)


def test_the_spec_is_cited_as_docs_semantics_md() -> None:
    stray = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _citing_files()
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if STRAY.search(line)
    ]
    assert not stray, "cite docs/semantics.md:\n" + "\n".join(stray)
