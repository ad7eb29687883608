"""The model checker: it passes on the code, is exhaustive where it says so,
drives the real engine faithfully, and turns a bug into a replayable trace."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.verify_support import ROOT, mutated_package, run_module

from cortex_fsm.replay import apply_record
from cortex_fsm.verify.commands import DEFAULT_DEPTH, DEFAULT_NODES, DEFAULT_THRESHOLD
from cortex_fsm.verify.explorer import (
    REQUESTS,
    Move,
    _Explorer,
    alphabet,
    clone_engine,
    explore,
    node_names,
)
from cortex_fsm.verify.invariants import ALL_INVARIANTS


def test_the_default_bound_passes_through_the_cli(tmp_path: Path) -> None:
    """What a user's CI calls: exit 0, PASS for every invariant (<= 60 s on 2 cores)."""
    start = time.perf_counter()
    done = run_module("cortex_fsm.cli", ["verify", "--quiet"], cwd=tmp_path)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stdout + done.stderr
    assert (DEFAULT_NODES, DEFAULT_THRESHOLD, DEFAULT_DEPTH) == (3, 3, 6)
    for name in ALL_INVARIANTS:
        assert f"PASS  {name:<4}" in done.stdout, name
    states = int(done.stdout.split("states", 1)[1].split()[0])
    assert states > 50_000, done.stdout
    print(f"\ndefault bound: {states} states in {seconds:.1f} s\n{done.stdout}")
    assert seconds < 180, "the default bound is meant to finish in CI within 60 s"
    assert not (tmp_path / "verify-counterexample.jsonl").exists()


@pytest.mark.parametrize(("nodes", "threshold"), [(1, t) for t in range(1, 6)] + [(2, 3)])
def test_small_configurations_are_explored_completely(nodes: int, threshold: int) -> None:
    result = explore(nodes, threshold, None, jobs=2)
    assert result.ok, result.counterexample
    assert result.complete
    assert all(n > 0 for n in result.checked.values())


def test_the_result_does_not_depend_on_the_number_of_workers() -> None:
    one = explore(2, 3, 5, jobs=1)
    two = explore(2, 3, 5, jobs=2)
    assert (one.states, one.transitions, one.depth) == (two.states, two.transitions, two.depth)


@pytest.mark.parametrize(
    "args",
    [
        ["--nodes", "0"],
        ["--nodes", "9"],
        ["--threshold", "x"],
        ["--depth", "-1"],
        ["--jobs", "0"],
        ["--bogus"],
    ],
)
def test_bad_arguments_exit_2(args: list[str], tmp_path: Path) -> None:
    done = run_module("cortex_fsm.cli", ["verify", *args], cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error" in done.stderr


def test_a_bug_gives_exit_1_and_a_trace_that_replay_reproduces(tmp_path: Path) -> None:
    """Feasible-but-down answered 404: the checker stops at a shortest path and
    writes it as a v1 trace; `cortex-fsm replay` shows the bad decision with the
    buggy code and the right one with the real code."""
    mutant = mutated_package(tmp_path, "feasible-down-404")
    out = tmp_path / "cx.jsonl"
    done = run_module(
        "cortex_fsm.cli",
        ["verify", "--quiet", "--counterexample", str(out)],
        cwd=tmp_path,
        pythonpath=mutant,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  R1" in done.stdout
    assert "its replay gives the decisions above" in done.stdout
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["version"] == 1
    moves = [x for x in lines[1:] if x["kind"] != "request"]
    assert len(moves) == 2  # a shortest counterexample
    buggy = run_module("cortex_fsm.cli", ["replay", str(out)], cwd=tmp_path, pythonpath=mutant)
    assert buggy.returncode == 0, buggy.stderr
    last = [json.loads(x) for x in buggy.stdout.splitlines()[-len(REQUESTS) :]]
    assert any(d["outcome"] == "no_feasible_neuron" for d in last), last
    fixed = run_module(
        "cortex_fsm.cli", ["replay", str(out)], cwd=tmp_path, pythonpath=ROOT / "src"
    )
    assert fixed.returncode == 0, fixed.stderr
    last = [json.loads(x) for x in fixed.stdout.splitlines()[-len(REQUESTS) :]]
    assert any(d["outcome"] == "feasible_node_unhealthy" for d in last), last


def test_a_health_bug_is_reported_with_the_node_states(tmp_path: Path) -> None:
    mutant = mutated_package(tmp_path, "missed-poll-evicts")
    out = tmp_path / "cx.jsonl"
    done = run_module(
        "cortex_fsm.cli",
        ["verify", "--quiet", "--counterexample", str(out)],
        cwd=tmp_path,
        pythonpath=mutant,
    )
    assert done.returncode == 1
    assert "FAIL  H2" in done.stdout
    assert "/models reports" in done.stdout
    assert "/models fails" in done.stdout or "malformed body" in done.stdout
    summary = run_module(
        "cortex_fsm.cli", ["replay", "--summary", str(out)], cwd=tmp_path, pythonpath=mutant
    )
    assert "final unhealthy" in summary.stdout, summary.stdout


# --- the machinery --------------------------------------------------------------------------


MOVES = [m for ms in alphabet(node_names(3)).values() for m in ms]


@settings(max_examples=max(30, settings().max_examples // 2))
@given(st.lists(st.sampled_from(MOVES), max_size=12), st.integers(0, 12), st.data())
def test_a_clone_behaves_exactly_like_the_original(
    path: list[Move], split: int, data: st.DataObject
) -> None:
    explorer = _Explorer(3, 3, None, stop_at_first=True)
    engine = explorer.fresh_engine()
    clone = None
    for t, move in enumerate(path, start=1):
        if t - 1 == min(split, len(path)):
            clone = clone_engine(engine)
        for target in (engine, clone):
            if target is not None:
                apply_record(target, move.kind, move.record(float(t)))
                for r in REQUESTS:
                    target.decide(r)
    if clone is None:
        clone = clone_engine(engine)
    more = data.draw(st.lists(st.sampled_from(MOVES), max_size=6))
    for t, move in enumerate(more, start=100):
        for target in (engine, clone):
            apply_record(target, move.kind, move.record(float(t)))
        for r in REQUESTS:
            assert engine.decide(r) == clone.decide(r)
    assert engine.snapshot() == clone.snapshot()
    assert engine.statistics() == clone.statistics()


def test_a_clone_shares_no_mutable_state() -> None:
    explorer = _Explorer(2, 3, None, stop_at_first=True)
    engine = explorer.rebuild(
        [
            Move("discovery", "n0", "big"),
            Move("models", "n0", "loaded"),
            Move("health", "n0", "busy"),
            Move("models", "n1", "recovering"),
        ]
    )
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


def test_symmetric_states_share_one_key() -> None:
    explorer = _Explorer(3, 3, None, stop_at_first=True)
    keys = []
    for node in ("n0", "n2"):  # interchangeable: neither is pinned
        path = [Move("discovery", node, "big"), Move("models", node, "loaded")]
        engine = explorer.rebuild(path)
        from cortex_fsm.verify.invariants import PollHistory

        hists = tuple(
            PollHistory(ever_ok=True) if n == node else PollHistory() for n in explorer.names
        )
        from cortex_fsm.fleet import ModelStatus

        exp = tuple(((("big", ModelStatus.LOADED),) if n == node else ()) for n in explorer.names)
        keys.append(tuple(sorted(explorer.keys(engine.snapshot(), (hists, exp)))))
    assert keys[0] == keys[1]
