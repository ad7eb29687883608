"""The model checker: breadth-first exploration of the real engine, world by world.

Theory of operation
-------------------
The explorer drives the real :class:`~cortex_fsm.engine.Engine` -- every
observation goes through :func:`cortex_fsm.replay.apply_record`, the same
mapping trace replay and the gateway use -- over a finite *alphabet* of
observations, from every reachable state, breadth first, and checks every
invariant of docs/semantics.md on every state it keeps.

**Judged against the observations.** Beside the engine runs a
:class:`~cortex_fsm.verify.monitor.Monitor`, fed the same records, which
keeps what the specification says the engine must know (health and its
history, discovery cache, model map, load readings, local in-flight counts
and recency, fleet membership) -- computed from the text, not from the code.
The routing invariants (R1-R4, R6, R7, R9, SPEC, ANSWER) judge the engine's
decision against the monitor's fleet; the per-node invariants compare the
engine's state with the monitor's (H1-H6, HSPEC, F1, D1, D2, L1, L2); the
report checks compare what the engine shows users -- ``statistics()``,
``status()``, ``Engine.neurons`` -- with the monitor's own count of what was
observed (STAT, STATUS, FLEET); R5 asks ``routing.decide`` again on the
engine's own snapshot, in other orders.

**Nothing that can change a future decision is pruned.** Two states are one
when their keys are equal, and the key holds *everything* the engine keeps
that a later decision could depend on: every field of every node record (the
discovery cache, model map, load readings, local counts, the memo of the last
``/models`` and ``/health`` body, recency as an order), the indexes, the open
attempts and the decision cache *after* every request of the world was asked
on the state (so a stale cached decision is part of the key, never merged
away). Only statistics counters, times and the absolute recency numbers are
left out -- and of the counters, their distance from the monitor's count is
in (zero for a right engine, so the space does not grow; a counter that
drifts makes a new state, which is checked); a field the key does not know
is included by its ``repr``, so a new field can only make the key finer,
never coarser.

**Worlds.** The default bound is a list of :class:`World`\\s: small fleets,
each with a catalogue (aliases -- a chain and a shadowing one --, a pinned
model, a model that needs two GPUs of 40 GB), a policy, an alphabet and a
depth. The engine runs the world's policy as the code builds it
(``Policy()``, ``Policy.reference()``); the monitor and the invariants judge
by the same policy built from the spec's own table of values, so a wrong
default in the code shows. A world may reload its configuration (the monitor
applies the reload too, and the invariants judge under the configuration in
force), hand ``/health`` readings over parsed, and end requests through
``Engine.finish``. Together they reach every row of the routing table, every transition
of the health machine and every reject clients can be told (the coverage
report says so, and ``verify`` fails if the default bound leaves one out).
Values are chosen at and around every threshold -- VRAM exactly at the
floor, one MB below, above; device counts at, below and above the minimum;
load readings distinct, equal, missing and invalid -- because routing only
*compares* values: any other value behaves like one of these (the
data-independence argument in docs/verification.md).

**Counterexamples.** Breadth-first order makes the first violation found a
shortest one in its world. It is rebuilt from scratch, re-checked, and
written as a v2 trace whose replay (``cortex-fsm replay``) shows the bad
decision; whether the replay reproduces it is checked and reported.
"""

from __future__ import annotations

import copy
import math
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypedDict

import attrs

from ..catalogue import Catalogue, Profile
from ..engine import Engine
from ..fleet import Discovery, FleetSnapshot, ModelStatus, Neuron
from ..health import Event, HealthState, HealthTable, all_states
from ..policy import Policy
from ..replay import apply_record
from ..routing import RULE_OUTCOME, RULES, Cond, Decision, decide, matching_rules
from ..trace import (
    DiscoveryEvent,
    HealthEvent,
    LoadEvent,
    ModelsEvent,
    NeuronAddedEvent,
    NeuronRemovedEvent,
    OutcomeEvent,
    ReconfiguredEvent,
    RequestEvent,
    TraceHeader,
    TraceWriter,
    UnloadEvent,
)
from ..trace import Event as TraceEvent
from ..wire import Invalid, parse_health
from .clone import ENGINE_COUNTERS, clone_engine, containers, frozen_containers
from .invariants import (
    ALL_INVARIANTS,
    check_decision,
    check_health,
    d1,
    f1,
    l1,
    l2,
    reordered_catalogue,
    reordered_views,
    spec_decide,
    spec_feasible,
    spec_model,
)
from .monitor import (
    REPORTS,
    Monitor,
    NodeMonitor,
    spec_label,
    spec_policy,
    spec_policy_problems,
)

__all__ = [
    "DEFAULT_WORLDS",
    "Counterexample",
    "Coverage",
    "ExploreResult",
    "Move",
    "VerifyResult",
    "Violation",
    "World",
    "clone_engine",
    "explore",
    "explore_world",
    "spec_conditions",
    "verify",
    "write_counterexample",
]

# --- the alphabet ------------------------------------------------------------------------------

BIG = "big"  # needs 2 GPUs of >= 40000 MB, source "hf"
PIN = "pin"  # 1 GPU, pinned on n1
SMALL = "small"  # 1 GPU; also the name of an alias (shadowed)
FREE = "free"  # uncatalogued, reported by polls
VRAM = 40000


def _disc(*vram: int, complete: bool = True) -> dict[str, object]:
    return {
        "hostname": "node",
        "os": "Linux",
        "kernel": "6.8",
        "devices": [
            {"index": i, "name": "GPU", "vram_total_mb": v, "compute_capability": "9.0"}
            for i, v in enumerate(vram)
        ],
        "harnesses": ["candle", "llama"],
        "max_prompt_tokens": 32768 if complete else 0,
    }


#: /discovery answers: at the threshold, one MB below, one device short, one of
#: two big enough, above; an incomplete one (fetched again, replaceable); a body
#: that fails validation; a failed fetch (None).
DISCOVERIES: Mapping[str, object] = {
    "at": _disc(VRAM, VRAM),
    "below": _disc(VRAM - 1, VRAM - 1),
    "one": _disc(VRAM),
    "mixed": _disc(VRAM, VRAM - 1),
    "above": _disc(VRAM + 1, VRAM + 1, VRAM + 1),
    "partial": _disc(VRAM, VRAM, complete=False),
    "partial-one": _disc(VRAM, complete=False),
    "invalid": {"devices": [{"index": 0}]},
    "failed": None,
}


def _entry(model: str, status: str) -> dict[str, object]:
    return {"id": model, "harness": "candle", "status": status, "devices": [0]}


#: /models answers (None: a failed fetch).
POLLS: Mapping[str, object] = {
    "none": [],
    "loaded": [_entry(BIG, "loaded")],
    "reloading": [_entry(BIG, "reloading")],
    "recovering": [_entry(BIG, "recovering")],
    "unloaded": [_entry(BIG, "unloaded")],
    "loading": [_entry(BIG, "loading")],
    "paused": [_entry(BIG, "paused")],  # an unknown status string reads as loaded
    "free": [_entry(FREE, "loaded")],
    "both": [_entry(BIG, "loaded"), _entry(FREE, "loaded")],
    "twice": [_entry(BIG, "unloaded"), _entry(BIG, "recovering")],  # the later wins
    "pin": [_entry(PIN, "unloaded")],
    "malformed": [{"id": BIG, "harness": "candle"}],  # no status: a failed poll
    "failed": None,
}


def _load(in_flight: int, queue: int) -> dict[str, object]:
    return {
        "uptime_secs": 60,
        "devices": [],
        "models": [{"id": BIG, "in_flight": in_flight, "queue_depth": queue}],
    }


#: /health answers (None: a failed fetch).
HEALTHS: Mapping[str, object] = {
    "none": {"uptime_secs": 60, "devices": []},
    "zero": _load(0, 0),
    "one": _load(1, 0),
    "two": _load(0, 2),
    "invalid": {"uptime_secs": 60, "models": [{"id": BIG, "in_flight": -1, "queue_depth": 0}]},
    "failed": None,
}


