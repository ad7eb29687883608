"""The mutation score's configuration still applies (the campaign itself is a
benchmark: ``benchmarks/mutation.py``, far too slow for the test suite).

* the tool the script checks for is the version pinned in pyproject.toml;
* every module it mutates exists, and keeps the ``from __future__ import
  annotations`` that the "inside an annotation: equivalent" rule relies on;
* cosmic-ray parses each of them and finds mutants in each;
* every reason recorded for a surviving mutant still points at code that
  exists (a definition, a source line), so a stale reason is noticed.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "mutation.py"
PACKAGE = ROOT / "src" / "cortex_fsm"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutation_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_the_pinned_tool_is_the_one_the_script_expects(script: ModuleType) -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = data["project"]["optional-dependencies"]["mutation"]
    assert f"{script.TOOL}=={script.TOOL_VERSION}" in pins
    assert script.check_tool() == script.TOOL_VERSION


def test_the_mutated_modules_are_the_core(script: ModuleType) -> None:
    wanted = {"health.py", "routing.py", "engine.py", "catalogue.py", "wire.py", "errors.py"}
    assert wanted <= set(script.FILES)
    for name in script.FILES:
        source = script.Source(PACKAGE / name)  # exits unless the future import is there
        assert source.definitions, name


def test_cosmic_ray_finds_mutants_in_every_module(script: ModuleType) -> None:
    from cosmic_ray.ast import ast_nodes, get_ast_from_path
    from cosmic_ray.plugins import get_operator

    operators = [
        get_operator(f"core/{name}")()
        for name in ("NumberReplacer", "AddNot", "ReplaceComparisonOperator_Lt_LtE")
    ]
    for name in script.FILES:
        tree = get_ast_from_path(PACKAGE / name)
        found = sum(
            1 for node in ast_nodes(tree) for op in operators for _ in op.mutation_positions(node)
        )
        assert found > 0, f"cosmic-ray finds no mutant in {name}"


def test_every_recorded_reason_still_points_at_code(script: ModuleType) -> None:
    reasons = script.load_reasons()
    assert reasons, "benchmarks/mutation_survivors.toml has no reasons"
    sources = {name: script.Source(PACKAGE / name) for name in script.FILES}
    for i, r in enumerate(reasons):
        assert r["category"] in script.CATEGORIES, (i, r["category"])
        files = [name for name in sources if fnmatch.fnmatchcase(name, r["file"])]
        assert files, f"survivor[{i}]: no mutated module matches {r['file']!r}"
        if "definition" in r:
            assert any(
                fnmatch.fnmatchcase(d[2], r["definition"])
                for f in files
                for d in sources[f].definitions
            ), f"survivor[{i}]: no definition {r['definition']!r} in {r['file']}"
        if "line" in r:
            assert any(
                fnmatch.fnmatchcase(line.strip(), r["line"])
                for f in files
                for line in sources[f].lines
            ), f"survivor[{i}]: no line {r['line']!r} in {r['file']}"


def test_the_interval_is_wilsons(script: ModuleType) -> None:
    lo, hi = script.wilson(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert script.wilson(0, 5)[0] == 0.0
    assert script.wilson(5, 5)[1] == 1.0
    for k in range(0, 21):
        lo, hi = script.wilson(k, 20)
        assert lo <= k / 20 <= hi


def test_a_mutant_matches_the_reason_for_its_lines(script: ModuleType) -> None:
    source = script.Source(PACKAGE / "engine.py")
    row = next(i for i, line in enumerate(source.lines, 1) if "self._seq = 0" in line)
    m = script.Mutant(
        "j", "engine.py", "core/NumberReplacer", start=(row, 8), end=(row, 20), source=source
    )
    m.diff = "--- a\n+++ b\n-        self._seq = 0\n+        self._seq = 1\n"
    assert m.definition == "Engine.__init__"
    assert m.mutated == "self._seq = 1"
    reason = script.reason_for(m, "verify", script.load_reasons())
    assert reason is not None and reason["category"] == "equivalent"
    m.operator = "AddNot"
    assert script.reason_for(m, "verify", script.load_reasons()) is None
