"""The invariant predicates themselves: each accepts what the spec allows and
rejects a hand-made violation (so no check built on them is vacuous)."""

from __future__ import annotations

import pytest

from cortex_fsm import Catalogue, Decision, Outcome, Policy, Profile
from cortex_fsm.catalogue import LoadSpec
from cortex_fsm.errors import REJECTS, ErrorClass
from cortex_fsm.fleet import Device, Discovery, FleetSnapshot, ModelEntry, ModelStatus, NodeSnapshot
from cortex_fsm.health import UNKNOWN, HealthState, Phase
from cortex_fsm.routing import decide
from cortex_fsm.verify import invariants as inv

REFERENCE = Policy.reference()

HEALTHY = HealthState(phase=Phase.HEALTHY)
SUSPECT1 = HealthState(phase=Phase.SUSPECT, failures=1)
SUSPECT2 = HealthState(phase=Phase.SUSPECT, failures=2)
UNHEALTHY = HealthState(phase=Phase.UNHEALTHY)
BIG = Discovery(
    devices=(Device(index=0, vram_total_mb=81920), Device(index=1, vram_total_mb=81920))
)
PROFILE = Profile(id="m", harness="candle", min_devices=2, min_device_vram_mb=40000)
CATALOGUE = Catalogue(profiles={"m": PROFILE}, aliases={"alias": "m"})


def node(
    name: str,
    health: HealthState,
    models: dict[str, ModelStatus] | None = None,
    *,
    discovery: Discovery | None = None,
    busy: dict[str, int] | None = None,
) -> NodeSnapshot:
    return NodeSnapshot(
        name=name,
        health=health,
        discovery=discovery,
        models={m: ModelEntry(status=s) for m, s in (models or {}).items()},
        busy=busy or {},
    )


def decision(
    outcome: Outcome,
    node_name: str | None = None,
    *,
    requested: str = "m",
    load: LoadSpec | None = None,
) -> Decision:
    return Decision(
        requested=requested, model="m", outcome=outcome, rule="x", node=node_name, load=load
    )


# --- health ------------------------------------------------------------------------------------


def test_poll_history_follows_polls() -> None:
    h = inv.PollHistory()
    h = h.after(ok=False, routable_before=False, threshold=3)
    assert h == inv.PollHistory(ever_ok=False, streak=1, armed=False)
    h = h.after(ok=False, routable_before=False, threshold=3)
    assert h.streak == 1  # never answered: capped at 1 (H1 decides such a node)
    h = h.after(ok=True, routable_before=False, threshold=3)
    assert h == inv.PollHistory(ever_ok=True)
    for n in (1, 2, 3, 3):
        h = h.after(ok=False, routable_before=True, threshold=3)
        assert h.streak == n and h.armed


@pytest.mark.parametrize(
    ("history", "state", "broken"),
    [
        (inv.PollHistory(), HEALTHY, "H1"),
        (inv.PollHistory(ever_ok=False, streak=1), SUSPECT1, "H1"),
        (inv.PollHistory(ever_ok=True, streak=1, armed=True), UNHEALTHY, "H2"),
        (inv.PollHistory(ever_ok=True, streak=2, armed=True), UNHEALTHY, "H2"),
        (inv.PollHistory(ever_ok=True, streak=3, armed=True), SUSPECT2, "H3"),
        (inv.PollHistory(ever_ok=True), SUSPECT1, "H4"),
        (inv.PollHistory(ever_ok=True), UNHEALTHY, "H4"),
    ],
)
def test_health_predicates_reject_violations(
    history: inv.PollHistory, state: HealthState, broken: str
) -> None:
    assert broken in inv.check_health(history, state, 3)


@pytest.mark.parametrize(
    ("history", "state"),
    [
        (inv.PollHistory(), UNKNOWN),
        (inv.PollHistory(ever_ok=False, streak=1), UNHEALTHY),
        (inv.PollHistory(ever_ok=True), HEALTHY),
        (inv.PollHistory(ever_ok=True, streak=1, armed=True), SUSPECT1),
        (inv.PollHistory(ever_ok=True, streak=2, armed=True), SUSPECT2),
        (inv.PollHistory(ever_ok=True, streak=3, armed=True), UNHEALTHY),
    ],
)
def test_health_predicates_accept_the_spec(history: inv.PollHistory, state: HealthState) -> None:
    assert inv.check_health(history, state, 3) == []


