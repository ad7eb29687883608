"""The Promela model: generated from the code, current, and checked by Spin."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.verify_support import ROOT, require_spin, run_module

from cortex_fsm.engine import Engine
from cortex_fsm.errors import Outcome
from cortex_fsm.fleet import ModelsReport, ModelStatus
from cortex_fsm.health import Event, HealthTable
from cortex_fsm.verify import promela
from cortex_fsm.verify.promela import (
    DIGITS,
    HEALTH_EVENTS,
    OUTCOMES,
    AbstractionError,
    generate,
    health_rows,
    model_map_tables,
    routing_table,
)
from cortex_fsm.verify.spin import run_spin

MODEL = ROOT / "models" / "cortex.pml"


def test_the_committed_model_is_current() -> None:
    assert MODEL.read_text() == generate(nodes=3, threshold=3), (
        "models/cortex.pml is stale: run "
        "`cortex-fsm export promela --nodes 3 --threshold 3 -o models/cortex.pml`"
    )


def test_export_writes_the_model(tmp_path: Path) -> None:
    out = tmp_path / "m.pml"
    done = run_module(
        "cortex_fsm.verify", ["export", "promela", "--nodes", "2", "-o", str(out)], cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == generate(nodes=2, threshold=3)
    bad = run_module("cortex_fsm.verify", ["export", "promela", "--nodes", "4"], cwd=tmp_path)
    assert bad.returncode == 2


def _entry(table: list[int], catalogued: int, *digits: int) -> tuple[Outcome, int]:
    index = catalogued + 2 * sum(d * DIGITS**i for i, d in enumerate(digits))
    return OUTCOMES[table[index] // 4], table[index] % 4


DOWN, LIVE, EXCLUDED = range(3)


def _digit(live: int, status: int, fit: int, pin: int) -> int:
    return live + 3 * status + 12 * fit + 24 * pin


def test_the_routing_table_is_decide() -> None:
    table = routing_table(2, 3)
    assert len(table) == 2 * 48**2
    absent, loaded, unloaded, recovering = range(4)
    # n0 routable and fits, n1 down: cold load on n0
    assert _entry(table, 1, _digit(1, absent, 1, 0), _digit(0, absent, 1, 0)) == (
        Outcome.COLD_LOAD,
        1,
    )
    # n0 routable but too small, n1 fits but down: feasible_node_unhealthy (R1)
    assert _entry(table, 1, _digit(1, absent, 0, 0), _digit(0, absent, 1, 0)) == (
        Outcome.FEASIBLE_NODE_UNHEALTHY,
        0,
    )
    # pinned on n1 only, n1 down: n0 fits but is not a candidate
    assert _entry(table, 1, _digit(1, absent, 1, 0), _digit(0, absent, 1, 1)) == (
        Outcome.FEASIBLE_NODE_UNHEALTHY,
        0,
    )
    # both loaded: the first by name
    assert _entry(table, 0, _digit(1, loaded, 0, 0), _digit(1, loaded, 0, 0)) == (
        Outcome.ROUTE_LOADED,
        1,
    )
    # recovering on a routable node blocks the cold load (R4)
    assert _entry(table, 1, _digit(1, recovering, 1, 0), _digit(1, unloaded, 1, 0)) == (
        Outcome.MODEL_RECOVERING,
        0,
    )
    assert _entry(table, 0, _digit(0, loaded, 0, 0), _digit(0, absent, 0, 0)) == (
        Outcome.NO_HEALTHY_NODES,
        0,
    )
    # both loaded, n0 excluded (a failover attempt): n1
    assert _entry(table, 0, _digit(EXCLUDED, loaded, 0, 0), _digit(LIVE, loaded, 0, 0)) == (
        Outcome.ROUTE_LOADED,
        2,
    )
    # the only routable node excluded: no healthy node for this attempt
    assert _entry(table, 0, _digit(EXCLUDED, loaded, 0, 0), _digit(DOWN, loaded, 0, 0)) == (
        Outcome.NO_HEALTHY_NODES,
        0,
    )
    # n1 fits but is excluded, n0 routable but too small: 503, never 404 (R1)
    assert _entry(table, 1, _digit(LIVE, absent, 0, 0), _digit(EXCLUDED, absent, 1, 0)) == (
        Outcome.FEASIBLE_NODE_UNHEALTHY,
        0,
    )


def test_the_export_refuses_a_decide_that_depends_on_node_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = promela.decide

    def first_seen(fleet, catalogue, requested, policy, exclude):  # type: ignore[no-untyped-def]
        decision = real(fleet, catalogue, requested, policy, exclude)
        holders = [
            n.name
            for n in fleet.holders("m")
            if n.routable and n.models["m"].status in (ModelStatus.LOADED, ModelStatus.RELOADING)
        ]
        if decision.outcome is Outcome.ROUTE_LOADED and holders:
            import attrs

            return attrs.evolve(decision, node=holders[0])
        return decision

    monkeypatch.setattr(promela, "decide", first_seen)
    with pytest.raises(AbstractionError, match="reverse order"):
        routing_table(2, 3)


def test_spin_checks_the_safety_invariants_and_liveness(tmp_path: Path) -> None:
    require_spin()
    start = time.perf_counter()
    results = {r.name: r for r in run_spin(MODEL, tmp_path)}
    wall = time.perf_counter() - start
    for r in results.values():
        print(
            f"\nspin {r.name}: {r.detail}; {r.states} states, {r.transitions} transitions, "
            f"depth {r.depth}, {r.seconds:.1f} s ({r.rate:.0f} states/s), "
            f"{r.memory_mb:.0f} MB; compile {r.compile_seconds:.1f} s"
        )
    print(f"spin total {wall:.1f} s")
    assert set(results) == {"safety", "liveness"}
    assert all(r.ok for r in results.values()), results
    assert results["safety"].states > 1_000_000
    assert results["liveness"].states > 1_000_000


def test_spin_finds_a_broken_model(tmp_path: Path) -> None:
    """The searches have teeth: a table edit that breaks H4 (an unhealthy node no
    longer recovers) is an assertion violation, and with assertions off it is
    an acceptance cycle of the liveness claim."""
    require_spin()
    text = generate(nodes=2, threshold=2).replace(
        "NEXT_OK[S_UNHEALTHY] = S_HEALTHY;", "NEXT_OK[S_UNHEALTHY] = S_UNHEALTHY;"
    )
    assert "NEXT_OK[S_UNHEALTHY] = S_UNHEALTHY;" in text
    model = tmp_path / "broken.pml"
    model.write_text(text)
    results = run_spin(model, tmp_path / "run")
    assert not results[0].ok and "H4" in results[0].detail
    assert not results[1].ok


def test_the_model_map_tables_are_the_engine() -> None:
    """A successful poll replaces the map (F1); a failed one and request
    outcomes keep it."""
    after_ok, after_failed, after_request = model_map_tables()
    n = len(promela.STATUSES)
    assert after_ok == [reported for _previous in range(n) for reported in range(n)]
    assert after_failed == list(range(n))
    assert after_request == list(range(n))
    text = generate(nodes=1, threshold=1)
    assert "st[i] = AFTER_OK[st[i] * 4 + rep];" in text
    assert "AFTER_OK[4] = ABSENT;" in text  # held loaded, reported absent: gone


def test_the_health_rows_are_the_engine() -> None:
    """The node machines are read from a real engine in every state, for all four
    events; with the defaults they are the health table's rows (passive health on)."""
    for threshold in (1, 2, 3, 5):
        table = HealthTable(threshold)
        states = list(table.states)
        rows = health_rows(threshold)
        assert set(rows) == set(HEALTH_EVENTS) == set(Event)
        for event, row in rows.items():
            assert [states[i] for i in row] == [table.step(s, event) for s in states]
    text = generate(nodes=1, threshold=2)
    assert "NEXT_ROK[S_UNHEALTHY] = S_UNHEALTHY;" in text  # never revives (H5)
    assert "NEXT_RFAILED[S_SUSPECT_1] = S_UNHEALTHY;" in text  # counts like a poll (H6)


