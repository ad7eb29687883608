"""Generated documents are current with the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex_fsm.tables import health_markdown, routing_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"


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
