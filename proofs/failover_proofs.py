"""CrossHair proofs of §7 (exclusion, R9) and §8 (load = max, recency, R6).

Each harness builds a fleet of two nodes (``a``, ``b``) from symbolic
choices, calls the contract-free ``routing.decide`` through a view that yields
the nodes in the order chosen, and judges the decision with the predicates of
``cortex_fsm.verify.invariants``. Loads, local in-flight counts and recency
are unbounded integers, so a confirmed R6 holds for every pair of them.
"""

# ruff: noqa: PLR0917 - CrossHair makes every parameter of a harness symbolic

from __future__ import annotations

import attrs

from cortex_fsm.catalogue import Catalogue, Profile, feasible
from cortex_fsm.errors import Outcome
from cortex_fsm.fleet import Device, Discovery, FleetSnapshot, ModelEntry, ModelStatus, NodeSnapshot
from cortex_fsm.health import HealthState, Phase
from cortex_fsm.policy import Policy
from cortex_fsm.routing import Decision, decide
from cortex_fsm.verify.invariants import r1, r3, r4, r6, r9, spec_model

_FIT = Discovery(
    devices=(Device(index=0, vram_total_mb=81920), Device(index=1, vram_total_mb=81920)),
    max_prompt_tokens=1,
)
_UP = HealthState(phase=Phase.SUSPECT, failures=1)  # routable (suspect, to keep it honest)
_DOWN = HealthState(phase=Phase.UNHEALTHY)
#: Part II's defaults (load = max, known_down = retry) and Part I.
_POLICIES = (Policy(), Policy.reference())


class _InOrder:
    """Nodes as a routing view (``routing.FleetView``), in a chosen order."""

    def __init__(self, *nodes: NodeSnapshot) -> None:
        self.nodes = nodes

    def any_routable(self, exclude: frozenset[str] = frozenset()) -> bool:
        return any(n.routable and n.name not in exclude for n in self.nodes)

    def holders(self, model: str) -> list[NodeSnapshot]:
        return [n for n in self.nodes if model in n.models]

    def feasible_nodes(self, profile: Profile) -> list[NodeSnapshot]:
        return [n for n in self.nodes if feasible(profile, n.name, n.discovery)]


def _catalogue(catalogued: bool) -> Catalogue:
    profiles = {"m": Profile(id="m", harness="h", min_devices=2)} if catalogued else {}
    return Catalogue(profiles=profiles, aliases={"alias": "m"})


def _node(name: str, up: bool, status: ModelStatus | None) -> NodeSnapshot:
    return NodeSnapshot(
        name=name,
        health=_UP if up else _DOWN,
        discovery=_FIT,
        models={} if status is None else {"m": ModelEntry(status=status)},
    )


def _same_answer(one: Decision, other: Decision) -> bool:
    return (
        one.outcome is other.outcome
        and one.node == other.node
        and one.subject == other.subject
        and one.load == other.load
        and one.retry_after == other.retry_after
    )


def _r10(fleet: FleetSnapshot, catalogue: Catalogue, d: Decision, exclude: frozenset[str]) -> bool:
    """R10, the engine's half (§7): when a node that is live (routable, not
    excluded) holds the model as ``loaded`` or ``reloading``, the decision is
    ``route_loaded`` to such a node -- so the attempt after a failed one goes
    to a live replica whenever there is one."""
    model = spec_model(catalogue, d.requested)
    serving = {
        n.name
        for n in fleet.nodes
        if n.routable
        and n.name not in exclude
        and model in n.models
        and n.models[model].status in (ModelStatus.LOADED, ModelStatus.RELOADING)
    }
    return not serving or (d.outcome is Outcome.ROUTE_LOADED and d.node in serving)


#: What a node can hold of the model, for the exclusion harness: nothing, a
#: serving copy (rule 2), a recovering one (rule 3), an unloaded one (rule 4;
#: node ``a`` only, to keep the harness affordable).
_HELD = (None, ModelStatus.LOADED, ModelStatus.RECOVERING, ModelStatus.UNLOADED)


