"""cortex_fsm.invariants: the public API for users' own tests -- pinned, documented,
and doing in a user's test what the commands do."""

from __future__ import annotations

import inspect
from pathlib import Path

from cortex_fsm import Catalogue, Engine, Neuron, Policy, Profile, invariants
from cortex_fsm.health import HealthState, Phase
from cortex_fsm.invariants import (
    HealthHistory,
    Monitor,
    audit,
    check_config,
    check_decision,
    check_health,
    h1,
    r1,
)

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "AUDITED", "CODES", "HEALTH_INVARIANTS", "INVARIANTS", "ROUTING_INVARIANTS",
    "HealthHistory", "Monitor", "Problem", "SpecDecision", "Violation", "answer", "audit",
    "check_config", "check_decision", "check_health", "h1", "h2", "h3", "h4", "h5", "h6",
    "r1", "r2", "r2_outcome", "r3", "r4", "r5", "r6", "r7", "r9", "spec", "spec_decide",
    "spec_feasible", "spec_model", "verify_config",
}  # fmt: skip


def test_the_public_invariants_are_pinned_and_documented() -> None:
    assert set(invariants.__all__) == EXPECTED
    for name in invariants.__all__:
        value = getattr(invariants, name)
        if callable(value):
            assert inspect.getdoc(value), name
    assert "invariants" in (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")


def test_check_config_and_audit_as_a_users_test_calls_them(tmp_path: Path) -> None:
    (tmp_path / "cortex.toml").write_text(
        'models_config = "models.toml"\n\n[[neurons]]\nname = "a"\n'
        'endpoint = "http://a.lan:13131"\ngpus = 1\nvram_mb = 24000\n'
    )
    (tmp_path / "models.toml").write_text(
        '[[models]]\nid = "big"\nmin_devices = 2\n\n[aliases]\n"tier/big" = "big"\n'
    )
    problems = check_config(tmp_path / "cortex.toml")
    assert {(p.code, p.severity, p.key) for p in problems} == {
        ("infeasible_model", "error", "models[0]")
    }
    assert audit(ROOT / "examples" / "two-gpu-blip.jsonl") == []


def test_the_predicates_judge_states_and_decisions() -> None:
    healthy = HealthState(phase=Phase.HEALTHY)
    assert not h1(HealthHistory(), healthy)  # never answered a poll, yet routable
    assert check_health(HealthHistory(), healthy, 3) == ["H1"]
    assert check_health(HealthHistory(ever_ok=True), healthy, 3) == []
    catalogue = Catalogue(profiles={"m": Profile(id="m", harness="candle")})
    policy = Policy()
    engine = Engine([Neuron(name="a", endpoint="http://a:1")], catalogue, policy)
    monitor = Monitor.start(("a",), policy)
    decision = engine.decide("m")  # a never answered: no_healthy_nodes, 503
    fleet = monitor.snapshot()
    assert check_decision(fleet, catalogue, decision, policy=policy) == []
    assert r1(fleet, catalogue, decision, policy)
