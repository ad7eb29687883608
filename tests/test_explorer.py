"""The model checker: it passes on the code, reaches every row and transition,
judges against the observations, keeps what a cache can hide, drives the real
engine faithfully, and turns a bug into a replayable trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.verify_support import ROOT, run_module, walk

from cortex_fsm.engine import Engine
from cortex_fsm.fleet import PollFailure
from cortex_fsm.verify.clone import _copy
from cortex_fsm.verify.explorer import (
    DEFAULT_WORLDS,
    REQUESTS,
    Move,
    _World,
    clone_engine,
    explore_world,
    world_named,
)
from cortex_fsm.verify.invariants import ALL_INVARIANTS


def test_the_default_bound_passes_through_the_cli(tmp_path: Path) -> None:
    """What a user's CI calls: exit 0, PASS for every invariant, every row,
    transition and reject reached (the time is measured in benchmarks/)."""
    done = run_module("cortex_fsm.cli", ["verify", "--quiet"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ALL_INVARIANTS:
        assert f"PASS  {name:<6}" in done.stdout, name
    assert "every routing-table row, every health transition (T=3) and every reject" in (
        done.stdout
    )
    for world in DEFAULT_WORLDS:
        assert f"world {world.name}" in done.stdout
    states = int(done.stdout.split("total ", 1)[1].split()[0])
    assert states > 20_000, done.stdout
    print(done.stdout)
    assert not (tmp_path / "verify-counterexample.jsonl").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--nodes", "0"],
        ["--nodes", "9"],
        ["--threshold", "x"],
        ["--depth", "-1"],
        ["--jobs", "0"],
        ["--world", "nowhere"],
        ["--bogus"],
    ],
)
def test_bad_arguments_exit_2(args: list[str], tmp_path: Path) -> None:
    done = run_module("cortex_fsm.cli", ["verify", *args], cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error" in done.stderr


def test_a_smaller_bound_reports_what_it_leaves_out(tmp_path: Path) -> None:
    done = run_module(
        "cortex_fsm.cli", ["verify", "--quiet", "--world", "health", "--depth", "2"], cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr  # not the default bound: no failure
    assert "not reached:" in done.stdout and "routing row" in done.stdout


# --- teeth: bugs that a check on the engine's own state would miss ------------------------------


def _first_violation(world: str, depth: int) -> Any:
    result = explore_world(world_named(world).with_bound(depth=depth))
    assert result.counterexample is not None, "the bug was not found"
    return result.counterexample


def test_an_engine_that_forgets_a_cached_discovery_fails_r1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failed poll silently drops the node's discovery. Judged on the engine's
    own snapshot R1 holds (nothing feasible is down, so the 404 looks right);
    judged on what the observations say, it is a violation -- and the
    explorer, which judges so, finds the bug (D1 first: a shortest path)."""
    from cortex_fsm.verify.invariants import r1

    real = Engine.observe_models

    def forgetful(self: Engine, node: str, t: float, result: Any) -> Any:
        if isinstance(result, PollFailure):
            self._nodes[node].discovery = None
            for members in self._feasible.values():
                members.pop(node, None)
        return real(self, node, t, result)

    monkeypatch.setattr(Engine, "observe_models", forgetful)
    world = _World(world_named("topology"), stop_at_first=True)
    path = [
        Move("discovery", "n0", "at"),
        Move("models", "n0", "none"),
        Move("models", "n2", "none"),
        Move("models", "n0", "failed"),
    ]
    engine, monitor = walk(world, path)
    decision = engine.decide("big")
    assert decision.status == 404
    policy = world.policy
    assert r1(engine.snapshot(), world.catalogue, decision, policy)  # vacuous
    assert not r1(monitor.snapshot(), world.catalogue, decision, policy)
    found = {v.invariant for v in world.check(engine, monitor, world.ask(engine))}
    assert {"R1", "D1", "SPEC"} <= found, found
    cx = _first_violation("topology", 4)
    assert "D1" in {v.invariant for v in cx.violations}, cx.violations


