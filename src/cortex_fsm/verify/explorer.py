"""The model checker: breadth-first exploration of the real engine's state space.

Theory of operation
-------------------
The explorer drives the real :class:`~cortex_fsm.engine.Engine` -- every
observation goes through :func:`cortex_fsm.replay.apply_record`, the same
mapping trace replay and the gateway use -- over a small but complete
*alphabet* of observations, from every reachable state, breadth first.

An **abstract state** is, per node: its health state, its discovery variant,
its model map (status per model id), its load readings, and two monitors the
invariants need -- the node's :class:`~cortex_fsm.verify.invariants.PollHistory`
and the model map the observations *say* it should have (F1). Two engines
with the same abstract state are the same state; the first one reached (so,
on a shortest path) is kept and expanded.

**Symmetry.** Nodes are interchangeable except for their names, and names
only matter through (a) ``pinned_on`` lists and (b) the tie-breaks by name.
States are canonicalised under permutations of the nodes that no profile
pins (a pinned node keeps its identity): the key is the *sorted* tuple of
per-node records. To keep that reduction sound for (b), every routing
invariant is checked not only on the kept representative but on every
renaming of its fleet snapshot in the orbit, so a decision that is right for
one assignment of names and wrong for another is still caught.

**Checks on every state.** For each node: H1-H4 (against its poll history)
and F1 (its model map). For each request name (a catalogued model, its
alias, a pinned model, an unknown model): the engine's decision (through its
indexes and its decision cache, filled on every earlier state of the path),
``routing.decide`` on the engine's frozen snapshot, and on the same fleet
with nodes and maps in other orders and the catalogue's maps reversed must
all be equal (R5); the decision must satisfy R1-R4, R6, R7 and SPEC on the
snapshot and on each renaming of it.

**Counterexamples.** Breadth-first order makes the first violation found a
shortest one. It is rebuilt from scratch (a fresh engine fed the path's
events, with every request asked after every event, as the explorer did),
re-checked, and written as a v1 trace whose replay shows the bad decision
(``cortex-fsm replay``; ``--summary`` for the health states).

**Levels and workers.** The search goes level by level. A frontier state is
kept as its path (its moves from the start) and rebuilt before it is
expanded; each move is then applied to a copy of that engine
(:func:`clone_engine`). With ``jobs > 1`` the frontier is split into
contiguous chunks expanded by forked worker processes, whose results are
merged in frontier order, so states, parents and the counterexample are the
same whatever the number of workers.

The exploration is bounded by the node count, the threshold and optionally a
depth; when the frontier empties before the depth bound, the whole abstract
state space has been explored.
"""

from __future__ import annotations

import enum
import itertools
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from .. import engine as _engine_module
from ..catalogue import Catalogue, Profile
from ..engine import Engine
from ..fleet import Discovery, FleetSnapshot, ModelStatus, Neuron, NodeSnapshot
from ..policy import Policy
from ..replay import apply_record
from ..routing import Decision, decide
from ..trace import (
    DiscoveryEvent,
    Event,
    HealthEvent,
    LoadEvent,
    ModelsEvent,
    RequestEvent,
    TraceHeader,
    TraceWriter,
    UnloadEvent,
)
from ..wire import parse_discovery
from .invariants import (
    ALL_INVARIANTS,
    PollHistory,
    check_decision,
    check_health,
    f1,
    r5,
    reordered_catalogue,
    reordered_views,
)

__all__ = [
    "MAX_NODES",
    "Counterexample",
    "ExploreResult",
    "Move",
    "REQUESTS",
    "Violation",
    "alphabet",
    "clone_engine",
    "explore",
    "explorer_catalogue",
    "node_names",
    "replay_path",
]

MAX_NODES = 6
#: The policy whose routing the explorer checks (Part I: every Part II key at
#: its reference value; the threshold is the explorer's own).
REFERENCE = Policy.reference()

#: The model id the polls report, its alias, a pinned model, an unknown id.
MODEL = "big"
ALIAS = "tier/big"
PINNED = "pin"
UNKNOWN = "nope"
REQUESTS: tuple[str, ...] = (MODEL, ALIAS, PINNED, UNKNOWN)


def node_names(nodes: int) -> tuple[str, ...]:
    return tuple(f"n{i}" for i in range(nodes))


def explorer_catalogue(nodes: int) -> Catalogue:
    """``big`` needs two GPUs of >= 40 GB; ``pin`` one GPU, only on ``n1`` (``n0`` alone)."""
    pinned_on = "n1" if nodes >= 2 else "n0"
    return Catalogue(
        profiles={
            MODEL: Profile(
                id=MODEL, harness="candle", min_devices=2, min_device_vram_mb=40000, source="hf"
            ),
            PINNED: Profile(id=PINNED, harness="llama", quant="q4", pinned_on=(pinned_on,)),
        },
        aliases={ALIAS: MODEL},
    )


# --- the alphabet ------------------------------------------------------------------------------