@attrs.frozen(slots=True)
class Move:
    """One observation: ``kind`` on ``node`` (None: the fleet) in ``variant``.

    Kinds: ``discovery``, ``models``, ``health`` (answers of those names);
    ``load``/``unload`` of ``big`` (``ok``/``fail``); ``route`` a request for
    ``variant`` (its attempt stays open); ``close`` the oldest open attempt on
    ``node`` (``ok``, ``failed``, ``neutral`` or ``rejected``); ``attempt`` a request for
    ``big`` with every other node excluded that ``node`` serves, then its
    outcome (``ok``/``failed``; enabled only when the engine routes it to
    ``node``); ``remove`` / ``add`` the node; ``finish``: ``Engine.finish``
    for the world's model on ``node`` where no count is open (as an
    integration that routes without a key ends its requests); ``reload``
    (fleet): ``Engine.reconfigure`` with the world's ``reloads[variant]``.
    """

    kind: str
    node: str | None
    variant: str

    def describe(self, world: World | None = None) -> str:
        n, v = self.node, self.variant
        discoveries = DISCOVERIES if world is None else world.discoveries
        polls = POLLS if world is None else world.polls
        healths = HEALTHS if world is None else world.healths
        model = BIG if world is None else world.model
        if self.kind == "discovery":
            body = discoveries[v]
            if body is None:
                return f"{n}: /discovery fails"
            return f"{n}: /discovery answers {v} ({_describe_discovery(body)})"
        if self.kind == "models":
            if polls[v] is None:
                return f"{n}: /models fails (timeout)"
            return f"{n}: /models answers {polls[v]!r}"
        if self.kind == "health":
            if healths[v] is None:
                return f"{n}: /health fails"
            return f"{n}: /health answers {healths[v]!r}"
        if self.kind in ("load", "unload"):
            return f"{n}: {self.kind} of {model} {'succeeds' if v == 'ok' else 'fails'}"
        if self.kind == "route":
            return f"a request for {v!r} is routed (its answer still pending)"
        if self.kind == "close":
            return f"{n}: the oldest pending request ends ({v})"
        if self.kind == "attempt":
            return f"{n}: a request for {model!r} (others excluded) is served, {v}"
        if self.kind == "report":
            return f"{n}: an outcome names it for a request it was not routed ({v})"
        if self.kind == "finish":
            return f"{n}: Engine.finish ends a request for {model!r} (no count open)"
        if self.kind == "reload":
            return f"the configuration is reloaded ({v})"
        return f"{n}: {'leaves' if self.kind == 'remove' else 'joins'} the fleet"


def _describe_discovery(body: object) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("devices"), list):
        return "malformed"
    vram = [d.get("vram_total_mb") for d in body["devices"] if isinstance(d, dict)]
    done = "complete" if body.get("max_prompt_tokens") else "incomplete"
    return f"{len(vram)} GPU(s) {vram}, {done}"


# --- worlds -----------------------------------------------------------------------------------


def world_catalogue(names: Sequence[str]) -> Catalogue:
    """``big`` (2 GPUs >= 40000 MB), ``pin`` (pinned on the second node), ``small``;
    aliases: ``tier/big`` -> big, ``tier/chain`` -> tier/big (never followed twice),
    ``small`` -> big (an alias that shadows a catalogued model)."""
    pinned = names[1] if len(names) > 1 else names[0]
    return Catalogue(
        profiles={
            BIG: Profile(
                id=BIG, harness="candle", min_devices=2, min_device_vram_mb=VRAM, source="hf"
            ),
            PIN: Profile(id=PIN, harness="llama", quant="q4", pinned_on=(pinned,)),
            SMALL: Profile(id=SMALL, harness="llama"),
        },
        aliases={"tier/big": BIG, "tier/chain": "tier/big", SMALL: BIG},
    )


def reload_catalogue(names: Sequence[str]) -> Catalogue:
    """The catalogue a reload brings: ``big`` on one GPU of 40000 MB, ``pin``
    pinned on the first node, ``tier/big`` now an alias of ``pin``, no alias
    shadowing ``small``."""
    return Catalogue(
        profiles={
            BIG: Profile(
                id=BIG, harness="candle", min_devices=1, min_device_vram_mb=VRAM, source="hf"
            ),
            PIN: Profile(id=PIN, harness="llama", quant="q4", pinned_on=(names[0],)),
            SMALL: Profile(id=SMALL, harness="llama"),
        },
        aliases={"tier/big": PIN, "tier/chain": "tier/big"},
    )


#: Asked on every state of every world.
REQUESTS: tuple[str, ...] = (BIG, "tier/big", "tier/chain", SMALL, PIN, FREE, "nope")
#: Also asked with each single node excluded, and with every node excluded.
EXCLUDE_REQUESTS: tuple[str, ...] = (BIG, FREE)


def node_names(count: int) -> tuple[str, ...]:
    return tuple(f"n{i}" for i in range(count))


@attrs.frozen(slots=True, kw_only=True, eq=False)
class World:
    """One small fleet: its nodes, catalogue, policy, alphabet and depth.

    ``node_moves`` are ``(kind, variant)`` applied to every node,
    ``fleet_moves`` to the fleet (``route``). The answer tables map a variant
    to its body (None: a failed fetch); ``model`` is the model that loads,
    unloads and served requests (``attempt``) are for; ``requests`` are asked
    on every state, ``exclude_requests`` also with each node and with every
    node excluded. The default catalogue is :func:`world_catalogue`.
    """

    name: str
    about: str
    names: tuple[str, ...]
    policy: Policy
    depth: int
    node_moves: tuple[tuple[str, str], ...]
    fleet_moves: tuple[tuple[str, str], ...] = ()
    catalogue: Catalogue | None = None
    requests: tuple[str, ...] = REQUESTS
    exclude_requests: tuple[str, ...] = EXCLUDE_REQUESTS
    discoveries: Mapping[str, object] = DISCOVERIES
    polls: Mapping[str, object] = POLLS
    healths: Mapping[str, object] = HEALTHS
    model: str = BIG
    #: the endpoint of each node (for the counterexample's trace header)
    endpoints: Mapping[str, str] = attrs.field(factory=dict)
    #: the policy the spec says the world runs under, built from the monitor's
    #: own table of values (None: ``policy`` as given); the engine runs ``policy``
    spec_policy: Policy | None = None
    #: at most this many routed requests pending at once
    pending: int = 2
    #: reconfigurations (``reload`` moves): variant -> the new policy and/or catalogue
    reloads: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    #: ``/health`` answers at even steps arrive parsed already, as replay's
    #: decoder hands them to ``Engine.observe_health`` (a dict), and at odd
    #: multiples of 3 as a read-only mapping; the others as bodies
    parsed_health: bool = False
    #: what exploring the world costs, relative to the others (CPU seconds
    #: measured by benchmarks/verify_bench.py): the workers take the costliest
    #: first, so that the longest world does not start last. It orders the work,
    #: never changes it; None (and any other bound): estimated from the alphabet
    cost: float | None = None

    @property
    def nodes(self) -> int:
        return len(self.names)

    def the_catalogue(self) -> Catalogue:
        return self.catalogue if self.catalogue is not None else world_catalogue(self.names)

    def moves(self) -> tuple[Move, ...]:
        out = [Move(k, n, v) for n in self.names for k, v in self.node_moves]
        out += [Move(k, None, v) for k, v in self.fleet_moves]
        return tuple(out)

    def with_bound(
        self, *, nodes: int | None = None, threshold: int | None = None, depth: int | None = None
    ) -> World:
        policy, spec = self.policy, self.spec_policy
        if threshold is not None:
            policy = policy.with_values({"failure_threshold": threshold})
            if spec is not None:
                spec = spec.with_values({"failure_threshold": threshold})
        names = self.names if nodes is None else node_names(nodes)
        return attrs.evolve(
            self,
            names=names,
            policy=policy,
            spec_policy=spec,
            depth=self.depth if depth is None else depth,
            cost=self.cost if (nodes, threshold, depth) == (None, None, None) else None,
        )


class _Policies(TypedDict):
    policy: Policy
    spec_policy: Policy


def _policies(base: str = "defaults", **values: object) -> _Policies:
    """A world's policy as the engine gets it -- ``Policy()`` or
    ``Policy.reference()`` as the code defines them, ``values`` over it -- and
    as the spec says it is (:func:`~cortex_fsm.verify.monitor.spec_policy`,
    from the monitor's own table): a default the code gets wrong shows as a
    disagreement between the engine and the monitor."""
    policy = Policy() if base == "defaults" else Policy.reference()
    if values:
        policy = policy.with_values(values)
    return {"policy": policy, "spec_policy": spec_policy(base, **values)}


def _polls(*variants: str) -> tuple[tuple[str, str], ...]:
    return tuple(("models", v) for v in variants)