def test_the_export_refuses_an_engine_whose_request_outcomes_leave_the_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cortex_fsm.health import HealthState, Phase

    def corrupt(self, node, t, ok, reason=""):  # type: ignore[no-untyped-def]
        self._nodes[node].health = HealthState(phase=Phase.SUSPECT, failures=99)

    monkeypatch.setattr(Engine, "observe_request", corrupt)
    with pytest.raises(AbstractionError, match="leaves the machine"):
        health_rows(3)


def _spin_on(tmp_path: Path, text: str, name: str) -> list[object]:
    model = tmp_path / f"{name}.pml"
    model.write_text(text)
    return list(run_spin(model, tmp_path / name, stop_at_first=True))


def _broken(old: str, new: str, *, nodes: int = 2, threshold: int = 2) -> str:
    text = generate(nodes=nodes, threshold=threshold)
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_spin_finds_a_request_ok_that_revives(tmp_path: Path) -> None:
    """H5 has teeth in the model: request_ok taking unhealthy to healthy."""
    require_spin()
    text = _broken("NEXT_ROK[S_UNHEALTHY] = S_UNHEALTHY;", "NEXT_ROK[S_UNHEALTHY] = S_HEALTHY;")
    results = _spin_on(tmp_path, text, "revive")
    assert not results[0].ok and "H5" in results[0].detail, results  # type: ignore[attr-defined]