def _discovery_body(name: str, *vram: int) -> dict[str, object]:
    return {
        "hostname": name,
        "os": "Linux",
        "kernel": "6.8",
        "devices": [
            {"index": i, "name": "GPU", "vram_total_mb": v, "compute_capability": "9.0"}
            for i, v in enumerate(vram)
        ],
        "harnesses": ["candle", "llama"],
        "max_prompt_tokens": 32768,
    }


_DISCOVERIES: Mapping[str, dict[str, object]] = {
    "small": _discovery_body("node", 24000),
    "big": _discovery_body("node", 81920, 81920),
}


def _model_entry(status: str) -> dict[str, object]:
    return {"id": MODEL, "harness": "candle", "status": status, "devices": [0]}


#: poll variant -> (body or None for a failed fetch, is it a valid poll)
_POLLS: Mapping[str, tuple[object, bool]] = {
    "none": ([], True),
    "loaded": ([_model_entry("loaded")], True),
    "recovering": ([_model_entry("recovering")], True),
    "unloaded": ([_model_entry("unloaded")], True),
    "malformed": ([{"id": MODEL, "harness": "candle"}], False),  # no status: a failed poll
    "failed": (None, False),
}
_REPORTS: Mapping[str, tuple[tuple[str, ModelStatus], ...]] = {
    "none": (),
    "loaded": ((MODEL, ModelStatus.LOADED),),
    "recovering": ((MODEL, ModelStatus.RECOVERING),),
    "unloaded": ((MODEL, ModelStatus.UNLOADED),),
}
_HEALTH: Mapping[str, dict[str, object]] = {
    "idle": {"uptime_secs": 60, "devices": [], "models": []},
    "busy": {
        "uptime_secs": 60,
        "devices": [],
        "models": [{"id": MODEL, "in_flight": 1, "queue_depth": 0}],
    },
}


@attrs.frozen(slots=True)
class Move:
    """One observation of the alphabet: ``kind`` on ``node`` in ``variant``."""

    kind: str  # discovery | models | health | load | unload
    node: str
    variant: str

    def event(self, t: float) -> Event:
        """The trace event for this move at time ``t``."""
        kind, node, variant = self.kind, self.node, self.variant
        if kind == "discovery":
            return DiscoveryEvent(t=t, node=node, ok=True, body=_DISCOVERIES[variant])
        if kind == "models":
            body, _valid = _POLLS[variant]
            if body is None:
                return ModelsEvent(t=t, node=node, ok=False, error="timeout")
            return ModelsEvent(t=t, node=node, ok=True, body=body)
        if kind == "health":
            return HealthEvent(t=t, node=node, ok=True, body=_HEALTH[variant])
        if kind == "load":
            return LoadEvent(t=t, node=node, model=variant, ok=True)
        return UnloadEvent(t=t, node=node, model=variant, ok=True)

    def record(self, t: float) -> dict[str, Any]:
        """The validated trace record (``TraceReader.records`` form) for this move."""
        kind = self.kind
        fields: dict[str, Any] = {"kind": kind, "t": t, "node": self.node}
        if kind == "discovery":
            fields.update(ok=True, body=_DISCOVERIES[self.variant])
        elif kind == "models":
            body, _valid = _POLLS[self.variant]
            if body is None:
                fields.update(ok=False, error="timeout")
            else:
                fields.update(ok=True, body=body)
        elif kind == "health":
            fields.update(ok=True, body=_HEALTH[self.variant])
        else:
            fields.update(model=self.variant, ok=True)
        return fields

    def describe(self) -> str:
        if self.kind == "models":
            body, valid = _POLLS[self.variant]
            if body is None:
                return f"{self.node}: /models fails (timeout)"
            if not valid:
                return f"{self.node}: /models answers a malformed body (a failed poll)"
            shown = ", ".join(f"{m} {s.value}" for m, s in _REPORTS[self.variant]) or "nothing"
            return f"{self.node}: /models reports {shown}"
        if self.kind == "discovery":
            gpus = {"small": "1 GPU of 24 GB", "big": "2 GPUs of 80 GB"}[self.variant]
            return f"{self.node}: /discovery reports {gpus}"
        if self.kind == "health":
            load = "big in_flight 1" if self.variant == "busy" else "no load"
            return f"{self.node}: /health reports {load}"
        return f"{self.node}: {self.kind} {self.variant} succeeds"

    def renamed(self, mapping: Mapping[str, str]) -> Move:
        return Move(self.kind, mapping.get(self.node, self.node), self.variant)


def alphabet(names: Sequence[str]) -> dict[str, tuple[Move, ...]]:
    """Per node, every move of the alphabet (discovery moves apply only while a
    node has none: a complete discovery is never replaced, docs/semantics.md §1)."""
    out = {}
    for name in names:
        moves = [Move("models", name, v) for v in _POLLS]
        moves += [Move("health", name, v) for v in _HEALTH]
        moves += [Move("load", name, MODEL), Move("unload", name, MODEL)]
        moves += [Move("discovery", name, v) for v in _DISCOVERIES]
        out[name] = tuple(moves)
    return out


