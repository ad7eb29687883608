"""The invariants of docs/semantics.md (H1-H6, R1-R10), written once, as predicates.

Every check in the verification suite -- the hypothesis tests, the model
checker (:mod:`cortex_fsm.verify.explorer`), the CrossHair proofs and the
Promela export -- calls these functions; none restates an invariant.

Theory of operation
-------------------
The predicates are written from the *specification*, not from the code they
check. Where an invariant needs a notion the code also implements
(feasibility, alias resolution, the ordered routing rules), it is computed
here again, literally from the text (:func:`spec_feasible`, :func:`spec_model`,
:func:`spec_decide`). Were the predicates to call ``catalogue.feasible``, a
bug in it would be invisible to every check built on them.

The fleet a routing predicate judges should be the fleet the *observations*
describe, not the engine's own idea of it: an engine that forgot a cached
discovery would make R1 hold vacuously. The model checker therefore passes
the snapshot of a :class:`~cortex_fsm.verify.monitor.Monitor` (the spec's
view of the same observations); per-node predicates (F1, D1, L1, L2) compare
the engine's kept state with that view.

Health invariants talk about *histories* ("never had a poll_ok", "T
consecutive failures"), which a health state alone does not record; a
:class:`~cortex_fsm.verify.monitor.HealthHistory` records them, and the H
predicates compare it with the state the code produced.

Routing predicates take a frozen :class:`~cortex_fsm.fleet.FleetSnapshot`,
the catalogue, the :class:`~cortex_fsm.routing.Decision` to judge and,
where Part II matters, the policy and the decision's ``exclude`` set (both
default to Part I: the reference policy, no exclusion). R5 (determinism, no
dependence on iteration order) compares several decisions for the same
input; :func:`reordered_views` builds the same fleet in other orders for it.

Beyond the named invariants, these make the rest of the text checkable:

* ``F1`` -- a node's model map is exactly what its observations say;
* ``D1`` -- a node's cached discovery is exactly what its observations say;
* ``L1`` -- a node's load readings are exactly what its ``/health`` answers say;
* ``L2`` -- its local in-flight counts and recency are what routed requests
  and their outcomes say (§8);
* ``D2`` -- a node's ``/discovery`` is fetched again until a complete one is held;
* ``FLEET``, ``STATUS``, ``STAT`` -- what the engine reports (its list of
  neurons, each node's status, its statistics) is what the observations
  say (docs/semantics.md "Reports");
* ``SPEC`` -- the decision is the one the ordered rules give
  (:func:`spec_decide`), read literally;
* ``ANSWER`` -- what the client is told (HTTP status, error type and code,
  Retry-After value) is exactly the table of §4 and §9 for the outcome,
  under the policy in force.

R8 and R10 are properties of the gateway's I/O, not of a decision: R8 is
proved on the I/O-failure classification (:mod:`cortex_fsm.errors`), R10 is
tested end to end through real processes.

All predicates are pure and total, contain no contracts of their own (so
CrossHair analyses their bodies), and only iterate over bounded inputs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import attrs

from ..catalogue import Catalogue, LoadSpec, Profile, feasible
from ..errors import Outcome, error_envelope
from ..fleet import Discovery, FleetSnapshot, ModelEntry, ModelStatus, NodeSnapshot
from ..health import HealthState, Phase
from ..policy import Policy
from ..routing import Decision
from .monitor import HealthHistory

__all__ = [
    "ALL_INVARIANTS",
    "ANSWERS",
    "HEALTH_INVARIANTS",
    "INVARIANTS",
    "PART1",
    "ROUTING_INVARIANTS",
    "HealthHistory",
    "OrderedView",
    "SpecDecision",
    "answer",
    "check_decision",
    "check_health",
    "d1",
    "f1",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "l1",
    "l2",
    "r1",
    "r2",
    "r2_outcome",
    "r3",
    "r4",
    "r5",
    "r6",
    "r7",
    "r9",
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
    "H3": "T consecutive poll failures always make a node unroutable",
    "H4": "one poll_ok always makes a node routable (healthy)",
    "H5": "request_ok never makes a non-routable node routable",
    "H6": "T consecutive failures of either kind, with no success between, make a node unroutable",
    "R1": "a model a down (or excluded) node is feasible for -- or, with known_down = retry, "
    "is known to hold -- never yields a 404",
    "R2": "every 503 carries Retry-After; no 404 does",
    "R3": "a chosen node is always routable",
    "R4": "a recovering replica never leads to a cold start",
    "R5": "the decision is a deterministic function of the fleet (no order dependence; "
    "the engine's indexes and cache agree with a full scan)",
    "R6": "the loaded replica chosen has the least load among live loaded replicas, "
    "ties by least recently chosen (load = max), then name",
    "R7": "a cold-load target is live and feasible, and pinned if any candidate is",
    "R9": "a decision never chooses an excluded node",
    "HSPEC": "a node's health is the one the rules of §2 and §6 give for its events",
    "F1": "a node's model map is exactly what its polls, loads and unloads say",
    "D1": "a node's cached discovery is exactly what its /discovery answers say",
    "L1": "a node's load readings are exactly what its /health answers say",
    "L2": "a node's local in-flight counts and recency are what routed requests and "
    "their outcomes say",
    "D2": "a node asks for /discovery again exactly while it holds no complete discovery",
    "FLEET": "the fleet the engine lists (its neurons and nodes) is the one its adds and "
    "removes say",
    "STATUS": "a node's status shows its health by the spec's name and the failures in a row "
    "its events say",
    "STAT": "the engine's statistics count exactly the polls, discoveries, readings, "
    "transitions and decisions observed",
    "POLICY": "every policy key accepts exactly the values of the spec's table",
    "SPEC": "the decision is the one the ordered rules of docs/semantics.md give",
    "ANSWER": "the client is told exactly the status, error type, code and Retry-After "
    "of the outcome under the policy in force",
    "TOTAL": "the engine takes every observation and answers every request without raising",
}
HEALTH_INVARIANTS = ("H1", "H2", "H3", "H4", "H5", "H6")
ROUTING_INVARIANTS = ("R1", "R2", "R3", "R4", "R5", "R6", "R7", "R9")
ALL_INVARIANTS = tuple(INVARIANTS)

#: Part I: every Part II key at its reference value (the default of the predicates).
PART1 = Policy.reference()
_NONE: frozenset[str] = frozenset()

_ROUTED = (Outcome.ROUTE_LOADED, Outcome.ROUTE_UNLOADED, Outcome.COLD_LOAD)
_COLD_STARTS = (Outcome.ROUTE_UNLOADED, Outcome.COLD_LOAD)
_SERVING = (ModelStatus.LOADED, ModelStatus.RELOADING)

#: §4 and §9, restated: what each reject tells the client -- HTTP status, error
#: type, error code, and the policy key its Retry-After comes from (None: none).
ANSWERS: Mapping[Outcome, tuple[int, str, str, str | None]] = {
    Outcome.MODEL_NOT_FOUND: (404, "invalid_request_error", "model_not_found", None),
    Outcome.NO_HEALTHY_NODES: (
        503,
        "api_error",
        "service_unavailable",
        "retry_after_no_healthy_nodes",
    ),
    Outcome.MODEL_RECOVERING: (503, "api_error", "service_unavailable", "retry_after_recovering"),
    Outcome.FEASIBLE_NODE_UNHEALTHY: (
        503,
        "api_error",
        "service_unavailable",
        "retry_after_unhealthy",
    ),
    Outcome.NO_FEASIBLE_NEURON: (404, "api_error", "service_unavailable", None),
    Outcome.ENDPOINT_RESOLVE_FAILED: (404, "api_error", "service_unavailable", None),
    Outcome.COLD_LOAD_FAILED: (404, "api_error", "service_unavailable", None),
    Outcome.UPSTREAM_UNAVAILABLE: (503, "api_error", "service_unavailable", "retry_after_upstream"),
}


# --- health --------------------------------------------------------------------------------


def h1(history: HealthHistory, state: HealthState) -> bool:
    """H1: never had a poll_ok => not routable."""
    return history.ever_ok or not state.routable


def h2(history: HealthHistory, state: HealthState, threshold: int) -> bool:
    """H2: routable when the failures began, and fewer than T of them => routable."""
    if history.armed and 1 <= history.streak <= threshold - 1:
        return state.routable
    return True


def h3(history: HealthHistory, state: HealthState, threshold: int) -> bool:
    """H3: T consecutive poll failures => not routable."""
    return history.mixed or history.streak < threshold or not state.routable


def h4(history: HealthHistory, state: HealthState) -> bool:
    """H4: the last success was a poll_ok, or a request_ok on a routable node,
    and no failure since => healthy (and so routable)."""
    if history.ever_ok and history.streak == 0 and not history.revive:
        return state.phase is Phase.HEALTHY and state.routable
    return True


def h5(history: HealthHistory, state: HealthState) -> bool:
    """H5: a request_ok that found the node not routable left it not routable."""
    return not history.revive or not state.routable


def h6(history: HealthHistory, state: HealthState, threshold: int) -> bool:
    """H6: T consecutive failures of either kind (no success between) => not routable."""
    return not history.mixed or history.streak < threshold or not state.routable


def check_health(history: HealthHistory, state: HealthState, threshold: int) -> list[str]:
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
    if not h5(history, state):
        bad.append("H5")
    if not h6(history, state, threshold):
        bad.append("H6")
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


def d1(expected: Discovery | None, discovery: Discovery | None) -> bool:
    """D1: the node's cached discovery is the one its answers say (§1)."""
    return expected == discovery


