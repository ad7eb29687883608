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

from cortex_fsm import Policy, Profile
from cortex_fsm.routing import decide

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