def _after(
    move: Move,
    history: PollHistory,
    expected: tuple[tuple[str, ModelStatus], ...],
    *,
    routable: bool,
    threshold: int,
) -> tuple[PollHistory, tuple[tuple[str, ModelStatus], ...]]:
    """The monitors after ``move`` (from what the observation *is*, per the spec)."""
    if move.kind == "models":
        _body, valid = _POLLS[move.variant]
        history = history.after(ok=valid, routable_before=routable, threshold=threshold)
        if valid:
            expected = _REPORTS[move.variant]
    elif move.kind == "load":
        status = dict(expected)
        status[move.variant] = ModelStatus.LOADED
        expected = tuple(sorted(status.items()))
    elif move.kind == "unload":
        status = dict(expected)
        if move.variant in status:
            status[move.variant] = ModelStatus.UNLOADED
            expected = tuple(sorted(status.items()))
    return history, expected


# --- cloning the real engine ----------------------------------------------------------------
#
# The explorer expands every state by every move, so it copies an engine once per
# transition. ``copy.deepcopy`` costs ~125 us for three nodes; this copier knows
# the core's convention (mutable state is dicts, lists, sets and the engine
# module's own records; everything else is a frozen value) and costs a fraction.

_SHARE, _DICT, _LIST, _SET, _COUNTER, _OTHER_DICT, _RECORD = range(7)
_KINDS: dict[type, int] = {
    str: _SHARE,
    int: _SHARE,
    float: _SHARE,
    bool: _SHARE,
    type(None): _SHARE,
    tuple: _SHARE,
    frozenset: _SHARE,
    dict: _DICT,
    list: _LIST,
    set: _SET,
    Counter: _COUNTER,
}
_ENGINE_MODULE = _engine_module.__name__


def _kind(cls: type) -> int:
    kind = _KINDS.get(cls)
    if kind is None:
        if issubclass(cls, dict):
            kind = _OTHER_DICT
        elif cls.__module__ == _ENGINE_MODULE:
            kind = _RECORD  # the engine's own mutable records
        else:
            # Everything else the engine holds is a frozen value (the core's
            # convention): health states, discoveries, decisions, the catalogue...
            kind = _SHARE
        _KINDS[cls] = kind
    return kind


