"""Teeth: every deliberate bug in tests/mutants is caught by the model checker
and by at least one other technique; the kill matrix in docs/verification.md
is the one measured here.

Each mutant is applied to a temporary copy of the package; every technique
runs in a subprocess whose PYTHONPATH puts that copy first. The working tree
is never touched.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from tests.verify_support import MUTANTS, ROOT, in_ci

from cortex_fsm.verify.mutants import (
    TECHNIQUES,
    Edit,
    Mutant,
    MutantError,
    apply_mutant,
    copy_package,
    kill_matrix,
    load_mutants,
    render_matrix,
)
from cortex_fsm.verify.spin import spin_available

DOCS = ROOT / "docs" / "verification.md"

REQUIRED = {
    "missed-poll-evicts",
    "never-healthy-routable",
    "feasible-down-404",
    "recovering-cold-load",
    "ties-insertion-order",
    "pinned-ignored",
    "503-without-retry-after",
    "suspect-unroutable",
    "stale-model-kept",
    # the classes the model checker's worlds must reach: kept state, the decision
    # cache, aliases, thresholds, the exact answer, load readings
    "alias-chain-followed",
    "vram-floor-exclusive",
    "recovering-wrong-retry-after",
    "reported-load-ignored",
}


def test_every_mutant_applies_exactly_once(tmp_path: Path) -> None:
    mutants = load_mutants(MUTANTS)
    assert {m.name for m in mutants} >= REQUIRED
    for mutant in mutants:
        target = tmp_path / mutant.name
        target.mkdir()
        package = copy_package(ROOT / "src" / "cortex_fsm", target)
        apply_mutant(mutant, package)  # raises MutantError when it no longer applies
        for edit in mutant.edits:
            assert edit.new in (package / edit.file).read_text()
    # The working tree is untouched.
    for mutant in mutants:
        for edit in mutant.edits:
            assert edit.old in (ROOT / "src" / "cortex_fsm" / edit.file).read_text()


def test_a_mutant_that_no_longer_applies_fails_loudly(tmp_path: Path) -> None:
    package = copy_package(ROOT / "src" / "cortex_fsm", tmp_path)
    stale = Mutant(
        name="stale",
        description="refers to code that is gone",
        edits=(Edit(file="health.py", old="this text is not in the file", new="x"),),
        path="inline",
    )
    with pytest.raises(MutantError, match="no longer applies"):
        apply_mutant(stale, package)


def _cells(markdown: str) -> dict[str, list[bool]]:
    rows = {}
    for line in markdown.splitlines():
        m = re.match(r"^\| `([^`]+)`:[^|]*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = [c.strip().startswith("yes") for c in m.group(2).split("|")]
    return rows


def test_the_kill_matrix() -> None:
    """Every cell the documented kill matrix marks caught is measured again and
    must still catch; every mutant is caught by the model checker and by at
    least one other technique. A cell documented as missed ("-") is not run
    again: a technique that misses a bug runs to its end (every proof, the
    whole Spin search), which would cost minutes per cell; ``python -m
    cortex_fsm.verify.mutants`` measures every cell, for the docs."""
    if not spin_available() and in_ci():
        pytest.fail("Spin is not installed: CI must run the Spin column of the kill matrix")
    techniques = TECHNIQUES if spin_available() else tuple(t for t in TECHNIQUES if t != "spin")
    mutants = load_mutants(MUTANTS)
    documented = _cells(DOCS.read_text())
    missing = sorted(m.name for m in mutants if m.name not in documented)
    assert not missing, f"mutants not in the kill matrix of docs/verification.md: {missing}"
    select = {
        m.name: [t for t, yes in zip(TECHNIQUES, documented[m.name], strict=True) if yes]
        for m in mutants
    }
    for mutant in mutants:
        claimed = select[mutant.name]
        assert "model checker" in claimed, f"{mutant.name}: the docs say verify misses it"
        assert len(claimed) >= 2, f"{mutant.name}: the docs name no technique beside verify"
    start = time.perf_counter()
    rows = kill_matrix(ROOT, mutants, techniques, jobs=2, select=select)
    seconds = time.perf_counter() - start
    table = render_matrix(rows, techniques)
    runs = sum(len(v) for _m, v in rows)
    print(f"\n{table}\n{len(rows)} mutants, {runs} cells in {seconds:.0f} s")
    for mutant, verdicts in rows:
        for name, v in verdicts.items():
            print(f"  {mutant.name:<28} {name:<14} {v.seconds:6.1f} s  {v.detail}")
    for mutant, verdicts in rows:
        checker = verdicts["model checker"]
        assert checker.caught, f"the model checker misses {mutant.name}: {checker.detail}"
        errors = [f"{n}: {v.detail}" for n, v in verdicts.items() if v.caught is None]
        assert not errors, f"{mutant.name}: a technique could not run: {errors}"
        missed = [f"{n}: {v.detail}" for n, v in verdicts.items() if not v.caught]
        assert not missed, f"{mutant.name}: documented as caught, but missed by {missed}"
        others = [n for n, v in verdicts.items() if n != "model checker" and v.caught]
        assert others, f"only the model checker catches {mutant.name}"
