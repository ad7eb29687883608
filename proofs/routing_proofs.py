"""CrossHair proofs of R1, R3, R4, R6 and R7 over the routing kernel.

Each harness builds every fleet of two nodes (``a``, ``b``) from symbolic
choices, calls the contract-free ``routing.decide`` through a view that yields
the nodes in the order chosen, and judges the decision with the predicates of
``cortex_fsm.verify.invariants``. CrossHair enumerates the discrete choices
(routable or not, model status, discovery, pinning) path by path and treats
loads as unbounded integers, so "Confirmed over all paths" is a proof for
every combination of those choices and every pair of loads.
"""

# ruff: noqa: PLR0917 - CrossHair makes every parameter of a harness symbolic

from __future__ import annotations

from cortex_fsm.catalogue import Catalogue, Profile, feasible
from cortex_fsm.fleet import Device, Discovery, FleetSnapshot, ModelEntry, ModelStatus, NodeSnapshot
from cortex_fsm.health import HealthState, Phase
from cortex_fsm.policy import Policy
from cortex_fsm.routing import Decision, decide
from cortex_fsm.verify.invariants import r1, r3, r4, r6, r7

_SMALL = Discovery(devices=(Device(index=0, vram_total_mb=24000),), max_prompt_tokens=1)
_BIG = Discovery(
    devices=(Device(index=0, vram_total_mb=81920), Device(index=1, vram_total_mb=81920)),
    max_prompt_tokens=1,
)
_UP = HealthState(phase=Phase.SUSPECT, failures=1)  # routable (suspect, to keep it honest)
_DOWN = HealthState(phase=Phase.UNHEALTHY)


def _node(name: str, up: bool, status: ModelStatus | None, busy: int, disc: int) -> NodeSnapshot:
    return NodeSnapshot(
        name=name,
        health=_UP if up else _DOWN,
        discovery=None if disc == 0 else (_SMALL if disc == 1 else _BIG),
        models={} if status is None else {"m": ModelEntry(status=status)},
        busy={"m": busy},
    )


def _profile(two_devices: bool, pinned: int) -> Profile:
    """Needs one GPU of >= 40 GB (only the big discovery fits), or two of them;
    pinned nowhere, on a, on b, or on a node outside the fleet."""
    return Profile(
        id="m",
        harness="h",
        min_devices=2 if two_devices else 1,
        min_device_vram_mb=40000,
        pinned_on=((), ("a",), ("b",), ("elsewhere",))[pinned],
    )


class _InOrder:
    """The two nodes as a routing view (``routing.FleetView``), in a chosen order."""

    def __init__(self, first: NodeSnapshot, second: NodeSnapshot) -> None:
        self.nodes = (first, second)

    def any_routable(self, exclude: frozenset[str] = frozenset()) -> bool:
        return any(n.routable and n.name not in exclude for n in self.nodes)

    def holders(self, model: str) -> list[NodeSnapshot]:
        return [n for n in self.nodes if model in n.models]

    def feasible_nodes(self, profile: Profile) -> list[NodeSnapshot]:
        return [n for n in self.nodes if feasible(profile, n.name, n.discovery)]


def _decide(
    a: NodeSnapshot, b: NodeSnapshot, catalogue: Catalogue, reverse: bool
) -> tuple[FleetSnapshot, Decision]:
    view = _InOrder(b, a) if reverse else _InOrder(a, b)
    return FleetSnapshot(nodes=(a, b)), decide(view, catalogue, "alias", Policy.reference())


def _catalogue(profile: Profile | None) -> Catalogue:
    profiles = {} if profile is None else {"m": profile}
    return Catalogue(profiles=profiles, aliases={"alias": "m"})


def prove_r1(
    up_a: bool, disc_a: int, up_b: bool, disc_b: int, two_devices: bool, pinned: int
) -> bool:
    """R1: a catalogued model with a feasible non-routable node never gets a 404
    (and R3: a chosen node is routable). The model is on no node, so rule 5
    decides whenever a node is routable.

    pre: 0 <= disc_a <= 2 and 0 <= disc_b <= 2
    pre: 0 <= pinned <= 3
    post: __return__
    """
    catalogue = _catalogue(_profile(two_devices, pinned))
    fleet, d = _decide(
        _node("a", up_a, None, 0, disc_a), _node("b", up_b, None, 0, disc_b), catalogue, False
    )
    return r1(fleet, catalogue, d) and r3(fleet, d)


def prove_r4(
    up_a: bool,
    status_a: ModelStatus | None,
    up_b: bool,
    status_b: ModelStatus | None,
    catalogued: bool,
) -> bool:
    """R4: while a routable node has the model recovering, no cold start (cold
    load or lazy reload of an unloaded copy), whatever the other node holds.
    Both nodes could host the model (two 80 GB GPUs), so a cold load is always
    possible. (And R3.)

    post: __return__
    """
    catalogue = _catalogue(_profile(False, 0) if catalogued else None)
    fleet, d = _decide(
        _node("a", up_a, status_a, 0, 2), _node("b", up_b, status_b, 0, 2), catalogue, False
    )
    return r4(fleet, catalogue, d) and r3(fleet, d)


def prove_r6(
    up_a: bool,
    status_a: ModelStatus | None,
    busy_a: int,
    up_b: bool,
    status_b: ModelStatus | None,
    busy_b: int,
    reverse: bool,
) -> bool:
    """R6: the replica chosen is the least loaded routable loaded/reloading one,
    ties by name -- for all loads, with the view yielding the nodes in either
    order (so a tie broken by iteration order is a counterexample). (And R3.)

    pre: busy_a >= 0 and busy_b >= 0
    post: __return__
    """
    catalogue = _catalogue(None)
    fleet, d = _decide(
        _node("a", up_a, status_a, busy_a, 0),
        _node("b", up_b, status_b, busy_b, 0),
        catalogue,
        reverse,
    )
    return r6(fleet, catalogue, d) and r3(fleet, d)


def prove_r7(up_a: bool, disc_a: int, up_b: bool, disc_b: int, pinned: int, reverse: bool) -> bool:
    """R7: a cold-load target is routable and feasible, and pinned when a
    pinned candidate exists, with the nodes in either order. (And R3.)

    pre: 0 <= disc_a <= 2 and 0 <= disc_b <= 2
    pre: 0 <= pinned <= 3
    post: __return__
    """
    catalogue = _catalogue(_profile(False, pinned))
    fleet, d = _decide(
        _node("a", up_a, None, 0, disc_a), _node("b", up_b, None, 0, disc_b), catalogue, reverse
    )
    return r7(fleet, catalogue, d) and r3(fleet, d)