#: The default bound: together these reach every row, transition and answer.
DEFAULT_WORLDS: tuple[World, ...] = (
    World(
        name="health",
        about="health: polls and request outcomes of every kind, threshold 3",
        names=node_names(2),
        **_policies(),  # Policy() as given: the defaults' threshold, 3
        depth=7,
        node_moves=(
            *_polls("loaded", "failed", "malformed"),
            ("attempt", "ok"),
            ("attempt", "failed"),
            ("report", "ok"),
            ("report", "failed"),
        ),
        cost=1.6,
    ),
    World(
        name="static",
        about="static lifecycle and known-down models",
        names=node_names(2),
        **_policies(lifecycle="static", failure_threshold=1),
        depth=5,
        node_moves=(
            *_polls("none", "loaded", "unloaded", "recovering", "free", "failed"),
            ("discovery", "at"),
            ("attempt", "failed"),
        ),
        cost=2.2,
    ),
    World(
        name="static-reference",
        about="static lifecycle with known_down = reference",
        names=node_names(2),
        **_policies(lifecycle="static", known_down="reference", failure_threshold=1),
        depth=4,
        node_moves=(
            *_polls("none", "loaded", "recovering", "unloaded", "free", "failed"),
            ("discovery", "at"),
        ),
        cost=0.8,
    ),
    World(
        name="fleet",
        about="a fleet that changes: nodes leave and join with requests in flight",
        names=node_names(2),
        **_policies(failure_threshold=2),
        depth=5,
        node_moves=(
            *_polls("loaded", "free", "failed"),
            ("discovery", "at"),
            ("close", "ok"),
            ("remove", ""),
            ("add", ""),
        ),
        fleet_moves=(("route", BIG), ("route", FREE)),
        cost=2.2,
    ),
    World(
        name="models",
        about="model map: every status, repeats, loads and unloads and their failures",
        names=node_names(2),
        **_policies(failure_threshold=2),
        depth=4,
        node_moves=(
            *_polls(*POLLS),
            ("discovery", "at"),
            ("load", "ok"),
            ("load", "fail"),
            ("unload", "ok"),
            ("unload", "fail"),
        ),
        cost=9.9,
    ),
    World(
        name="topology",
        about="topology: discoveries at, below and above every threshold; refetch",
        names=node_names(3),
        **_policies(failure_threshold=1),
        depth=4,
        node_moves=(
            *(("discovery", v) for v in DISCOVERIES),
            *_polls("none", "failed"),
        ),
        cost=20.5,
    ),
    World(
        name="load",
        about="load: readings distinct, equal, missing, invalid; in-flight and recency",
        names=node_names(3),
        **_policies(failure_threshold=2),
        depth=5,
        node_moves=(
            *_polls("loaded", "failed"),
            *(("health", v) for v in HEALTHS),
            ("close", "ok"),
            ("close", "neutral"),
        ),
        fleet_moves=(("route", BIG), ("route", "tier/big")),
        cost=17.6,
    ),
    World(
        name="inflight",
        about="in-flight counts: three on one replica, ends with none open, an end that "
        "is neither success nor failure, reloads (load max -> reported with requests "
        "pending and back, a lower failure threshold, a new catalogue)",
        names=node_names(2),
        **_policies(),  # Policy() as given
        depth=5,
        pending=3,
        node_moves=(
            *_polls("loaded", "failed"),
            ("discovery", "one"),
            ("health", "one"),
            ("health", "invalid"),
            ("close", "ok"),
            ("close", "rejected"),
            ("finish", ""),
        ),
        parsed_health=True,
        fleet_moves=(
            ("route", BIG),
            ("reload", "reported"),
            ("reload", "max"),
            ("reload", "threshold"),
            ("reload", "catalogue"),
        ),
        reloads={
            "reported": {"policy": spec_policy(load="reported")},
            "max": {"policy": spec_policy()},
            "threshold": {"policy": spec_policy(failure_threshold=2)},
            "catalogue": {"catalogue": reload_catalogue(node_names(2))},
        },
        cost=4.0,
    ),
    World(
        name="reference",
        about="Part I: every Part II key at its reference value",
        names=node_names(3),
        **_policies("reference", failure_threshold=2),
        depth=4,
        node_moves=(
            *_polls("none", "loaded", "recovering", "unloaded", "free", "failed"),
            ("health", "one"),
            ("discovery", "at"),
            ("discovery", "one"),
        ),
        cost=29.9,
    ),
)


# --- spec-level table coverage ----------------------------------------------------------------


def spec_conditions(
    fleet: FleetSnapshot,
    catalogue: Catalogue,
    requested: str,
    policy: Policy,
    exclude: frozenset[str],
) -> dict[Cond, bool]:
    """The decision table's conditions, evaluated from their definitions on
    ``fleet`` (the monitor's): which row applies, for the coverage report."""
    model = spec_model(catalogue, requested)
    live = [n for n in fleet.nodes if n.routable and n.name not in exclude]
    down = [n for n in fleet.nodes if not (n.routable and n.name not in exclude)]

    def status(node: Any) -> ModelStatus | None:
        entry = node.models.get(model)
        return None if entry is None else entry.status

    serving = (ModelStatus.LOADED, ModelStatus.RELOADING)
    profile = catalogue.profiles.get(model)
    return {
        Cond.ANY_ROUTABLE: bool(live),
        Cond.LOADED: any(status(n) in serving for n in live),
        Cond.RECOVERING: any(status(n) is ModelStatus.RECOVERING for n in live),
        Cond.UNLOADED: any(status(n) is ModelStatus.UNLOADED for n in live),
        Cond.STATIC: policy.lifecycle == "static",
        Cond.DOWN_SERVING: any(status(n) in serving for n in down),
        Cond.KNOWN_DOWN: policy.known_down == "retry" and any(model in n.models for n in down),
        Cond.CATALOGUED: profile is not None,
        Cond.FEASIBLE_ROUTABLE: profile is not None
        and any(spec_feasible(profile, n.name, n.discovery) for n in live),
        Cond.FEASIBLE_DOWN: profile is not None
        and any(spec_feasible(profile, n.name, n.discovery) for n in down),
    }


# --- results ---------------------------------------------------------------------------------


@attrs.frozen(slots=True, kw_only=True)
class Violation:
    """One invariant broken on one state."""

    invariant: str
    detail: str
    request: str | None = None  # the request whose decision broke it (routing invariants)
    exclude: frozenset[str] = frozenset()


@attrs.frozen(slots=True, kw_only=True)
class Counterexample:
    """A shortest path (in its world) to a violating state, and what was wrong there."""

    world: str
    moves: tuple[Move, ...]
    violations: tuple[Violation, ...]
    decisions: tuple[tuple[str, Decision], ...]  # the engine's answers on the final state
    states: tuple[tuple[str, str], ...]  # node -> health label on the final state
    trace: str | None = None  # where it was written
    replayed: bool = False  # the written trace replays to the same decisions (or raises the same)


@attrs.frozen(slots=True, kw_only=True)
class Coverage:
    """What the exploration reached: table rows (by index in ``routing.RULES``),
    health transitions ``(T, state, event, next state)``, and rejects told
    ``(outcome, Retry-After)``."""

    rows: frozenset[int] = frozenset()
    transitions: frozenset[tuple[int, str, str, str]] = frozenset()
    answers: frozenset[tuple[str, int | None]] = frozenset()

    def __or__(self, other: Coverage) -> Coverage:
        return Coverage(
            rows=self.rows | other.rows,
            transitions=self.transitions | other.transitions,
            answers=self.answers | other.answers,
        )

    def missing_rows(self) -> list[int]:
        return [i for i in range(len(RULES)) if i not in self.rows]

    def missing_transitions(self, threshold: int = 3) -> list[tuple[str, str, str]]:
        table = HealthTable(threshold)
        want = {
            (s.label, e.label, table.step(s, e).label) for s in all_states(threshold) for e in Event
        }
        have = {(s, e, a) for t, s, e, a in self.transitions if t == threshold}
        return sorted(want - have)

    def missing_answers(self) -> list[str]:
        rejects = {r.outcome.value for r in RULES if not r.outcome.routed}
        return sorted(rejects - {o for o, _r in self.answers})


@attrs.frozen(slots=True, kw_only=True)
class ExploreResult:
    world: str
    about: str
    nodes: int
    threshold: int
    depth_bound: int | None
    states: int
    transitions: int
    depth: int  # the deepest level reached
    complete: bool  # the frontier emptied: every reachable state was explored
    seconds: float
    checked: Mapping[str, int]  # invariant -> number of checks made
    violated: Mapping[str, int]  # invariant -> depth of its shortest violation found
    coverage: Coverage
    counterexample: Counterexample | None
    stopped_early: bool = False

    @property
    def ok(self) -> bool:
        return self.counterexample is None

    @property
    def states_per_second(self) -> float:
        return self.states / self.seconds if self.seconds > 0 else math.inf


@attrs.frozen(slots=True, kw_only=True)
class VerifyResult:
    """Every world's result, and what they reached together."""

    worlds: tuple[ExploreResult, ...]
    seconds: float
    jobs: int

    @property
    def ok(self) -> bool:
        return all(w.ok for w in self.worlds)

    @property
    def counterexample(self) -> Counterexample | None:
        for w in self.worlds:
            if w.counterexample is not None:
                return w.counterexample
        return None

    @property
    def coverage(self) -> Coverage:
        out = Coverage()
        for w in self.worlds:
            out = out | w.coverage
        return out

    @property
    def states(self) -> int:
        return sum(w.states for w in self.worlds)

    @property
    def transitions(self) -> int:
        return sum(w.transitions for w in self.worlds)

    @property
    def checked(self) -> dict[str, int]:
        out = dict.fromkeys(ALL_INVARIANTS, 0)
        for w in self.worlds:
            for k, v in w.checked.items():
                out[k] = out.get(k, 0) + v
        return out


# --- the engine's complete state, as a key ------------------------------------------------------

#: Engine fields that never change a decision: statistics, and the recency
#: counter (recency enters the key as an order, through the node records).
_ENGINE_STATS = ENGINE_COUNTERS | {"_decisions", "_seq"}
#: Engine fields fixed for the world (configuration and derived tables), and
#: the kept replicas' keys (``_ranked``: derived from the node records' loads,
#: local counts and recency, which are in the key, and holding raw sequence
#: numbers, which are not).
_ENGINE_FIXED = frozenset(
    {"catalogue", "policy", "_table", "_after_ok", "_after_failed", "_after_request", "_ranked"}
)
#: Node-record fields that are times, texts or counters no decision reads.
_NODE_STATS = frozenset({"last_ok", "last_failure", "failures", "endpoint"})


