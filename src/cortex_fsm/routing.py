"""The routing decision table and ``decide()`` (docs/semantics.md §3, §7, §8, §12, §13).

Theory of operation
-------------------
The reference gateway routes with an ordered list of rules, "the first that
applies decides". Ordered rules hide their own gaps and overlaps, so here the
same rules are written as an *exhaustive decision table*: every row names the
truth value of each condition it depends on, rows are mutually exclusive, and
together they cover every combination of conditions. Row order carries no
meaning. The conditions, in the order they are asked:

=====================  =====================================================
``ANY_ROUTABLE``       some node is routable and not excluded
``LOADED``             a live node has the model ``loaded``/``reloading``
``RECOVERING``         a live node has the model ``recovering``
``UNLOADED``           a live node has the model ``unloaded``
``STATIC``             the policy's ``lifecycle`` is ``static`` (§12)
``DOWN_SERVING``       a down node's last-known map has it loaded/reloading
``KNOWN_DOWN``         ``known_down = retry`` and a down node's last-known
                       map lists the model, any status (§13)
``CATALOGUED``         the model has a catalogue profile
``FEASIBLE_ROUTABLE``  a live node is feasible for the profile
``FEASIBLE_DOWN``      a down node is feasible for the profile
=====================  =====================================================

"Live" means routable (healthy or suspect) and not in the decision's
``exclude`` set (§7: a failover attempt excludes the nodes that already
failed the request); "down" means anything else, so an excluded node counts
as down everywhere -- rule 1, the 503/404 split of rule 5, §12 and §13. The
policy's modes enter as conditions (``STATIC``, and the gate inside
``KNOWN_DOWN``), so Part I, the static lifecycle and the known-down rule are
one table, not three.

At import the table is checked (every one of the 2^10 combinations matches
exactly one row) and compiled, by that same enumeration, into a lookup array
indexed by the bitmask of condition values. ``decide()`` computes the first
seven conditions in one pass over the nodes that hold the model; only when
they leave the row open (a table-derived array says so) does it consult the
catalogue and feasibility. So a request for a loaded model never looks at the
catalogue.

A row also names how the node is *picked*; picks are minima over explicit
keys (load, then recency, then name; or name), never "the first one seen", so
the result cannot depend on dict or set iteration order (R5). Under
``load = "max"`` (§8) a replica's load is ``max(reported, local)`` -- the
node's own ``/health`` reading, or the requests this engine routed there and
not yet finished, whichever is larger -- and equal loads go to the replica
chosen least recently (a sequence number kept per replica by the engine,
never chosen = oldest), then to the smallest name; under ``"reported"``
(the reference) the load is the reading alone and ties go by name.

Decisions are interned: equal decisions are the same object, which saves
building a new frozen value per request on the hot path (the intern table is
bounded and invisible to callers).

The fleet is read through :class:`FleetView`, which the engine implements
with indexes (model -> holders, profile -> feasible nodes) so a decision costs
O(replicas), not O(fleet); :class:`~cortex_fsm.fleet.FleetSnapshot`
implements it by scanning, for the proofs and the model checker.

Invariants (checked in :mod:`cortex_fsm.verify`) follow from the rows:
R1 -- no 404 row allows ``FEASIBLE_DOWN`` (nor, with retry, ``KNOWN_DOWN``);
R3, R9 -- every pick ranges over live nodes only;
R4 -- the ``cold_load`` and ``route_unloaded`` rows require ``RECOVERING = F``;
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
from .policy import RETRY_AFTER_KEYS, Policy

__all__ = [
    "CONDITIONS",
    "CONDITION_DOCS",
    "NO_EXCLUDE",
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
    "route_loaded",
]


class Cond(enum.IntEnum):
    """The conditions of the decision table, in the order they are asked."""

    ANY_ROUTABLE = 0
    LOADED = 1
    RECOVERING = 2
    UNLOADED = 3
    STATIC = 4
    DOWN_SERVING = 5
    KNOWN_DOWN = 6
    CATALOGUED = 7
    FEASIBLE_ROUTABLE = 8
    FEASIBLE_DOWN = 9


CONDITIONS: tuple[Cond, ...] = tuple(Cond)

#: One-line meaning of each condition, for the generated docs.
CONDITION_DOCS: Mapping[Cond, str] = {
    Cond.ANY_ROUTABLE: "some node is routable and not excluded",
    Cond.LOADED: "a live node has the model `loaded` or `reloading`",
    Cond.RECOVERING: "a live node has the model `recovering`",
    Cond.UNLOADED: "a live node has the model `unloaded`",
    Cond.STATIC: "the policy's `lifecycle` is `static` (§12)",
    Cond.DOWN_SERVING: "a down node's last-known map has the model `loaded` or `reloading`",
    Cond.KNOWN_DOWN: "`known_down = retry` and a down node's last-known map lists the model (§13)",
    Cond.CATALOGUED: "the model has a catalogue profile",
    Cond.FEASIBLE_ROUTABLE: "a live node is feasible for the profile",
    Cond.FEASIBLE_DOWN: "a down node is feasible for the profile",
}

#: Bits of the conditions that one scan of the model's holders (plus the
#: policy) decides; the rest need the catalogue.
_SCAN_BITS = 7


class Pick(enum.Enum):
    """How a row chooses its node."""

    NONE = "none"
    #: among live loaded/reloading replicas: least load, then least recently chosen, then name
    LEAST_BUSY_LOADED = "least busy live loaded replica, then least recently chosen, then name"
    #: the smallest name among live nodes with the model recovering (named in the error)
    FIRST_RECOVERING = "smallest name with the model recovering"
    #: the smallest name among live nodes with the model unloaded
    FIRST_UNLOADED = "smallest name with the model unloaded"
    #: among live feasible nodes: pinned first, then smallest name
    FIRST_FEASIBLE = "live feasible node, pinned first, then by name"


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
_A, _L, _R, _U, _S, _DS, _KD, _C, _FR, _FD = CONDITIONS
_OPEN = ((_A, _T), (_L, _F), (_R, _F))  # no live replica serves or recovers it
_MANAGED = (*_OPEN, (_S, _F), (_U, _F))  # ... and nothing to reload lazily
_STATIC = (*_OPEN, (_S, _T))
_FNU = Outcome.FEASIBLE_NODE_UNHEALTHY


def _row(rule: str, when: tuple[tuple[Cond, bool], ...], outcome: Outcome, pick: Pick) -> Rule:
    return Rule(rule=rule, when=when, outcome=outcome, pick=pick)


#: The routing decision table. Row order carries no meaning; a rule of the
#: ordered text that needs a disjunction is split over several rows with the
#: same label (and the same outcome).
RULES: tuple[Rule, ...] = (
    # §3 rule 1: nothing live at all -- also for models nobody knows.
    _row("1", ((_A, _F),), Outcome.NO_HEALTHY_NODES, Pick.NONE),
    _row("2", ((_A, _T), (_L, _T)), Outcome.ROUTE_LOADED, Pick.LEAST_BUSY_LOADED),
    # Rule 3: never fall through to a second copy while one recovers (R4).
    _row("3", ((_A, _T), (_L, _F), (_R, _T)), Outcome.MODEL_RECOVERING, Pick.FIRST_RECOVERING),
    _row("4", (*_OPEN, (_S, _F), (_U, _T)), Outcome.ROUTE_UNLOADED, Pick.FIRST_UNLOADED),
    _row("5a", (*_MANAGED, (_C, _T), (_FR, _T)), Outcome.COLD_LOAD, Pick.FIRST_FEASIBLE),
    # §13: a down node is known to hold the model -- retry, before any 404.
    _row("13", (*_MANAGED, (_C, _F), (_KD, _T)), _FNU, Pick.NONE),
    _row("13", (*_MANAGED, (_C, _T), (_FR, _F), (_KD, _T)), _FNU, Pick.NONE),
    # Rule 5b/5c: feasible-but-down is retryable (R1); nowhere feasible is final.
    _row("5b", (*_MANAGED, (_C, _T), (_FR, _F), (_KD, _F), (_FD, _T)), _FNU, Pick.NONE),
    _row(
        "5c",
        (*_MANAGED, (_C, _T), (_FR, _F), (_KD, _F), (_FD, _F)),
        Outcome.NO_FEASIBLE_NEURON,
        Pick.NONE,
    ),
    _row("6", (*_MANAGED, (_C, _F), (_KD, _F)), Outcome.MODEL_NOT_FOUND, Pick.NONE),
    # §12 static lifecycle: never a load; down copies or down feasible nodes retry.
    _row("12a", (*_STATIC, (_DS, _T)), _FNU, Pick.NONE),
    _row("12b", (*_STATIC, (_DS, _F), (_KD, _T)), _FNU, Pick.NONE),
    _row("12c", (*_STATIC, (_DS, _F), (_KD, _F), (_C, _T), (_FD, _T)), _FNU, Pick.NONE),
    _row("12d", (*_STATIC, (_DS, _F), (_KD, _F), (_C, _F)), Outcome.MODEL_NOT_FOUND, Pick.NONE),
    _row(
        "12d",
        (*_STATIC, (_DS, _F), (_KD, _F), (_C, _T), (_FD, _F)),
        Outcome.MODEL_NOT_FOUND,
        Pick.NONE,
    ),
)


def _rule_outcomes() -> dict[str, Outcome]:
    out: dict[str, Outcome] = {}
    for row in RULES:
        if out.setdefault(row.rule, row.outcome) is not row.outcome:
            raise RoutingTableError(f"rule {row.rule} has rows with different outcomes")
    return out


class RoutingTableError(Exception):
    """The decision table has a gap or an overlap (a bug, never input)."""


#: The outcome of each rule label (every row of a label has the same outcome).
RULE_OUTCOME: Mapping[str, Outcome] = _rule_outcomes()


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
    condition i). ``settled[m & 127]``: the rule, when the first seven
    conditions (one scan of the model's holders, and the policy) already fix
    it whatever the catalogue conditions are; else None.
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
    low_count = 1 << _SCAN_BITS
    high_count = 1 << (len(CONDITIONS) - _SCAN_BITS)
    settled: list[Rule | None] = []
    for low in range(low_count):
        candidates = {id(by_mask[low | high << _SCAN_BITS]) for high in range(high_count)}
        settled.append(by_mask[low] if len(candidates) == 1 else None)
    return tuple(by_mask), tuple(settled)


_BY_MASK, _SETTLED = _compile()


# --- the fleet as routing sees it ------------------------------------------------------------


class FleetView(Protocol):
    """What :func:`decide` reads. Implementations must agree with a full scan."""

    def any_routable(self, exclude: frozenset[str]) -> bool:
        """Is some node routable and not in ``exclude``?"""
        ...

    def holders(self, model: str) -> Iterable[NodeLike]:
        """Every node whose model map has an entry for ``model`` (any status, any health)."""
        ...

    def feasible_nodes(self, profile: Profile) -> Iterable[NodeLike]:
        """Every node feasible for ``profile`` (any health)."""
        ...


NO_EXCLUDE: frozenset[str] = frozenset()


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
    retry_after: int | None = None  # seconds, for a retryable reject (the policy's value)
    exclude: frozenset[str] = NO_EXCLUDE  # the nodes this decision treated as down (§7)

    @property
    def routed(self) -> bool:
        return self.outcome.routed

    @property
    def cold_start(self) -> bool:
        return self.outcome.cold_start

    @property
    def status(self) -> int:
        return self.outcome.status


_LOADED = ModelStatus.LOADED
_RELOADING = ModelStatus.RELOADING
_RECOVERING = ModelStatus.RECOVERING
_UNLOADED = ModelStatus.UNLOADED
_DEFAULT_POLICY = Policy()
_BIT_A, _BIT_L, _BIT_R, _BIT_U, _BIT_S, _BIT_DS, _BIT_KD, _BIT_C, _BIT_FR, _BIT_FD = (
    1 << c for c in CONDITIONS
)


def decide(
    fleet: FleetView,
    catalogue: Catalogue,
    requested: str,
    policy: Policy = _DEFAULT_POLICY,
    exclude: frozenset[str] = NO_EXCLUDE,
) -> Decision:
    """Where ``requested`` goes, or what its client is told. Pure and total.

    ``exclude``: nodes to treat as down for this one decision (docs/semantics.md §7).
    """
    model = catalogue.aliases.get(requested, requested)  # rule 0: one lookup, never chained
    # Conditions 0-6: one pass over the nodes that hold the model.
    best: NodeLike | None = None
    # The pick's key (load, recency, name), compared field by field: no tuple per replica.
    best_load = best_recency = 0
    best_name = ""
    recovering: str | None = None
    unloaded: str | None = None
    mask = 0
    if fleet.any_routable(exclude):
        mask = _BIT_A
        by_max = policy.load == "max"
        down_holds = False
        for node in fleet.holders(model):
            status = node.models[model].status
            if not node.routable or (exclude and node.name in exclude):
                if status is _LOADED or status is _RELOADING:
                    mask |= _BIT_DS
                down_holds = True
                continue
            if status is _LOADED or status is _RELOADING:
                load = node.busy.get(model, 0)
                if by_max:
                    local = node.local.get(model, 0)
                    load = local if local > load else load  # max() costs a call
                    recency = node.chosen.get(model, -1)
                else:
                    recency = 0
                name = node.name
                if (
                    best is None
                    or load < best_load
                    or (
                        load == best_load
                        and (
                            recency < best_recency or (recency == best_recency and name < best_name)
                        )
                    )
                ):
                    best, best_load, best_recency, best_name = node, load, recency, name
            elif status is _RECOVERING:
                if recovering is None or node.name < recovering:
                    recovering = node.name
            elif status is _UNLOADED and (unloaded is None or node.name < unloaded):
                unloaded = node.name
        if best is not None:
            mask |= _BIT_L
        if recovering is not None:
            mask |= _BIT_R
        if unloaded is not None:
            mask |= _BIT_U
        if policy.lifecycle == "static":
            mask |= _BIT_S
        if down_holds and policy.known_down == "retry":
            mask |= _BIT_KD
    rule = _SETTLED[mask]
    target: NodeLike | None = None
    profile: Profile | None = None
    if rule is None:
        # Conditions 7-9, only when the first seven leave the row open.
        profile = catalogue.profiles.get(model)
        if profile is not None:
            mask |= _BIT_C
            target_key: tuple[bool, str] | None = None
            for node in fleet.feasible_nodes(profile):
                if node.routable and not (exclude and node.name in exclude):
                    key2 = pin_key(profile, node.name)
                    if target_key is None or key2 < target_key:
                        target, target_key = node, key2
                else:
                    mask |= _BIT_FD
            if target is not None:
                mask |= _BIT_FR
        rule = _BY_MASK[mask]
    pick = rule.pick
    if pick is Pick.FIRST_FEASIBLE:
        return _cold_load(
            requested=requested,
            model=model,
            rule=rule,
            profile=profile,
            target=target,
            exclude=exclude,
        )
    if pick is Pick.NONE:
        chosen = None
    elif pick is Pick.LEAST_BUSY_LOADED:
        assert best is not None
        chosen = best.name
    elif pick is Pick.FIRST_UNLOADED:
        chosen = unloaded
    else:  # FIRST_RECOVERING: not a route; the node is named in the error
        chosen = recovering
    return _interned(requested, model, rule, chosen=chosen, policy=policy, exclude=exclude)


def _interned(
    requested: str,
    model: str,
    rule: Rule,
    *,
    chosen: str | None,
    policy: Policy,
    exclude: frozenset[str],
) -> Decision:
    """The one Decision object for these values (built on first use)."""
    # policy.retry_after(rule.outcome), without hashing the enum on the hot path
    retry_key = _RETRY_KEY[rule.rule]
    retry = None if retry_key is None else int(getattr(policy, retry_key))
    intern_key = (requested, model, rule.rule, chosen, retry, exclude)
    decision = _INTERNED.get(intern_key)
    if decision is None:
        if len(_INTERNED) >= _INTERN_LIMIT:
            _INTERNED.clear()
        if rule.pick is Pick.FIRST_RECOVERING:
            decision = Decision(
                requested=requested,
                model=model,
                outcome=rule.outcome,
                rule=rule.rule,
                subject=chosen,
                retry_after=retry,
                exclude=exclude,
            )
        else:
            decision = Decision(
                requested=requested,
                model=model,
                outcome=rule.outcome,
                rule=rule.rule,
                node=chosen,
                retry_after=retry,
                exclude=exclude,
            )
        _INTERNED[intern_key] = decision
    return decision


#: The policy key of each rule's Retry-After (None: the outcome carries none).
_RETRY_KEY: Mapping[str, str | None] = {
    label: RETRY_AFTER_KEYS.get(outcome) for label, outcome in RULE_OUTCOME.items()
}
_INTERNED: dict[tuple[str, str, str, str | None, int | None, frozenset[str]], Decision] = {}
_INTERN_LIMIT = 1 << 16


def _loaded_row() -> Rule:
    """Rule 2's row, checked to be the only one wherever both ``ANY_ROUTABLE`` and
    ``LOADED`` hold: then no other condition matters."""
    both = _BIT_A | _BIT_L
    rows = {id(row): row for mask, row in enumerate(_BY_MASK) if mask & both == both}
    row = next(iter(rows.values()))
    if len(rows) != 1 or row.pick is not Pick.LEAST_BUSY_LOADED:
        raise RoutingTableError("a live loaded replica does not decide the row on its own")
    return row


_LOADED_ROW = _loaded_row()


def route_loaded(requested: str, model: str, node: str, policy: Policy) -> Decision:
    """The decision :func:`decide` gives for ``requested`` (``model`` after the
    alias lookup) with no ``exclude``, when a live node has ``model`` loaded
    or reloading and rule 2's pick among those replicas is ``node``.

    A live loaded replica makes ``ANY_ROUTABLE`` and ``LOADED`` true, which
    alone select rule 2's row (checked at import); so a caller that keeps the
    set of live loaded replicas needs only the pick, not the table.
    """
    return _interned(requested, model, _LOADED_ROW, chosen=node, policy=policy, exclude=NO_EXCLUDE)


def _cold_load(
    *,
    requested: str,
    model: str,
    rule: Rule,
    profile: Profile | None,
    target: NodeLike | None,
    exclude: frozenset[str],
) -> Decision:
    assert target is not None and profile is not None and target.discovery is not None
    return Decision(
        requested=requested,
        model=model,
        outcome=rule.outcome,
        rule=rule.rule,
        node=target.name,
        load=load_spec(profile, target.discovery),
        exclude=exclude,
    )