def test_f1() -> None:
    models = {"a": ModelEntry(status=ModelStatus.LOADED)}
    assert inv.f1({"a": ModelStatus.LOADED}, models)
    assert not inv.f1({}, models)  # a stale entry
    assert not inv.f1({"a": ModelStatus.UNLOADED}, models)
    assert not inv.f1({"a": ModelStatus.LOADED, "b": ModelStatus.LOADED}, models)


# --- routing -----------------------------------------------------------------------------------


def test_r1_rejects_a_404_while_a_feasible_node_is_down() -> None:
    fleet = FleetSnapshot(nodes=(node("a", HEALTHY), node("b", UNHEALTHY, discovery=BIG)))
    assert not inv.r1(fleet, CATALOGUE, decision(Outcome.NO_FEASIBLE_NEURON))
    assert not inv.r1(fleet, CATALOGUE, decision(Outcome.NO_FEASIBLE_NEURON, requested="alias"))
    assert inv.r1(fleet, CATALOGUE, decision(Outcome.FEASIBLE_NODE_UNHEALTHY))
    up = FleetSnapshot(nodes=(node("a", HEALTHY), node("b", HEALTHY)))
    assert inv.r1(up, CATALOGUE, decision(Outcome.NO_FEASIBLE_NEURON))


def test_r2_holds_for_every_outcome_and_sees_a_missing_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert all(inv.r2_outcome(o) for o in Outcome)
    cls = REJECTS[Outcome.MODEL_RECOVERING]
    broken = ErrorClass(
        status=cls.status, type=cls.type, code=cls.code, retry_after=None, message=cls.message
    )
    monkeypatch.setitem(REJECTS, Outcome.MODEL_RECOVERING, broken)  # type: ignore[index]
    assert not inv.r2_outcome(Outcome.MODEL_RECOVERING)
    wrong = ErrorClass(status=404, type=cls.type, code=cls.code, retry_after=2, message=cls.message)
    monkeypatch.setitem(REJECTS, Outcome.MODEL_RECOVERING, wrong)  # type: ignore[index]
    assert not inv.r2_outcome(Outcome.MODEL_RECOVERING)


def test_r3_and_r4_and_r6() -> None:
    fleet = FleetSnapshot(
        nodes=(
            node("a", HEALTHY, {"m": ModelStatus.LOADED}, busy={"m": 2}, discovery=BIG),
            node("b", SUSPECT1, {"m": ModelStatus.LOADED}, busy={"m": 1}),
            node("c", UNHEALTHY, {"m": ModelStatus.LOADED}),
            node("d", HEALTHY, {"m": ModelStatus.RECOVERING}),
        )
    )
    assert inv.r3(fleet, decision(Outcome.ROUTE_LOADED, "b"))
    assert not inv.r3(fleet, decision(Outcome.ROUTE_LOADED, "c"))
    assert not inv.r3(fleet, decision(Outcome.ROUTE_LOADED, None))
    assert not inv.r3(fleet, decision(Outcome.MODEL_NOT_FOUND, "a"))
    assert not inv.r4(fleet, CATALOGUE, decision(Outcome.COLD_LOAD, "a"))
    assert not inv.r4(fleet, CATALOGUE, decision(Outcome.ROUTE_UNLOADED, "a"))
    assert inv.r4(fleet, CATALOGUE, decision(Outcome.ROUTE_LOADED, "b"))
    assert inv.r6(fleet, CATALOGUE, decision(Outcome.ROUTE_LOADED, "b"))
    assert not inv.r6(fleet, CATALOGUE, decision(Outcome.ROUTE_LOADED, "a"))  # busier
    assert not inv.r6(fleet, CATALOGUE, decision(Outcome.ROUTE_LOADED, "c"))  # unroutable
    tie = FleetSnapshot(
        nodes=(
            node("b", HEALTHY, {"m": ModelStatus.LOADED}),
            node("a", HEALTHY, {"m": ModelStatus.RELOADING}),
        )
    )
    assert inv.r6(tie, CATALOGUE, decision(Outcome.ROUTE_LOADED, "a"))
    assert not inv.r6(tie, CATALOGUE, decision(Outcome.ROUTE_LOADED, "b"))


