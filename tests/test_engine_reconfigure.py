"""A catalogue reload (``Engine.reconfigure``) rebuilds which nodes are
feasible for each profile from the discoveries the engine holds.

Found by the mutation score (benchmarks/mutation.py): no world of the model
checker reloads, and the core's tests let a reload that forgets every
discovered node's feasibility pass unseen.
"""

from __future__ import annotations

from tests.helpers import make_engine, up

from cortex_fsm import Profile
from cortex_fsm.catalogue import Catalogue


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