#: Values a key holds as they are (everything else is turned into tuples).
_ATOMS = frozenset({str, int, float, bool, type(None), HealthState})
#: Per type, whether the key holds its values as they are (not a container).
_PLAIN: dict[type, bool] = {}
#: The node record's slots in the key, in its order, as :meth:`_Keyer._known_node`
#: writes them out.
_NODE_KEY_SLOTS = (
    "busy",
    "chosen",
    "discovery",
    "health",
    "health_body",
    "local",
    "models",
    "models_body",
    "name",
    "routable",
)
#: Per record class, its slots that go into the key.
_KEY_SLOTS: dict[type, tuple[str, ...]] = {}


class _Keyer:
    """Turns an engine into a hashable key of everything a future decision may read."""

    def __init__(self, world: World) -> None:
        self.tables = (("d", world.discoveries), ("m", world.polls), ("h", world.healths))
        self.bodies: dict[int, str] = {}
        for group, table in self.tables:
            for variant, body in table.items():
                if body is not None:
                    self.bodies[id(body)] = f"{group}:{variant}"
        self.fields: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.fixed: dict[str, tuple[Any, Any]] = {}
        self.tokens: dict[Any, int] = {}
        self.by_id: dict[int, tuple[Any, int]] = {}
        self.plain: dict[int, Sequence[Any]] = {}

    def body(self, value: Any) -> str:
        """An answer body as its alphabet variant (by identity, else by value)."""
        name = self.bodies.get(id(value))
        if name is not None:
            return name
        for group, table in self.tables:
            for variant, body in table.items():
                if body is not None and body == value:
                    return f"{group}:{variant}"
        return repr(value)

    def _value(self, value: Any) -> Any:
        cls = type(value)
        plain = _PLAIN.get(cls)
        if plain is None:
            plain = _PLAIN[cls] = not issubclass(cls, dict | list | tuple | set | frozenset)
        if plain:
            return value
        if isinstance(value, dict):
            return tuple(sorted((k, self._value(v)) for k, v in value.items()))
        if isinstance(value, list | tuple):
            if value and id(value) in self.bodies:
                return self.bodies[id(value)]
            if cls is tuple and self._plain_tuple(value):
                return value  # what the line below would build, equal to it
            return tuple(self._value(v) for v in value)
        if isinstance(value, set | frozenset):
            return tuple(sorted(value))
        return value

    def _plain_tuple(self, value: Sequence[Any]) -> bool:
        """Whether a tuple holds only plain values and such tuples (its key is
        itself); the engine shares such tuples from state to state, so the
        answer is remembered by identity."""
        got = self.plain.get(id(value))
        if got is not None and got is value:
            return True
        for v in value:
            cls = type(v)
            plain = _PLAIN.get(cls)
            if plain is None:
                plain = _PLAIN[cls] = not issubclass(cls, dict | list | tuple | set | frozenset)
            if not plain and not (cls is tuple and self._plain_tuple(v)):
                return False
        self.plain[id(value)] = value  # kept alive: its id is not reused
        return True

    def _counts(self, counts: Any) -> Any:
        """A dict of plain values (a node's loads, local counts) as its key."""
        if type(counts) is not dict:
            return self._value(counts)
        if not counts:
            return ()
        for v in counts.values():
            if not _PLAIN.get(type(v)):
                return self._value(counts)
        return tuple(sorted(counts.items()))  # what _value gives, without its calls

    def node(self, rec: Any, order: Mapping[tuple[str, str], int]) -> tuple[Any, ...]:
        slots = _KEY_SLOTS.get(type(rec))
        if slots is None:
            slots = _KEY_SLOTS[type(rec)] = tuple(
                s for s in type(rec).__slots__ if s not in _NODE_STATS
            )
        if slots == _NODE_KEY_SLOTS:
            try:
                return self._known_node(rec, order)
            except AttributeError:
                pass
        out: list[Any] = []
        for slot in slots:
            try:
                value = getattr(rec, slot)
            except AttributeError:
                continue
            if slot == "models":
                out.append(tuple(sorted([(m, e.status.value) for m, e in value.items()])))
            elif slot == "chosen":
                name = rec.name
                out.append(tuple(sorted([(m, order[name, m]) for m in value])))
            elif slot in ("models_body", "health_body"):
                out.append(None if value is None else self.body(value))
            elif slot == "discovery":
                out.append(None if value is None else self.token(value))
            elif type(value) in _ATOMS:
                out.append(value)
            else:
                out.append(self._value(value))
        return tuple(out)

    def _known_node(self, rec: Any, order: Mapping[tuple[str, str], int]) -> tuple[Any, ...]:
        """:meth:`node`'s loop written out for the engine's record as it is
        (the same key, slot by slot)."""
        name, health, routable = rec.name, rec.health, rec.routable
        discovery, models_body, health_body = rec.discovery, rec.models_body, rec.health_body
        return (
            self._counts(rec.busy),
            tuple(sorted([(m, order[name, m]) for m in rec.chosen])),
            None if discovery is None else self.token(discovery),
            health if type(health) in _ATOMS else self._value(health),
            None if health_body is None else self.body(health_body),
            self._counts(rec.local),
            tuple(sorted([(m, e.status.value) for m, e in rec.models.items()])),
            None if models_body is None else self.body(models_body),
            name if type(name) in _ATOMS else self._value(name),
            routable if type(routable) in _ATOMS else self._value(routable),
        )

    def token(self, value: Any) -> int:
        """A small number standing for a frozen value: equal values get the same
        one (looked up by identity first, so the value is hashed once)."""
        got = self.by_id.get(id(value))
        if got is not None and got[0] is value:
            return got[1]
        number = self.tokens.setdefault(value, len(self.tokens))
        self.by_id[id(value)] = (value, number)  # kept alive: its id is not reused
        return number

    def engine(self, engine: Engine) -> tuple[Any, ...]:
        state = vars(engine)
        nodes = state["_nodes"]
        seqs = sorted(
            [(seq, name, m) for name, rec in nodes.items() for m, seq in rec.chosen.items()]
        )
        order = {(name, m): i for i, (_seq, name, m) in enumerate(seqs)}
        out: list[Any] = [
            tuple([(name, self.node(rec, order)) for name, rec in sorted(nodes.items())])
        ]
        names = tuple(state)
        fields = self.fields.get(names)
        if fields is None:
            fields = self.fields[names] = tuple(
                f
                for f in sorted(names)
                if f not in _ENGINE_STATS and f not in _ENGINE_FIXED and f != "_nodes"
            )
        for field in fields:
            value = state[field]
            if field in ("_aliases_of", "_cache_keys"):
                # fixed until a reload: its key is reused while the value is equal
                last = self.fixed.get(field)
                if last is None or last[0] != value:
                    last = self.fixed[field] = (copy.deepcopy(value), self._value(value))
                out.append((field, last[1]))
            elif field in ("_holders", "_feasible"):
                out.append((field, tuple(sorted((k, tuple(sorted(v))) for k, v in value.items()))))
            elif field == "_cache":
                out.append((field, tuple(sorted(value.items(), key=lambda kv: kv[0]))))
            elif field == "_open":
                out.append((field, tuple(sorted(value.values()))))
            elif field == "_stale":  # request ids differ from path to path: only the count
                out.append((field, len(value)))
            elif field == "neurons":
                out.append((field, tuple(sorted(n.name for n in value))))
            else:
                out.append((field, self._value(value)))
        return tuple(out)


# --- one world's exploration ------------------------------------------------------------------

Found = list[Violation]
_NO_EXCLUDE: frozenset[str] = frozenset()


@attrs.frozen(slots=True)
class _State:
    """A frontier state: the engine, the monitor, and the path that led here."""

    engine: Engine
    monitor: Monitor
    path: tuple[Move, ...]


