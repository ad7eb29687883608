"""Helpers shared by the verification tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from cortex_fsm.engine import Engine
from cortex_fsm.verify.explorer import Move, _World
from cortex_fsm.verify.monitor import Monitor
from cortex_fsm.verify.mutants import apply_mutant, copy_package, load_mutants

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "tests" / "mutants"


def in_ci() -> bool:
    """CI sets ``CI``; there, every external tool must be present."""
    return bool(os.environ.get("CI"))


def require_spin() -> None:
    """Skip loudly where Spin is absent outside CI; fail in CI."""
    from cortex_fsm.verify.spin import spin_available

    if spin_available():
        return
    message = (
        "Spin (and gcc) are not installed: the Promela model was NOT model-checked. "
        "Install them with `apt-get install -y spin gcc`."
    )
    if in_ci():
        pytest.fail(message + " CI must run this check.")
    pytest.skip(message)


def mutated_package(tmp: Path, name: str) -> Path:
    """A copy of the package with mutant ``name`` applied; returns the directory
    to put on PYTHONPATH."""
    (mutant,) = [m for m in load_mutants(MUTANTS) if m.name == name]
    target = tmp / "src"
    target.mkdir()
    apply_mutant(mutant, copy_package(ROOT / "src" / "cortex_fsm", target))
    return target


def run_module(
    module: str, args: Sequence[str], *, cwd: Path, pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def walk(world: _World, path: list[Move], *, ask: bool = False) -> tuple[Engine, Monitor]:
    """A fresh engine and monitor of ``world`` taken along ``path`` (every move
    enabled), asking the engine its decisions after each move if ``ask``."""
    engine, monitor = world.fresh()
    for step, move in enumerate(path, start=1):
        records = world.records(move, step, engine, monitor)
        assert records is not None, move
        monitor = world.apply(engine, monitor, records)
        if ask:
            world.ask(engine)
    return engine, monitor
