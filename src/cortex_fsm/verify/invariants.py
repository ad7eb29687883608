"""The invariants of docs/semantics.md (H1-H4, R1-R7), written once, as predicates.

Every check in the verification suite -- the hypothesis tests, the model
checker (:mod:`cortex_fsm.verify.explorer`), the CrossHair proofs and the
Promela export -- calls these functions; none restates an invariant.

Theory of operation
-------------------
The predicates are written from the *specification*, not from the code they
check. Where an invariant needs a notion the code also implements
(feasibility, alias resolution, "a node holds the model as recovering"), it is
computed here again, literally from docs/semantics.md §3 (:func:`spec_feasible`,
:func:`spec_model`). Were the predicates to call ``catalogue.feasible``, a bug
in it would be invisible to every check built on them.

Health invariants talk about *histories* ("never had a poll_ok", "T
consecutive failures"), which a health state alone does not record. A
:class:`PollHistory` is the small monitor that does: it is advanced by the
caller on every ``/models`` poll (from what the poll *was*, not from what the
engine made of it), and the H predicates compare it with the state the code
produced.

Routing invariants take a frozen :class:`~cortex_fsm.fleet.FleetSnapshot`,
the catalogue and the :class:`~cortex_fsm.routing.Decision` to judge. R5
(determinism, no dependence on iteration order) compares several decisions
for the same input; :func:`reordered_views` builds the same fleet with nodes
and map entries in other orders for it.

Beyond H1-H4 and R1-R7, two predicates make the rest of the text checkable:

* ``F1`` -- a node's model map is exactly what its observations say
  (docs/semantics.md §2: a successful poll replaces the map; a failed one keeps it;
  load and unload outcomes edit it);
* ``SPEC`` -- the decision is the one the ordered rules of docs/semantics.md §3,
  read literally (:func:`spec_decide`), give.

All predicates are pure and total, contain no contracts of their own (so
CrossHair analyses their bodies), and only iterate over bounded inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from ..catalogue import Catalogue, LoadSpec, Profile, feasible
from ..errors import Outcome, error_envelope
from ..fleet import Discovery, FleetSnapshot, ModelEntry, ModelStatus, NodeSnapshot
from ..health import HealthState, Phase
from ..routing import Decision

__all__ = [
    "ALL_INVARIANTS",
    "HEALTH_INVARIANTS",
    "INVARIANTS",
    "ROUTING_INVARIANTS",
    "OrderedView",
    "PollHistory",
    "SpecDecision",
    "check_decision",
    "check_health",
    "f1",
    "h1",
    "h2",
    "h3",
    "h4",
    "r1",
    "r2",
    "r2_outcome",
    "r3",
    "r4",
    "r5",
    "r6",
    "r7",
    "reordered_catalogue",
    "reordered_views",
    "spec",
    "spec_decide",
    "spec_feasible",
    "spec_load",
    "spec_model",
]

#: Every invariant the suite checks, with the sentence it stands for.
INVARIANTS: Mapping[str, str] = {
    "H1": "a node that has never had poll_ok is never routable",
    "H2": "a routable node stays routable through any T-1 consecutive failures",
    "H3": "T consecutive failures always make a node unroutable",
    "H4": "one poll_ok always makes a node routable (healthy)",
    "R1": "feasible-but-down never yields a 404",
    "R2": "every 503 carries Retry-After; no 404 does",
    "R3": "a chosen node is always routable",
    "R4": "a recovering replica never leads to a cold start",
    "R5": "the decision is a deterministic function of the fleet (no order dependence; "
    "the engine's indexes and cache agree with a full scan)",
    "R6": "the loaded replica chosen is the least loaded routable one, ties by name",
    "R7": "a cold-load target is routable and feasible, and pinned if any candidate is",
    "F1": "a node's model map is exactly what its polls, loads and unloads say",
    "SPEC": "the decision is the one the ordered rules of docs/semantics.md §3 give",
}
HEALTH_INVARIANTS = ("H1", "H2", "H3", "H4")
ROUTING_INVARIANTS = ("R1", "R2", "R3", "R4", "R5", "R6", "R7")
ALL_INVARIANTS = tuple(INVARIANTS)

_ROUTED = (Outcome.ROUTE_LOADED, Outcome.ROUTE_UNLOADED, Outcome.COLD_LOAD)
_COLD_STARTS = (Outcome.ROUTE_UNLOADED, Outcome.COLD_LOAD)
_SERVING = (ModelStatus.LOADED, ModelStatus.RELOADING)


# --- health --------------------------------------------------------------------------------


@attrs.frozen(slots=True, kw_only=True)
class PollHistory:
    """What one node's ``/models`` polls have been, as far as H1-H4 care.

    ``streak`` counts the failed polls since the last successful one (or since
    the start), capped at the threshold: more failures change nothing the
    invariants distinguish. For a node that never had a successful poll it is
    capped at 1, for the same reason: H1 alone decides such a node (it must not
    be routable), and a monitor that counted further would only multiply the
    model checker's states. ``armed`` records whether the node was routable
    just before the first failure of the current streak (H2's premise).
    """

    ever_ok: bool = False
    streak: int = 0
    armed: bool = False

    def after(self, *, ok: bool, routable_before: bool, threshold: int) -> PollHistory:
        """The history after one more poll; ``routable_before`` is the node's
        routability (as the code under test has it) just before this poll."""
        if ok:
            return PollHistory(ever_ok=True)
        armed = routable_before if self.streak == 0 else self.armed
        cap = threshold if self.ever_ok else 1
        return PollHistory(ever_ok=self.ever_ok, streak=min(self.streak + 1, cap), armed=armed)

    def key(self) -> tuple[bool, int, bool]:
        return (self.ever_ok, self.streak, self.armed)


def h1(history: PollHistory, state: HealthState) -> bool:
    """H1: never had a poll_ok => not routable."""
    return history.ever_ok or not state.routable


def h2(history: PollHistory, state: HealthState, threshold: int) -> bool:
    """H2: routable when the failures began, and fewer than T of them => routable."""
    if history.armed and 1 <= history.streak <= threshold - 1:
        return state.routable
    return True


def h3(history: PollHistory, state: HealthState, threshold: int) -> bool:
    """H3: T consecutive failures => not routable."""
    return history.streak < threshold or not state.routable


def h4(history: PollHistory, state: HealthState) -> bool:
    """H4: the last poll succeeded => healthy (and so routable)."""
    if history.ever_ok and history.streak == 0:
        return state.phase is Phase.HEALTHY and state.routable
    return True


def check_health(history: PollHistory, state: HealthState, threshold: int) -> list[str]:
    """The names of the health invariants ``state`` violates given ``history``."""
    bad = []
    if not h1(history, state):
        bad.append("H1")
    if not h2(history, state, threshold):
        bad.append("H2")
    if not h3(history, state, threshold):
        bad.append("H3")
    if not h4(history, state):
        bad.append("H4")
    return bad


def f1(expected: Mapping[str, ModelStatus], models: Mapping[str, ModelEntry]) -> bool:
    """F1: the node's model map holds exactly the expected ids, with the expected statuses."""
    if len(expected) != len(models):
        return False
    for model, status in expected.items():
        entry = models.get(model)
        if entry is None or entry.status is not status:
            return False
    return True


# --- the specification, read literally ------------------------------------------------------


def spec_model(catalogue: Catalogue, requested: str) -> str:
    """Rule 0: one alias lookup, never chained."""
    target = catalogue.aliases.get(requested)
    return requested if target is None else target


def spec_feasible(profile: Profile, name: str, discovery: Discovery | None) -> bool:
    """docs/semantics.md §3 rule 5, word for word (independent of ``catalogue.feasible``)."""
    if discovery is None:
        return False
    if len(profile.pinned_on) > 0 and name not in profile.pinned_on:
        return False
    if len(discovery.devices) < profile.min_devices:
        return False
    if profile.min_device_vram_mb is None:
        return True
    big_enough = 0
    for device in discovery.devices:
        if device.vram_total_mb >= profile.min_device_vram_mb:
            big_enough += 1
    return big_enough >= profile.min_devices


def spec_load(profile: Profile, discovery: Discovery) -> LoadSpec:
    """docs/semantics.md §3: the load spec posted for a cold load."""
    floor = 0 if profile.min_device_vram_mb is None else profile.min_device_vram_mb
    devices: list[int] = []
    for device in discovery.devices:
        if len(devices) < profile.min_devices and device.vram_total_mb >= floor:
            devices.append(device.index)
    source = profile.source
    return LoadSpec(
        model_id=profile.id if not source else source + ":" + profile.id,
        harness=profile.harness,
        quant=profile.quant,
        tensor_parallel=profile.min_devices if profile.min_devices > 1 else None,
        devices=tuple(devices),
    )


def _status(node: NodeSnapshot, model: str) -> ModelStatus | None:
    entry = node.models.get(model)
    return None if entry is None else entry.status


@attrs.frozen(slots=True, kw_only=True)
class SpecDecision:
    """What the ordered rules say: the outcome, the node (routes) or subject
    (``model_recovering``), and the load spec (``cold_load``)."""

    model: str
    outcome: Outcome
    node: str | None = None
    subject: str | None = None
    load: LoadSpec | None = None


def spec_decide(fleet: FleetSnapshot, catalogue: Catalogue, requested: str) -> SpecDecision:
    """docs/semantics.md §3, rule by rule, in order; the first rule that applies decides.

    Deliberately naive: full scans, explicit sorts, no indexes, no tables.
    """
    model = spec_model(catalogue, requested)
    nodes = sorted(fleet.nodes, key=lambda n: n.name)
    routable = [n for n in nodes if n.routable]
    if not routable:  # rule 1
        return SpecDecision(model=model, outcome=Outcome.NO_HEALTHY_NODES)
    serving = [n for n in routable if _status(n, model) in _SERVING]
    if serving:  # rule 2
        best = min(serving, key=lambda n: (n.busy.get(model, 0), n.name))
        return SpecDecision(model=model, outcome=Outcome.ROUTE_LOADED, node=best.name)
    recovering = [n for n in routable if _status(n, model) is ModelStatus.RECOVERING]
    if recovering:  # rule 3
        return SpecDecision(
            model=model, outcome=Outcome.MODEL_RECOVERING, subject=recovering[0].name
        )
    unloaded = [n for n in routable if _status(n, model) is ModelStatus.UNLOADED]
    if unloaded:  # rule 4
        return SpecDecision(model=model, outcome=Outcome.ROUTE_UNLOADED, node=unloaded[0].name)
    profile = catalogue.profiles.get(model)
    if profile is not None:  # rule 5
        ok = [n for n in nodes if spec_feasible(profile, n.name, n.discovery)]
        candidates = sorted(
            (n for n in ok if n.routable), key=lambda n: (n.name not in profile.pinned_on, n.name)
        )
        if candidates:
            target = candidates[0]
            assert target.discovery is not None
            return SpecDecision(
                model=model,
                outcome=Outcome.COLD_LOAD,
                node=target.name,
                load=spec_load(profile, target.discovery),
            )
        if any(not n.routable for n in ok):
            return SpecDecision(model=model, outcome=Outcome.FEASIBLE_NODE_UNHEALTHY)
        return SpecDecision(model=model, outcome=Outcome.NO_FEASIBLE_NEURON)
    return SpecDecision(model=model, outcome=Outcome.MODEL_NOT_FOUND)  # rule 6


# --- routing -----------------------------------------------------------------------------------


def _find(fleet: FleetSnapshot, name: str | None) -> NodeSnapshot | None:
    for node in fleet.nodes:
        if node.name == name:
            return node
    return None


def r1(fleet: FleetSnapshot, catalogue: Catalogue, decision: Decision) -> bool:
    """R1: the model is catalogued and some non-routable node is feasible => not a 404."""
    profile = catalogue.profiles.get(spec_model(catalogue, decision.requested))
    if profile is None:
        return True
    for node in fleet.nodes:
        if not node.routable and spec_feasible(profile, node.name, node.discovery):
            return decision.status != 404
    return True


def r2_outcome(outcome: Outcome) -> bool:
    """R2 for one outcome, as the client sees it: the envelope's status and headers."""
    if outcome in _ROUTED:
        return outcome.status == 200 and outcome.retry_after is None
    status, headers, _body = error_envelope(outcome, model="m", node="n")
    retry = [value for name, value in headers if name.lower() == "retry-after"]
    if status != outcome.status:
        return False
    if status == 503:
        return (
            len(retry) == 1
            and retry[0].isdigit()
            and int(retry[0]) > 0
            and outcome.retry_after == int(retry[0])
        )
    if status == 404:
        return len(retry) == 0 and outcome.retry_after is None
    return True


def r2(decision: Decision) -> bool:
    """R2: every 503 carries Retry-After; no 404 does."""
    return (
        decision.status == decision.outcome.status
        and decision.retry_after == decision.outcome.retry_after
        and r2_outcome(decision.outcome)
    )


def r3(fleet: FleetSnapshot, decision: Decision) -> bool:
    """R3: a routing outcome names a routable node; a reject names none."""
    if decision.outcome in _ROUTED:
        node = _find(fleet, decision.node)
        return node is not None and node.routable
    return decision.node is None


def r4(fleet: FleetSnapshot, catalogue: Catalogue, decision: Decision) -> bool:
    """R4: no cold start (cold load, or lazy reload of an unloaded copy) while a
    routable node has the model recovering."""
    if decision.outcome not in _COLD_STARTS:
        return True
    model = spec_model(catalogue, decision.requested)
    return not any(
        node.routable and _status(node, model) is ModelStatus.RECOVERING for node in fleet.nodes
    )


def r5(reference: Decision, others: Iterable[Decision]) -> bool:
    """R5: every other decision for the same input equals the reference one."""
    return all(other == reference for other in others)


def r6(fleet: FleetSnapshot, catalogue: Catalogue, decision: Decision) -> bool:
    """R6: route_loaded picks min (load, name) over routable loaded/reloading replicas."""
    if decision.outcome is not Outcome.ROUTE_LOADED:
        return True
    model = spec_model(catalogue, decision.requested)
    keys = [
        (node.busy.get(model, 0), node.name)
        for node in fleet.nodes
        if node.routable and _status(node, model) in _SERVING
    ]
    return len(keys) > 0 and min(keys)[1] == decision.node


def r7(fleet: FleetSnapshot, catalogue: Catalogue, decision: Decision) -> bool:
    """R7: a cold-load target is routable and feasible, and pinned if any candidate is."""
    if decision.outcome is not Outcome.COLD_LOAD:
        return True
    profile = catalogue.profiles.get(spec_model(catalogue, decision.requested))
    target = _find(fleet, decision.node)
    if profile is None or target is None or not target.routable:
        return False
    if not spec_feasible(profile, target.name, target.discovery):
        return False
    pinned_candidate = any(
        node.routable
        and node.name in profile.pinned_on
        and spec_feasible(profile, node.name, node.discovery)
        for node in fleet.nodes
    )
    return not pinned_candidate or target.name in profile.pinned_on


def spec(fleet: FleetSnapshot, catalogue: Catalogue, decision: Decision) -> bool:
    """SPEC: the decision is what the ordered rules give (outcome, node, subject, load)."""
    want = spec_decide(fleet, catalogue, decision.requested)
    return (
        decision.model == want.model
        and decision.outcome is want.outcome
        and decision.node == want.node
        and decision.subject == want.subject
        and decision.load == want.load
    )


def check_decision(
    fleet: FleetSnapshot, catalogue: Catalogue, decision: Decision, *, with_spec: bool = True
) -> list[str]:
    """The names of the invariants (R1-R4, R6, R7 and, if asked, SPEC) ``decision``
    violates on ``fleet``. R5 needs several decisions: see :func:`r5`."""
    bad = []
    if not r1(fleet, catalogue, decision):
        bad.append("R1")
    if not r2(decision):
        bad.append("R2")
    if not r3(fleet, decision):
        bad.append("R3")
    if not r4(fleet, catalogue, decision):
        bad.append("R4")
    if not r6(fleet, catalogue, decision):
        bad.append("R6")
    if not r7(fleet, catalogue, decision):
        bad.append("R7")
    if with_spec and not spec(fleet, catalogue, decision):
        bad.append("SPEC")
    return bad


# --- reordering, for R5 ----------------------------------------------------------------------


class OrderedView:
    """A fleet view (``routing.FleetView``) over a snapshot whose nodes come in a
    chosen order, and whose model and load maps iterate in reverse if asked.

    ``FleetSnapshot`` always yields nodes by name, which would hide a decision
    that depends on iteration order; this view lets R5 ask again in other orders.
    """

    def __init__(
        self, fleet: FleetSnapshot, order: Sequence[str], *, reverse_maps: bool = False
    ) -> None:
        by_name = {node.name: node for node in fleet.nodes}
        nodes = [by_name[name] for name in order]
        if reverse_maps:
            nodes = [
                attrs.evolve(
                    node,
                    models=dict(reversed(list(node.models.items()))),
                    busy=dict(reversed(list(node.busy.items()))),
                    local=dict(reversed(list(node.local.items()))),
                    chosen=dict(reversed(list(node.chosen.items()))),
                )
                for node in nodes
            ]
        self.nodes: tuple[NodeSnapshot, ...] = tuple(nodes)

    def any_routable(self, exclude: frozenset[str] = frozenset()) -> bool:
        return any(node.routable and node.name not in exclude for node in self.nodes)

    def holders(self, model: str) -> list[NodeSnapshot]:
        return [node for node in self.nodes if model in node.models]

    def feasible_nodes(self, profile: Profile) -> list[NodeSnapshot]:
        # The code's feasibility, on purpose: this view only reorders the fleet.
        return [node for node in self.nodes if feasible(profile, node.name, node.discovery)]


def reordered_views(fleet: FleetSnapshot) -> list[OrderedView]:
    """The fleet in reverse name order (maps reversed too), and rotated once."""
    names = [node.name for node in fleet.nodes]
    views = [OrderedView(fleet, names[::-1], reverse_maps=True)]
    if len(names) > 2:
        views.append(OrderedView(fleet, names[1:] + names[:1]))
    return views


def reordered_catalogue(catalogue: Catalogue) -> Catalogue:
    """The same catalogue with its profile and alias maps in reverse order."""
    return Catalogue(
        profiles=dict(reversed(list(catalogue.profiles.items()))),
        aliases=dict(reversed(list(catalogue.aliases.items()))),
    )