class _World:
    """Explores one world."""

    def __init__(self, world: World, *, stop_at_first: bool) -> None:
        self.world = world
        self.names = world.names
        self.catalogue = world.the_catalogue()
        self._reversed: dict[int, Catalogue] = {}
        self.policy = world.policy
        #: the policy the monitor and the invariants judge by (the spec's)
        self.judge_policy = world.spec_policy if world.spec_policy is not None else world.policy
        self.threshold = self.judge_policy.failure_threshold
        self.moves = world.moves()
        self.stop_at_first = stop_at_first
        self.keyer = _Keyer(world)
        self.checked: dict[str, int] = dict.fromkeys(ALL_INVARIANTS, 0)
        #: R5 violations found while applying a move (a request routed otherwise
        #: than decided), taken by the search after each transition.
        self.wrong_routes: list[Violation] = []
        self.rows: set[int] = set()
        self.transitions: set[tuple[int, str, str, str]] = set()
        self.answers: set[tuple[str, int | None]] = set()
        self._routing_memo: dict[tuple[Any, ...], list[Violation]] = {}
        self._r5_memo: dict[tuple[Any, ...], bool] = {}
        self.excludes: list[frozenset[str]] = [frozenset({n}) for n in self.names]
        self.excludes.append(frozenset(self.names))
        self.shared: dict[int, Any] = {}
        for table in (world.discoveries, world.polls, world.healths):
            for body in table.values():
                containers(body, self.shared)

    # -- building states --

    def neurons(self) -> list[Neuron]:
        return [self.neuron(n) for n in self.names]

    def neuron(self, name: str) -> Neuron:
        endpoint = self.world.endpoints.get(name, f"http://{name}.verify:13131")
        return Neuron(name=name, endpoint=endpoint)

    def fresh(self) -> tuple[Engine, Monitor]:
        engine = Engine(self.neurons(), self.catalogue, self.policy)
        monitor = Monitor.start(self.names, self.judge_policy, uncounted=True)
        return engine, monitor

    def catalogue_of(self, monitor: Monitor) -> Catalogue:
        """The catalogue in force (the world's, until a reload replaces it)."""
        return monitor.catalogue if monitor.catalogue is not None else self.catalogue

    def reversed_catalogue(self, catalogue: Catalogue) -> Catalogue:
        out = self._reversed.get(id(catalogue))
        if out is None:
            out = self._reversed[id(catalogue)] = reordered_catalogue(catalogue)
        return out

    def records(
        self, move: Move, step: int, engine: Engine, monitor: Monitor
    ) -> list[dict[str, Any]] | None:
        """The trace records of ``move`` at step ``step``, or None when it is not
        enabled here."""
        t = float(step)
        kind, node, variant = move.kind, move.node, move.variant
        present = node is None or engine.has_node(node)
        if kind == "add":
            if present:
                return None
            return [
                {
                    "kind": "neuron_added",
                    "t": t,
                    "neuron": Neuron(name=node or "", endpoint=f"http://{node}.verify:13131"),
                }
            ]
        if not present:
            return None
        if kind == "finish":
            # Engine.finish called directly (as an integration that routes without
            # a key ends its requests), only where no count is open: for the
            # engine that is no change at all, so a trace need not show it.
            mon = monitor.node(node or "")
            if mon is None or mon.local.get(self.world.model, 0) > 0:
                return None
            return [{"kind": "finish", "t": t, "node": node, "model": self.world.model}]
        if kind == "reload":
            change = self.world.reloads[variant]
            policy, catalogue = change.get("policy"), change.get("catalogue")
            if (policy is None or policy == monitor.policy) and (
                catalogue is None or catalogue is self.catalogue_of(monitor)
            ):
                return None  # nothing would change
            return [{"kind": "reconfigured", "t": t, **change}]
        if kind in ("discovery", "models", "health"):
            world = self.world
            table = {
                "discovery": world.discoveries,
                "models": world.polls,
                "health": world.healths,
            }[kind]
            body = table[variant]
            if body is None:
                rec: dict[str, Any] = {"kind": kind, "t": t, "node": node, "ok": False}
                if kind == "models":
                    rec["error"] = "timeout"
                return [rec]
            rec = {"kind": kind, "t": t, "node": node, "ok": True, "body": body}
            if kind == "health" and world.parsed_health and (step % 2 == 0 or step % 3 == 0):
                # parsed already: a dict (as replay's decoder gives it), on odd
                # multiples of 3 a read-only mapping (as an integration may)
                rec["parsed"] = "dict" if step % 2 == 0 else "view"
            return [rec]
        if kind in ("load", "unload"):
            model = self.world.model
            return [{"kind": kind, "t": t, "node": node, "model": model, "ok": variant == "ok"}]
        if kind == "route":
            if len(monitor.open) >= self.world.pending:
                return None  # at most this many requests pending at once
            return [{"kind": "request", "t": t, "id": f"q{step}", "model": variant}]
        if kind == "close":
            for key, name, _model, _counted in monitor.open:
                if name == node:
                    return [_outcome(t, key, node, variant)]
            return None
        if kind == "attempt":
            others = frozenset(n for n in engine.node_names if n != node)
            decision = engine.decide(self.world.model, others)
            if decision.node != node:
                return None
            key = (f"q{step}", 1)
            request = {
                "kind": "request",
                "t": t,
                "id": key[0],
                "model": self.world.model,
                "attempt": 1,
                # at odd steps a list, as a JSON decoder gives it (replay's
                # reader makes a frozenset; an integration may pass any iterable)
                "exclude": others if step % 2 == 0 else sorted(others),
            }
            return [request, _outcome(t, key, node, variant)]
        if kind == "report":
            # An outcome naming this node for a request that was not routed to it
            # (the engine hears of every request's node, §6): reaches the rows of a
            # node that cannot be chosen (unknown, unhealthy).
            key = (f"q{step}", 1)
            request = {"kind": "request", "t": t, "id": key[0], "model": "nope"}
            return [request, _outcome(t, key, node, variant)]
        if kind == "remove":
            if len(engine.node_names) <= 1:
                return None
            return [{"kind": "neuron_removed", "t": t, "node": node}]
        raise ValueError(f"unknown move kind {kind!r}")

    def apply(
        self, engine: Engine, monitor: Monitor, records: Sequence[Mapping[str, Any]]
    ) -> Monitor:
        """Feed ``records`` to the engine and the monitor (health transitions are
        noted for the coverage report)."""
        for rec in records:
            kind = rec["kind"]
            before = dict(engine.states()) if kind in ("models", "outcome") else None
            result: Any = None
            if kind == "finish":
                engine.finish(rec["node"], rec["model"])
            elif kind == "health" and rec.get("parsed"):
                reading: Mapping[str, int] | Invalid = parse_health(rec["body"])
                if rec["parsed"] == "view" and isinstance(reading, dict):
                    reading = MappingProxyType(reading)
                engine.observe_health(rec["node"], rec["t"], reading)
            elif kind == "request":
                # What route() answers must be what the decision over the same
                # fleet gives (R5): route() has paths of its own (the kept
                # replicas, the cache) that the asked decisions never take.
                # Judged here, on the transition, because the state reached
                # may be one seen before (and then not checked again).
                exclude = frozenset(rec.get("exclude") or ())
                expected = decide(
                    engine.snapshot(), engine.catalogue, rec["model"], engine.policy, exclude
                )
                result = apply_record(engine, kind, rec)
                self.checked["R5"] += 1
                if result != expected:
                    self.wrong_routes.append(
                        Violation(
                            invariant="R5",
                            request=rec["model"],
                            exclude=exclude,
                            detail=f"request {rec['model']!r}{_excluding(exclude)} was routed "
                            f"{_decision_text(result)}; the decision over the same fleet is "
                            f"{_decision_text(expected)} ({_differ(result, expected)})",
                        )
                    )
            else:
                result = apply_record(engine, kind, rec)
            routed = None
            fields: Mapping[str, Any] = rec
            if kind == "request":
                assert isinstance(result, Decision)
                routed = result.node if result.routed else None
                fields = {
                    **rec,
                    "resolved": spec_model(self.catalogue_of(monitor), rec["model"]),
                    "outcome": result.outcome.value,
                }
            monitor = monitor.after(kind, fields, routed)
            if before is not None:
                self._note_transition(kind, rec, before, engine, monitor)
        return monitor

    def _note_transition(
        self,
        kind: str,
        rec: Mapping[str, Any],
        before: Mapping[str, HealthState],
        engine: Engine,
        monitor: Monitor,
    ) -> None:
        node = rec["node"]
        if node is None or node not in before or not engine.has_node(node):
            return
        if kind == "models":
            from .monitor import spec_models

            ok = rec["ok"] and spec_models(rec["body"]) is not None
            event = "poll_ok" if ok else "poll_failed"
        else:
            from .monitor import _attempt_result

            result = _attempt_result(rec)
            if result is None:
                return
            event = "request_ok" if result else "request_failed"
        policy = monitor.policy
        if not policy.passive_health and event.startswith("request"):
            return
        self.transitions.add(
            (policy.failure_threshold, before[node].label, event, engine.state(node).label)
        )

    def ask(self, engine: Engine) -> list[tuple[str, frozenset[str], Decision]]:
        """Every request of the world, without and with exclusions (this fills
        the engine's decision cache, before the state's key is taken)."""
        out = [(r, _NO_EXCLUDE, engine.decide(r)) for r in self.world.requests]
        for r in self.world.exclude_requests:
            for x in self.excludes:
                out.append((r, x, engine.decide(r, x)))
        return out

    def key(self, engine: Engine, monitor: Monitor) -> tuple[Any, ...]:
        return (self.keyer.engine(engine), monitor.key(), _report_drift(engine, monitor))

    # -- checking --

    def check(
        self,
        engine: Engine,
        monitor: Monitor,
        asked: Sequence[tuple[str, frozenset[str], Decision]],
    ) -> Found:
        found: Found = []
        checked = self.checked
        names = set(engine.node_names)
        mon_names = {n.name for n in monitor.nodes}
        if names != mon_names:
            found.append(
                Violation(
                    invariant="F1",
                    detail=f"the engine's fleet is {sorted(names)}, the observations say "
                    f"{sorted(mon_names)}",
                )
            )
            return found
        listed = sorted(n.name for n in engine.neurons)
        if listed != sorted(mon_names):
            found.append(
                Violation(
                    invariant="FLEET",
                    detail=f"the engine lists the neurons {listed}, its adds and removes say "
                    f"{sorted(mon_names)}",
                )
            )
        found.extend(self._reports(engine, monitor))
        snapshot = engine.snapshot()
        by_name = {n.name: n for n in snapshot.nodes}
        policy = monitor.policy
        catalogue = self.catalogue_of(monitor)
        threshold = policy.failure_threshold
        order_engine = _recency(snapshot)
        order_monitor = _recency(monitor.snapshot())
        for mon in monitor.nodes:
            node = by_name[mon.name]
            for name in check_health(mon.history, node.health, threshold):
                found.append(
                    Violation(
                        invariant=name,
                        detail=f"{mon.name} is {node.health.label}; its health events: "
                        f"{_history_text(mon)}",
                    )
                )
            if node.health != mon.health:
                found.append(
                    Violation(
                        invariant="HSPEC",
                        detail=f"{mon.name} is {node.health.label}, docs/semantics.md §2/§6 "
                        f"say {mon.health.label}",
                    )
                )
            if not f1(mon.models, node.models):
                shown = {m: e.status.value for m, e in node.models.items()}
                found.append(
                    Violation(
                        invariant="F1",
                        detail=f"{mon.name} has models {shown}, its observations say "
                        f"{ {m: s.value for m, s in mon.models.items()} }",
                    )
                )
            if not d1(mon.discovery, node.discovery):
                found.append(
                    Violation(
                        invariant="D1",
                        detail=f"{mon.name} has discovery {_disc_text(node.discovery)}, its "
                        f"/discovery answers say {_disc_text(mon.discovery)}",
                    )
                )
            asks = engine.needs_discovery(mon.name)
            if asks is not mon.needs_discovery:
                found.append(
                    Violation(
                        invariant="D2",
                        detail=f"{mon.name} {'asks' if asks else 'does not ask'} for /discovery "
                        f"again, holding {_disc_text(mon.discovery)} by its answers",
                    )
                )
            if not l1(mon.busy, node.busy):
                found.append(
                    Violation(
                        invariant="L1",
                        detail=f"{mon.name} has load readings {dict(node.busy)}, its /health "
                        f"answers say {dict(mon.busy)}",
                    )
                )
            mine = [p for p in order_monitor if p[0] == mon.name]
            theirs = [p for p in order_engine if p[0] == mon.name]
            if not l2(mon.local, node.local, mine, theirs):
                found.append(
                    Violation(
                        invariant="L2",
                        detail=f"{mon.name} counts {dict(node.local)} in flight (chosen in the "
                        f"order {theirs}); routed requests and outcomes say {dict(mon.local)} "
                        f"({mine})",
                    )
                )
        if order_engine != order_monitor and not any(v.invariant == "L2" for v in found):
            found.append(
                Violation(
                    invariant="L2",
                    detail=f"replicas were chosen in the order {order_engine}; routed "
                    f"requests say {order_monitor}",
                )
            )
        n = len(monitor.nodes)
        for name in ("H1", "H2", "H3", "H4", "H5", "H6", "HSPEC", "F1", "D1", "D2", "L1", "L2"):
            checked[name] += n
        checked["STATUS"] += n
        checked["FLEET"] += 1
        checked["STAT"] += 1
        mon_snap = monitor.snapshot()
        mon_order = _recency_rank(mon_snap)
        eng_order = _recency_rank(snapshot)
        views = None
        project = self._projection
        config = (policy, id(catalogue))
        own = engine.catalogue
        own_config = (engine.policy, id(own))
        for requested, exclude, decision in asked:
            memo_key = (
                config,
                project(mon_snap, mon_order, catalogue, requested, exclude),
                decision,
            )
            bad = self._routing_memo.get(memo_key)
            if bad is None:
                bad = self._judge(
                    mon_snap,
                    catalogue,
                    policy,
                    requested=requested,
                    exclude=exclude,
                    decision=decision,
                )
                self._routing_memo[memo_key] = bad
            found.extend(bad)
            r5_key = (own_config, project(snapshot, eng_order, own, requested, exclude), decision)
            same = self._r5_memo.get(r5_key)
            if same is None:
                if views is None:
                    views = reordered_views(snapshot)
                mirrored = self.reversed_catalogue(own)
                again = [decide(snapshot, own, requested, engine.policy, exclude)]
                again += [decide(v, mirrored, requested, engine.policy, exclude) for v in views]
                same = all(d == decision for d in again)
                self._r5_memo[r5_key] = same
            if not same:
                found.append(
                    Violation(
                        invariant="R5",
                        detail=f"request {requested!r}{_excluding(exclude)}: the engine "
                        f"(indexes, cache) says {_decision_text(decision)}, decide() on its "
                        "snapshot, or in another order, says otherwise",
                        request=requested,
                        exclude=exclude,
                    )
                )
        routing = len(asked)
        for name in ("R1", "R2", "R3", "R4", "R5", "R6", "R7", "R9", "SPEC", "ANSWER"):
            checked[name] += routing
        return found

    def _reports(self, engine: Engine, monitor: Monitor) -> Found:
        """STAT and STATUS: what ``statistics()`` and ``status()`` report,
        against the monitor's count of what was observed (docs/semantics.md
        "Reports")."""
        found: Found = []
        stats = engine.statistics()
        wrong = [
            f"{name} {getattr(stats, name)} (observed: {monitor.count(name)})"
            for name in REPORTS
            if getattr(stats, name) != monitor.count(name)
        ]
        decided = {k: v for k, v in sorted(monitor.decisions.items()) if v}
        if dict(stats.decisions) != decided:
            wrong.append(f"decisions {dict(stats.decisions)} (routed: {decided})")
        if wrong:
            detail = "statistics() says " + ", ".join(wrong)
            found.append(Violation(invariant="STAT", detail=detail))
        for mon in monitor.nodes:
            status = engine.status(mon.name)
            label = spec_label(mon.health)
            shown = (status.state.label, stats.states.get(mon.name))
            if shown != (label, label) or status.consecutive_failures != mon.failures:
                found.append(
                    Violation(
                        invariant="STATUS",
                        detail=f"{mon.name}: status() shows {shown[0]!r} with "
                        f"{status.consecutive_failures} consecutive failure(s), statistics() "
                        f"{shown[1]!r}; its events say {label!r} with {mon.failures}",
                    )
                )
        return found

    def _projection(
        self,
        fleet: FleetSnapshot,
        order: Mapping[tuple[str, str], int],
        catalogue: Catalogue,
        requested: str,
        exclude: frozenset[str],
    ) -> tuple[Any, ...]:
        """Everything a decision for ``requested`` -- and every invariant about it --
        can depend on: per node its name, health, exclusion, the resolved model's
        status, reported load, local count and recency, and (for a catalogued
        model) its discovery. Checks are memoised on it."""
        model = spec_model(catalogue, requested)
        profiled = model in catalogue.profiles
        out: list[Any] = [requested, exclude]
        for n in fleet.nodes:
            entry = n.models.get(model)
            out.append(
                (
                    n.name,
                    n.routable,
                    None if entry is None else entry.status,
                    n.busy.get(model, 0),
                    n.local.get(model, 0),
                    order.get((n.name, model), -1),
                    n.discovery if profiled else None,
                )
            )
        return tuple(out)

    def _judge(
        self,
        fleet: FleetSnapshot,
        catalogue: Catalogue,
        policy: Policy,
        *,
        requested: str,
        exclude: frozenset[str],
        decision: Decision,
    ) -> list[Violation]:
        """The routing invariants of ``decision`` on the monitor's fleet, under the
        configuration in force, and coverage."""
        conditions = spec_conditions(fleet, catalogue, requested, policy, exclude)
        rows = matching_rules(conditions)
        if len(rows) == 1:
            self.rows.add(RULES.index(rows[0]))
        if not decision.routed:
            self.answers.add((decision.outcome.value, decision.retry_after))
        bad = [
            Violation(
                invariant=name,
                detail=f"request {requested!r}{_excluding(exclude)} -> {_decision_text(decision)}",
                request=requested,
                exclude=exclude,
            )
            for name in check_decision(fleet, catalogue, decision, policy=policy, exclude=exclude)
        ]
        spec_outcome = spec_decide(fleet, catalogue, requested, policy, exclude).outcome
        if len(rows) != 1 or rows[0].outcome is not spec_outcome:
            bad.append(
                Violation(
                    invariant="SPEC",
                    detail=f"request {requested!r}{_excluding(exclude)}: the decision table's "
                    "row for these conditions disagrees with the ordered rules",
                    request=requested,
                    exclude=exclude,
                )
            )
        return bad

    # -- the search --

    def run(self, progress: Callable[[str, int, int, int, float], None] | None) -> ExploreResult:
        start = time.perf_counter()
        world = self.world
        engine, monitor = self.fresh()
        self.shared.update(frozen_containers(engine))
        asked = self.ask(engine)
        root = self.key(engine, monitor)
        seen: set[tuple[Any, ...]] = {root}
        found = self.check(engine, monitor, asked)
        found += [Violation(invariant="POLICY", detail=p) for p in spec_policy_problems()]
        self.checked["POLICY"] += 1
        violated: dict[str, int] = {}
        bad: tuple[tuple[Move, ...], Found] | None = None
        if found:
            bad = ((), found)
            for v in found:
                violated.setdefault(v.invariant, 0)
        frontier = [_State(engine, monitor, ())] if bad is None else []
        transitions = 0
        level = 0
        while frontier and (bad is None or not self.stop_at_first) and level < world.depth:
            level += 1
            nxt: list[_State] = []
            for state in frontier:
                for move in self.moves:
                    recs = self.records(move, level, state.engine, state.monitor)
                    if recs is None:
                        continue
                    transitions += 1
                    child = clone_engine(state.engine, self.shared)
                    self.checked[CRASH] += 1
                    try:
                        child_monitor = self.apply(child, state.monitor, recs)
                        asked = self.ask(child)
                    except Exception as exc:  # TOTAL: the engine raised; a state of its own
                        self.wrong_routes = []
                        found = [Violation(invariant=CRASH, detail=crash_text(exc))]
                        if bad is None:
                            bad = ((*state.path, move), found)
                        violated.setdefault(CRASH, level)
                        if self.stop_at_first:
                            break
                        continue
                    wrong, self.wrong_routes = self.wrong_routes, []
                    before = len(seen)
                    seen.add(self.key(child, child_monitor))  # hashed once
                    if len(seen) == before and not wrong:
                        continue
                    path = (*state.path, move)
                    found = wrong + self.check(child, child_monitor, asked)
                    if found:
                        if bad is None:
                            bad = (path, found)
                        for v in found:
                            violated.setdefault(v.invariant, level)
                        if self.stop_at_first:
                            break
                        continue  # a violating state is not expanded
                    if level < world.depth:
                        nxt.append(_State(child, child_monitor, path))
                if bad is not None and self.stop_at_first:
                    break
            frontier = nxt
            if progress is not None:
                progress(world.name, level, len(seen), transitions, time.perf_counter() - start)
        complete = not frontier and level < world.depth and (bad is None or not self.stop_at_first)
        counterexample = None
        if bad is not None:
            counterexample = self.counterexample(bad[0], bad[1])
        return ExploreResult(
            world=world.name,
            about=world.about,
            nodes=world.nodes,
            threshold=self.threshold,
            depth_bound=world.depth,
            states=len(seen),
            transitions=transitions,
            depth=level,
            complete=complete,
            seconds=time.perf_counter() - start,
            checked=dict(self.checked),
            violated=violated,
            coverage=Coverage(
                rows=frozenset(self.rows),
                transitions=frozenset(self.transitions),
                answers=frozenset(self.answers),
            ),
            counterexample=counterexample,
            stopped_early=bad is not None and self.stop_at_first,
        )

    # -- counterexamples --

    def replay_path(
        self, path: Sequence[Move]
    ) -> tuple[Engine, Monitor, list[list[dict[str, Any]]]]:
        """A fresh engine and monitor fed ``path``, every request asked after every
        step (as the search asked them); the records of each step."""
        engine, monitor = self.fresh()
        self.ask(engine)
        steps: list[list[dict[str, Any]]] = []
        for step, move in enumerate(path, start=1):
            recs = self.records(move, step, engine, monitor)
            assert recs is not None, f"move {move} is not enabled when replayed"
            monitor = self.apply(engine, monitor, recs)
            self.ask(engine)
            steps.append(list(recs))
        return engine, monitor, steps

    def counterexample(self, path: Sequence[Move], found: Found) -> Counterexample:
        if any(v.invariant == CRASH for v in found):
            # The last move raised: what is shown is the state it was taken from.
            engine, monitor, _steps = self.replay_path(path[:-1])
            asked = self.ask(engine)
            violations = tuple(found)
        else:
            engine, monitor, _steps = self.replay_path(path)
            asked = self.ask(engine)
            violations = tuple(self.check(engine, monitor, asked)) or tuple(found)
        return Counterexample(
            world=self.world.name,
            moves=tuple(path),
            violations=violations,
            decisions=tuple((r, d) for r, x, d in asked if not x),
            states=tuple((n, engine.state(n).label) for n in engine.node_names),
        )

    def header(self) -> TraceHeader:
        return TraceHeader(
            neurons=tuple(self.neurons()), catalogue=self.catalogue, policy=self.policy
        )


