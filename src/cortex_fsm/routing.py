"""The routing decision table and ``decide()`` (semantics §3).

Theory of operation
-------------------
The reference gateway routes with an ordered list of rules, "the first that
applies decides". Ordered rules hide their own gaps and overlaps, so here the
same rules are written as an *exhaustive decision table*: every row names the
truth value of each condition it depends on, rows are mutually exclusive, and
together they cover every combination of conditions. Row order carries no
meaning. The conditions, in the order the reference asks them:

=====================  =====================================================
``ANY_ROUTABLE``       some node is routable (healthy or suspect)
``LOADED``             a routable node has the model ``loaded``/``reloading``
``RECOVERING``         a routable node has the model ``recovering``
``UNLOADED``           a routable node has the model ``unloaded``
``CATALOGUED``         the model has a catalogue profile
``FEASIBLE_ROUTABLE``  a routable node is feasible for the profile
``FEASIBLE_DOWN``      a non-routable node is feasible for the profile
=====================  =====================================================

At import the table is checked (every one of the 2^7 combinations matches
exactly one row) and compiled, by that same enumeration, into a lookup array
indexed by the bitmask of condition values. ``decide()`` computes the first
four conditions in one pass over the nodes that hold the model; only when
they leave the row open (a table-derived array says so) does it consult the
catalogue and feasibility. So a request for a loaded model never looks at the
catalogue.

Decisions are interned: equal decisions are the same object, which saves
building a new frozen value per request on the hot path (the intern table is
bounded and invisible to callers).

A row also names how the node is *picked*; picks are minima over explicit
keys (load, then name; or name), never "the first one seen", so the result
cannot depend on dict or set iteration order (R5).

The fleet is read through :class:`FleetView`, which the engine implements
with indexes (model -> holders, profile -> feasible nodes) so a decision costs
O(replicas), not O(fleet); :class:`~cortex_fsm.fleet.FleetSnapshot`
implements it by scanning, for the proofs and the model checker.

Invariants R1-R7 (checked in :mod:`cortex_fsm.verify`) follow from the rows:
R1 -- the ``no_feasible_neuron`` row requires ``FEASIBLE_DOWN = F``;
R3 -- every pick ranges over routable nodes only;
R4 -- the ``cold_load`` row requires ``RECOVERING = F``;
R6/R7 -- the picks' keys.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Protocol

import attrs

from .catalogue import Catalogue, LoadSpec, Profile, load_spec, pin_key
from .errors import Outcome
from .fleet import ModelStatus, NodeLike

__all__ = [
    "CONDITIONS",
    "RULES",
    "RULE_OUTCOME",
    "Cond",
    "Decision",
    "FleetView",
    "Pick",
    "Rule",
    "RoutingTableError",
    "decide",
    "matching_rules",
]


class Cond(enum.IntEnum):
    """The conditions of the decision table, in the order they are asked."""

    ANY_ROUTABLE = 0
    LOADED = 1
    RECOVERING = 2
    UNLOADED = 3
    CATALOGUED = 4
    FEASIBLE_ROUTABLE = 5
    FEASIBLE_DOWN = 6


CONDITIONS: tuple[Cond, ...] = tuple(Cond)

#: One-line meaning of each condition, for the generated docs.
CONDITION_DOCS: Mapping[Cond, str] = {
    Cond.ANY_ROUTABLE: "some node is routable (healthy or suspect)",
    Cond.LOADED: "a routable node has the model `loaded` or `reloading`",
    Cond.RECOVERING: "a routable node has the model `recovering`",
    Cond.UNLOADED: "a routable node has the model `unloaded`",
    Cond.CATALOGUED: "the model has a catalogue profile",
    Cond.FEASIBLE_ROUTABLE: "a routable node is feasible for the profile",
    Cond.FEASIBLE_DOWN: "a non-routable node is feasible for the profile",
}


class Pick(enum.Enum):
    """How a row chooses its node."""

    NONE = "none"
    #: among routable loaded/reloading replicas: least busy, then smallest name
    LEAST_BUSY_LOADED = "least busy loaded replica, ties by name"
    #: the smallest name among routable nodes with the model recovering (named in the error)
    FIRST_RECOVERING = "smallest name with the model recovering"
    #: the smallest name among routable nodes with the model unloaded
    FIRST_UNLOADED = "smallest name with the model unloaded"
    #: among routable feasible nodes: pinned first, then smallest name
    FIRST_FEASIBLE = "routable feasible node, pinned first, then by name"


@attrs.frozen(slots=True, kw_only=True)
class Rule:
    """One row: the condition values it requires (others: don't care)."""

    rule: str  # the reference's rule number (5a/5b/5c split rule 5)
    when: tuple[tuple[Cond, bool], ...]
    outcome: Outcome
    pick: Pick

    def requires(self) -> dict[Cond, bool]:
        return dict(self.when)

    def matches(self, values: Mapping[Cond, bool]) -> bool:
        return all(values[c] is v for c, v in self.when)


_T, _F = True, False
_A, _L, _R, _U, _C, _FR, _FD = CONDITIONS

#: The routing decision table (semantics §3). Row order carries no meaning.
RULES: tuple[Rule, ...] = (
    Rule(
        rule="1",
        when=((_A, _F),),
        outcome=Outcome.NO_HEALTHY_NODES,
        pick=Pick.NONE,
    ),
    Rule(
        rule="2",
        when=((_A, _T), (_L, _T)),
        outcome=Outcome.ROUTE_LOADED,
        pick=Pick.LEAST_BUSY_LOADED,
    ),
    Rule(
        rule="3",
        when=((_A, _T), (_L, _F), (_R, _T)),
        outcome=Outcome.MODEL_RECOVERING,
        pick=Pick.FIRST_RECOVERING,
    ),
    Rule(
        rule="4",
        when=((_A, _T), (_L, _F), (_R, _F), (_U, _T)),
        outcome=Outcome.ROUTE_UNLOADED,
        pick=Pick.FIRST_UNLOADED,
    ),
    Rule(
        rule="5a",
        when=((_A, _T), (_L, _F), (_R, _F), (_U, _F), (_C, _T), (_FR, _T)),
        outcome=Outcome.COLD_LOAD,
        pick=Pick.FIRST_FEASIBLE,
    ),
    Rule(
        rule="5b",
        when=((_A, _T), (_L, _F), (_R, _F), (_U, _F), (_C, _T), (_FR, _F), (_FD, _T)),
        outcome=Outcome.FEASIBLE_NODE_UNHEALTHY,
        pick=Pick.NONE,
    ),
    Rule(
        rule="5c",
        when=((_A, _T), (_L, _F), (_R, _F), (_U, _F), (_C, _T), (_FR, _F), (_FD, _F)),
        outcome=Outcome.NO_FEASIBLE_NEURON,
        pick=Pick.NONE,
    ),
    Rule(
        rule="6",
        when=((_A, _T), (_L, _F), (_R, _F), (_U, _F), (_C, _F)),
        outcome=Outcome.MODEL_NOT_FOUND,
        pick=Pick.NONE,
    ),
)


#: The outcome of each rule (each rule has its own outcome).
RULE_OUTCOME: Mapping[str, Outcome] = {r.rule: r.outcome for r in RULES}


class RoutingTableError(Exception):
    """The decision table has a gap or an overlap (a bug, never input)."""


def matching_rules(values: Mapping[Cond, bool]) -> list[Rule]:
    """Every row that matches a full assignment of the conditions."""
    return [r for r in RULES if r.matches(values)]


# --- the compiled table ------------------------------------------------------------------------


def _assignment(mask: int) -> dict[Cond, bool]:
    return {c: bool(mask >> c & 1) for c in CONDITIONS}


def _show(assigned: Mapping[Cond, bool]) -> str:
    return ", ".join(f"{c.name}={'T' if v else 'F'}" for c, v in assigned.items())


def _compile() -> tuple[tuple[Rule, ...], tuple[Rule | None, ...]]:
    """The table as two lookup arrays, built by enumeration (which is also the check).

    ``by_mask[m]``: the one rule matching the full assignment ``m`` (bit i is
    condition i). ``settled[m & 15]``: the rule, when the first four conditions
    (which one scan of the model's holders decides) already fix it whatever the
    catalogue conditions are; else None.
    """
    by_mask: list[Rule] = []
    for mask in range(1 << len(CONDITIONS)):
        rows = matching_rules(_assignment(mask))
        if len(rows) != 1:
            what = (
                "no rule covers"
                if not rows
                else "rules " + ", ".join(r.rule for r in rows) + " overlap on"
            )
            raise RoutingTableError(f"{what} {_show(_assignment(mask))}")
        by_mask.append(rows[0])
    settled: list[Rule | None] = []
    for low in range(16):
        candidates = {id(by_mask[low | high << 4]) for high in range(8)}
        settled.append(by_mask[low] if len(candidates) == 1 else None)
    return tuple(by_mask), tuple(settled)


_BY_MASK, _SETTLED = _compile()


# --- the fleet as routing sees it ------------------------------------------------------------


class FleetView(Protocol):
    """What :func:`decide` reads. Implementations must agree with a full scan."""

    def any_routable(self) -> bool:
        """Is some node routable?"""
        ...

    def holders(self, model: str) -> Iterable[NodeLike]:
        """Every node whose model map has an entry for ``model`` (any status, any health)."""
        ...

    def feasible_nodes(self, profile: Profile) -> Iterable[NodeLike]:
        """Every node feasible for ``profile`` (any health)."""
        ...


@attrs.frozen(slots=True, kw_only=True, cache_hash=True)
class Decision:
    """The answer for one request."""

    requested: str
    model: str  # after the alias lookup
    outcome: Outcome
    rule: str
    node: str | None = None  # the chosen node, for the routing outcomes
    subject: str | None = None  # the node a reject names (model_recovering)
    load: LoadSpec | None = None  # for cold_load

    @property
    def routed(self) -> bool:
        return self.outcome.routed

    @property
    def cold_start(self) -> bool:
        return self.outcome.cold_start

    @property
    def status(self) -> int:
        return self.outcome.status

    @property
    def retry_after(self) -> int | None:
        return self.outcome.retry_after


_LOADED = ModelStatus.LOADED
_RELOADING = ModelStatus.RELOADING
_RECOVERING = ModelStatus.RECOVERING
_UNLOADED = ModelStatus.UNLOADED


def decide(fleet: FleetView, catalogue: Catalogue, requested: str) -> Decision:
    """Where ``requested`` goes, or what its client is told. Pure and total."""
    model = catalogue.aliases.get(requested, requested)  # rule 0: one lookup, never chained
    # Conditions 0-3: one pass over the nodes that hold the model.
    best: NodeLike | None = None
    best_busy = 0
    recovering: str | None = None
    unloaded: str | None = None
    mask = 0
    if fleet.any_routable():
        mask = 1
        for node in fleet.holders(model):
            if not node.routable:
                continue
            status = node.models[model].status
            if status is _LOADED or status is _RELOADING:
                busy = node.busy.get(model, 0)
                if (
                    best is None
                    or busy < best_busy
                    or (busy == best_busy and node.name < best.name)
                ):
                    best, best_busy = node, busy
            elif status is _RECOVERING:
                if recovering is None or node.name < recovering:
                    recovering = node.name
            elif status is _UNLOADED and (unloaded is None or node.name < unloaded):
                unloaded = node.name
        if best is not None:
            mask |= 2
        if recovering is not None:
            mask |= 4
        if unloaded is not None:
            mask |= 8
    rule = _SETTLED[mask]
    target: NodeLike | None = None
    profile: Profile | None = None
    if rule is None:
        # Conditions 4-6, only when the first four leave the row open.
        profile = catalogue.profiles.get(model)
        if profile is not None:
            mask |= 16
            target_key: tuple[bool, str] | None = None
            for node in fleet.feasible_nodes(profile):
                if node.routable:
                    key = pin_key(profile, node.name)
                    if target_key is None or key < target_key:
                        target, target_key = node, key
                else:
                    mask |= 64
            if target is not None:
                mask |= 32
        rule = _BY_MASK[mask]
    pick = rule.pick
    if pick is Pick.FIRST_FEASIBLE:
        return _cold_load(requested, model, rule, profile, target)
    if pick is Pick.NONE:
        chosen = None
    elif pick is Pick.LEAST_BUSY_LOADED:
        assert best is not None
        chosen = best.name
    elif pick is Pick.FIRST_UNLOADED:
        chosen = unloaded
    else:  # FIRST_RECOVERING: not a route; the node is named in the error
        chosen = recovering
    intern_key = (requested, model, rule.rule, chosen)
    decision = _INTERNED.get(intern_key)
    if decision is None:
        if len(_INTERNED) >= _INTERN_LIMIT:
            _INTERNED.clear()
        if pick is Pick.FIRST_RECOVERING:
            decision = Decision(
                requested=requested,
                model=model,
                outcome=rule.outcome,
                rule=rule.rule,
                subject=chosen,
            )
        else:
            decision = Decision(
                requested=requested, model=model, outcome=rule.outcome, rule=rule.rule, node=chosen
            )
        _INTERNED[intern_key] = decision
    return decision


_INTERNED: dict[tuple[str, str, str, str | None], Decision] = {}
_INTERN_LIMIT = 1 << 16


def _cold_load(
    requested: str, model: str, rule: Rule, profile: Profile | None, target: NodeLike | None
) -> Decision:
    assert target is not None and profile is not None and target.discovery is not None
    return Decision(
        requested=requested,
        model=model,
        outcome=rule.outcome,
        rule=rule.rule,
        node=target.name,
        load=load_spec(profile, target.discovery),
    )
