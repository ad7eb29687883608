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
    local: dict[str, int] | None = None,
    chosen: dict[str, int] | None = None,
) -> NodeSnapshot:
    return NodeSnapshot(
        name=name,
        health=health,
        discovery=discovery,
        models={m: ModelEntry(status=s) for m, s in (models or {}).items()},
        busy=busy or {},
        local=local or {},
        chosen=chosen or {},
    )


def decision(
    outcome: Outcome,
    node_name: str | None = None,
    *,
    requested: str = "m",
    load: LoadSpec | None = None,
) -> Decision:
    return Decision(
        requested=requested,
        model="m",
        outcome=outcome,
        rule="x",
        node=node_name,
        load=load,
        retry_after=outcome.retry_after,
    )


# --- health ------------------------------------------------------------------------------------


def _after(h: inv.HealthHistory, event: str, routable: bool) -> inv.HealthHistory:
    return h.after(event, routable_before=routable, threshold=3, passive=True)


def test_health_history_follows_events() -> None:
    h = inv.HealthHistory()
    h = _after(h, "poll_failed", False)
    assert h == inv.HealthHistory(ever_ok=False, streak=1, armed=False)
    h = _after(h, "poll_failed", False)
    assert h.streak == 1  # never answered: capped at 1 (H1 decides such a node)
    h = _after(h, "poll_ok", False)
    assert h == inv.HealthHistory(ever_ok=True)
    for n in (1, 2, 3, 3):
        h = _after(h, "poll_failed", True)
        assert h.streak == n and h.armed and not h.mixed
    h = _after(h, "request_ok", False)  # found the node down: H5's premise, no reset
    assert h.revive and h.streak == 3
    h = _after(_after(h, "poll_ok", False), "request_failed", True)
    assert (h.streak, h.mixed, h.armed) == (1, True, True)
    h = _after(h, "request_ok", True)  # a routable node served a request: a success
    assert h == inv.HealthHistory(ever_ok=True)
    # Without passive health request outcomes are not health events at all.
    quiet = h.after("request_failed", routable_before=True, threshold=3, passive=False)
    assert quiet == h


@pytest.mark.parametrize(
    ("history", "state", "broken"),
    [
        (inv.HealthHistory(), HEALTHY, "H1"),
        (inv.HealthHistory(ever_ok=False, streak=1), SUSPECT1, "H1"),
        (inv.HealthHistory(ever_ok=True, streak=1, armed=True), UNHEALTHY, "H2"),
        (inv.HealthHistory(ever_ok=True, streak=2, armed=True), UNHEALTHY, "H2"),
        (inv.HealthHistory(ever_ok=True, streak=3, armed=True), SUSPECT2, "H3"),
        (inv.HealthHistory(ever_ok=True), SUSPECT1, "H4"),
        (inv.HealthHistory(ever_ok=True), UNHEALTHY, "H4"),
        (inv.HealthHistory(ever_ok=True, streak=3, revive=True), HEALTHY, "H5"),
        (inv.HealthHistory(ever_ok=True, streak=3, mixed=True, armed=True), SUSPECT2, "H6"),
    ],
)
def test_health_predicates_reject_violations(
    history: inv.HealthHistory, state: HealthState, broken: str
) -> None:
    assert broken in inv.check_health(history, state, 3)


@pytest.mark.parametrize(
    ("history", "state"),
    [
        (inv.HealthHistory(), UNKNOWN),
        (inv.HealthHistory(ever_ok=False, streak=1), UNHEALTHY),
        (inv.HealthHistory(ever_ok=True), HEALTHY),
        (inv.HealthHistory(ever_ok=True, streak=1, armed=True), SUSPECT1),
        (inv.HealthHistory(ever_ok=True, streak=2, armed=True), SUSPECT2),
        (inv.HealthHistory(ever_ok=True, streak=3, armed=True), UNHEALTHY),
        (inv.HealthHistory(ever_ok=True, streak=3, revive=True), UNHEALTHY),
        (inv.HealthHistory(ever_ok=True, streak=2, mixed=True, armed=True), SUSPECT2),
    ],
)
def test_health_predicates_accept_the_spec(history: inv.HealthHistory, state: HealthState) -> None:
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


# --- Part II -----------------------------------------------------------------------------------

DEFAULTS = Policy()