#: The invariant a move that makes the engine raise breaks (the checker's own
#: code raising is reported the same way: the text says where it was raised).
CRASH = "TOTAL"


def crash_text(exc: BaseException) -> str:
    """What an exception raised by a move was, and where it was raised."""
    text = f"{type(exc).__name__}: {exc}"
    if exc.__traceback__ is None:
        return text
    where = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{text} (raised in {where.name}, {Path(where.filename).name}:{where.lineno})"


def crash_reproduced(trace: str | os.PathLike[str], cx: Counterexample) -> bool:
    """Whether replaying the counterexample's ``trace`` raises what the engine
    raised during the search (the same exception and message)."""
    from io import StringIO

    from ..replay import replay

    detail = next(v.detail for v in cx.violations if v.invariant == CRASH)
    try:
        replay(os.fspath(trace), out=StringIO())
    except Exception as exc:  # the replayed engine raising is what is checked
        return detail.startswith(f"{type(exc).__name__}: {exc}")
    return False


def crashed(cx: Counterexample) -> bool:
    return any(v.invariant == CRASH for v in cx.violations)


def replay_verdict(cx: Counterexample, replayed: bool) -> str:
    """What replaying the written counterexample showed, in words."""
    if crashed(cx):
        return "its replay raises the same" if replayed else "WARNING: its replay does not raise"
    if replayed:
        return "its replay gives the decision above"
    return "WARNING: its replay does not give the decisions above"


