"""The sans-IO engine: observations in, transitions and decisions out.

The engine owns the fleet's state -- per node: health, cached discovery,
model map, load readings, and (docs/semantics.md §8) the requests it routed
there and not yet finished and when each replica was last chosen -- and
nothing else. It never reads a clock
(every observation carries its time ``t``), never does I/O, and never decides
anything on its own: health moves only through the health table, requests
only through the routing table.

Drivers (the poller, the gateway) and trace replay feed it the same
observations, which is why a recorded trace replays to exactly the decisions
the gateway made.

To keep a decision O(replicas) instead of O(fleet), the engine maintains two
indexes alongside the node records, updated on every observation:

* model id -> the nodes whose model map has an entry for it;
* profile id -> the nodes feasible for it (changes only with discovery).

Decisions are also cached per requested name (for decisions without an
``exclude`` set). A cached decision is dropped as soon as anything it depends
on changes: the model's entries (added, removed, status), a holder's load
reading, local in-flight count or recency for it, or -- rarely, so the whole
cache goes -- any node's routability or topology, the fleet or the
configuration. Between polls, requests for the same model therefore cost one
dictionary lookup.

Under ``load = "max"`` every routed request changes its model's loads (its
replica's local count and recency, §8), so the cached decision goes at once.
What stays is the set it was picked from: for a rule 2 decision the engine
keeps the model's live loaded replicas, which only entries and routability
change -- a load or a recency never does, and with a live loaded replica no
other condition can change the row (``routing.route_loaded``). So the next
request for the model is only the pick among those replicas (least load,
then least recently chosen, then name), not a whole decision. Under
``load = "max"`` the engine also keeps each kept replica's key as one int,
updated wherever a load, a local count or a recency moves, so the pick is
the least of a list of ints (``min`` and ``index``, no Python loop).

Request outcomes (§6) and fleet changes (§12) are observations like any
other: :meth:`Engine.observe_request`, :meth:`Engine.finish`,
:meth:`Engine.add_neuron`, :meth:`Engine.remove_neuron`,
:meth:`Engine.reconfigure`.

The verification suite checks that decisions through these indexes and the
cache equal decisions over a full scan of :meth:`Engine.snapshot`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import attrs

from .catalogue import Catalogue, Profile, feasible
from .errors import ConfigError, UnknownNodeError
from .fleet import (
    Discovery,
    FleetSnapshot,
    ModelEntry,
    ModelsReport,
    ModelStatus,
    Neuron,
    NodeSnapshot,
    PollFailure,
)
from .health import UNKNOWN, Event, HealthState, HealthTable, Phase
from .policy import Policy
from .routing import NO_EXCLUDE, RULE_OUTCOME, RULES, Decision, Pick, decide, route_loaded
from .wire import Invalid, parse_health, parse_models

__all__ = ["Engine", "NodeStatus", "Statistics", "Transition"]


@attrs.frozen(slots=True, kw_only=True)
class Transition:
    """A node's health changed. ``cause`` is ``poll_ok`` or ``poll_failed: <reason>``."""

    node: str
    from_: HealthState
    to: HealthState
    cause: str
    t: float

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node,
            "from": self.from_.label,
            "to": self.to.label,
            "cause": self.cause,
            "t": self.t,
        }


@attrs.frozen(slots=True, kw_only=True)
class NodeStatus:
    """What an operator wants to know about one node."""

    name: str
    endpoint: str
    state: HealthState
    consecutive_failures: int
    last_ok: float | None
    last_failure: str | None
    models: Mapping[str, ModelEntry]


@attrs.frozen(slots=True, kw_only=True)
class Statistics:
    """Counters since the engine was created."""

    polls_ok: int
    polls_failed: int
    discoveries: int
    discoveries_ignored: int
    health_readings: int
    health_invalid: int
    transitions: int
    decisions: Mapping[str, int]
    states: Mapping[str, str]


class _Entry:
    """A node's mutable record of one model (snapshots freeze it)."""

    __slots__ = ("last_accessed", "status")

    def __init__(self, status: ModelStatus) -> None:
        self.status = status
        self.last_accessed: float | None = None


class _Node:
    __slots__ = (
        "busy",
        "chosen",
        "discovery",
        "endpoint",
        "failures",
        "health",
        "health_body",
        "last_failure",
        "last_ok",
        "local",
        "models",
        "models_body",
        "name",
        "routable",
    )

    def __init__(self, neuron: Neuron) -> None:
        self.name = neuron.name
        self.endpoint = neuron.endpoint
        self.health = UNKNOWN
        self.routable = False
        self.discovery: Discovery | None = None
        self.models: dict[str, _Entry] = {}
        self.busy: dict[str, int] = {}
        self.local: dict[str, int] = {}
        self.chosen: dict[str, int] = {}
        self.failures = 0
        self.last_ok: float | None = None
        self.last_failure: str | None = None
        # The last raw bodies applied, to skip re-validating an identical answer.
        self.models_body: object = None
        self.health_body: object = None


