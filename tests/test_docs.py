"""Generated documents are current with the code; citations of the spec hold."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from cortex_fsm.errors import REJECTS, Outcome
from cortex_fsm.policy import KEYS
from cortex_fsm.routing import CONDITIONS, RULES
from cortex_fsm.tables import health_markdown, routing_markdown
from cortex_fsm.trace import EVENT_KINDS

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


def _table(header: str) -> list[list[str]]:
    """The body rows of the one table of the spec whose header row starts so."""
    lines = SPEC.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header)]
    assert len(starts) == 1, f"docs/semantics.md: {len(starts)} tables start {header!r}"
    rows = []
    for line in lines[starts[0] + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _literal(cell: str) -> object:
    try:
        return json.loads(cell.strip("`"))
    except ValueError:
        return cell


def test_the_spec_lists_the_policy_keys_of_the_code() -> None:
    rows = _table("| key | type / range | default | reference value |")
    assert [row[0].strip("`") for row in rows] == list(KEYS)
    for key, _range, default, reference, _section in rows:
        spec = KEYS[key.strip("`")]
        assert _literal(default) == spec.default, key
        if spec.reference is not None:  # a Part II key
            assert _literal(reference) == spec.reference, key


def test_the_spec_lists_the_rejects_of_the_code() -> None:
    rows = _table("| error ")
    assert {row[0].strip("`") for row in rows} == {
        o.value for o in REJECTS if o is not Outcome.UPSTREAM_UNAVAILABLE
    }
    for name, status, type_, code, retry_after in rows:
        cls = REJECTS[Outcome(name.strip("`"))]
        assert (int(status), type_, code) == (cls.status, cls.type, cls.code), name
        assert _literal(retry_after) == (cls.retry_after or "—"), name


def test_the_spec_lists_the_trace_events_of_the_code() -> None:
    kinds = [
        kind
        for row in _table("| event | effect on the engine |")
        for kind in re.findall(r"`(\w+)`", re.sub(r"\(.*\)", "", row[0]))
    ]
    assert sorted(kinds) == sorted(EVENT_KINDS)


def test_the_whole_decision_in_the_spec_is_the_code_s_table() -> None:
    mark = {"T": True, "F": False}
    written = sorted(
        (
            row[0],
            tuple((c, mark[v]) for c, v in zip(CONDITIONS, row[1:-1], strict=True) if v != "-"),
            row[-1].strip("`"),
        )
        for row in _table("| rule | any live |")
    )
    coded = sorted((r.rule, tuple(sorted(r.when)), r.outcome.value) for r in RULES)
    assert written == coded


def test_the_names_the_spec_gives_for_the_code_exist() -> None:
    modules = {
        name: importlib.import_module(f"cortex_fsm.{name}")
        for name in ("engine", "errors", "health", "policy", "routing", "trace")
    }
    rows = _table("| term on this page | in the code |")
    missing = []
    for dotted in re.findall(r"`([A-Za-z_]+\.[A-Za-z_]+)`", " ".join(row[1] for row in rows)):
        owner, name = dotted.split(".")
        if owner in modules:
            found = hasattr(modules[owner], name)
        else:
            classes = [getattr(m, owner) for m in modules.values() if hasattr(m, owner)]
            found = any(hasattr(c, name) for c in classes)
        if not found:
            missing.append(dotted)
    assert not missing, f"docs/semantics.md names what the code does not have: {missing}"