def test_a_bug_that_lives_only_in_the_decision_cache_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new load reading does not invalidate cached decisions: every snapshot
    is right, only the cache is stale -- the key keeps the cache, so the state
    is not merged with its correct twin."""
    monkeypatch.setattr(Engine, "_replace_busy", _replace_busy_without_invalidation)
    cx = _first_violation("load", 4)
    found = {v.invariant for v in cx.violations}
    assert found & {"R5", "R6", "SPEC"}, cx.violations
    assert "L1" not in found  # the readings themselves are right


def _replace_busy_without_invalidation(self: Engine, rec: Any, new: dict[str, int]) -> None:
    rec.busy = new


def test_a_stale_memo_of_the_last_models_answer_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A successful load does not clear the memo of the last /models body, so the
    next identical answer is taken as 'nothing changed' and the map keeps the
    load's entry: only a longer path shows it."""
    real = Engine.observe_load

    def keeps_memo(self: Engine, node: str, t: float, model: str, ok: bool) -> None:
        memo = self._nodes[node].models_body
        real(self, node, t, model, ok)
        self._nodes[node].models_body = memo

    monkeypatch.setattr(Engine, "observe_load", keeps_memo)
    cx = _first_violation("models", 4)
    assert "F1" in {v.invariant for v in cx.violations}, cx.violations


