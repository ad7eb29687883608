"""The engine's cached decisions survive a load reading only when it cannot change them.

A ``/health`` reading moves loads, which enter a decision only through rule
2's pick; the engine keeps a cached decision across a reading when the pick
provably stays (see ``Engine._load_moved``). Here, many random readings,
polls and routed requests, with every decision checked against the pure
decision over a snapshot of the fleet.
"""

from __future__ import annotations

import random

import attrs
import pytest
from tests.helpers import load, make_engine, poll_ok, up

from cortex_fsm import Neuron, Policy, Profile
from cortex_fsm.engine import Engine, _rank
from cortex_fsm.fleet import PollFailure
from cortex_fsm.routing import Decision, decide

NODES = ["a", "b", "c", "d"]
MODELS = ["m", "n", "o"]


@pytest.mark.parametrize("mode", ["reported", "max"])
@pytest.mark.parametrize("seed", range(4))
def test_cached_decisions_equal_decisions_over_a_snapshot(mode: str, seed: int) -> None:
    rng = random.Random(seed)
    engine = make_engine(
        NODES, [Profile(id=m) for m in MODELS], aliases={"alias": "m", "other": "n"}
    )
    engine.reconfigure(0.0, policy=attrs.evolve(Policy(), load=mode))
    statuses = ["loaded", "loaded", "loaded", "reloading", "unloaded", "recovering"]
    for node in NODES:
        up(engine, node, {m: "loaded" for m in MODELS if rng.random() < 0.7})
    requested = [*MODELS, "alias", "other", "unknown"]
    for step in range(600):
        t = float(step)
        what = rng.random()
        node = rng.choice(NODES)
        if what < 0.45:
            load(engine, node, {m: rng.randint(0, 3) for m in MODELS if rng.random() < 0.8}, t)
        elif what < 0.5:
            poll_ok(
                engine, node, {m: rng.choice(statuses) for m in MODELS if rng.random() < 0.7}, t
            )
        elif what < 0.53:
            engine.observe_request(node, t, ok=False, reason="connect")
        elif what < 0.8:
            engine.route(rng.choice(requested), t)
        else:
            engine.finish(node, rng.choice(MODELS))
        snapshot = engine.snapshot()
        for name in requested:
            assert engine.decide(name) == decide(snapshot, engine.catalogue, name, engine.policy)


@pytest.mark.parametrize("mode", ["reported", "max"])
@pytest.mark.parametrize("seed", range(6))
def test_routed_requests_equal_decisions_over_a_snapshot(mode: str, seed: int) -> None:
    """Route alone (no ``decide`` in between to fill the cache): every routed
    request's decision -- often rule 2's pick among the kept live loaded
    replicas -- equals the pure decision over a snapshot taken just before,
    across everything that moves loads or replicas: readings, polls that
    change statuses, failures that make nodes unroutable, loads and unloads,
    outcomes, failover excludes, nodes leaving and joining, reconfiguration."""
    rng = random.Random(100 + seed)
    names = [*NODES, "e", "f"]
    engine = make_engine(names, [Profile(id=m) for m in MODELS], aliases={"alias": "m"})
    engine.reconfigure(0.0, policy=attrs.evolve(Policy(), load=mode))
    statuses = ["loaded", "loaded", "loaded", "loaded", "reloading", "unloaded", "recovering"]
    for node in names:
        up(engine, node, {m: "loaded" for m in MODELS if rng.random() < 0.6})
    requested = [*MODELS, "alias", "unknown"]
    open_keys: list[tuple[str, int]] = []
    gone: list[str] = []
    for step in range(1500):
        t = float(step)
        what = rng.random()
        present = [n for n in names if engine.has_node(n)]
        node = rng.choice(present)
        if what < 0.5:
            name = rng.choice(requested)
            exclude = frozenset(rng.sample(present, rng.randint(1, 2))) if what < 0.05 else None
            expected = decide(
                engine.snapshot(), engine.catalogue, name, engine.policy, exclude or frozenset()
            )
            key = (f"r{step}", 1)
            got = engine.route(name, t, exclude or frozenset(), key=key)
            assert got == expected, (step, name, exclude)
            if got.node is not None:
                open_keys.append(key)
        elif what < 0.7 and open_keys:
            key = open_keys.pop(rng.randrange(len(open_keys)))
            engine.observe_outcome(key, t, node=node, ok=rng.random() < 0.9, reason="connect")
        elif what < 0.8:
            load(engine, node, {m: rng.randint(0, 3) for m in MODELS if rng.random() < 0.5}, t)
        elif what < 0.85:
            poll_ok(
                engine, node, {m: rng.choice(statuses) for m in MODELS if rng.random() < 0.8}, t
            )
        elif what < 0.88:
            engine.observe_models(node, t, PollFailure(reason="connect"))
        elif what < 0.91:
            engine.observe_load(node, t, rng.choice(MODELS), ok=rng.random() < 0.8)
        elif what < 0.93:
            engine.observe_unload(node, t, rng.choice(MODELS), ok=True)
        elif what < 0.95:
            engine.finish(node, rng.choice(MODELS))
        elif what < 0.96 and len(present) > 2:
            engine.remove_neuron(node, t)
            gone.append(node)
        elif what < 0.97 and gone:
            back = gone.pop()
            engine.add_neuron(Neuron(name=back, endpoint=f"http://{back}:13131"), t)
            up(engine, back, {m: "loaded" for m in MODELS if rng.random() < 0.6}, t=t)
        elif what < 0.975:
            other = "reported" if engine.policy.load == "max" else "max"
            engine.reconfigure(t, policy=attrs.evolve(engine.policy, load=other))
        else:
            poll_ok(engine, node, {m: "loaded" for m in MODELS if rng.random() < 0.7}, t)
        _kept_keys_are_current(engine)