def l1(expected: Mapping[str, int], busy: Mapping[str, int]) -> bool:
    """L1: the node's load readings are those of its last valid /health (no
    reading counts as 0, so a reading of 0 and none are the same)."""
    models = set(expected) | set(busy)
    return all(expected.get(m, 0) == busy.get(m, 0) for m in models)


def l2(
    expected_local: Mapping[str, int],
    local: Mapping[str, int],
    expected_order: Sequence[tuple[str, str]],
    order: Sequence[tuple[str, str]],
) -> bool:
    """L2: local in-flight counts agree (0 = none), and replicas were chosen in
    the same order (recency compares only by order)."""
    models = set(expected_local) | set(local)
    if not all(expected_local.get(m, 0) == local.get(m, 0) for m in models):
        return False
    return list(expected_order) == list(order)


# --- the specification, read literally ------------------------------------------------------


def spec_model(catalogue: Catalogue, requested: str) -> str:
    """Rule 0: one alias lookup, never chained."""
    target = catalogue.aliases.get(requested)
    return requested if target is None else target


def spec_feasible(profile: Profile, name: str, discovery: Discovery | None) -> bool:
    """Rule 5's feasibility, word for word (independent of ``catalogue.feasible``)."""
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
    """§3: the load spec posted for a cold load."""
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


