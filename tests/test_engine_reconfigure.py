"""A catalogue reload (``Engine.reconfigure``) rebuilds which nodes are
feasible for each profile from the discoveries the engine holds; a policy
reload keeps every health state as it was.

Found by the mutation score (benchmarks/mutation.py): no world of the model
checker reloads, and the core's tests let a reload that forgets every
discovered node's feasibility pass unseen.
"""

from __future__ import annotations

from tests.helpers import make_engine, up

from cortex_fsm import Policy, Profile
from cortex_fsm.catalogue import Catalogue
from cortex_fsm.fleet import ModelsReport, PollFailure


def test_a_new_profile_is_feasible_on_the_nodes_already_discovered() -> None:
    engine = make_engine(["a", "b"], [Profile(id="m")])
    up(engine, "a", {})
    up(engine, "b", {}, vram=(8000,))
    before = engine.decide("n")
    assert before.node is None and not before.cold_start
    engine.reconfigure(
        1.0,
        catalogue=Catalogue(profiles={"n": Profile(id="n", min_device_vram_mb=16000)}, aliases={}),
    )
    after = engine.decide("n")
    assert after.cold_start and after.node == "a"


def test_a_policy_reload_leaves_no_transition_where_the_state_stays() -> None:
    """After a new policy (same threshold), a poll of a healthy node changes
    nothing: no transition from healthy to healthy, none counted."""
    engine = make_engine(["a"], [Profile(id="m")])
    up(engine, "a", {})
    counted = engine.statistics().transitions
    engine.reconfigure(1.0, policy=Policy().with_values({"load": "reported"}))
    assert engine.observe_models("a", 2.0, ModelsReport(models={})) is None
    assert engine.statistics().transitions == counted
    assert engine.state("a").label == "healthy"


def test_a_node_made_unhealthy_by_a_lower_threshold_stays_so_without_a_transition() -> None:
    """A threshold lowered below a node's suspect count makes it unhealthy (one
    transition, "reconfigured"); a failed poll after that changes nothing: no
    transition from unhealthy to unhealthy, none counted."""
    engine = make_engine(["a"], [Profile(id="m")])
    up(engine, "a", {})
    for t in (1.0, 2.0):
        engine.observe_models("a", t, PollFailure(reason="timeout"))
    assert engine.state("a").label == "suspect(2)"
    moved = engine.reconfigure(3.0, policy=Policy().with_values({"failure_threshold": 2}))
    assert [(m.from_.label, m.to.label, m.cause) for m in moved] == [
        ("suspect(2)", "unhealthy", "reconfigured")
    ]
    counted = engine.statistics().transitions
    assert engine.observe_models("a", 4.0, PollFailure(reason="timeout")) is None
    assert engine.statistics().transitions == counted
    assert engine.state("a").label == "unhealthy"
