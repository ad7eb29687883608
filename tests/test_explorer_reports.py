"""The model checker's teeth for what the engine reports and for the moves its
worlds make beyond polls and requests: each check below fails on a small
engine bug of its kind, which the checker then finds on its own.

* D2 -- the refetch rule (``Engine.needs_discovery``);
* STAT, STATUS, FLEET -- ``statistics()``, ``status()`` and ``Engine.neurons``
  against the monitor's own count of what was observed;
* ``/health`` readings handed over parsed (``Engine.observe_health``);
* ``Engine.finish`` with no count open, three requests on one replica;
* a reload (``Engine.reconfigure``) judged under the configuration it brings;
* the policy a world runs under, built from the spec's table, not the code's
  defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from tests.verify_support import run_module, walk

from cortex_fsm import engine as engine_module
from cortex_fsm.engine import Engine
from cortex_fsm.fleet import Discovery
from cortex_fsm.health import HealthState, Phase
from cortex_fsm.policy import POLICY_KEYS, Policy
from cortex_fsm.verify.explorer import (
    DEFAULT_WORLDS,
    Counterexample,
    Move,
    World,
    _World,
    explore_world,
    world_named,
)
from cortex_fsm.verify.monitor import SPEC_DEFAULTS, SPEC_REFERENCE, spec_label, spec_policy
from cortex_fsm.verify.mutants import copy_package

ROOT = Path(__file__).resolve().parent.parent


def _found(world: str | World, depth: int) -> Counterexample:
    chosen = world_named(world) if isinstance(world, str) else world
    result = explore_world(chosen.with_bound(depth=depth))
    assert result.counterexample is not None, "the bug was not found"
    return result.counterexample


def _invariants(cx: Counterexample) -> set[str]:
    return {v.invariant for v in cx.violations}


# --- the spec's policy table -------------------------------------------------------------------


def test_the_monitor_s_policy_table_names_every_key_and_builds_valid_policies() -> None:
    assert set(SPEC_DEFAULTS) == set(POLICY_KEYS) == set(SPEC_REFERENCE)
    assert spec_policy() == Policy()  # the code's defaults agree with the spec's, today
    assert spec_policy("reference") == Policy.reference()
    for world in DEFAULT_WORLDS:
        assert world.spec_policy == world.policy, world.name
    assert any(w.policy is not None and w.policy == Policy() for w in DEFAULT_WORLDS)


def test_the_monitor_s_policy_table_is_the_spec_s() -> None:
    """SPEC_DEFAULTS and SPEC_REFERENCE are docs/semantics.md's table of policy
    keys, value for value (the code's own defaults are not consulted)."""
    lines = (ROOT / "docs" / "semantics.md").read_text().splitlines()
    start = lines.index(next(x for x in lines if x.startswith("| key | type / range | default |")))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])

    def value(cell: str) -> object:
        try:
            return json.loads(cell)
        except ValueError:
            return None  # "(Part I key: ...)": its default

    assert [r[0] for r in rows] == list(SPEC_DEFAULTS)
    for key, _range, default, reference, _section in rows:
        assert SPEC_DEFAULTS[key] == value(default), key
        wanted = value(reference)
        assert SPEC_REFERENCE[key] == (value(default) if wanted is None else wanted), key


def test_a_wrong_default_threshold_disagrees_with_the_spec() -> None:
    """``Policy()`` with a default threshold of 2 instead of 3: the engine of
    the ``health`` world runs it, the monitor runs the spec's table -- a node
    is unhealthy after two failed polls where the spec says suspect(2)."""
    health = world_named("health")
    wrong = attrs.evolve(health, policy=Policy().with_values({"failure_threshold": 2}))
    cx = _found(wrong, 3)
    assert "HSPEC" in _invariants(cx), cx.violations


