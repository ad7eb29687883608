"""The routing decision table and decide()."""

from __future__ import annotations

import itertools

import pytest
from tests.helpers import load, make_engine, poll_ok, up

from cortex_fsm import Catalogue, FleetSnapshot, NodeSnapshot, Outcome, Profile, decide
from cortex_fsm.fleet import Device, Discovery, ModelEntry, ModelStatus
from cortex_fsm.health import HealthState, Phase
from cortex_fsm.routing import CONDITIONS, RULES, Cond, matching_rules

HEALTHY = HealthState(phase=Phase.HEALTHY)
SUSPECT = HealthState(phase=Phase.SUSPECT, failures=1)
UNHEALTHY = HealthState(phase=Phase.UNHEALTHY)


def test_every_condition_combination_matches_exactly_one_rule() -> None:
    for values in itertools.product((False, True), repeat=len(CONDITIONS)):
        assignment = dict(zip(CONDITIONS, values, strict=True))
        assert len(matching_rules(assignment)) == 1, assignment


def test_rows_of_one_rule_share_its_outcome() -> None:
    by_rule: dict[str, set[Outcome]] = {}
    for r in RULES:
        by_rule.setdefault(r.rule, set()).add(r.outcome)
    assert all(len(outcomes) == 1 for outcomes in by_rule.values()), by_rule
    # Every decision outcome has a row (the I/O-phase outcomes are the gateway's).
    assert {r.outcome for r in RULES} == {
        o
        for o in Outcome
        if o
        not in (
            Outcome.ENDPOINT_RESOLVE_FAILED,
            Outcome.COLD_LOAD_FAILED,
            Outcome.UPSTREAM_UNAVAILABLE,
        )
    }


def test_no_routable_node_rejects_everything_first() -> None:
    engine = make_engine(["a"], [Profile(id="m")])
    for model in ("m", "unknown"):
        d = engine.decide(model)
        assert d.outcome is Outcome.NO_HEALTHY_NODES
        assert (d.status, d.retry_after) == (503, 5)


def test_least_busy_loaded_replica_ties_by_name() -> None:
    engine = make_engine(["c", "a", "b"])
    for n in ("c", "a", "b"):
        up(engine, n, {"m": "loaded"})
    assert engine.decide("m").node == "a"  # no readings: all 0, smallest name
    load(engine, "a", {"m": 3})
    load(engine, "b", {"m": 1})
    load(engine, "c", {"m": 1})
    assert engine.decide("m").node == "b"  # b and c tie on 1; b < c
    load(engine, "b", {"m": 2})
    assert engine.decide("m").node == "c"
    d = engine.decide("m")
    assert (d.outcome, d.cold_start, d.status, d.retry_after) == (
        Outcome.ROUTE_LOADED,
        False,
        200,
        None,
    )


def test_reloading_counts_as_loaded_and_loading_is_ignored() -> None:
    engine = make_engine(["a", "b"], [Profile(id="m")])
    up(engine, "a", {"m": "loading"})
    up(engine, "b", {"m": "reloading"})
    assert engine.decide("m").node == "b"
    poll_ok(engine, "b", {"m": "loading"})
    # only `loading` replicas: rules 2-4 ignore them; the catalogue decides
    assert engine.decide("m").outcome is Outcome.COLD_LOAD


def test_unknown_status_strings_read_as_loaded() -> None:
    engine = make_engine(["a"])
    up(engine, "a", {"m": "warming-up"})
    assert engine.decide("m").outcome is Outcome.ROUTE_LOADED


def test_recovering_holds_and_never_cold_loads() -> None:
    engine = make_engine(["a", "b", "c"], [Profile(id="m")])
    up(engine, "a")
    up(engine, "c", {"m": "recovering"})
    up(engine, "b", {"m": "recovering"})
    d = engine.decide("m")
    assert d.outcome is Outcome.MODEL_RECOVERING
    assert (d.node, d.subject, d.status, d.retry_after) == (None, "b", 503, 2)


def test_loaded_wins_over_recovering_elsewhere() -> None:
    engine = make_engine(["a", "b"])
    up(engine, "a", {"m": "recovering"})
    up(engine, "b", {"m": "loaded"})
    assert engine.decide("m").node == "b"


def test_unloaded_routes_lazily_to_the_smallest_name() -> None:
    engine = make_engine(["b", "a"], [Profile(id="m")])
    up(engine, "b", {"m": "unloaded"})
    up(engine, "a", {"m": "unloaded"})
    d = engine.decide("m")
    assert (d.outcome, d.node, d.cold_start, d.load) == (Outcome.ROUTE_UNLOADED, "a", True, None)


def test_cold_load_on_the_first_feasible_routable_node_with_its_load_spec() -> None:
    big = Profile(
        id="org/Big",
        harness="candle",
        quant="q4",
        min_devices=2,
        min_device_vram_mb=40000,
        source="hf",
    )
    engine = make_engine(["z", "y", "small"], [big])
    up(engine, "small", vram=(24000, 24000))  # 2 devices, too little VRAM each
    up(engine, "z", vram=(24000, 80000, 80000))
    up(engine, "y", vram=(80000, 24000, 80000))
    d = engine.decide("org/Big")
    assert (d.outcome, d.node, d.cold_start) == (Outcome.COLD_LOAD, "y", True)
    assert d.load is not None
    assert d.load.to_json() == {
        "model_id": "hf:org/Big",
        "harness": "candle",
        "quant": "q4",
        "tensor_parallel": 2,
        "devices": [0, 2],  # the first two devices with enough VRAM, in discovery order
    }