def test_r1_widens_to_known_down_models_and_excluded_nodes() -> None:
    fleet = FleetSnapshot(
        nodes=(node("a", HEALTHY), node("b", UNHEALTHY, {"free": ModelStatus.LOADED}))
    )
    lost = Decision(requested="free", model="free", outcome=Outcome.MODEL_NOT_FOUND, rule="6")
    assert inv.r1(fleet, CATALOGUE, lost, REFERENCE)  # Part I: an unknown model may be a 404
    assert not inv.r1(fleet, CATALOGUE, lost, DEFAULTS)  # known_down = retry: never
    up = FleetSnapshot(nodes=(node("a", HEALTHY, discovery=BIG), node("b", HEALTHY)))
    cut = decision(Outcome.NO_FEASIBLE_NEURON)
    assert inv.r1(up, CATALOGUE, cut, REFERENCE)
    assert not inv.r1(up, CATALOGUE, cut, REFERENCE, frozenset({"a"}))  # excluded = down


def test_r6_under_load_max_uses_local_counts_then_recency() -> None:
    fleet = FleetSnapshot(
        nodes=(
            node("a", HEALTHY, {"m": ModelStatus.LOADED}, busy={"m": 0}, local={"m": 2}),
            node("b", HEALTHY, {"m": ModelStatus.LOADED}, busy={"m": 1}, chosen={"m": 7}),
            node("c", HEALTHY, {"m": ModelStatus.LOADED}, busy={"m": 1}, chosen={"m": 3}),
        )
    )
    assert inv.r6(fleet, CATALOGUE, decision(Outcome.ROUTE_LOADED, "c"), DEFAULTS)
    assert not inv.r6(fleet, CATALOGUE, decision(Outcome.ROUTE_LOADED, "b"), DEFAULTS)
    assert inv.r6(fleet, CATALOGUE, decision(Outcome.ROUTE_LOADED, "a"), REFERENCE)
    exclude = frozenset({"c"})
    assert inv.r6(fleet, CATALOGUE, decision(Outcome.ROUTE_LOADED, "b"), DEFAULTS, exclude)


def test_r9_and_answer() -> None:
    chosen = Decision(
        requested="m",
        model="m",
        outcome=Outcome.ROUTE_LOADED,
        rule="2",
        node="a",
        exclude=frozenset({"a"}),
    )
    assert not inv.r9(chosen, frozenset({"a"}))
    assert not inv.r9(decision(Outcome.ROUTE_LOADED, "b"), frozenset({"a"}))  # made without it
    policy = DEFAULTS.with_values({"retry_after_unhealthy": 42})
    told = Decision(
        requested="m",
        model="m",
        outcome=Outcome.FEASIBLE_NODE_UNHEALTHY,
        rule="5b",
        retry_after=42,
    )
    assert inv.answer(told, policy)
    assert not inv.answer(told, DEFAULTS)  # 42 is not the default 3
    assert inv.answer(decision(Outcome.ROUTE_LOADED, "a"), DEFAULTS)


def test_spec_decide_part_two() -> None:
    down = FleetSnapshot(
        nodes=(node("a", HEALTHY), node("b", UNHEALTHY, {"free": ModelStatus.LOADED}))
    )
    assert inv.spec_decide(down, CATALOGUE, "free", DEFAULTS).outcome is (
        Outcome.FEASIBLE_NODE_UNHEALTHY
    )
    assert inv.spec_decide(down, CATALOGUE, "free", REFERENCE).outcome is Outcome.MODEL_NOT_FOUND
    static = DEFAULTS.with_values({"lifecycle": "static"})
    idle = FleetSnapshot(nodes=(node("a", HEALTHY, {"m": ModelStatus.UNLOADED}, discovery=BIG),))
    assert inv.spec_decide(idle, CATALOGUE, "m", DEFAULTS).outcome is Outcome.ROUTE_UNLOADED
    assert inv.spec_decide(idle, CATALOGUE, "m", static).outcome is Outcome.MODEL_NOT_FOUND
    both = FleetSnapshot(
        nodes=(
            node("a", HEALTHY, {"m": ModelStatus.LOADED}),
            node("b", HEALTHY, {"m": ModelStatus.LOADED}),
        )
    )
    excluded = inv.spec_decide(both, CATALOGUE, "m", DEFAULTS, frozenset({"a"}))
    assert (excluded.outcome, excluded.node) == (Outcome.ROUTE_LOADED, "b")
    nothing = inv.spec_decide(both, CATALOGUE, "m", DEFAULTS, frozenset({"a", "b"}))
    assert (nothing.outcome, nothing.retry_after) == (Outcome.NO_HEALTHY_NODES, 5)