def _kept_keys_are_current(engine: Engine) -> None:
    """Under load = "max" the engine keeps each kept model's replica keys up to
    date as loads, local counts and recency move (``Engine._ranked``): they must
    equal the keys computed afresh from the node records, for exactly the
    models that have kept replicas."""
    kept_models = {kept[0] for kept in engine._picks.values()}
    if engine.policy.load != "max":
        assert not engine._ranked
        return
    assert set(engine._ranked) == kept_models
    for model, ranked in engine._ranked.items():
        names = next(kept[1] for kept in engine._picks.values() if kept[0] == model)
        assert ranked.index == {name: i for i, name in enumerate(names)}
        assert ranked.keys == [_rank(engine._nodes[name], model) for name in names], model


def test_a_node_going_down_or_up_changes_the_decisions_it_enters() -> None:
    """A routability change forgets only the cached decisions the node can
    change: those for a model it holds, or whose profile it is feasible for
    (a cold start goes there) -- and all of them when it decides whether any
    node is routable at all. Each decision is checked against the pure one."""
    engine = make_engine(["a", "b", "c", "d"], [Profile(id=m) for m in ("m", "n", "p", "q")])
    up(engine, "a", {"m": "loaded"})
    up(engine, "b", {"n": "loaded"})
    up(engine, "c", {})
    poll_ok(engine, "d", {"q": "loaded"})  # no discovery: a holder feasible for nothing
    requested = ["m", "n", "p", "q", "unknown"]

    def check(step: str) -> dict[str, Decision]:
        snapshot = engine.snapshot()
        got = {}
        for name in requested:
            got[name] = engine.decide(name)
            assert got[name] == decide(snapshot, engine.catalogue, name, engine.policy), (
                step,
                name,
            )
        return got

    def down(node: str, t: float) -> None:
        for i in range(3):
            engine.observe_models(node, t + i, PollFailure(reason="connect"))

    first = check("all up")
    cold = first["p"].node
    assert cold is not None and first["p"].cold_start
    down(cold, 1.0)  # the feasible node of p's cold start, holding nothing of p
    after = check("cold start target down")
    assert after["p"].node != cold
    down("a", 10.0)  # m's only holder
    assert check("a down")["m"].node != "a"
    assert first["q"].node == "d"
    down("d", 15.0)  # q's only holder, feasible for no profile
    assert check("d down")["q"].node != "d"
    for node in ("b", "c"):
        down(node, 20.0)
    assert {d.outcome.value for d in check("all down").values()} == {"no_healthy_nodes"}
    poll_ok(engine, "c", {}, 30.0)  # one node back: condition 0 moves for every model
    assert check("c back")["n"].outcome.value != "no_healthy_nodes"