def test_r7() -> None:
    pinned = Profile(id="m", harness="candle", pinned_on=("b",))
    catalogue = Catalogue(profiles={"m": pinned})
    fleet = FleetSnapshot(
        nodes=(
            node("a", HEALTHY, discovery=BIG),
            node("b", HEALTHY, discovery=BIG),
            node("c", HEALTHY),
        )
    )
    assert inv.r7(fleet, catalogue, decision(Outcome.COLD_LOAD, "b"))
    assert not inv.r7(fleet, catalogue, decision(Outcome.COLD_LOAD, "a"))  # not pinned
    assert not inv.r7(fleet, catalogue, decision(Outcome.COLD_LOAD, "c"))  # no discovery
    assert not inv.r7(fleet, Catalogue(), decision(Outcome.COLD_LOAD, "a"))  # uncatalogued
    unpinned = Catalogue(profiles={"m": Profile(id="m")})
    assert inv.r7(fleet, unpinned, decision(Outcome.COLD_LOAD, "a"))


def test_r5_and_the_reordered_views() -> None:
    a = decision(Outcome.ROUTE_LOADED, "a")
    assert inv.r5(a, [a, decision(Outcome.ROUTE_LOADED, "a")])
    assert not inv.r5(a, [decision(Outcome.ROUTE_LOADED, "b")])
    fleet = FleetSnapshot(
        nodes=(
            node("a", HEALTHY, {"x": ModelStatus.LOADED, "m": ModelStatus.LOADED}),
            node("b", HEALTHY),
            node("c", UNHEALTHY),
        )
    )
    reverse, rotated = inv.reordered_views(fleet)
    assert [n.name for n in reverse.nodes] == ["c", "b", "a"]
    assert list(reverse.nodes[2].models) == ["m", "x"]  # the maps are reversed too
    assert [n.name for n in rotated.nodes] == ["b", "c", "a"]
    assert [n.name for n in reverse.holders("m")] == ["a"]
    catalogue = Catalogue(
        profiles={"p": Profile(id="p"), "q": Profile(id="q")}, aliases={"x": "p", "y": "q"}
    )
    flipped = inv.reordered_catalogue(catalogue)
    assert list(flipped.profiles) == ["q", "p"] and list(flipped.aliases) == ["y", "x"]
    assert decide(reverse, flipped, "m", REFERENCE) == decide(fleet, catalogue, "m", REFERENCE)


def test_spec_decide_reads_the_rules_in_order() -> None:
    fleet = FleetSnapshot(
        nodes=(
            node("a", HEALTHY, {"m": ModelStatus.UNLOADED}, discovery=BIG),
            node("b", HEALTHY, {"m": ModelStatus.RECOVERING}),
        )
    )
    want = inv.spec_decide(fleet, CATALOGUE, "alias")
    assert want.outcome is Outcome.MODEL_RECOVERING and want.subject == "b"  # rule 3 before 4
    got = decide(fleet, CATALOGUE, "alias", REFERENCE)
    assert inv.spec(fleet, CATALOGUE, got)
    assert not inv.spec(fleet, CATALOGUE, decision(Outcome.ROUTE_UNLOADED, "a", requested="alias"))
    nobody = FleetSnapshot(nodes=(node("a", UNHEALTHY),))
    assert inv.spec_decide(nobody, CATALOGUE, "nope").outcome is Outcome.NO_HEALTHY_NODES


def test_spec_load_and_feasible() -> None:
    mixed = Discovery(
        devices=(
            Device(index=4, vram_total_mb=24000),
            Device(index=7, vram_total_mb=48000),
            Device(index=9, vram_total_mb=80000),
        )
    )
    profile = Profile(
        id="m", harness="h", quant="q", min_devices=2, min_device_vram_mb=40000, source="hf"
    )
    assert inv.spec_feasible(profile, "n", mixed)
    assert not inv.spec_feasible(profile, "n", None)
    assert not inv.spec_feasible(Profile(id="m", pinned_on=("o",)), "n", mixed)
    spec = inv.spec_load(profile, mixed)
    assert spec == LoadSpec(
        model_id="hf:m", harness="h", quant="q", tensor_parallel=2, devices=(7, 9)
    )


def test_check_decision_names_every_broken_invariant() -> None:
    fleet = FleetSnapshot(
        nodes=(node("a", HEALTHY), node("b", UNHEALTHY, {"m": ModelStatus.LOADED}, discovery=BIG))
    )
    bad = decision(Outcome.NO_FEASIBLE_NEURON, "b")
    assert inv.check_decision(fleet, CATALOGUE, bad) == ["R1", "R3", "SPEC"]
    assert inv.check_decision(fleet, CATALOGUE, bad, with_spec=False) == ["R1", "R3"]
    assert inv.check_decision(fleet, CATALOGUE, decide(fleet, CATALOGUE, "m", REFERENCE)) == []