def prove_exclusion_is_down(
    live_a: int, held_a: int, live_b: int, held_b: int, catalogued: bool
) -> bool:
    """§7, R9, R10: for one decision an excluded node is treated exactly as a node that is
    not routable -- the same outcome, node, subject, load spec and Retry-After as
    with those nodes down -- so R9 (no excluded node chosen) follows from R3,
    and rule 1, the 503/404 split and §13 all see excluded nodes as down.
    ``live``: 0 down, 1 routable, 2 routable but excluded; node ``b`` is
    routable (excluded or not), ``a`` any of the three. Both nodes can host
    the model, which is on them in any of the statuses routing tells apart
    (``b``: all but unloaded), or not; policy defaults (load = max,
    known_down = retry). On the decision:
    R9, R10 (``_r10``), R1 with excluded nodes counted down (so when every
    node that could serve is excluded the answer is a retryable 503, never a
    404), R3, R4, and a 503 always carries its Retry-After (the
    values themselves: ``_same_answer`` and ``errors_proofs``).

    pre: 0 <= live_a <= 2 and 1 <= live_b <= 2
    pre: 0 <= held_a <= 3 and 0 <= held_b <= 2
    post: __return__
    """
    policy = _POLICIES[0]
    catalogue = _catalogue(catalogued)
    a, b = _node("a", live_a > 0, _HELD[held_a]), _node("b", live_b > 0, _HELD[held_b])
    exclude = frozenset(n for n, live in (("a", live_a), ("b", live_b)) if live == 2)
    d = decide(_InOrder(a, b), catalogue, "alias", policy, exclude)
    down_a = attrs.evolve(a, health=_DOWN) if live_a == 2 else a
    down_b = attrs.evolve(b, health=_DOWN) if live_b == 2 else b
    as_down = decide(_InOrder(down_a, down_b), catalogue, "alias", policy)
    fleet = FleetSnapshot(nodes=(a, b))
    return (
        _same_answer(d, as_down)
        and d.exclude == exclude
        and r9(d, exclude)
        and _r10(fleet, catalogue, d, exclude)
        and (d.status != 503 or d.retry_after is not None)
        and r1(fleet, catalogue, d, policy, exclude)
        and r3(fleet, d)
        and r4(fleet, catalogue, d)
    )


def _loaded(name: str, busy: int, local: int, chosen: int) -> NodeSnapshot:
    return NodeSnapshot(
        name=name,
        health=_UP,
        models={"m": ModelEntry(status=ModelStatus.LOADED)},
        busy={"m": busy},
        local={"m": local} if local > 0 else {},
        chosen={"m": chosen} if chosen >= 0 else {},
    )


def prove_r6_load_and_recency(
    busy_a: int,
    local_a: int,
    chosen_a: int,
    busy_b: int,
    local_b: int,
    chosen_b: int,
    reverse: bool,
) -> bool:
    """R6 under load = max (§8): the replica chosen has the least
    max(reported, local), then is the least recently chosen (never chosen:
    oldest), then has the smallest name; for all loads, local counts and
    recency stamps (unbounded), with the view yielding the nodes in either
    order (a tie broken by iteration order is a counterexample). (And R3.)
    Both replicas are live: which nodes are candidates is the exclusion
    harness's business, and Part I's R6 is ``routing_proofs.prove_r6``.

    pre: busy_a >= 0 and busy_b >= 0 and local_a >= 0 and local_b >= 0
    pre: chosen_a >= -1 and chosen_b >= -1 and (chosen_a != chosen_b or chosen_a < 0)
    post: __return__
    """
    policy = _POLICIES[0]
    catalogue = _catalogue(False)
    a = _loaded("a", busy_a, local_a, chosen_a)
    b = _loaded("b", busy_b, local_b, chosen_b)
    view = _InOrder(b, a) if reverse else _InOrder(a, b)
    d = decide(view, catalogue, "alias", policy)
    fleet = FleetSnapshot(nodes=(a, b))
    return r6(fleet, catalogue, d, policy) and r3(fleet, d)