class _Ranked:
    """A kept model's live loaded replicas under load = "max": rule 2's key of
    each (see _rank), in the kept names' order, and each name's position. The
    keys follow every load, local count and recency, so a pick is the least."""

    __slots__ = ("index", "keys")

    def __init__(self, keys: list[int], index: dict[str, int]) -> None:
        self.keys = keys
        self.index = index  # never changed once made


_NO_HOLDERS: dict[str, _Node] = {}
#: The rules whose pick depends on the replicas' loads (rule 2's).
_LOAD_PICKED = frozenset(r.rule for r in RULES if r.pick is Pick.LEAST_BUSY_LOADED)
_CACHE_LIMIT = 1 << 16
#: Rule 2's key as an int (_rank): the load above this many bits, the recency below.
_RANK_SHIFT = 64
#: Above this many cached decisions and kept replicas, a routability change forgets them all.
_SCAN_LIMIT = 256
#: Rule 2's label, and the statuses of the replicas its pick ranges over.
_LOADED_RULE = next(r.rule for r in RULES if r.pick is Pick.LEAST_BUSY_LOADED)
_SERVING = frozenset({ModelStatus.LOADED, ModelStatus.RELOADING})


def _wrong_type(method: str, expected: str, value: object) -> TypeError:
    return TypeError(f"Engine.{method}: expected {expected}, got {type(value).__name__}")