def test_a_bug_gives_exit_1_and_a_trace_that_replay_reproduces(tmp_path: Path) -> None:
    """Feasible-but-down answered 404: the checker stops at a shortest path and
    writes it as a v2 trace; `cortex-fsm replay` shows the bad decision with the
    buggy code and the right one with the real code."""
    from tests.verify_support import mutated_package

    mutant = mutated_package(tmp_path, "feasible-down-404")
    out = tmp_path / "cx.jsonl"
    done = run_module(
        "cortex_fsm.cli",
        ["verify", "--quiet", "--world", "topology", "--counterexample", str(out)],
        cwd=tmp_path,
        pythonpath=mutant,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  R1" in done.stdout
    assert "its replay gives the decision above" in done.stdout, done.stdout
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["version"] == 2
    buggy = run_module("cortex_fsm.cli", ["replay", str(out)], cwd=tmp_path, pythonpath=mutant)
    assert buggy.returncode == 0, buggy.stderr
    first = json.loads(buggy.stdout.splitlines()[-len(REQUESTS)])
    assert first["outcome"] == "no_feasible_neuron", first
    fixed = run_module(
        "cortex_fsm.cli", ["replay", str(out)], cwd=tmp_path, pythonpath=ROOT / "src"
    )
    assert fixed.returncode == 0, fixed.stderr
    first = json.loads(fixed.stdout.splitlines()[-len(REQUESTS)])
    assert first["outcome"] == "feasible_node_unhealthy", first


def test_a_health_bug_is_reported_with_the_node_states(tmp_path: Path) -> None:
    from tests.verify_support import mutated_package

    mutant = mutated_package(tmp_path, "missed-poll-evicts")
    out = tmp_path / "cx.jsonl"
    done = run_module(
        "cortex_fsm.cli",
        ["verify", "--quiet", "--world", "health", "--counterexample", str(out)],
        cwd=tmp_path,
        pythonpath=mutant,
    )
    assert done.returncode == 1
    assert "FAIL  H2" in done.stdout
    assert "/models answers" in done.stdout
    summary = run_module(
        "cortex_fsm.cli", ["replay", "--summary", str(out)], cwd=tmp_path, pythonpath=mutant
    )
    assert "final unhealthy" in summary.stdout, summary.stdout


# --- the machinery --------------------------------------------------------------------------

WORLD = _World(world_named("models"), stop_at_first=True)
MOVES = [m for m in world_named("models").moves() if m.kind not in ("route", "close", "attempt")]


def _apply(world: _World, engine: Engine, move: Move, step: int) -> None:
    monitor = world.fresh()[1]
    records = world.records(move, step, engine, monitor)
    if records is not None:
        world.apply(engine, monitor, records)


@settings(max_examples=max(30, settings().max_examples // 2))
@given(st.lists(st.sampled_from(MOVES), max_size=12), st.integers(0, 12), st.data())
def test_a_clone_behaves_exactly_like_the_original(
    path: list[Move], split: int, data: st.DataObject
) -> None:
    engine = WORLD.fresh()[0]
    clone = None
    for t, move in enumerate(path, start=1):
        if t - 1 == min(split, len(path)):
            clone = clone_engine(engine)
        for target in (engine, clone):
            if target is not None:
                _apply(WORLD, target, move, t)
                WORLD.ask(target)
    if clone is None:
        clone = clone_engine(engine)
    more = data.draw(st.lists(st.sampled_from(MOVES), max_size=6))
    for t, move in enumerate(more, start=100):
        for target in (engine, clone):
            _apply(WORLD, target, move, t)
        for r in REQUESTS:
            assert engine.decide(r) == clone.decide(r)
    assert engine.snapshot() == clone.snapshot()
    assert engine.statistics() == clone.statistics()


def test_a_clone_shares_no_mutable_state() -> None:
    engine = WORLD.fresh()[0]
    for t, move in enumerate(
        [
            Move("discovery", "n0", "at"),
            Move("models", "n0", "loaded"),
            Move("models", "n1", "recovering"),
        ],
        start=1,
    ):
        _apply(WORLD, engine, move, t)
    clone = clone_engine(engine)

    def containers(obj: object, seen: set[int], out: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, dict | list | set):
            out.add(id(obj))
            items = obj.values() if isinstance(obj, dict) else obj
            for v in items:
                containers(v, seen, out)
        elif type(obj).__module__ == "cortex_fsm.engine":
            out.add(id(obj))
            for slot in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, slot):
                    containers(getattr(obj, slot), seen, out)
            for v in getattr(obj, "__dict__", {}).values():
                containers(v, seen, out)

    mine: set[int] = set()
    theirs: set[int] = set()
    containers(engine, set(), mine)
    containers(clone, set(), theirs)
    assert mine and not (mine & theirs)


def _structure(obj: Any, seen: dict[int, int]) -> Any:
    """An engine's whole state as plain data, each record numbered by its first
    visit, so two engines compare equal only with the same values and the same
    sharing between their records."""
    if id(obj) in seen:
        return ("same as", seen[id(obj)])
    if isinstance(obj, dict):
        seen[id(obj)] = len(seen)
        return (type(obj).__name__, [(k, _structure(v, seen)) for k, v in obj.items()])
    if isinstance(obj, list | set):
        seen[id(obj)] = len(seen)
        items = sorted(obj, key=repr) if isinstance(obj, set) else obj
        return (type(obj).__name__, [_structure(v, seen) for v in items])
    if type(obj).__module__ == "cortex_fsm.engine":
        seen[id(obj)] = len(seen)
        slots = getattr(type(obj), "__slots__", ())
        fields = [(s, getattr(obj, s)) for s in slots if hasattr(obj, s)]
        fields += sorted(getattr(obj, "__dict__", {}).items())
        return (type(obj).__name__, [(k, _structure(v, seen)) for k, v in fields])
    return obj


def test_the_engines_copy_is_the_generic_copiers() -> None:
    """The copy written for the engine's own fields and records gives what the
    generic copier gives: the same values and the same sharing (a node's record
    in the indexes is the node's record)."""
    world = _World(world_named("load"), stop_at_first=True)
    path = [
        Move("models", "n0", "loaded"),
        Move("models", "n1", "loaded"),
        Move("health", "n0", "one"),
        Move("route", None, "big"),
        Move("route", None, "tier/big"),
        Move("models", "n2", "failed"),
    ]
    engine, _monitor = walk(world, path, ask=True)
    assert engine._open and engine._picks and engine._cache
    fast = clone_engine(engine, world.shared)
    generic = _copy(engine, dict(world.shared))
    assert _structure(fast, {}) == _structure(generic, {}) == _structure(engine, {})
    assert fast._holders["big"]["n0"] is fast._nodes["n0"]


def test_a_field_the_copy_does_not_know_is_copied_by_the_generic_copier() -> None:
    engine = WORLD.fresh()[0]
    engine.extra = [["a"], {"b": []}]  # type: ignore[attr-defined]
    clone = clone_engine(engine)
    assert clone.extra == [["a"], {"b": []}]  # type: ignore[attr-defined]
    assert clone.extra is not engine.extra  # type: ignore[attr-defined]
    assert clone.extra[0] is not engine.extra[0]  # type: ignore[attr-defined]
    assert clone.extra[1]["b"] is not engine.extra[1]["b"]  # type: ignore[attr-defined]


def test_the_key_holds_the_decision_cache_and_the_memo() -> None:
    """Equal fleets with a different cached decision, or a different memo of the
    last /models body, are different states."""
    world = _World(world_named("models"), stop_at_first=True)
    engine, monitor = world.fresh()
    _apply(world, engine, Move("models", "n0", "loaded"), 1)
    world.ask(engine)
    base = world.key(engine, monitor)
    stale = clone_engine(engine)
    stale._cache["big"] = stale.decide("nope")  # a wrong decision in the cache
    assert world.key(stale, monitor) != base
    forgot = clone_engine(engine)
    forgot._nodes["n0"].models_body = None
    assert world.key(forgot, monitor) != base
    again = clone_engine(engine)
    assert world.key(again, monitor) == base