def _outcome(t: float, key: tuple[str, int], node: str | None, result: str) -> dict[str, Any]:
    """An outcome record: ``ok`` (the node answered 200), ``failed`` (the
    gateway's 503 after a refused connection), ``neutral`` (the node's 400: a
    success too, it answered below 500), ``rejected`` (the gateway's 502 after
    the node answered a call made for the request 404: neither success nor
    failure, docs/semantics.md §6)."""
    if result == "ok":
        status, source, error, retry = 200, "upstream", None, None
    elif result == "failed":
        status, source, error, retry = 503, "gateway", "connect", 3
    elif result == "rejected":
        status, source, error, retry = 502, "gateway", "status:404", None
    else:
        status, source, error, retry = 400, "upstream", None, None
    return {
        "kind": "outcome",
        "t": t,
        "id": key[0],
        "attempt": key[1],
        "node": node,
        "status": status,
        "retry_after": retry,
        "source": source,
        "error": error,
    }


def _report_drift(engine: Engine, monitor: Monitor) -> tuple[Any, ...]:
    """How far the engine's report counters are from the monitor's count: all
    zero for an engine that reports right, so the state space does not grow;
    a counter that drifts makes a new state, which is then checked (STAT,
    STATUS), however the path reached it."""
    state = vars(engine)
    counts = tuple(state["_" + name] - monitor.count(name) for name in REPORTS)
    decided: dict[str, int] = {}
    for rule, n in state["_decisions"].items():
        outcome = RULE_OUTCOME[rule].value
        decided[outcome] = decided.get(outcome, 0) + n
    for outcome, n in monitor.decisions.items():
        decided[outcome] = decided.get(outcome, 0) - n
    nodes = state["_nodes"]
    failures = tuple(
        (mon.name, nodes[mon.name].failures - mon.failures)
        for mon in monitor.nodes
        if mon.name in nodes and nodes[mon.name].failures != mon.failures
    )
    return (counts, tuple(sorted((o, n) for o, n in decided.items() if n)), failures)


def _recency(fleet: FleetSnapshot) -> list[tuple[str, str]]:
    """Replicas in the order they were last chosen (least recent first)."""
    seqs = sorted((seq, n.name, m) for n in fleet.nodes for m, seq in n.chosen.items())
    return [(name, m) for _seq, name, m in seqs]


def _recency_rank(fleet: FleetSnapshot) -> dict[tuple[str, str], int]:
    return {p: i for i, p in enumerate(_recency(fleet))}


def _fleet_key(fleet: FleetSnapshot) -> tuple[Any, ...]:
    """What a decision on ``fleet`` can depend on (recency as an order)."""
    order = {p: i for i, p in enumerate(_recency(fleet))}
    return tuple(
        (
            n.name,
            n.routable,
            n.discovery,
            tuple(sorted((m, e.status.value) for m, e in n.models.items())),
            tuple(sorted(n.busy.items())),
            tuple(sorted(n.local.items())),
            tuple(sorted((m, order[n.name, m]) for m in n.chosen)),
        )
        for n in fleet.nodes
    )


def _excluding(exclude: frozenset[str]) -> str:
    return f" excluding {', '.join(sorted(exclude))}" if exclude else ""


def _disc_text(discovery: Discovery | None) -> str:
    if discovery is None:
        return "none"
    vram = [d.vram_total_mb for d in discovery.devices]
    done = "complete" if discovery.complete else "incomplete"
    return f"{len(vram)} GPU(s) {vram} ({done})"


def _history_text(node: NodeMonitor) -> str:
    h = node.history
    parts = ["answered a poll before" if h.ever_ok else "never answered a poll"]
    if h.streak:
        kind = "of either kind" if h.mixed else "of polls"
        began = "routable" if h.armed else "not routable"
        parts.append(f"then {h.streak} failure(s) {kind} in a row (it was {began} before)")
    if h.revive:
        parts.append("then a request_ok while it was not routable")
    return ", ".join(parts)