class Engine:
    """The policy engine for one fleet. Not thread-safe; drivers serialise calls."""

    def __init__(
        self,
        neurons: Sequence[Neuron],
        catalogue: Catalogue | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.catalogue = catalogue if catalogue is not None else Catalogue()
        self.policy = policy if policy is not None else Policy()
        self._use_policy(self.policy)
        self._nodes: dict[str, _Node] = {}
        for neuron in neurons:
            if neuron.name in self._nodes:
                raise ConfigError(f"neuron name {neuron.name!r} is configured twice")
            self._nodes[neuron.name] = _Node(neuron)
        self.neurons: tuple[Neuron, ...] = tuple(neurons)
        self._routable = 0
        self._holders: dict[str, dict[str, _Node]] = {}
        self._feasible: dict[str, dict[str, _Node]] = {p: {} for p in self.catalogue.profiles}
        self._polls_ok = 0
        self._polls_failed = 0
        self._discoveries = 0
        self._discoveries_ignored = 0
        self._health_readings = 0
        self._health_invalid = 0
        self._transitions = 0
        self._decisions: Counter[str] = Counter()
        self._cache: dict[str, Decision] = {}
        #: requested name -> (model, its live loaded/reloading replicas by name,
        #: rule 2's decision for each): kept while only loads and recency move
        self._picks: dict[str, tuple[str, tuple[str, ...], tuple[Decision, ...]]] = {}
        self._seq = 0  # the sequence number of the last routed request (§8 recency)
        #: under load = "max", model -> its kept replicas' rule 2 keys: present
        #: exactly while a kept entry of ``_picks`` is for the model
        self._ranked: dict[str, _Ranked] = {}
        #: attempts routed under a key and awaiting their outcome: key -> (node, model)
        self._open: dict[tuple[str, int], tuple[str, str]] = {}
        #: keys of attempts whose node left the fleet: their outcome is forgotten too
        self._stale: set[tuple[str, int]] = set()
        self._aliases_of: dict[str, list[str]] = {}
        self._cache_keys: dict[str, tuple[str, ...]] = {}
        self._index_aliases()

    def _use_policy(self, policy: Policy) -> None:
        self._table = HealthTable(policy.failure_threshold, passive=policy.passive_health)
        self._after_ok = self._table.on[Event.POLL_OK]
        self._after_failed = self._table.on[Event.POLL_FAILED]
        self._after_request = {
            True: self._table.on[Event.REQUEST_OK],
            False: self._table.on[Event.REQUEST_FAILED],
        }
        self._count_local = policy.load == "max"

    def _index_aliases(self) -> None:
        self._aliases_of = {}
        for alias, target in self.catalogue.aliases.items():
            self._aliases_of.setdefault(target, []).append(alias)
        #: model id -> the names its decisions are cached under: itself and its aliases
        self._cache_keys = {m: (m, *aliases) for m, aliases in self._aliases_of.items()}

    # --- the routing view (routing.FleetView) ------------------------------------------------

    def any_routable(self, exclude: frozenset[str] = NO_EXCLUDE) -> bool:
        if not exclude:
            return self._routable > 0
        nodes = self._nodes
        down = sum(1 for name in exclude if name in nodes and nodes[name].routable)
        return self._routable > down

    def holders(self, model: str) -> Iterable[_Node]:
        return self._holders.get(model, _NO_HOLDERS).values()

    def feasible_nodes(self, profile: Profile) -> Iterable[_Node]:
        return self._feasible.get(profile.id, _NO_HOLDERS).values()

    # --- observations ------------------------------------------------------------------------

    def _node(self, name: str) -> _Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise UnknownNodeError(f"unknown neuron {name!r}") from None

    def needs_discovery(self, node: str) -> bool:
        """Should the poller fetch ``/discovery`` for ``node`` this round?"""
        d = self._node(node).discovery
        return d is None or not d.complete

    def observe_discovery(self, node: str, t: float, result: Discovery | Invalid) -> bool:
        """A ``/discovery`` answer (``Invalid`` for a failed fetch or bad body).

        Returns whether the cached topology changed. A complete discovery
        (``max_prompt_tokens > 0``) is never replaced.
        """
        rec = self._node(node)
        if not isinstance(result, Discovery | Invalid):
            what = "a Discovery or Invalid (see parse_discovery)"
            raise _wrong_type("observe_discovery", what, result)
        if isinstance(result, Invalid) or (rec.discovery is not None and rec.discovery.complete):
            self._discoveries_ignored += 1
            return False
        self._discoveries += 1
        self._forget()
        rec.discovery = result
        for profile in self.catalogue.profiles.values():
            members = self._feasible[profile.id]
            if feasible(profile, rec.name, result):
                members[rec.name] = rec
            else:
                members.pop(rec.name, None)
        return True

    def observe_models(
        self, node: str, t: float, result: ModelsReport | PollFailure
    ) -> Transition | None:
        """A ``/models`` poll: success replaces the model map; failure keeps it."""
        rec = self._node(node)
        before = rec.health
        if isinstance(result, PollFailure):
            self._polls_failed += 1
            rec.failures += 1
            rec.last_failure = result.reason
            after = self._after_failed[before]
            cause = f"poll_failed: {result.reason}"
        else:
            if not isinstance(result, ModelsReport):
                raise _wrong_type(
                    "observe_models", "a ModelsReport or PollFailure (see parse_models)", result
                )
            self._polls_ok += 1
            rec.failures = 0
            rec.last_ok = t
            rec.models_body = None  # set again by observe_models_body when it applies
            self._replace_models(rec, result)
            after = self._after_ok[before]
            cause = "poll_ok"
        if after is before:
            return None
        return self._move(rec, before, after, cause, t)

    def observe_models_body(self, node: str, t: float, body: object) -> Transition | None:
        """A successful ``/models`` fetch with its JSON ``body`` (validated here).

        An answer identical to the last one applied changes no model entry,
        so only the poll itself is applied, without validating it again.
        """
        rec = self._nodes.get(node) or self._node(node)  # (the latter raises)
        if rec.models_body is not None and body == rec.models_body:
            return self._poll_ok(rec, t)
        result = parse_models(body)
        if isinstance(result, ModelsReport):
            transition = self.observe_models(node, t, result)
            rec.models_body = body
            return transition
        return self.observe_models(node, t, result)

    def observe_health_body(self, node: str, t: float, body: object) -> None:
        """A successful ``/health`` fetch with its JSON ``body`` (validated here)."""
        rec = self._node(node)
        if rec.health_body is not None and body == rec.health_body:
            self._health_readings += 1
            return
        result = parse_health(body)
        if type(result) is dict:
            self._health_readings += 1
            self._replace_busy(rec, result)
            rec.health_body = body
        else:
            self._health_invalid += 1

    def _poll_ok(self, rec: _Node, t: float) -> Transition | None:
        """A successful poll whose model map is already in place."""
        self._polls_ok += 1
        rec.failures = 0
        rec.last_ok = t
        before = rec.health
        after = self._after_ok[before]
        if after is before:
            return None
        return self._move(rec, before, after, "poll_ok", t)

    def _move(
        self, rec: _Node, before: HealthState, after: HealthState, cause: str, t: float
    ) -> Transition:
        rec.health = after
        routable = after.routable
        if routable is not rec.routable:
            rec.routable = routable
            self._routable += 1 if routable else -1
            self._routability_moved(rec)
        self._transitions += 1
        return Transition(node=rec.name, from_=before, to=after, cause=cause, t=t)

    def _replace_models(self, rec: _Node, report: ModelsReport) -> None:
        old = rec.models
        new: dict[str, _Entry] = {}
        name = rec.name
        invalidate = self._invalidate
        for model, status in report.models.items():
            entry = old.get(model)
            if entry is None:
                entry = _Entry(status)
                self._holders.setdefault(model, {})[name] = rec
                invalidate(model)
            elif entry.status is not status:
                entry.status = status
                invalidate(model)
            new[model] = entry
        if len(new) != len(old) or new.keys() != old.keys():
            for model in old:
                if model not in new:
                    self._drop_holder(model, name)
                    invalidate(model)
        rec.models = new

    def _routability_moved(self, rec: _Node) -> None:
        """``rec`` became routable, or stopped being so: forget the cached
        decisions and kept replicas it can change.

        A node's routability enters a decision for a model only through the
        nodes that hold the model (conditions 1-6), those feasible for its
        profile (7-9) and whether any node is routable at all (condition 0;
        docs/semantics.md §3). So only decisions for a model ``rec`` holds or
        is feasible for change -- unless no other node is routable (then
        condition 0 may move for all), or so many are cached that finding
        them costs more than deciding again: then all are forgotten.
        """
        cache, picks = self._cache, self._picks
        if self._routable <= 1 or len(cache) + len(picks) > _SCAN_LIMIT:
            self._forget()
            return
        held = rec.models
        name = rec.name
        feasible = self._feasible
        for key in [
            k
            for k, decision in cache.items()
            if decision.model in held or name in feasible.get(decision.model, _NO_HOLDERS)
        ]:
            del cache[key]
        for key in [k for k, kept in picks.items() if kept[0] in held]:
            self._ranked.pop(picks.pop(key)[0], None)

    def _forget(self) -> None:
        """Forget every cached decision and every kept set of replicas."""
        self._cache.clear()
        self._picks.clear()
        self._ranked.clear()

    def _invalidate(self, model: str) -> None:
        """Forget cached decisions for ``model`` (requested by its id or an
        alias), and its live loaded replicas: its entries have changed."""
        cache = self._cache
        picks = self._picks
        if cache or picks:
            cache.pop(model, None)
            picks.pop(model, None)
            for alias in self._aliases_of.get(model, ()):
                cache.pop(alias, None)
                picks.pop(alias, None)
            self._ranked.pop(model, None)

    def _loads_moved(self, model: str) -> None:
        """Forget cached decisions for ``model``: a replica's local count or
        recency moved. Its live loaded replicas stay what they were, so the
        next decision is only rule 2's pick among them (:meth:`_pick`)."""
        cache = self._cache
        if cache:
            cache.pop(model, None)
            for alias in self._aliases_of.get(model, ()):
                cache.pop(alias, None)

    def _drop_holder(self, model: str, name: str) -> None:
        holders = self._holders[model]
        del holders[name]
        if not holders:
            del self._holders[model]

    def observe_health(self, node: str, t: float, result: Mapping[str, int] | Invalid) -> None:
        """A ``/health`` answer: per-model ``in_flight + queue_depth``, replaced whole."""
        rec = self._nodes.get(node) or self._node(node)  # (the latter raises)
        if type(result) is not dict:  # a dict is the common case: no more checks
            if isinstance(result, Invalid):
                self._health_invalid += 1
                return
            if not isinstance(result, Mapping):
                raise _wrong_type(
                    "observe_health", "a mapping or Invalid (see parse_health)", result
                )
        self._health_readings += 1
        rec.health_body = None
        self._replace_busy(rec, dict(result))

    def _replace_busy(self, rec: _Node, new: dict[str, int]) -> None:
        old = rec.busy
        rec.busy = new
        if self._ranked and new != old:
            for model in {*new, *old}:
                if new.get(model, 0) != old.get(model, 0):
                    self._rerank(rec, model)
        cache = self._cache
        # A node that takes no requests is no replica of any decision's pick
        # (see _load_moved): its readings change no cached decision.
        if not cache or not rec.routable or new == old:
            return
        # No reading counts as 0, so compare per model with that default; a
        # model with no cached decision (by its id or an alias) needs nothing.
        aliases_of = self._aliases_of
        for model, busy in new.items():
            before = old.get(model, 0)
            if busy != before and (model in cache or model in aliases_of):
                self._load_moved(rec, model, before)
        for model, busy in old.items():
            if busy and model not in new and (model in cache or model in aliases_of):
                self._load_moved(rec, model, busy)

    def _load_moved(self, rec: _Node, model: str, before: int) -> None:
        """``rec``'s reported load of ``model`` was ``before`` and has changed:
        forget the cached decisions it can change. ``rec`` is routable.

        A load enters a decision only as the key of rule 2's pick among the
        live loaded replicas (least load, then least recently chosen, then
        name; docs/semantics.md §8), never its conditions. So a cached
        decision stays right when it is not rule 2, when ``rec`` is no such
        replica, when ``rec`` is the chosen replica and its key did not grow,
        or when it is another replica whose key is still above the chosen
        one's. Anything else is dropped, and decided again when asked.
        """
        entry = rec.models.get(model)
        if entry is None:
            return
        status = entry.status
        if status is not ModelStatus.LOADED and status is not ModelStatus.RELOADING:
            return  # not a replica rule 2 picks from
        cache = self._cache
        for key in self._cache_keys.get(model) or (model,):
            cached = cache.get(key)
            if (
                cached is not None
                and cached.rule in _LOAD_PICKED
                and cached.model == model
                and self._pick_may_move(rec, model, before, cached)
            ):
                del cache[key]

    def _pick_may_move(self, rec: _Node, model: str, before: int, cached: Decision) -> bool:
        """Can the load of ``model`` on ``rec`` (a live loaded replica) moving
        from ``before`` change ``cached`` (a rule 2 decision for ``model``)?"""
        if cached.node == rec.name:  # only the load part of its key moved
            now = rec.busy.get(model, 0)
            if self._count_local:
                local = rec.local.get(model, 0)
                return (local if local > now else now) > (local if local > before else before)
            return now > before
        chosen = self._nodes.get(cached.node or "")
        return chosen is None or self._pick_key(rec, model) <= self._pick_key(chosen, model)

    def _pick_key(self, rec: _Node, model: str) -> tuple[int, int, str]:
        """Rule 2's key for ``rec`` as :func:`~cortex_fsm.routing.decide` computes it."""
        load = rec.busy.get(model, 0)
        if self._count_local:
            local = rec.local.get(model, 0)
            return (local if local > load else load, rec.chosen.get(model, -1), rec.name)
        return (load, 0, rec.name)

    def observe_request(self, node: str, t: float, ok: bool, reason: str = "") -> Transition | None:
        """The outcome of one request forwarded to ``node`` (passive health, §6).

        ``ok``: the node answered below 500 (``request_ok``); else it failed
        before the first byte (``request_failed``, ``reason`` says how). With
        the policy's ``passive_health`` off, nothing changes. See
        :func:`cortex_fsm.errors.attempt_result` for reading an outcome event.
        """
        try:
            rec = self._nodes[node]
        except KeyError:
            raise UnknownNodeError(f"unknown neuron {node!r}") from None
        if not self.policy.passive_health:
            return None
        before = rec.health
        if ok:
            if rec.routable:  # before.routable, kept by _move
                rec.failures = 0
            after = self._after_request[True][before]
            cause = "request_ok"
        else:
            if before.phase is Phase.UNKNOWN:
                return None  # a node no request was routed to: a stale outcome, ignored
            rec.failures += 1
            rec.last_failure = f"request: {reason}" if reason else "request"
            after = self._after_request[False][before]
            cause = f"request_failed: {reason}" if reason else "request_failed"
        if after is before:
            return None
        return self._move(rec, before, after, cause, t)

    def finish(self, node: str, model: str) -> None:
        """One request routed to ``node`` for ``model`` has finished (§8): its local
        in-flight count ends. Nothing happens for a node no longer in the fleet,
        or with no count (``load = "reported"`` counts none)."""
        rec = self._nodes.get(node)
        if rec is None:
            return
        local = rec.local
        n = local.get(model, 0)
        if n <= 0:
            return
        if n == 1:
            del local[model]
        else:
            local[model] = n - 1
        if self._ranked:
            ranked = self._ranked.get(model)
            if ranked is not None:
                i = ranked.index.get(node)
                if i is not None:  # _rank, with what is known here
                    n -= 1
                    load = rec.busy.get(model, 0)
                    recency = rec.chosen.get(model, -1) + 1
                    ranked.keys[i] = (n if n > load else load) << _RANK_SHIFT | recency
        if self._cache:
            self._loads_moved(model)

    def _rerank(self, rec: _Node, model: str) -> None:
        """``rec``'s load, local count or recency of ``model`` moved: if it is a
        kept replica of the model, its key follows."""
        ranked = self._ranked.get(model)
        if ranked is not None:
            i = ranked.index.get(rec.name)
            if i is not None:
                ranked.keys[i] = _rank(rec, model)

    def observe_load(self, node: str, t: float, model: str, ok: bool) -> None:
        """The outcome of a cold load: on success the entry is ``loaded`` at once."""
        if not ok:
            self._node(node)
            return
        rec = self._node(node)
        rec.models_body = None  # the model map no longer matches the last answer
        entry = rec.models.get(model)
        if entry is None:
            rec.models[model] = _Entry(ModelStatus.LOADED)
            self._holders.setdefault(model, {})[rec.name] = rec
        else:
            entry.status = ModelStatus.LOADED
        self._invalidate(model)

    def observe_unload(self, node: str, t: float, model: str, ok: bool) -> None:
        """The outcome of an unload: on success an existing entry becomes ``unloaded``."""
        rec = self._node(node)
        entry = rec.models.get(model)
        if ok and entry is not None:
            rec.models_body = None  # the model map no longer matches the last answer
            entry.status = ModelStatus.UNLOADED
            self._invalidate(model)

    # --- decisions -----------------------------------------------------------------------------

    def decide(self, requested: str, exclude: frozenset[str] = NO_EXCLUDE) -> Decision:
        """The decision for ``requested`` on the current state, with the nodes in
        ``exclude`` treated as down (§7). Changes nothing visible."""
        if exclude:
            return decide(self, self.catalogue, requested, self.policy, _frozen(exclude))
        decision = self._cache.get(requested)
        if decision is None:
            decision = self._decide(requested)
            cache = self._cache
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[requested] = decision
        return decision

    def _decide(self, requested: str) -> Decision:
        """The decision for ``requested`` (no exclude) when none is cached: rule
        2's pick among the kept live loaded replicas, or else the full decision
        (whose replicas are then kept, when it is rule 2's)."""
        kept = self._picks.get(requested)
        if kept is not None:
            return self._pick(kept)
        decision = decide(self, self.catalogue, requested, self.policy)
        if decision.rule == _LOADED_RULE:
            self._keep(requested, decision.model)
        return decision

    def _keep(self, requested: str, model: str) -> None:
        """Keep ``model``'s live loaded/reloading replicas, in name order, with
        rule 2's decision for each."""
        names = tuple(
            sorted(
                rec.name
                for rec in self._holders.get(model, _NO_HOLDERS).values()
                if rec.routable and rec.models[model].status in _SERVING
            )
        )
        policy = self.policy
        picks = self._picks
        if len(picks) >= _CACHE_LIMIT:
            picks.clear()
            self._ranked.clear()
        if self._count_local and model not in self._ranked:
            nodes = self._nodes
            self._ranked[model] = _Ranked(
                [_rank(nodes[name], model) for name in names],
                {name: i for i, name in enumerate(names)},
            )
        picks[requested] = (
            model,
            names,
            tuple(route_loaded(requested, model, name, policy) for name in names),
        )

    def _pick(self, kept: tuple[str, tuple[str, ...], tuple[Decision, ...]]) -> Decision:
        """Rule 2's pick among the kept ``names`` (live loaded replicas of
        ``model``, in name order): least load, then least recently chosen, then
        name -- the key :func:`~cortex_fsm.routing.decide` uses (docs/semantics.md
        §8). Names ascend, so the first of equal keys has the smallest name."""
        model, names, decisions = kept
        if self._count_local:
            # The keys are in name order too, and index() finds the first least.
            keys = self._ranked[model].keys
            return decisions[keys.index(min(keys))]
        nodes = self._nodes
        loads = [nodes[name].busy.get(model, 0) for name in names]
        return decisions[loads.index(min(loads))]

    def route(
        self,
        requested: str,
        t: float,
        exclude: frozenset[str] = NO_EXCLUDE,
        key: tuple[str, int] | None = None,
    ) -> Decision:
        """Decide, count the decision, and touch the chosen entry's ``last_accessed``.

        Under ``load = "max"`` a routed request also starts a local in-flight
        count for its replica and makes it the most recently chosen
        (docs/semantics.md §8). The count ends with :meth:`finish`, or -- when
        the request was routed under a ``key`` (request id, attempt) -- with
        :meth:`observe_outcome` for that key.
        """
        count_local = self._count_local
        ranked: _Ranked | None = None  # the kept keys, when the pick is the i-th of them
        i: int | None = None
        if exclude:
            decision = decide(self, self.catalogue, requested, self.policy, _frozen(exclude))
        else:
            # Under "max" the kept replicas are the common case (a routed
            # request drops its model's cached decision); either is right.
            kept = self._picks.get(requested) if count_local else None
            cached = self._cache.get(requested) if kept is None else None
            if kept is not None:
                # _pick under "max", inline: where the least key is, is also
                # the key that moves below.
                ranked = self._ranked[kept[0]]
                keys = ranked.keys
                i = keys.index(min(keys))
                decision = kept[2][i]
            elif cached is not None:
                decision = cached
            else:
                decision = self._decide(requested)
                # Under load = "max" a routed request moves its replica's count
                # and recency below, which would drop the decision at once.
                if decision.node is None or not count_local:
                    cache = self._cache
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    cache[requested] = decision
        self._decisions[decision.rule] += 1  # by rule: a str, cheap to hash
        node = decision.node
        if node is not None:
            rec = self._nodes[node]
            model = decision.model
            entry = rec.models.get(model)
            if entry is not None:
                entry.last_accessed = t
            if count_local:
                local = rec.local
                local[model] = n = local.get(model, 0) + 1
                self._seq = seq = self._seq + 1
                rec.chosen[model] = seq
                if ranked is None:  # not a kept pick: a kept replica all the same?
                    ranked = self._ranked.get(model)
                    if ranked is not None:
                        i = ranked.index.get(node)
                if i is not None:  # _rank, with what is known here
                    assert ranked is not None
                    load = rec.busy.get(model, 0)
                    ranked.keys[i] = (n if n > load else load) << _RANK_SHIFT | (seq + 1)
                if self._cache:
                    self._loads_moved(model)
                if key is not None:
                    opened = self._open
                    earlier = opened.pop(key, None)
                    if earlier is not None:  # a key reused without its outcome
                        self.finish(*earlier)
                    opened[key] = (node, model)
        return decision

    def observe_outcome(
        self,
        key: tuple[str, int],
        t: float,
        *,
        node: str | None,
        ok: bool | None,
        reason: str = "",
    ) -> Transition | None:
        """The outcome of the attempt routed under ``key``: its local in-flight
        count ends, and ``ok`` (True ``request_ok``, False ``request_failed``,
        None neither; see :func:`cortex_fsm.errors.attempt_result`) is passive
        health for ``node`` -- unless the node has left the fleet meanwhile."""
        opened = self._open.pop(key, None)
        if opened is not None:
            self.finish(opened[0], opened[1])
        elif key in self._stale:  # its node left the fleet: nothing to learn (§12)
            self._stale.discard(key)
            return None
        if node is None or ok is None or node not in self._nodes:
            return None
        return self.observe_request(node, t, ok, reason)

    def eviction_candidate(self, node: str) -> str | None:
        """LRU eviction on ``node`` (docs/semantics.md §5): the loaded, unpinned model
        accessed longest ago (never-accessed first; ties by id), or None."""
        rec = self._node(node)
        best: tuple[bool, float, str] | None = None
        for model, entry in rec.models.items():
            if entry.status is not ModelStatus.LOADED:
                continue
            profile = self.catalogue.profiles.get(model)
            if profile is not None and rec.name in profile.pinned_on:
                continue
            last = entry.last_accessed
            key = (last is not None, last if last is not None else 0.0, model)
            if best is None or key < best:
                best = key
        return None if best is None else best[2]

    # --- a fleet that changes (§12) and reconfiguration ------------------------------------------

    def has_node(self, name: str) -> bool:
        return name in self._nodes

    def add_neuron(self, neuron: Neuron, t: float) -> None:
        """A node joins the fleet, ``unknown`` and with nothing observed."""
        if not isinstance(neuron, Neuron):
            raise _wrong_type("add_neuron", "a Neuron", neuron)
        if neuron.name in self._nodes:
            raise ConfigError(f"neuron name {neuron.name!r} is already in the fleet")
        self._nodes[neuron.name] = _Node(neuron)
        self.neurons = (*self.neurons, neuron)

    def remove_neuron(self, name: str, t: float) -> None:
        """A node leaves the fleet and is forgotten entirely (its in-flight
        requests finish normally; :meth:`finish` then does nothing)."""
        rec = self._node(name)
        for model in rec.models:
            self._drop_holder(model, name)
        for members in self._feasible.values():
            members.pop(name, None)
        if rec.routable:
            self._routable -= 1
        for key in [k for k, v in self._open.items() if v[0] == name]:
            del self._open[key]
            self._stale.add(key)
        del self._nodes[name]
        self.neurons = tuple(n for n in self.neurons if n.name != name)
        self._forget()

    def reconfigure(
        self, t: float, *, catalogue: Catalogue | None = None, policy: Policy | None = None
    ) -> list[Transition]:
        """Replace the catalogue and/or the policy (a configuration reload).

        Health states are kept, except that under a lower failure threshold a
        node ``suspect(n)`` with ``n >= T`` has had ``T`` failures and becomes
        ``unhealthy`` (returned as transitions). Local in-flight counts and
        recency are kept.
        """
        if catalogue is not None and not isinstance(catalogue, Catalogue):
            raise _wrong_type("reconfigure", "a Catalogue", catalogue)
        if policy is not None and not isinstance(policy, Policy):
            raise _wrong_type("reconfigure", "a Policy", policy)
        moved: list[Transition] = []
        if policy is not None:
            self.policy = policy
            self._use_policy(policy)
            # The new table's own state objects: its transitions compare states
            # by identity, so an equal state of the old table would make the
            # next event look like a change (a transition from healthy to healthy).
            states = {s: s for s in self._table.states}
            for rec in self._nodes.values():
                before = rec.health
                if before in states:
                    rec.health = states[before]
                    continue
                after = states[HealthState(phase=Phase.UNHEALTHY)]  # the table's own
                moved.append(self._move(rec, before, after, "reconfigured", t))
        if catalogue is not None:
            self.catalogue = catalogue
            self._index_aliases()
            self._feasible = {p: {} for p in catalogue.profiles}
            for rec in self._nodes.values():
                if rec.discovery is not None:
                    for profile in catalogue.profiles.values():
                        if feasible(profile, rec.name, rec.discovery):
                            self._feasible[profile.id][rec.name] = rec
        self._forget()
        return moved

    # --- reading ----------------------------------------------------------------------------

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(self._nodes)

    def state(self, node: str) -> HealthState:
        return self._node(node).health

    def states(self) -> dict[str, HealthState]:
        return {name: rec.health for name, rec in self._nodes.items()}

    def status(self, node: str) -> NodeStatus:
        rec = self._node(node)
        return NodeStatus(
            name=rec.name,
            endpoint=rec.endpoint,
            state=rec.health,
            consecutive_failures=rec.failures,
            last_ok=rec.last_ok,
            last_failure=rec.last_failure,
            models=_freeze_models(rec.models),
        )

    def discovery(self, node: str) -> Discovery | None:
        return self._node(node).discovery

    def snapshot(self) -> FleetSnapshot:
        """The whole fleet as frozen values (for checks, displays and the pure decide)."""
        return FleetSnapshot(
            nodes=tuple(
                NodeSnapshot(
                    name=rec.name,
                    health=rec.health,
                    discovery=rec.discovery,
                    models=_freeze_models(rec.models),
                    busy=rec.busy,
                    local=rec.local,
                    chosen=rec.chosen,
                )
                for rec in self._nodes.values()
            )
        )

    def statistics(self) -> Statistics:
        decisions: dict[str, int] = {}
        for rule, n in self._decisions.items():  # several rules share an outcome
            outcome = RULE_OUTCOME[rule].value
            decisions[outcome] = decisions.get(outcome, 0) + n
        return Statistics(
            polls_ok=self._polls_ok,
            polls_failed=self._polls_failed,
            discoveries=self._discoveries,
            discoveries_ignored=self._discoveries_ignored,
            health_readings=self._health_readings,
            health_invalid=self._health_invalid,
            transitions=self._transitions,
            decisions=dict(sorted(decisions.items())),
            states={name: rec.health.label for name, rec in sorted(self._nodes.items())},
        )


def _rank(rec: _Node, model: str) -> int:
    """Rule 2's key for replica ``rec`` of ``model`` under load = "max", without
    the name: load (the larger of the reported and the local count), then
    recency (docs/semantics.md §8), as one int. Right while fewer than
    ``2 ** _RANK_SHIFT`` requests have been routed: at a million a second, for
    half a million years."""
    load = rec.busy.get(model, 0)
    local = rec.local.get(model, 0)
    return (local if local > load else load) << _RANK_SHIFT | (rec.chosen.get(model, -1) + 1)


def _frozen(exclude: frozenset[str] | Iterable[str]) -> frozenset[str]:
    return exclude if type(exclude) is frozenset else frozenset(exclude)


def _freeze_models(models: Mapping[str, _Entry]) -> dict[str, ModelEntry]:
    return {
        m: ModelEntry(status=e.status, last_accessed=e.last_accessed)
        for m, e in sorted(models.items())
    }