def _fields(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in cls.__mro__:
        names.extend(s for s in getattr(klass, "__slots__", ()) if s not in ("__dict__",))
    return tuple(names)


_SLOTS: dict[type, tuple[str, ...]] = {}


def _copy(obj: Any, memo: dict[int, Any]) -> Any:
    got = memo.get(id(obj))
    if got is not None:
        return got
    cls = type(obj)
    kind = _KINDS.get(cls)
    if kind is None:
        kind = _kind(cls)
    if kind == _SHARE:
        return obj
    new: Any
    if kind in (_DICT, _COUNTER):
        new = {} if kind == _DICT else Counter()
        memo[id(obj)] = new
        kinds = _KINDS
        for k, v in obj.items():
            new[k] = v if kinds.get(type(v)) == _SHARE else _copy(v, memo)
        return new
    if kind == _LIST:
        new = []
        memo[id(obj)] = new
        new.extend([_copy(v, memo) for v in obj])
        return new
    if kind == _SET:
        new = set(obj)
        memo[id(obj)] = new
        return new
    if kind == _OTHER_DICT:
        import copy

        new = copy.copy(obj)
        memo[id(obj)] = new
        for k, v in new.items():
            new[k] = _copy(v, memo)
        return new
    new = object.__new__(cls)
    memo[id(obj)] = new
    slots = _SLOTS.get(cls)
    if slots is None:
        slots = _SLOTS[cls] = _fields(cls)
    kinds = _KINDS
    for slot in slots:
        try:
            v = getattr(obj, slot)
        except AttributeError:
            continue
        setattr(new, slot, v if kinds.get(type(v)) == _SHARE else _copy(v, memo))
    if hasattr(obj, "__dict__"):
        target = new.__dict__
        for k, v in obj.__dict__.items():
            target[k] = v if kinds.get(type(v)) == _SHARE else _copy(v, memo)
    return new


def clone_engine(engine: Engine, shared: Mapping[int, Any] | None = None) -> Engine:
    """An independent copy of ``engine``: every dict, list, set and record of the
    engine module is copied (with sharing preserved), frozen values are shared.

    ``shared`` maps ids of objects known never to be mutated (input bodies, the
    health table's dicts) to themselves, so they are not copied.
    """
    memo: dict[int, Any] = dict(shared) if shared else {}
    copied: Engine = _copy(engine, memo)
    return copied


def _frozen_containers(engine: Engine) -> dict[int, Any]:
    """Containers inside the engine's frozen values (e.g. the health table's
    lookup dicts, which the engine may also reference directly): shared, not copied."""
    out: dict[int, Any] = {}
    seen: set[int] = set()

    def walk(obj: Any, inside_frozen: bool) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        kind = _kind(type(obj))
        if kind in (_DICT, _COUNTER, _OTHER_DICT):
            if inside_frozen:
                out[id(obj)] = obj
            for k, v in obj.items():
                walk(k, inside_frozen)
                walk(v, inside_frozen)
        elif kind in (_LIST, _SET):
            if inside_frozen:
                out[id(obj)] = obj
            for v in obj:
                walk(v, inside_frozen)
        elif kind == _RECORD or (
            kind == _SHARE
            and type(obj).__module__.startswith(_PACKAGE)
            and not isinstance(obj, enum.Enum)
        ):
            frozen = inside_frozen or kind == _SHARE
            for slot in _fields(type(obj)):
                if hasattr(obj, slot):
                    walk(getattr(obj, slot), frozen)
            for v in getattr(obj, "__dict__", {}).values():
                walk(v, frozen)

    walk(engine, False)
    return out


_PACKAGE = _ENGINE_MODULE.partition(".")[0] + "."


def _containers(obj: object, out: dict[int, Any]) -> None:
    if isinstance(obj, dict):
        out[id(obj)] = obj
        for v in obj.values():
            _containers(v, out)
    elif isinstance(obj, list):
        out[id(obj)] = obj
        for v in obj:
            _containers(v, out)


def _shared_bodies() -> dict[int, Any]:
    shared: dict[int, Any] = {}
    for body in [*_DISCOVERIES.values(), *(b for b, _ in _POLLS.values()), *_HEALTH.values()]:
        _containers(body, shared)
    return shared


# --- results ---------------------------------------------------------------------------------


@attrs.frozen(slots=True, kw_only=True)
class Violation:
    """One invariant broken on one state."""

    invariant: str
    detail: str


@attrs.frozen(slots=True, kw_only=True)
class Counterexample:
    """A shortest path to a violating state, and the violations seen there."""

    moves: tuple[Move, ...]
    violations: tuple[Violation, ...]
    decisions: tuple[tuple[str, Decision], ...]  # the engine's answers on the final state
    states: tuple[tuple[str, str], ...]  # node -> health label on the final state
    trace: str | None = None  # where it was written
    replayed: bool = False  # the written trace replays to the same decisions


@attrs.frozen(slots=True, kw_only=True)
class ExploreResult:
    nodes: int
    threshold: int
    depth_bound: int | None
    states: int
    transitions: int
    depth: int  # the deepest level reached
    complete: bool  # the frontier emptied: every reachable abstract state was explored
    seconds: float
    jobs: int
    checked: Mapping[str, int]  # invariant -> number of checks made
    violated: Mapping[str, int]  # invariant -> depth of its shortest violation found
    counterexample: Counterexample | None
    stopped_early: bool = False  # stopped at the first violation (not --all)

    @property
    def ok(self) -> bool:
        return self.counterexample is None

    @property
    def states_per_second(self) -> float:
        return self.states / self.seconds if self.seconds > 0 else math.inf


# --- the exploration ---------------------------------------------------------------------------

NodeKey = tuple[Any, ...]


class _Checker:
    """Checks one state; knows the configuration and the symmetry classes."""

    def __init__(
        self, names: Sequence[str], catalogue: Catalogue, threshold: int, *, spec: bool = True
    ) -> None:
        self.names = tuple(names)
        self.spec = spec
        self.catalogue = catalogue
        self.reversed_catalogue = reordered_catalogue(catalogue)
        self.threshold = threshold
        pinned = {n for p in catalogue.profiles.values() for n in p.pinned_on}
        self.cls = {name: (1 if name in pinned else 0) for name in names}
        free = [n for n in names if n not in pinned]
        # Renamings of the unpinned nodes (the symmetry group), identity excluded.
        self.renamings: list[dict[str, str]] = []
        for perm in itertools.permutations(free):
            mapping = dict(zip(free, perm, strict=True))
            if any(k != v for k, v in mapping.items()):
                self.renamings.append(mapping)
        self.checked: dict[str, int] = dict.fromkeys(ALL_INVARIANTS, 0)
        self.routing_cache: dict[tuple[Any, ...], tuple[dict[str, Decision], list[Violation]]] = {}
        self._disc_ids = {_discovery_value(body): variant for variant, body in _DISCOVERIES.items()}

    def node_key(
        self, node: NodeSnapshot, history: PollHistory, expected: tuple[Any, ...]
    ) -> NodeKey:
        disc = node.discovery
        return (
            self.cls[node.name],
            node.health.phase,
            node.health.failures,
            "" if disc is None else self._disc_ids.get(disc) or repr(disc),
            tuple((m, e.status.value) for m, e in node.models.items()),
            tuple(sorted(node.busy.items())),
            history.key(),
            tuple((m, s.value) for m, s in expected),
        )

    def check(
        self,
        engine: Engine,
        snapshot: FleetSnapshot,
        histories: Sequence[PollHistory],
        expected: Sequence[tuple[tuple[str, ModelStatus], ...]],
        keys: Sequence[NodeKey],
    ) -> list[tuple[Violation, Mapping[str, str] | None]]:
        """Every violation on this state, each with the renaming it was seen under."""
        found: list[tuple[Violation, Mapping[str, str] | None]] = []
        checked = self.checked
        threshold = self.threshold
        for node, history, want in zip(snapshot.nodes, histories, expected, strict=True):
            for name in check_health(history, node.health, threshold):
                found.append(
                    (
                        Violation(
                            invariant=name,
                            detail=f"{node.name} is {node.health.label} after polls "
                            f"{_history_text(history, threshold)}",
                        ),
                        None,
                    )
                )
            if not f1(dict(want), node.models):
                shown = {m: e.status.value for m, e in node.models.items()}
                found.append(
                    (
                        Violation(
                            invariant="F1",
                            detail=f"{node.name} has models {shown}, its observations say "
                            f"{ {m: s.value for m, s in want} }",
                        ),
                        None,
                    )
                )
        checked["H1"] += len(histories)
        checked["H2"] += len(histories)
        checked["H3"] += len(histories)
        checked["H4"] += len(histories)
        checked["F1"] += len(histories)
        decisions, bad = self._routing(snapshot)
        for violation in bad:
            found.append((violation, None))
        renamed = self._renamed(snapshot, keys)
        for mapping, fleet in renamed:
            for violation in self._routing(fleet)[1]:
                found.append((violation, mapping))
        for name in ("R1", "R2", "R3", "R4", "R5", "R6", "R7", "SPEC"):
            checked[name] += len(REQUESTS) * (1 + len(renamed))
        for requested, reference in decisions.items():
            by_engine = engine.decide(requested)
            checked["R5"] += 1
            if by_engine != reference:
                found.append(
                    (
                        Violation(
                            invariant="R5",
                            detail=f"request {requested!r}: the engine (indexes, cache) says "
                            f"{_decision_text(by_engine)}, decide() on its snapshot says "
                            f"{_decision_text(reference)}",
                        ),
                        None,
                    )
                )
        return found

    def _routing(self, fleet: FleetSnapshot) -> tuple[dict[str, Decision], list[Violation]]:
        """The pure decisions on ``fleet`` and the routing invariants they break.

        ``routing.decide`` reads a node only through ``NodeLike`` (name,
        routability, discovery, model map, loads), so the result is memoised on
        exactly that projection of the fleet: states that differ only in, say,
        ``suspect(1)`` versus ``healthy`` share one check.
        """
        projection = tuple(
            (
                n.name,
                n.routable,
                n.discovery,
                tuple((m, e.status) for m, e in n.models.items()),
                tuple(n.busy.items()),
            )
            for n in fleet.nodes
        )
        hit = self.routing_cache.get(projection)
        if hit is not None:
            return hit
        catalogue = self.catalogue
        views = reordered_views(fleet)
        decisions: dict[str, Decision] = {}
        bad: list[Violation] = []
        for requested in REQUESTS:
            reference = decide(fleet, catalogue, requested, REFERENCE)
            decisions[requested] = reference
            again = [decide(fleet, catalogue, requested, REFERENCE)] + [
                decide(view, self.reversed_catalogue, requested, REFERENCE) for view in views
            ]
            if not r5(reference, again):
                bad.append(
                    Violation(
                        invariant="R5",
                        detail=f"request {requested!r}: decide() says "
                        f"{_decision_text(reference)} on the fleet in name order, "
                        + ", ".join(_decision_text(d) for d in again)
                        + " when asked again / in other orders",
                    )
                )
            for name in check_decision(fleet, catalogue, reference, with_spec=self.spec):
                bad.append(
                    Violation(
                        invariant=name,
                        detail=f"request {requested!r} -> {_decision_text(reference)}",
                    )
                )
        result = (decisions, bad)
        self.routing_cache[projection] = result
        return result

    def _renamed(
        self, snapshot: FleetSnapshot, keys: Sequence[NodeKey]
    ) -> list[tuple[Mapping[str, str], FleetSnapshot]]:
        """The other members of the state's orbit, as renamed snapshots (one per
        distinct assignment: renamings that swap identical nodes are skipped)."""
        out: list[tuple[Mapping[str, str], FleetSnapshot]] = []
        seen = {tuple(keys)}
        index = {name: i for i, name in enumerate(self.names)}
        for mapping in self.renamings:
            # The node named n gets the record of the node that mapping sends to n.
            inverse = {v: k for k, v in mapping.items()}
            assignment = tuple(keys[index[inverse.get(n, n)]] for n in self.names)
            if assignment in seen:
                continue
            seen.add(assignment)
            nodes = tuple(
                attrs.evolve(node, name=mapping.get(node.name, node.name))
                for node in snapshot.nodes
            )
            out.append((mapping, FleetSnapshot(nodes=nodes)))
        return out


def _discovery_value(body: Mapping[str, object]) -> Discovery:
    parsed = parse_discovery(body)
    assert isinstance(parsed, Discovery)
    return parsed


def _history_text(history: PollHistory, threshold: int) -> str:
    if history.streak == 0:
        return "ending with a success" if history.ever_ok else "(none yet)"
    more = "+" if history.streak >= threshold else ""
    before = "routable" if history.armed else "not routable"
    ever = "" if history.ever_ok else ", never one success"
    failures = "failure" if history.streak == 1 and not more else "failures"
    return f"ending with {history.streak}{more} {failures} in a row (was {before} before){ever}"


def _decision_text(decision: Decision) -> str:
    if decision.node is not None:
        return f"{decision.outcome.value} -> {decision.node}"
    retry = decision.retry_after
    extra = f", Retry-After {retry}" if retry is not None else ""
    return f"{decision.outcome.value} ({decision.status}{extra})"


Monitors = tuple[tuple[PollHistory, ...], tuple[tuple[tuple[str, ModelStatus], ...], ...]]
StateKey = tuple[NodeKey, ...]
Found = list[tuple[Violation, Mapping[str, str] | None]]


@attrs.frozen(slots=True)
class _Child:
    """A state first reached in a chunk: its parent (index in the chunk), the move,
    its key and monitors, and what its check found."""

    parent: int
    move: Move
    key: StateKey
    monitors: Monitors
    found: Found


# The explorer a forked worker expands chunks with (set before the workers fork).
_WORKER: _Explorer | None = None


Frontier = list[tuple[StateKey, tuple[Move, ...], Monitors]]


RoutingEntries = list[tuple[tuple[Any, ...], tuple[dict[str, Decision], list[Violation]]]]


def _expand_in_worker(
    chunk: Frontier,
) -> tuple[list[_Child], int, dict[str, int], RoutingEntries]:
    """Expand a chunk in a forked worker; also hand back the routing checks it
    memoised, so that the next level's workers start with them."""
    assert _WORKER is not None
    cache = _WORKER.checker.routing_cache
    known = len(cache)
    children, transitions, checked = _WORKER.expand(chunk)
    return children, transitions, checked, list(itertools.islice(cache.items(), known, None))


class _Explorer:
    def __init__(
        self,
        nodes: int,
        threshold: int,
        depth: int | None,
        *,
        stop_at_first: bool,
        spec: bool = True,
    ) -> None:
        self.names = node_names(nodes)
        self.catalogue = explorer_catalogue(nodes)
        self.policy = Policy.reference().with_values({"failure_threshold": threshold})
        self.threshold = threshold
        self.depth = depth
        self.stop_at_first = stop_at_first
        self.checker = _Checker(self.names, self.catalogue, threshold, spec=spec)
        self.moves = alphabet(self.names)
        self.shared = _shared_bodies()
        self.parents: dict[StateKey, tuple[StateKey, Move] | None] = {}
        self.level = 0

    def fresh_engine(self) -> Engine:
        return Engine(
            [Neuron(name=n, endpoint=f"http://{n}.verify:13131") for n in self.names],
            self.catalogue,
            self.policy,
        )

    def rebuild(self, path: Sequence[Move]) -> Engine:
        """The engine of the state ``path`` leads to, exactly as exploring it made
        it: every request was decided on every state along the way (so the
        decision cache holds what it held then)."""
        engine = self.fresh_engine()
        for request in REQUESTS:
            engine.decide(request)
        for step, move in enumerate(path, start=1):
            apply_record(engine, move.kind, move.record(float(step)))
            for request in REQUESTS:
                engine.decide(request)
        return engine

    def keys(self, snapshot: FleetSnapshot, monitors: Monitors) -> tuple[NodeKey, ...]:
        node_key = self.checker.node_key
        return tuple(
            node_key(n, h, e)
            for n, h, e in zip(snapshot.nodes, monitors[0], monitors[1], strict=True)
        )

    def expand(self, chunk: Frontier) -> tuple[list[_Child], int, dict[str, int]]:
        """Expand every state of ``chunk`` (its path and monitors) by every move.

        Returns the states not seen before (in the order first reached), the
        number of transitions, and the number of checks made per invariant.
        """
        checker = self.checker
        checker.checked = dict.fromkeys(ALL_INVARIANTS, 0)
        threshold = self.threshold
        parents = self.parents
        shared = self.shared
        names = self.names
        t = float(self.level + 1)
        records = {move: move.record(t) for ms in self.moves.values() for move in ms}
        children: list[_Child] = []
        fresh: set[StateKey] = set()
        transitions = 0
        for index, (key, path, (hists, exp)) in enumerate(chunk):
            engine = self.rebuild(path)
            snap = engine.snapshot()
            nkeys = self.keys(snap, (hists, exp))
            done: set[NodeKey] = set()
            for i, name in enumerate(names):
                if nkeys[i] in done:
                    continue  # an identical node: its moves lead to the same orbit
                done.add(nkeys[i])
                node = snap.nodes[i]
                routable = node.routable
                for move in self.moves[name]:
                    if move.kind == "discovery" and node.discovery is not None:
                        continue
                    transitions += 1
                    child = clone_engine(engine, shared)
                    apply_record(child, move.kind, records[move])
                    h2, e2 = _after(move, hists[i], exp[i], routable=routable, threshold=threshold)
                    c_mon = ((*hists[:i], h2, *hists[i + 1 :]), (*exp[:i], e2, *exp[i + 1 :]))
                    c_snap = child.snapshot()
                    c_keys = self.keys(c_snap, c_mon)
                    c_key = tuple(sorted(c_keys))
                    if c_key in parents or c_key in fresh or c_key == key:
                        continue
                    fresh.add(c_key)
                    found = checker.check(child, c_snap, c_mon[0], c_mon[1], c_keys)
                    children.append(_Child(index, move, c_key, c_mon, found))
                    if found and self.stop_at_first:
                        return children, transitions, checker.checked
        return children, transitions, checker.checked

    def run(
        self, progress: Callable[[int, int, int, float], None] | None, jobs: int
    ) -> ExploreResult:
        start = time.perf_counter()
        checker = self.checker
        names = self.names
        monitors: Monitors = (tuple(PollHistory() for _ in names), tuple(() for _ in names))
        engine = self.fresh_engine()
        self.shared.update(_frozen_containers(engine))
        snapshot = engine.snapshot()
        keys = self.keys(snapshot, monitors)
        root = tuple(sorted(keys))
        self.parents = {root: None}
        checked = dict.fromkeys(ALL_INVARIANTS, 0)
        bad: tuple[StateKey, Found] | None = None
        found = checker.check(engine, snapshot, monitors[0], monitors[1], keys)
        for name, n in checker.checked.items():
            checked[name] += n
        violated: dict[str, int] = {}  # invariant -> depth of its first violation
        if found:
            bad = (root, found)
            for v, _m in found:
                violated.setdefault(v.invariant, 0)
        frontier: Frontier = [(root, (), monitors)] if bad is None else []
        transitions = 0
        while (
            frontier
            and (bad is None or not self.stop_at_first)
            and (self.depth is None or self.level < self.depth)
        ):
            results = self._expand_level(frontier, jobs)
            self.level += 1
            nxt: Frontier = []
            for chunk, (children, n, counts) in results:
                transitions += n
                for name, c in counts.items():
                    checked[name] += c
                for child in children:
                    if child.key in self.parents:
                        continue  # reached first from an earlier chunk
                    parent_key, path, _mon = chunk[child.parent]
                    self.parents[child.key] = (parent_key, child.move)
                    if child.found:
                        if bad is None:
                            bad = (child.key, child.found)
                        for v, _m in child.found:
                            violated.setdefault(v.invariant, self.level)
                        continue  # a violating state is not expanded
                    nxt.append((child.key, (*path, child.move), child.monitors))
                if bad is not None and self.stop_at_first:
                    break
            frontier = nxt
            if progress is not None:
                progress(self.level, len(self.parents), transitions, time.perf_counter() - start)
        complete = not frontier and (bad is None or not self.stop_at_first)
        seconds = time.perf_counter() - start
        counterexample = None
        if bad is not None:
            bad_key, found = bad
            path_back: list[Move] = []
            cursor: StateKey | None = bad_key
            while cursor is not None:
                link = self.parents[cursor]
                if link is None:
                    break
                cursor, move = link
                path_back.append(move)
            path_back.reverse()
            counterexample = self._counterexample(path_back, found)
        return ExploreResult(
            nodes=len(names),
            threshold=self.threshold,
            depth_bound=self.depth,
            states=len(self.parents),
            transitions=transitions,
            depth=self.level,
            complete=complete,
            seconds=seconds,
            jobs=jobs,
            checked=checked,
            violated=violated,
            counterexample=counterexample,
            stopped_early=bad is not None and self.stop_at_first,
        )

    def _expand_level(
        self, frontier: Frontier, jobs: int
    ) -> list[tuple[Frontier, tuple[list[_Child], int, dict[str, int]]]]:
        """Expand one breadth-first level, in ``jobs`` forked workers when worth it.

        Chunks are contiguous slices of the frontier and their results are merged
        in frontier order, so the outcome (states, parents, the counterexample)
        is the same whatever the number of workers.
        """
        if jobs <= 1 or len(frontier) < 64:
            return [(frontier, self.expand(frontier))]
        import multiprocessing

        global _WORKER  # noqa: PLW0603 - read by the forked workers
        pieces = jobs
        size = -(-len(frontier) // pieces)
        chunks = [frontier[i : i + size] for i in range(0, len(frontier), size)]
        _WORKER = self
        try:
            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                results = pool.map(_expand_in_worker, chunks, chunksize=1)
        finally:
            _WORKER = None
        cache = self.checker.routing_cache
        for *_rest, entries in results:
            cache.update(entries)
        return [(chunk, (r[0], r[1], r[2])) for chunk, r in zip(chunks, results, strict=True)]

    def _counterexample(self, path: Sequence[Move], found: Found) -> Counterexample:
        """Rebuild the violating state from scratch, as a trace replay will, and
        check it again: what is reported is what the trace reproduces."""
        # A violation seen only on a renamed snapshot is reproduced by renaming the path.
        if all(m is not None for _v, m in found):
            mapping = found[0][1]
            assert mapping is not None
            path = [move.renamed(mapping) for move in path]
        engine, decisions, monitors = replay_path(self.fresh_engine, path, self.threshold)
        snapshot = engine.snapshot()
        keys = self.keys(snapshot, monitors)
        again = self.checker.check(engine, snapshot, monitors[0], monitors[1], keys)
        violations = tuple(v for v, m in again if m is None)
        if not violations:  # not reproduced from scratch: report what exploring saw
            violations = tuple(v for v, m in found if m is None) or tuple(v for v, _m in found)
        return Counterexample(
            moves=tuple(path),
            violations=violations,
            decisions=tuple(decisions),
            states=tuple((n, engine.state(n).label) for n in self.names),
        )

    def header(self) -> TraceHeader:
        return TraceHeader(
            neurons=tuple(Neuron(name=n, endpoint=f"http://{n}.verify:13131") for n in self.names),
            catalogue=self.catalogue,
            policy=self.policy,
        )


def _path_events(path: Sequence[Move]) -> Iterator[Event]:
    """The trace events of a path: every request after every state, as explored."""
    for step in range(len(path) + 1):
        t = float(step)
        if step:
            yield path[step - 1].event(t)
        for requested in REQUESTS:
            yield RequestEvent(t=t, id=f"s{step}-{requested}", model=requested)


def replay_path(
    make_engine: Callable[[], Engine], path: Sequence[Move], threshold: int
) -> tuple[Engine, list[tuple[str, Decision]], Monitors]:
    """A fresh engine fed ``path`` as its trace replays (every request routed after
    every event); the final state's decisions, and the monitors along the path."""
    engine = make_engine()
    names = engine.node_names
    hists = [PollHistory() for _ in names]
    exp: list[tuple[tuple[str, ModelStatus], ...]] = [() for _ in names]
    decisions: list[tuple[str, Decision]] = []
    for step in range(len(path) + 1):
        t = float(step)
        if step:
            move = path[step - 1]
            i = names.index(move.node)
            routable = engine.state(move.node).routable
            hists[i], exp[i] = _after(
                move, hists[i], exp[i], routable=routable, threshold=threshold
            )
            apply_record(engine, move.kind, move.record(t))
        decisions = [(r, engine.route(r, t)) for r in REQUESTS]
    return engine, decisions, (tuple(hists), tuple(exp))


def write_counterexample(result: ExploreResult, path: str | os.PathLike[str]) -> ExploreResult:
    """Write the counterexample as a v1 trace; replay it to confirm it reproduces."""
    from io import StringIO

    from ..replay import replay
    from ..trace import decision_line

    cx = result.counterexample
    assert cx is not None
    explorer = _Explorer(result.nodes, result.threshold, result.depth_bound, stop_at_first=True)
    with TraceWriter(path, explorer.header()) as writer:
        for event in _path_events(cx.moves):
            writer.write(event)
    out = StringIO()
    replay(os.fspath(path), out=out)
    last = out.getvalue().splitlines()[-len(REQUESTS) :]
    t = float(len(cx.moves))
    want = [decision_line(d, f"s{len(cx.moves)}-{r}", t).rstrip("\n") for r, d in cx.decisions]
    cx = attrs.evolve(cx, trace=os.fspath(path), replayed=last == want)
    return attrs.evolve(result, counterexample=cx)


def explore(
    nodes: int = 3,
    threshold: int = 3,
    depth: int | None = None,
    *,
    jobs: int = 1,
    stop_at_first: bool = True,
    spec: bool = True,
    progress: Callable[[int, int, int, float], None] | None = None,
) -> ExploreResult:
    """Explore the real engine with ``nodes`` nodes and ``threshold``, breadth first,
    to ``depth`` moves (None: until no new state appears), in ``jobs`` processes.

    ``spec=False`` leaves out the SPEC check (the decision equals the ordered
    rules), so that only the named invariants (H1-H4, R1-R7, F1) are judged.
    """
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"nodes must be between 1 and {MAX_NODES}, got {nodes}")
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1, got {threshold}")
    if depth is not None and depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    explorer = _Explorer(nodes, threshold, depth, stop_at_first=stop_at_first, spec=spec)
    return explorer.run(progress, jobs)