def _differ(a: Decision, b: Decision) -> str:
    """The fields in which two decisions differ, with both values."""
    fields = [f.name for f in attrs.fields(Decision) if getattr(a, f.name) != getattr(b, f.name)]
    return "; ".join(f"{f}: {getattr(a, f)!r} vs {getattr(b, f)!r}" for f in fields)


def _decision_text(decision: Decision) -> str:
    if decision.node is not None:
        return f"{decision.outcome.value} -> {decision.node}"
    retry = decision.retry_after
    extra = f", Retry-After {retry}" if retry is not None else ""
    subject = f" naming {decision.subject}" if decision.subject else ""
    return f"{decision.outcome.value} ({decision.status}{extra}){subject}"


# --- the search, over worlds -------------------------------------------------------------------


def explore_world(
    world: World,
    *,
    stop_at_first: bool = True,
    progress: Callable[[str, int, int, int, float], None] | None = None,
) -> ExploreResult:
    """Explore one world breadth first to its depth."""
    return _World(world, stop_at_first=stop_at_first).run(progress)


def _explore_in_worker(args: tuple[int, World, bool]) -> tuple[int, ExploreResult]:
    index, world, stop_at_first = args
    return index, explore_world(world, stop_at_first=stop_at_first)


def verify(
    worlds: Sequence[World] = DEFAULT_WORLDS,
    *,
    jobs: int = 1,
    stop_at_first: bool = True,
    progress: Callable[[str, int, int, int, float], None] | None = None,
) -> VerifyResult:
    """Explore every world (in ``jobs`` forked processes, largest first); the
    results come back in the order the worlds were given. With
    ``stop_at_first``, no world is started after one has found a violation
    (the worlds still running finish)."""
    start = time.perf_counter()
    results: dict[int, ExploreResult] = {}
    if jobs <= 1 or len(worlds) <= 1:
        for i, w in enumerate(worlds):
            results[i] = explore_world(w, stop_at_first=stop_at_first, progress=progress)
            if stop_at_first and not results[i].ok:
                break
    else:
        order = sorted(range(len(worlds)), key=lambda i: -_weight(worlds[i]))
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            pending = pool.imap_unordered(
                _explore_in_worker, [(i, worlds[i], stop_at_first) for i in order], chunksize=1
            )
            for i, result in pending:
                results[i] = result
                if progress is not None:
                    progress(
                        result.world,
                        result.depth,
                        result.states,
                        result.transitions,
                        result.seconds,
                    )
                if stop_at_first and not result.ok:
                    pool.terminate()
                    break
    done = tuple(results[i] for i in sorted(results))
    return VerifyResult(worlds=done, seconds=time.perf_counter() - start, jobs=jobs)


def _weight(world: World) -> float:
    if world.cost is not None:
        return world.cost
    moves = len(world.node_moves) * world.nodes + len(world.fleet_moves)
    return float(moves) ** min(world.depth, 6)


def explore(
    nodes: int | None = None,
    threshold: int | None = None,
    depth: int | None = None,
    *,
    worlds: Sequence[World] = DEFAULT_WORLDS,
    jobs: int = 1,
    stop_at_first: bool = True,
    progress: Callable[[str, int, int, int, float], None] | None = None,
) -> VerifyResult:
    """The default bound (or ``worlds``), with ``nodes``, ``threshold`` and
    ``depth`` overriding every world's when given."""
    chosen = [w.with_bound(nodes=nodes, threshold=threshold, depth=depth) for w in worlds]
    return verify(chosen, jobs=jobs, stop_at_first=stop_at_first, progress=progress)


def world_named(name: str) -> World:
    for w in DEFAULT_WORLDS:
        if w.name == name:
            return w
    raise KeyError(name)


def _final_requests(
    cx: Counterexample, requests: Sequence[str]
) -> list[tuple[str, frozenset[str]]]:
    """The requests written after the path: the one that broke an invariant
    first (a routed request changes the fleet under ``load = max``, so only the
    first answer is sure to be the one the search saw), then the others."""
    first = [(v.request, v.exclude) for v in cx.violations if v.request is not None]
    out: list[tuple[str, frozenset[str]]] = first[:1]
    out += [(r, _NO_EXCLUDE) for r in requests if (r, _NO_EXCLUDE) not in out]
    return out


def _path_events(world: _World, cx: Counterexample) -> Iterator[TraceEvent]:
    """The trace events of a counterexample's path (the requests the search
    asked on every state are not written: they would change the fleet under
    ``load = max``), then the final requests -- or, when the engine raised,
    the path up to and with the move that made it raise."""
    engine, monitor = world.fresh()
    step = 0
    raised = crashed(cx)
    for step, move in enumerate(cx.moves, start=1):
        recs = world.records(move, step, engine, monitor)
        assert recs is not None
        if not (raised and step == len(cx.moves)):  # the last move raises: not applied
            monitor = world.apply(engine, monitor, recs)
        for rec in recs:
            if rec["kind"] != "finish":  # enabled only where it changes nothing
                yield _typed(rec)
    if raised:
        return
    t = float(step)
    for i, (requested, exclude) in enumerate(_final_requests(cx, world.world.requests)):
        yield RequestEvent(t=t, id=f"final-{i}", model=requested, exclude=tuple(sorted(exclude)))


def _typed(rec: Mapping[str, Any]) -> TraceEvent:
    """The typed trace event of a record this module built."""
    kind, t = rec["kind"], rec["t"]
    if kind == "request":
        return RequestEvent(
            t=t,
            id=rec["id"],
            model=rec["model"],
            attempt=rec.get("attempt"),
            exclude=tuple(sorted(rec.get("exclude", ()))),
        )
    if kind == "outcome":
        return OutcomeEvent(
            t=t,
            id=rec["id"],
            attempt=rec["attempt"],
            node=rec["node"],
            status=rec["status"],
            retry_after=rec["retry_after"],
            source=rec["source"],
            error=rec["error"],
        )
    if kind == "neuron_added":
        return NeuronAddedEvent(t=t, neuron=rec["neuron"])
    if kind == "reconfigured":
        return ReconfiguredEvent(t=t, policy=rec.get("policy"), catalogue=rec.get("catalogue"))
    node: str = rec["node"]
    if kind == "discovery":
        return DiscoveryEvent(t=t, node=node, ok=rec["ok"], body=rec.get("body"))
    if kind == "models":
        return ModelsEvent(
            t=t, node=node, ok=rec["ok"], body=rec.get("body"), error=rec.get("error", "")
        )
    if kind == "health":
        return HealthEvent(t=t, node=node, ok=rec["ok"], body=rec.get("body"))
    if kind == "load":
        return LoadEvent(t=t, node=node, model=rec["model"], ok=rec["ok"])
    if kind == "unload":
        return UnloadEvent(t=t, node=node, model=rec["model"], ok=rec["ok"])
    if kind == "neuron_removed":
        return NeuronRemovedEvent(t=t, node=node)
    raise ValueError(kind)


def write_counterexample(
    result: VerifyResult, path: str | os.PathLike[str], worlds: Sequence[World] = DEFAULT_WORLDS
) -> VerifyResult:
    """Write the first counterexample as a v2 trace; replay it to see whether it
    reproduces the engine's decisions on the violating state (or, when the
    engine raised, the same exception)."""
    cx = result.counterexample
    assert cx is not None
    index = next(i for i, w in enumerate(result.worlds) if w.counterexample is cx)
    world_result = result.worlds[index]
    # ``worlds``: the worlds as explored (bounds applied), found by name.
    spec_world = next(w for w in worlds if w.name == cx.world)
    world = _World(spec_world, stop_at_first=True)
    with TraceWriter(path, world.header()) as writer:
        for event in _path_events(world, cx):
            writer.write(event)
    if crashed(cx):
        replayed = crash_reproduced(path, cx)
    else:
        replayed = _replays_to(world, spec_world, cx, path)
    cx2 = attrs.evolve(cx, trace=os.fspath(path), replayed=replayed)
    worlds_out = list(result.worlds)
    worlds_out[index] = attrs.evolve(world_result, counterexample=cx2)
    return attrs.evolve(result, worlds=tuple(worlds_out))


def _replays_to(
    world: _World, spec_world: World, cx: Counterexample, path: str | os.PathLike[str]
) -> bool:
    """Whether the written trace replays to the engine's decisions on the
    violating state."""
    from io import StringIO

    from ..replay import replay
    from ..trace import decision_line

    out = StringIO()
    replay(os.fspath(path), out=out)
    finals = _final_requests(cx, spec_world.requests)
    lines = out.getvalue().splitlines()[-len(finals) :]
    engine, _monitor, _steps = world.replay_path(cx.moves)
    t = float(len(cx.moves))
    want = [
        decision_line(engine.decide(r, x), f"final-{i}", t).rstrip("\n")
        for i, (r, x) in enumerate(finals)
    ]
    sure = 1 if spec_world.policy.load == "max" else len(finals)
    return lines[:sure] == want[:sure]