def test_single_device_profile_has_no_tensor_parallel_and_no_source_prefix() -> None:
    engine = make_engine(["a"], [Profile(id="m", source="")])
    up(engine, "a", vram=(8000, 8000))
    spec = engine.decide("m").load
    assert spec is not None
    assert (spec.model_id, spec.tensor_parallel, spec.devices) == ("m", None, (0,))


def test_pinned_profile_only_lands_on_its_nodes() -> None:
    engine = make_engine(["a", "b", "c"], [Profile(id="m", pinned_on=("c",))])
    for n in ("a", "b", "c"):
        up(engine, n)
    assert engine.decide("m").node == "c"


def test_feasible_but_down_is_retryable_503_not_404() -> None:
    engine = make_engine(["small", "big"], [Profile(id="m", min_devices=2)], threshold=1)
    up(engine, "small", vram=(24000,))
    up(engine, "big", vram=(24000, 24000))
    engine.observe_models("big", 1.0, _failure())
    d = engine.decide("m")
    assert (d.outcome, d.status, d.retry_after) == (Outcome.FEASIBLE_NODE_UNHEALTHY, 503, 3)


def test_never_feasible_is_permanent_404() -> None:
    engine = make_engine(["small"], [Profile(id="m", min_devices=2)])
    up(engine, "small", vram=(24000,))
    d = engine.decide("m")
    assert (d.outcome, d.status, d.retry_after) == (Outcome.NO_FEASIBLE_NEURON, 404, None)


def test_a_node_without_discovery_is_not_feasible() -> None:
    engine = make_engine(["a"], [Profile(id="m")])
    poll_ok(engine, "a", {})
    assert engine.decide("m").outcome is Outcome.NO_FEASIBLE_NEURON


def test_unknown_model_is_404_model_not_found() -> None:
    engine = make_engine(["a"])
    up(engine, "a")
    d = engine.decide("nope")
    assert (d.outcome, d.status, d.retry_after, d.model) == (
        Outcome.MODEL_NOT_FOUND,
        404,
        None,
        "nope",
    )


def test_alias_is_one_lookup_never_chained() -> None:
    engine = make_engine(["a"], aliases={"x": "y", "y": "m"})
    up(engine, "a", {"m": "loaded", "y": "loaded"})
    d = engine.decide("x")
    assert (d.requested, d.model, d.node) == ("x", "y", "a")


def test_suspect_nodes_route_on_their_last_known_models() -> None:
    engine = make_engine(["a"])
    up(engine, "a", {"m": "loaded"})
    engine.observe_models("a", 10.0, _failure())
    assert engine.state("a").label == "suspect(1)"
    assert engine.decide("m").node == "a"


def test_decide_does_not_depend_on_node_order() -> None:
    profile = Profile(id="m")
    cat = Catalogue(profiles={"m": profile})
    disc = Discovery(devices=(Device(index=0, vram_total_mb=24000),), max_prompt_tokens=1)
    nodes = [
        NodeSnapshot(
            name=n,
            health=h,
            discovery=disc,
            models={"m": ModelEntry(status=ModelStatus.LOADED)},
            busy={"m": b},
        )
        for n, h, b in [
            ("a", HEALTHY, 2),
            ("b", SUSPECT, 1),
            ("c", UNHEALTHY, 0),
            ("d", HEALTHY, 1),
        ]
    ]
    results = set()
    for perm in itertools.permutations(nodes):
        snap = FleetSnapshot(nodes=perm)
        # FleetSnapshot sorts; also feed an unsorted view to decide directly
        results.add(decide(snap, cat, "m"))
        results.add(decide(_Unsorted(perm), cat, "m"))
    assert len(results) == 1
    assert results.pop().node == "b"


class _Unsorted:
    """A routing view that yields nodes in the order given (no sorting)."""

    def __init__(self, nodes: tuple[NodeSnapshot, ...]) -> None:
        self.nodes = nodes

    def any_routable(self, exclude: frozenset[str] = frozenset()) -> bool:
        return any(n.routable and n.name not in exclude for n in self.nodes)

    def holders(self, model: str) -> list[NodeSnapshot]:
        return [n for n in self.nodes if model in n.models]

    def feasible_nodes(self, profile: Profile) -> list[NodeSnapshot]:
        from cortex_fsm.catalogue import feasible

        return [n for n in self.nodes if feasible(profile, n.name, n.discovery)]


def test_interned_decisions_do_not_leak_between_catalogues() -> None:
    a = make_engine(["n"], aliases={"x": "m1"})
    b = make_engine(["n"], aliases={"x": "m2"})
    up(a, "n", {"m1": "loaded"})
    up(b, "n", {"m2": "loaded"})
    assert a.decide("x").model == "m1"
    assert b.decide("x").model == "m2"


@pytest.mark.parametrize("cond", list(Cond))
def test_condition_docs_exist(cond: Cond) -> None:
    from cortex_fsm.routing import CONDITION_DOCS

    assert CONDITION_DOCS[cond]


def _failure():  # type: ignore[no-untyped-def]
    from cortex_fsm import PollFailure

    return PollFailure(reason="timeout")