def _live(node: NodeSnapshot, exclude: frozenset[str]) -> bool:
    return node.routable and node.name not in exclude


def _load_key(node: NodeSnapshot, model: str, policy: Policy) -> tuple[int, int, str]:
    """§8: the replica's load, then its recency (load = max), then its name."""
    reported = node.busy.get(model, 0)
    if policy.load != "max":
        return (reported, 0, node.name)
    load = max(reported, node.local.get(model, 0))
    return (load, node.chosen.get(model, -1), node.name)


@attrs.frozen(slots=True, kw_only=True)
class SpecDecision:
    """What the ordered rules say: the outcome, the node (routes) or subject
    (``model_recovering``), the load spec (``cold_load``) and the Retry-After."""

    model: str
    outcome: Outcome
    node: str | None = None
    subject: str | None = None
    load: LoadSpec | None = None
    retry_after: int | None = None


def _retry(policy: Policy, outcome: Outcome) -> int | None:
    key = ANSWERS[outcome][3] if outcome in ANSWERS else None
    return None if key is None else int(getattr(policy, key))


def spec_decide(
    fleet: FleetSnapshot,
    catalogue: Catalogue,
    requested: str,
    policy: Policy = PART1,
    exclude: frozenset[str] = _NONE,
) -> SpecDecision:
    """The ordered rules of docs/semantics.md §3 (with §7, §8, §12, §13), one by
    one; the first that applies decides.

    Deliberately naive: full scans, explicit sorts, no indexes, no tables.
    """
    model = spec_model(catalogue, requested)

    def reject(outcome: Outcome, subject: str | None = None) -> SpecDecision:
        return SpecDecision(
            model=model, outcome=outcome, subject=subject, retry_after=_retry(policy, outcome)
        )

    nodes = sorted(fleet.nodes, key=lambda n: n.name)
    live = [n for n in nodes if _live(n, exclude)]
    down = [n for n in nodes if not _live(n, exclude)]
    if not live:  # rule 1
        return reject(Outcome.NO_HEALTHY_NODES)
    serving = [n for n in live if _status(n, model) in _SERVING]
    if serving:  # rule 2
        best = min(serving, key=lambda n: _load_key(n, model, policy))
        return SpecDecision(model=model, outcome=Outcome.ROUTE_LOADED, node=best.name)
    recovering = [n for n in live if _status(n, model) is ModelStatus.RECOVERING]
    if recovering:  # rule 3
        return reject(Outcome.MODEL_RECOVERING, recovering[0].name)
    profile = catalogue.profiles.get(model)
    down_feasible = profile is not None and any(
        spec_feasible(profile, n.name, n.discovery) for n in down
    )
    known_down = policy.known_down == "retry" and any(model in n.models for n in down)
    if policy.lifecycle == "static":  # §12: never a load
        if any(_status(n, model) in _SERVING for n in down) or known_down or down_feasible:
            return reject(Outcome.FEASIBLE_NODE_UNHEALTHY)
        return reject(Outcome.MODEL_NOT_FOUND)
    unloaded = [n for n in live if _status(n, model) is ModelStatus.UNLOADED]
    if unloaded:  # rule 4
        return SpecDecision(model=model, outcome=Outcome.ROUTE_UNLOADED, node=unloaded[0].name)
    if profile is not None:  # rule 5, first part
        candidates = sorted(
            (n for n in live if spec_feasible(profile, n.name, n.discovery)),
            key=lambda n: (n.name not in profile.pinned_on, n.name),
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
    if known_down:  # §13, before any 404
        return reject(Outcome.FEASIBLE_NODE_UNHEALTHY)
    if profile is not None:  # rule 5, the rest
        if down_feasible:
            return reject(Outcome.FEASIBLE_NODE_UNHEALTHY)
        return reject(Outcome.NO_FEASIBLE_NEURON)
    return reject(Outcome.MODEL_NOT_FOUND)  # rule 6


# --- routing -----------------------------------------------------------------------------------


def _find(fleet: FleetSnapshot, name: str | None) -> NodeSnapshot | None:
    for node in fleet.nodes:
        if node.name == name:
            return node
    return None


def r1(
    fleet: FleetSnapshot,
    catalogue: Catalogue,
    decision: Decision,
    policy: Policy = PART1,
    exclude: frozenset[str] = _NONE,
) -> bool:
    """R1: no 404 while a down (or excluded) node is feasible for the model, or
    -- with ``known_down = retry`` -- is known to hold it."""
    if decision.status != 404:
        return True
    model = spec_model(catalogue, decision.requested)
    profile = catalogue.profiles.get(model)
    retry = policy.known_down == "retry"
    for node in fleet.nodes:
        if _live(node, exclude):
            continue
        if profile is not None and spec_feasible(profile, node.name, node.discovery):
            return False
        if retry and model in node.models:
            return False
    return True


def r2_outcome(outcome: Outcome, retry_after: int | None = None) -> bool:
    """R2 for one outcome, as the client sees it: the envelope's status and headers."""
    if outcome in _ROUTED:
        return outcome.status == 200
    status, headers, _body = error_envelope(outcome, model="m", node="n", retry_after=retry_after)
    retry = [value for name, value in headers if name.lower() == "retry-after"]
    if status != outcome.status:
        return False
    if status == 503:
        return len(retry) == 1 and retry[0].isdigit() and int(retry[0]) > 0
    if status == 404:
        return len(retry) == 0
    return True


def r2(decision: Decision) -> bool:
    """R2: every 503 carries Retry-After; no 404 does."""
    if decision.status == 503 and decision.retry_after is None:
        return False
    if decision.status == 404 and decision.retry_after is not None:
        return False
    if decision.outcome in _ROUTED and decision.retry_after is not None:
        return False
    return decision.status == decision.outcome.status and r2_outcome(
        decision.outcome, decision.retry_after
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
        node.routable
        and node.name not in decision.exclude
        and _status(node, model) is ModelStatus.RECOVERING
        for node in fleet.nodes
    )


def r5(reference: Decision, others: Iterable[Decision]) -> bool:
    """R5: every other decision for the same input equals the reference one."""
    return all(other == reference for other in others)


def r6(
    fleet: FleetSnapshot,
    catalogue: Catalogue,
    decision: Decision,
    policy: Policy = PART1,
    exclude: frozenset[str] = _NONE,
) -> bool:
    """R6: route_loaded picks the least (load, recency, name) live loaded replica."""
    if decision.outcome is not Outcome.ROUTE_LOADED:
        return True
    model = spec_model(catalogue, decision.requested)
    keys = [
        _load_key(node, model, policy)
        for node in fleet.nodes
        if _live(node, exclude) and _status(node, model) in _SERVING
    ]
    return len(keys) > 0 and min(keys)[2] == decision.node


def r7(
    fleet: FleetSnapshot,
    catalogue: Catalogue,
    decision: Decision,
    exclude: frozenset[str] = _NONE,
) -> bool:
    """R7: a cold-load target is live and feasible, and pinned if any candidate is."""
    if decision.outcome is not Outcome.COLD_LOAD:
        return True
    profile = catalogue.profiles.get(spec_model(catalogue, decision.requested))
    target = _find(fleet, decision.node)
    if profile is None or target is None or not _live(target, exclude):
        return False
    if not spec_feasible(profile, target.name, target.discovery):
        return False
    pinned_candidate = any(
        _live(node, exclude)
        and node.name in profile.pinned_on
        and spec_feasible(profile, node.name, node.discovery)
        for node in fleet.nodes
    )
    return not pinned_candidate or target.name in profile.pinned_on


def r9(decision: Decision, exclude: frozenset[str]) -> bool:
    """R9: the decision was made with ``exclude`` and chose none of its nodes."""
    return decision.exclude == exclude and (decision.node is None or decision.node not in exclude)


def answer(decision: Decision, policy: Policy = PART1) -> bool:
    """ANSWER: status, error type and code, and the Retry-After value (the
    decision's, and the envelope's header) are exactly §4/§9's for the outcome
    under ``policy``; a route is a 200 with none of them."""
    outcome = decision.outcome
    if outcome in _ROUTED:
        return decision.status == 200 and decision.retry_after is None
    status, type_, code, key = ANSWERS[outcome]
    want_retry = None if key is None else int(getattr(policy, key))
    if decision.status != status or decision.retry_after != want_retry:
        return False
    got_status, headers, body = error_envelope(
        outcome, model=decision.model, node=decision.subject, retry_after=decision.retry_after
    )
    retry = [value for name, value in headers if name.lower() == "retry-after"]
    error = json.loads(body).get("error", {})
    return (
        got_status == status
        and error.get("type") == type_
        and error.get("code") == code
        and retry == ([] if want_retry is None else [str(want_retry)])
    )


def spec(
    fleet: FleetSnapshot,
    catalogue: Catalogue,
    decision: Decision,
    policy: Policy = PART1,
    exclude: frozenset[str] = _NONE,
) -> bool:
    """SPEC: the decision is what the ordered rules give (outcome, node, subject,
    load spec, Retry-After)."""
    want = spec_decide(fleet, catalogue, decision.requested, policy, exclude)
    return (
        decision.model == want.model
        and decision.outcome is want.outcome
        and decision.node == want.node
        and decision.subject == want.subject
        and decision.load == want.load
        and decision.retry_after == want.retry_after
    )


def check_decision(
    fleet: FleetSnapshot,
    catalogue: Catalogue,
    decision: Decision,
    *,
    policy: Policy = PART1,
    exclude: frozenset[str] = _NONE,
    with_spec: bool = True,
) -> list[str]:
    """The names of the invariants (R1-R4, R6, R7, R9, ANSWER and, if asked,
    SPEC) ``decision`` violates on ``fleet``. R5 needs several decisions: see :func:`r5`."""
    bad = []
    if not r1(fleet, catalogue, decision, policy, exclude):
        bad.append("R1")
    if not r2(decision):
        bad.append("R2")
    if not r3(fleet, decision):
        bad.append("R3")
    if not r4(fleet, catalogue, decision):
        bad.append("R4")
    if not r6(fleet, catalogue, decision, policy, exclude):
        bad.append("R6")
    if not r7(fleet, catalogue, decision, exclude):
        bad.append("R7")
    if not r9(decision, exclude):
        bad.append("R9")
    if not answer(decision, policy):
        bad.append("ANSWER")
    if with_spec and not spec(fleet, catalogue, decision, policy, exclude):
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
