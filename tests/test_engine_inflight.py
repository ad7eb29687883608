"""A replica's local in-flight count under ``load = "max"`` (docs/semantics.md §8):
each routed request adds one, each :meth:`Engine.finish` ends one, and a
finish with no count open changes nothing.

Found by the mutation score (benchmarks/mutation.py): the core's own tests let
a ``finish`` that never ends a count, or that ends one where none is open,
pass unseen.
"""

from __future__ import annotations

from tests.helpers import make_engine, up

from cortex_fsm import Profile


def _local(engine: object, node: str, model: str) -> int:
    snapshot = engine.snapshot()  # type: ignore[attr-defined]
    return int(snapshot.node(node).local.get(model, 0))


def test_each_finish_ends_one_count_and_no_more() -> None:
    engine = make_engine(["a"], [Profile(id="m")])
    up(engine, "a", {"m": "loaded"})
    for expected in (1, 2, 3):
        decision = engine.route("m", 1.0)
        assert decision.node == "a"
        assert _local(engine, "a", "m") == expected
    for expected in (2, 1, 0, 0):
        engine.finish("a", "m")
        assert _local(engine, "a", "m") == expected
    engine.finish("a", "other")  # no count for that model: nothing happens
    engine.finish("gone", "m")  # no such node: nothing happens
    assert _local(engine, "a", "m") == 0
    assert engine.route("m", 2.0).node == "a"
    assert _local(engine, "a", "m") == 1


def test_the_least_busy_replica_follows_the_counts() -> None:
    engine = make_engine(["a", "b"], [Profile(id="m")])
    up(engine, "a", {"m": "loaded"})
    up(engine, "b", {"m": "loaded"})
    assert [engine.route("m", 1.0).node for _ in range(4)] == ["a", "b", "a", "b"]
    engine.finish("b", "m")
    engine.finish("b", "m")
    assert engine.decide("m").node == "b"  # a: 2 in flight, b: none
    engine.finish("a", "m")
    engine.finish("a", "m")
    engine.finish("a", "m")  # one more than were open
    assert (_local(engine, "a", "m"), _local(engine, "b", "m")) == (0, 0)