def test_spin_finds_request_failures_that_do_not_count(tmp_path: Path) -> None:
    """H6 has teeth in the model: a request failure that does not count."""
    require_spin()
    text = _broken(
        "NEXT_RFAILED[S_SUSPECT_1] = S_UNHEALTHY;", "NEXT_RFAILED[S_SUSPECT_1] = S_SUSPECT_1;"
    )
    results = _spin_on(tmp_path, text, "uncounted")
    assert not results[0].ok and "H6" in results[0].detail, results  # type: ignore[attr-defined]


def test_spin_finds_a_decision_that_ignores_exclusion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R9 has teeth in the model: a decide() that forgets its exclude set
    chooses an excluded node (and is consistent about it, so the export's
    soundness check lets it through to Spin)."""
    require_spin()
    real = promela.decide

    def forgetful(fleet, catalogue, requested, policy, exclude):  # type: ignore[no-untyped-def]
        return real(fleet, catalogue, requested, policy)

    monkeypatch.setattr(promela, "decide", forgetful)
    results = _spin_on(tmp_path, generate(nodes=2, threshold=2), "exclusion")
    assert not results[0].ok and "R9" in results[0].detail, results  # type: ignore[attr-defined]


def test_the_export_refuses_an_engine_that_keeps_stale_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Engine.observe_models

    def keep_stale(self, node, t, result):  # type: ignore[no-untyped-def]
        if isinstance(result, ModelsReport):
            kept = {m: e.status for m, e in self.status(node).models.items()}
            result = ModelsReport(models={**kept, **result.models})
        return real(self, node, t, result)

    monkeypatch.setattr(Engine, "observe_models", keep_stale)
    with pytest.raises(AbstractionError, match="model map is not a function"):
        model_map_tables()


def test_spin_finds_a_model_map_that_drifts(tmp_path: Path) -> None:
    """F1 has teeth in the model: a table entry that keeps a model the poll no
    longer reported is an assertion violation."""
    require_spin()
    text = generate(nodes=2, threshold=2).replace("AFTER_OK[4] = ABSENT;", "AFTER_OK[4] = LOADED;")
    assert "AFTER_OK[4] = LOADED;" in text
    model = tmp_path / "drift.pml"
    model.write_text(text)
    results = run_spin(model, tmp_path / "run", stop_at_first=True)
    assert not results[0].ok and "F1" in results[0].detail, results
