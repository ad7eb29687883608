"""The pytest plugin: a gateway's configuration and recordings as test items.

Installed with cortex-fsm (entry point ``pytest11``), it adds two options:

* ``--cortex-config PATH`` -- an item that runs ``cortex-fsm check`` on the
  configuration (fails on errors; warnings and notes are shown, not failed),
  and one that runs ``cortex-fsm verify --config`` on it (fails with the
  counterexample);
* ``--cortex-trace PATH`` (repeatable; a directory stands for every
  ``*.jsonl`` and ``*.jsonl.gz`` under it) -- one item per trace that runs
  ``cortex-fsm audit`` on it.

Without either option the plugin adds nothing. A failure is reported as the
command would print it (file, line, code or invariant, what happened), never
as a traceback. ``-p no:cortex_fsm`` turns the plugin off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "CheckItem",
    "CortexFailure",
    "TraceItem",
    "VerifyItem",
    "pytest_addoption",
    "pytest_collection_modifyitems",
]


class CortexFailure(Exception):
    """What a cortex-fsm item found, as the command prints it."""


class _Target(pytest.File):
    """The configuration or trace an item checks (its items are made by the
    plugin, not collected from it)."""

    def collect(self) -> list[pytest.Item]:
        return []


class _CortexItem(pytest.Item):
    """An item whose failure is its report, not a traceback."""

    #: the path as given on the command line (what reports name)
    target: Path

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str:
        if isinstance(excinfo.value, CortexFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name


class CheckItem(_CortexItem):
    """``cortex-fsm check`` on a configuration: fails on errors."""

    def runtest(self) -> None:
        from ..errors import ConfigError
        from .check import check_config, render

        try:
            problems = check_config(self.target)
        except ConfigError as exc:
            raise CortexFailure(f"cortex-fsm check: error: {exc}") from None
        if any(p.severity == "error" for p in problems):
            raise CortexFailure(render(problems).rstrip("\n"))
        for p in problems:  # warnings and notes: shown with -rA, never a failure
            where = p.file if p.line is None else f"{p.file}:{p.line}"
            self.add_report_section(
                "call", "cortex-fsm check", f"{where}: {p.severity}: {p.code}: {p.message}"
            )


class VerifyItem(_CortexItem):
    """``cortex-fsm verify --config`` on a configuration, at its default depth."""

    def runtest(self) -> None:
        import tempfile

        from ..errors import ConfigError
        from .worlds import render, verify_config

        folder = Path(tempfile.mkdtemp(prefix="cortex-fsm-verify-"))
        try:
            out = verify_config(self.target, counterexample=folder / "counterexample.jsonl")
        except ConfigError as exc:
            raise CortexFailure(f"cortex-fsm verify: error: {exc}") from None
        finally:
            if not any(folder.iterdir()):  # nothing to keep: no counterexample
                folder.rmdir()
        if not out.ok:
            raise CortexFailure(render(out).rstrip("\n"))


class TraceItem(_CortexItem):
    """``cortex-fsm audit`` on one recording."""

    def runtest(self) -> None:
        from ..errors import TraceError
        from .audit import audit, render

        limit = 20
        try:
            found = audit(self.target, limit=limit)
        except TraceError as exc:
            raise CortexFailure(f"cortex-fsm audit: error: {exc}") from None
        if found:
            raise CortexFailure(render(found, limit=limit).rstrip("\n"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cortex-fsm", "cortex-fsm: check a gateway's config and recordings")
    group.addoption(
        "--cortex-config",
        metavar="PATH",
        default=None,
        help="add test items running 'cortex-fsm check' and 'cortex-fsm verify --config' on "
        "this gateway configuration",
    )
    group.addoption(
        "--cortex-trace",
        metavar="PATH",
        action="append",
        default=[],
        help="add a test item running 'cortex-fsm audit' on this trace (a directory: every "
        "*.jsonl and *.jsonl.gz under it); repeatable",
    )


def _traces(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz"))
            )
            if not found:
                raise pytest.UsageError(f"--cortex-trace: no *.jsonl or *.jsonl.gz under {raw}")
            out += found
        else:
            out.append(path)  # a missing file fails its item, naming it
    return out


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Append the cortex-fsm items (after the project's own tests)."""
    target = config.getoption("cortex_config")
    if target is not None:
        parent = _Target.from_parent(session, path=Path(target).absolute())
        check = CheckItem.from_parent(parent, name="cortex-fsm check")
        check.target = Path(target)
        verify = VerifyItem.from_parent(parent, name="cortex-fsm verify")
        verify.target = Path(target)
        items += [check, verify]
    for trace in _traces(config.getoption("cortex_trace")):
        parent = _Target.from_parent(session, path=trace.absolute())
        audit = TraceItem.from_parent(parent, name="cortex-fsm audit")
        audit.target = trace
        items.append(audit)
