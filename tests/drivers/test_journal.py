"""The journal: one clock that never goes back, generations for the endpoint cache."""

from __future__ import annotations

from cortex_fsm import Catalogue, Engine, Neuron, Profile
from cortex_fsm.drivers.journal import Journal
from cortex_fsm.routing import Decision

BODY = [{"id": "m", "status": "loaded"}]


def test_time_is_relative_and_never_goes_back() -> None:
    now = [100.0]
    journal = Journal(Engine([Neuron(name="a", endpoint="http://a:1")]), clock=lambda: now[0])
    now[0] = 101.5
    assert journal.now() == 1.5
    now[0] = 101.0  # a clock that steps back does not move t back
    assert journal.now() == 1.5
    now[0] = 103.0
    assert journal.now() == 3.0


def test_requests_get_ids_and_listeners_hear_them() -> None:
    engine = Engine(
        [Neuron(name="a", endpoint="http://a:1")], Catalogue(profiles={"m": Profile(id="m")})
    )
    journal = Journal(engine)
    heard: list[tuple[str, Decision]] = []
    journal.decision_listeners.append(lambda rid, t, d: heard.append((rid, d)))
    assert journal.request("m")[1].outcome.value == "no_healthy_nodes"
    journal.models("a", ok=True, body=BODY)
    rid, decision = journal.request("m")
    assert rid == "r2"
    assert decision.node == "a"
    assert [r for r, _ in heard] == ["r1", "r2"]
    assert journal.requests == 2


def test_generation_moves_when_the_model_map_may_have_changed() -> None:
    journal = Journal(Engine([Neuron(name="a", endpoint="http://a:1")]))
    g0 = journal.generation("a")
    journal.models("a", ok=True, body=BODY)
    g1 = journal.generation("a")
    assert g1 != g0
    journal.models("a", ok=True, body=[dict(x) for x in BODY])  # the same answer again
    journal.health("a", ok=True, body={"models": []})
    assert journal.generation("a") == g1
    journal.models("a", ok=False, error="timeout")
    g2 = journal.generation("a")
    assert g2 != g1
    journal.models("a", ok=True, body=BODY)
    assert journal.generation("a") != g2
    g3 = journal.generation("a")
    journal.load("a", "m", ok=True)
    assert journal.generation("a") != g3
