"""Shared fixtures for the driver tests: every async test runs on asyncio and trio,
and every recording a test makes is audited when it ends."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortex_fsm.ci.audit import audit


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


def _is_trace(path: Path) -> bool:
    """A file whose first line is a trace header (decision files are not)."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            first = fh.readline()
        return bool(json.loads(first).get("kind") == "header")
    except (OSError, EOFError, ValueError, AttributeError):
        return False


@pytest.fixture(autouse=True)
def broken_on_purpose(request: pytest.FixtureRequest) -> Iterator[list[Path]]:
    """After a test that used ``tmp_path``: every trace it left there passes
    ``cortex-fsm audit`` (its decisions replay, its answers and health obey the
    invariants of docs/semantics.md) -- so every recording the gateway makes in
    these tests is audited. A test that breaks a trace on purpose adds its path
    to the list."""
    broken: list[Path] = []
    if "tmp_path" not in request.fixturenames:
        yield broken
        return
    tmp_path: Path = request.getfixturevalue("tmp_path")
    yield broken
    for path in sorted(tmp_path.rglob("*.jsonl*")):
        if path in broken or not path.is_file() or not _is_trace(path):
            continue
        found = audit(path, limit=10)
        assert not found, "\n".join(map(str, found))