@pytest.mark.parametrize("limit", [9_999, 10_001])
def test_a_wrong_limit_of_the_threshold_fails_policy(
    monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """The spec's table says 1..10000: a validation one off either way is
    reported at the start of every world."""
    import cortex_fsm.health

    monkeypatch.setattr(cortex_fsm.health, "MAX_FAILURE_THRESHOLD", limit)
    cx = _found("health", 0)
    assert _invariants(cx) == {"POLICY"}, cx.violations
    assert "failure_threshold = 10000" in cx.violations[0].detail or (
        "failure_threshold = 10001" in cx.violations[0].detail
    )


# --- D2: the refetch rule ----------------------------------------------------------------------


def test_an_engine_that_never_refetches_an_incomplete_discovery_fails_d2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def once(self: Engine, node: str) -> bool:
        return self._nodes[node].discovery is None  # an incomplete one is kept for good

    monkeypatch.setattr(Engine, "needs_discovery", once)
    cx = _found("topology", 2)
    assert _invariants(cx) == {"D2"}, cx.violations
    assert cx.moves == (Move("discovery", "n0", "partial"),)


# --- STAT, STATUS, FLEET -----------------------------------------------------------------------


def test_a_statistics_counter_that_drifts_fails_stat(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Engine.observe_discovery

    def twice(self: Engine, node: str, t: float, result: Any) -> bool:
        changed = real(self, node, t, result)
        if changed:
            self._discoveries += 1  # counted twice
        return changed

    monkeypatch.setattr(Engine, "observe_discovery", twice)
    cx = _found("topology", 2)
    assert _invariants(cx) == {"STAT"}, cx.violations
    assert "discoveries 2 (observed: 1)" in cx.violations[0].detail


def test_a_request_ok_that_resets_the_count_of_an_unroutable_node_fails_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Engine.observe_request

    def reset(self: Engine, node: str, t: float, ok: bool, reason: str = "") -> Any:
        rec = self._nodes[node]
        if ok and self.policy.passive_health and not rec.health.routable:
            rec.failures = 0  # the count of failures in a row: only a routable node's resets
        return real(self, node, t, ok, reason)

    monkeypatch.setattr(Engine, "observe_request", reset)
    cx = _found("health", 4)
    assert _invariants(cx) == {"STATUS"}, cx.violations


def test_a_wrong_state_name_fails_status(monkeypatch: pytest.MonkeyPatch) -> None:
    def label(self: HealthState) -> str:
        if self.phase is Phase.SUSPECT:
            return f"suspect({self.failures + 1})"
        return self.phase.label

    assert spec_label(HealthState(phase=Phase.SUSPECT, failures=2)) == "suspect(2)"
    monkeypatch.setattr(HealthState, "label", property(label))
    cx = _found("health", 3)
    assert _invariants(cx) == {"STATUS"}, cx.violations
    assert "suspect(2)" in cx.violations[0].detail


def test_an_engine_that_lists_a_removed_neuron_fails_fleet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Engine.remove_neuron

    def keeps_listing(self: Engine, name: str, t: float) -> None:
        listed = self.neurons
        real(self, name, t)
        self.neurons = listed

    monkeypatch.setattr(Engine, "remove_neuron", keeps_listing)
    cx = _found("fleet", 1)
    assert _invariants(cx) == {"FLEET"}, cx.violations


# --- readings handed over parsed ---------------------------------------------------------------


def test_a_parsed_reading_that_is_dropped_fails_l1(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``inflight`` world hands every other /health answer over parsed,
    as replay does: a bug only on that path is found."""
    real = Engine.observe_health

    def drops(self: Engine, node: str, t: float, result: Mapping[str, int] | Any) -> None:
        if isinstance(result, dict):
            self._health_readings += 1
            return
        real(self, node, t, result)

    monkeypatch.setattr(Engine, "observe_health", drops)
    cx = _found("inflight", 3)
    assert "L1" in _invariants(cx), cx.violations
    assert any(m.kind == "health" for m in cx.moves)


# --- in-flight counts ----------------------------------------------------------------------------


def test_an_end_that_is_neither_success_nor_failure_counted_as_a_failure_fails_hspec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway's own 4xx for an attempt (``ok = None``, docs/semantics.md §6)
    says nothing about the node: an engine that counts it as a request failure
    is found, in the ``inflight`` world, by a request that ends that way."""
    real = Engine.observe_outcome

    def as_failure(
        self: Engine,
        key: tuple[str, int],
        t: float,
        *,
        node: str | None,
        ok: bool | None,
        reason: str = "",
    ) -> Any:
        return real(self, key, t, node=node, ok=False if ok is None else ok, reason=reason)

    monkeypatch.setattr(Engine, "observe_outcome", as_failure)
    cx = _found("inflight", 3)
    assert "HSPEC" in _invariants(cx), cx.violations
    assert (cx.moves[-1].kind, cx.moves[-1].variant) == ("close", "rejected")


def test_a_reload_that_keeps_the_old_failure_threshold_fails_hspec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§12: under a lower threshold ``T'`` a node ``suspect(n)`` with ``n >= T'``
    is ``unhealthy``. An engine that reports the new policy but keeps judging
    by the old threshold is found by the ``inflight`` world's reload to T = 2."""
    real = Engine.reconfigure

    def keeps_threshold(
        self: Engine, t: float, *, catalogue: Any = None, policy: Policy | None = None
    ) -> Any:
        if policy is None:
            return real(self, t, catalogue=catalogue)
        old = self.policy.failure_threshold
        moved = real(
            self, t, catalogue=catalogue, policy=attrs.evolve(policy, failure_threshold=old)
        )
        self.policy = policy
        return moved

    monkeypatch.setattr(Engine, "reconfigure", keeps_threshold)
    cx = _found("inflight", 4)
    assert "HSPEC" in _invariants(cx), cx.violations
    assert (cx.moves[-1].kind, cx.moves[-1].variant) == ("reload", "threshold")


def test_an_exclusion_given_as_a_list_is_taken_as_a_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``health`` world passes its failover exclusions as a list at odd
    steps (as a JSON decoder gives them): an engine that keeps the list as it
    is, instead of making a frozenset of it, raises there -- the decision it
    builds cannot be hashed -- which is a TOTAL counterexample, while the
    real engine passes the world."""
    result = explore_world(world_named("health").with_bound(depth=3))
    assert result.counterexample is None
    assert result.checked["TOTAL"] == result.transitions > 0
    monkeypatch.setattr(engine_module, "_frozen", lambda exclude: exclude)
    cx = _found("health", 3)
    assert _invariants(cx) == {"TOTAL"}, cx.violations
    (violation,) = cx.violations
    assert violation.detail.startswith("TypeError: unhashable type: 'list'"), violation.detail
    assert "engine.py" in violation.detail or "routing.py" in violation.detail, violation.detail
    assert cx.moves, "the initial state does not raise"


def test_an_engine_that_raises_is_a_counterexample_through_the_cli(tmp_path: Path) -> None:
    """What a CI user sees when their engine raises on a move: exit 1, FAIL on
    TOTAL, the path to the move, and a written trace -- not a traceback."""
    src = tmp_path / "src"
    src.mkdir()
    package = copy_package(ROOT / "src" / "cortex_fsm", src)
    engine_py = package / "engine.py"
    text = engine_py.read_text(encoding="utf-8")
    real = "    return exclude if type(exclude) is frozenset else frozenset(exclude)\n"
    assert text.count(real) == 1
    engine_py.write_text(text.replace(real, "    return exclude  # type: ignore[return-value]\n"))
    trace = tmp_path / "cx.jsonl"
    done = run_module(
        "cortex_fsm.cli",
        ["verify", "--world", "health", "--depth", "3", "--counterexample", str(trace)],
        cwd=tmp_path,
        pythonpath=src,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert "FAIL  TOTAL" in done.stdout, done.stdout
    assert "TOTAL  the engine takes every observation" in done.stdout, done.stdout
    assert "TypeError: unhashable type: 'list'" in done.stdout, done.stdout
    assert "counterexample in world health" in done.stdout, done.stdout
    assert f"written to {trace}" in done.stdout, done.stdout
    assert trace.exists()


def test_ending_a_count_that_is_not_open_fails_l2(monkeypatch: pytest.MonkeyPatch) -> None:
    def finish(self: Engine, node: str, model: str) -> None:
        rec = self._nodes.get(node)
        if rec is not None:
            rec.local[model] = rec.local.get(model, 0) - 1  # no check for an open count

    monkeypatch.setattr(Engine, "finish", finish)
    cx = _found("inflight", 1)
    assert "L2" in _invariants(cx), cx.violations
    assert cx.moves[-1].kind == "finish"


def test_halving_three_requests_in_flight_fails_l2(monkeypatch: pytest.MonkeyPatch) -> None:
    """``n >> 1`` for ``n - 1``: the same for one and two requests in flight,
    not for three -- the ``inflight`` world holds three on one replica."""

    def finish(self: Engine, node: str, model: str) -> None:
        rec = self._nodes.get(node)
        n = 0 if rec is None else rec.local.get(model, 0)
        if rec is None or n <= 0:
            return
        if n == 1:
            del rec.local[model]
        else:
            rec.local[model] = n >> 1
        self._invalidate(model)

    monkeypatch.setattr(Engine, "finish", finish)
    cx = _found("inflight", 5)
    assert "L2" in _invariants(cx), cx.violations
    assert sum(1 for m in cx.moves if m.kind == "route") == 3


# --- reloads ------------------------------------------------------------------------------------


def test_a_reload_that_keeps_counting_requests_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload to ``load = "reported"`` that leaves local counting on: the
    monitor applies the reload too, and sees requests counted that §8 says
    are not."""
    real = Engine.reconfigure

    def sticky(self: Engine, t: float, **change: Any) -> Any:
        counting = self._count_local
        moved = real(self, t, **change)
        self._count_local = counting
        return moved

    monkeypatch.setattr(Engine, "reconfigure", sticky)
    cx = _found("inflight", 4)
    assert "L2" in _invariants(cx), cx.violations
    assert any(m.kind == "reload" for m in cx.moves)


def test_a_catalogue_reload_that_forgets_the_discoveries_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Engine.reconfigure

    def forgets(self: Engine, t: float, **change: Any) -> Any:
        moved = real(self, t, **change)
        if change.get("catalogue") is not None:
            self._feasible = {p: {} for p in self.catalogue.profiles}
        return moved

    monkeypatch.setattr(Engine, "reconfigure", forgets)
    cx = _found("inflight", 4)
    assert _invariants(cx) & {"R1", "R5", "SPEC"}, cx.violations
    assert any(m.kind == "reload" for m in cx.moves)


def test_the_monitor_applies_a_threshold_change_as_the_spec_says() -> None:
    """§12: under a new threshold T', suspect(n) with n >= T' is unhealthy."""
    world = _World(world_named("health"), stop_at_first=True)
    engine, monitor = walk(world, [Move("models", "n0", "loaded"), Move("models", "n0", "failed")])
    node = monitor.node("n0")
    assert node is not None and spec_label(node.health) == "suspect(1)"
    lower = spec_policy(failure_threshold=1)
    records = [{"kind": "reconfigured", "t": 3.0, "policy": lower}]
    monitor = world.apply(engine, monitor, records)
    node = monitor.node("n0")
    assert node is not None and node.health.phase is Phase.UNHEALTHY
    assert engine.state("n0") == node.health
    assert monitor.count("transitions") == engine.statistics().transitions == 3
    assert monitor.policy == lower
    assert isinstance(engine.discovery("n0"), Discovery | type(None))


# --- what route() answers ------------------------------------------------------------------------


def test_a_route_that_ignores_its_exclusion_fails_r5(monkeypatch: pytest.MonkeyPatch) -> None:
    """``route()`` has paths of its own (the kept replicas, the decision cache)
    that the decisions asked on every state never take: what a routed request
    is told is judged on the transition against the decision over the same
    fleet, so a route that drops its exclusion is found although every asked
    decision is right."""
    real = Engine.route

    def ignores(
        self: Engine,
        requested: str,
        t: float,
        exclude: frozenset[str] = frozenset(),
        key: tuple[str, int] | None = None,
    ) -> Any:
        return real(self, requested, t, frozenset(), key)

    monkeypatch.setattr(Engine, "route", ignores)
    cx = _found("health", 2)
    assert "R5" in _invariants(cx), cx.violations
    assert any("was routed" in v.detail for v in cx.violations)
    assert cx.moves[-1].kind == "attempt"
