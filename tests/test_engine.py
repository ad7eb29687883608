"""The engine facade: observations, transitions, indexes, cache, statistics."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers import discovery_body, health_body, load, make_engine, models_body, poll_ok, up

from cortex_fsm import ConfigError, Engine, Neuron, Outcome, PollFailure, Profile, decide
from cortex_fsm.fleet import ModelStatus
from cortex_fsm.health import HealthState, Phase
from cortex_fsm.wire import Invalid, parse_discovery, parse_models


def test_duplicate_neuron_names_are_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="'a' is configured twice"):
        Engine([Neuron(name="a", endpoint="x"), Neuron(name="a", endpoint="y")])


def test_transitions_are_values_with_cause_and_time() -> None:
    engine = make_engine(["a"], threshold=2)
    tr = engine.observe_models("a", 1.0, parse_models([]))
    assert tr is not None
    assert (tr.node, tr.from_.label, tr.to.label, tr.cause, tr.t) == (
        "a",
        "unknown",
        "healthy",
        "poll_ok",
        1.0,
    )
    assert engine.observe_models("a", 2.0, parse_models([])) is None  # no change, no transition
    tr = engine.observe_models("a", 3.0, PollFailure(reason="timeout"))
    assert tr is not None and tr.to.label == "suspect(1)"
    assert tr.cause == "poll_failed: timeout"
    assert tr.to_json() == {
        "node": "a",
        "from": "healthy",
        "to": "suspect(1)",
        "cause": "poll_failed: timeout",
        "t": 3.0,
    }
    tr = engine.observe_models("a", 4.0, PollFailure(reason="status:502"))
    assert tr is not None and tr.to.label == "unhealthy"
    status = engine.status("a")
    assert (status.consecutive_failures, status.last_ok, status.last_failure) == (
        2,
        2.0,
        "status:502",
    )


def test_an_invalid_models_body_is_a_poll_failure_with_its_reason() -> None:
    engine = make_engine(["a"])
    tr = engine.observe_models_body("a", 0.0, {"not": "an array"})
    assert tr is not None and tr.to.label == "unhealthy"  # never answered validly
    assert tr.cause.startswith("poll_failed: invalid /models body")


def test_poll_ok_replaces_the_model_map_and_keeps_last_accessed() -> None:
    engine = make_engine(["a"])
    up(engine, "a", {"m": "loaded", "gone": "loaded"})
    engine.route("m", 5.0)
    poll_ok(engine, "a", {"m": "unloaded", "new": "loaded"})
    models = engine.status("a").models
    assert set(models) == {"m", "new"}
    assert models["m"].status is ModelStatus.UNLOADED
    assert models["m"].last_accessed == 5.0
    assert models["new"].last_accessed is None
    assert engine.decide("gone").outcome is Outcome.MODEL_NOT_FOUND


def test_poll_failure_keeps_the_last_known_models() -> None:
    engine = make_engine(["a"])
    up(engine, "a", {"m": "loaded"})
    engine.observe_models("a", 1.0, PollFailure(reason="timeout"))
    assert set(engine.status("a").models) == {"m"}


def test_health_readings_replace_and_invalid_ones_change_nothing() -> None:
    engine = make_engine(["a", "b"])
    up(engine, "a", {"m": "loaded"})
    up(engine, "b", {"m": "loaded"})
    load(engine, "a", {"m": 5})
    assert engine.decide("m").node == "b"
    engine.observe_health("a", 1.0, Invalid(reason="timeout"))
    assert engine.decide("m").node == "b"  # readings stay
    engine.observe_health_body("a", 1.0, {"models": [{"id": "m", "in_flight": -1}]})
    assert engine.decide("m").node == "b"  # invalid body: readings stay
    engine.observe_health_body("a", 2.0, {"uptime_secs": 3})  # no models list: no readings
    assert engine.decide("m").node == "a"
    stats = engine.statistics()
    assert (stats.health_readings, stats.health_invalid) == (2, 2)


def test_load_and_unload_outcomes() -> None:
    engine = make_engine(["a"], [Profile(id="m")])
    up(engine, "a")
    assert engine.decide("m").outcome is Outcome.COLD_LOAD
    engine.observe_load("a", 1.0, "m", ok=False)
    assert engine.decide("m").outcome is Outcome.COLD_LOAD
    engine.observe_load("a", 1.0, "m", ok=True)
    assert engine.decide("m").outcome is Outcome.ROUTE_LOADED
    engine.observe_unload("a", 2.0, "m", ok=True)
    assert engine.decide("m").outcome is Outcome.ROUTE_UNLOADED
    engine.observe_unload("a", 2.0, "other", ok=True)  # no entry: nothing happens
    assert "other" not in engine.status("a").models


def test_complete_discovery_is_cached_incomplete_is_refetched() -> None:
    engine = make_engine(["a"], [Profile(id="m", min_devices=2)])
    assert engine.needs_discovery("a")
    engine.observe_discovery("a", 0.0, parse_discovery(discovery_body(1, max_prompt_tokens=0)))
    assert engine.needs_discovery("a")
    assert engine.observe_discovery("a", 1.0, parse_discovery(discovery_body(1, 1)))
    assert not engine.needs_discovery("a")
    assert not engine.observe_discovery("a", 2.0, parse_discovery(discovery_body(1)))
    disc = engine.discovery("a")
    assert disc is not None and len(disc.devices) == 2
    assert not engine.observe_discovery("a", 3.0, Invalid(reason="timeout"))
    stats = engine.statistics()
    assert (stats.discoveries, stats.discoveries_ignored) == (2, 2)


def test_route_touches_last_accessed_and_counts() -> None:
    engine = make_engine(["a"])
    up(engine, "a", {"m": "loaded"})
    engine.route("m", 7.0)
    engine.route("nope", 8.0)
    assert engine.status("a").models["m"].last_accessed == 7.0
    stats = engine.statistics()
    assert stats.decisions == {"model_not_found": 1, "route_loaded": 1}
    assert (stats.polls_ok, stats.polls_failed) == (1, 0)
    assert stats.states == {"a": "healthy"}


def test_decisions_are_counted_per_outcome_across_the_rules_that_give_it() -> None:
    """Rules 5b and 13 both answer feasible_node_unhealthy: statistics() sums
    them (it once kept only one rule's count per outcome)."""
    engine = make_engine(["a", "b"], [Profile(id="m", min_devices=2)])
    engine.observe_discovery("a", 0.0, parse_discovery(discovery_body(24000, 24000)))
    up(engine, "b", {})
    assert engine.route("m", 1.0).rule == "5b"  # a is feasible but never answered
    up(engine, "a", {"m": "loaded"})
    for t in (2.0, 3.0, 4.0):
        engine.observe_models("a", t, PollFailure(reason="timeout"))
    assert engine.route("m", 5.0).rule == "13"  # a is down, known to hold m
    assert engine.route("m", 6.0).rule == "13"
    stats = engine.statistics()
    assert stats.decisions == {"feasible_node_unhealthy": 3}


def test_eviction_candidate_is_lru_among_unpinned_loaded() -> None:
    engine = make_engine(["a"], [Profile(id="pinned", pinned_on=("a",))])
    up(engine, "a", {"x": "loaded", "y": "loaded", "z": "unloaded", "pinned": "loaded"})
    assert engine.eviction_candidate("a") == "x"  # never accessed first, then by id
    engine.route("x", 1.0)
    assert engine.eviction_candidate("a") == "y"
    engine.route("y", 2.0)
    assert engine.eviction_candidate("a") == "x"  # accessed longest ago


def test_unknown_node_is_a_key_error() -> None:
    engine = make_engine(["a"])
    with pytest.raises(KeyError, match="unknown neuron 'b'"):
        engine.observe_models("b", 0.0, parse_models([]))


# --- the engine's indexes and decision cache agree with a full scan ------------------------

NODES = ["n1", "n2"]
MODELS = ["m", "big", "pin"]
PROFILES = [Profile(id="m"), Profile(id="big", min_devices=2), Profile(id="pin", pinned_on=("n2",))]
ALIASES = {"alias": "m", "alias-big": "big"}
# Small fixed sets of answers, so that answers repeat (the engine skips re-validating
# an answer identical to the last one) and replicas compete on load.
ANSWERS = [
    {"m": "loaded"},
    {"m": "loaded", "big": "loaded"},
    {"m": "unloaded"},
    {"m": "recovering", "pin": "loaded"},
    {"m": "reloading", "big": "loading"},
    {},
]
LOADS = [{"m": 0}, {"m": 2}, {"m": 1, "big": 2}, {}]

observation = st.one_of(
    st.tuples(st.just("models"), st.sampled_from(NODES), st.sampled_from(ANSWERS)),
    st.tuples(st.just("fail"), st.sampled_from(NODES), st.none()),
    st.tuples(st.just("bad"), st.sampled_from(NODES), st.none()),
    st.tuples(st.just("health"), st.sampled_from(NODES), st.sampled_from(LOADS)),
    st.tuples(st.just("discovery"), st.sampled_from(NODES), st.integers(0, 3)),
    st.tuples(st.just("load"), st.sampled_from(NODES), st.sampled_from(MODELS)),
    st.tuples(st.just("unload"), st.sampled_from(NODES), st.sampled_from(MODELS)),
)
REQUESTS = [*MODELS, "alias", "alias-big", "unknown"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(observation, min_size=5, max_size=40), st.integers(1, 4))
def test_engine_decisions_equal_a_full_scan(steps: list[tuple[str, str, object]], t: int) -> None:
    engine = make_engine(NODES, PROFILES, ALIASES, threshold=t)
    expected: dict[str, dict[str, str]] = {n: {} for n in NODES}  # a naive model of the maps
    for i, (kind, node, arg) in enumerate(steps):
        time = float(i)
        if kind == "models":
            engine.observe_models_body(node, time, models_body(arg))  # type: ignore[arg-type]
            expected[node] = dict(arg)  # type: ignore[call-overload]
        elif kind == "fail":
            engine.observe_models(node, time, PollFailure(reason="timeout"))
        elif kind == "bad":
            engine.observe_models_body(node, time, {"oops": 1})
        elif kind == "health":
            engine.observe_health_body(node, time, health_body(arg))  # type: ignore[arg-type]
        elif kind == "discovery":
            vram = [(), (24000,), (24000, 24000), (8000, 80000)][arg]  # type: ignore[index]
            engine.observe_discovery(
                node, time, parse_discovery(discovery_body(*vram, max_prompt_tokens=0))
            )
        elif kind == "load":
            engine.observe_load(node, time, str(arg), ok=True)
            expected[node][str(arg)] = "loaded"
        else:
            engine.observe_unload(node, time, str(arg), ok=True)
            if str(arg) in expected[node]:
                expected[node][str(arg)] = "unloaded"
        for n in NODES:
            got = {m: e.status.value for m, e in engine.status(n).models.items()}
            assert got == expected[n], (n, steps[: i + 1])
        snapshot = engine.snapshot()
        for requested in REQUESTS:
            assert engine.decide(requested) == decide(snapshot, engine.catalogue, requested), (
                requested,
                steps[: i + 1],
            )


def test_health_states_in_snapshot() -> None:
    engine = make_engine(["a", "b"])
    up(engine, "a")
    snap = engine.snapshot()
    assert [n.name for n in snap.nodes] == ["a", "b"]
    assert snap.node("a").health == HealthState(phase=Phase.HEALTHY)
    assert snap.node("b").health == HealthState(phase=Phase.UNKNOWN)
