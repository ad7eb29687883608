"""``cortex-fsm export promela``: a Spin model generated from the code.

Theory of operation
-------------------
The model has three parts, all *derived* from the Python code, never written
by hand:

* **k health machines.** For every health state and each of the four events
  (``poll_ok``, ``poll_failed`` and, docs/semantics.md §6, ``request_ok``,
  ``request_failed``) the next state is read from a real :class:`Engine`
  (policy defaults: passive health on) driven into that state, and must be a
  state of ``HealthTable(T)``; routability is ``HealthState.routable``. All
  are emitted as constant arrays. Each node has a process that, at any time,
  makes the node answer a poll (reporting the model in any status) or fail
  one, or ends a request forwarded to it as served or failed.

* **The engine's model-map bookkeeping.** What the engine holds for ``m`` on
  a node after a successful poll reporting it in some status (or not at
  all), after a failed poll, and after a request outcome, is read from a
  real :class:`Engine` for every abstract (previous, reported) pair, under
  both concretisations, and emitted as constant arrays; the node processes
  update ``st`` through them and assert F1 (the map is what the last
  successful poll said; a failed poll and request outcomes keep it).

* **The routing classification.** Routing is abstracted to one catalogued (or
  uncatalogued) model ``m`` and, per node, four features: whether it is live
  for the decision (down; routable; routable but excluded, §7), the status
  of ``m`` on it (absent, loaded, unloaded, recovering), whether its
  topology fits the profile, and whether ``pinned_on`` names it (no node
  named: the profile is unpinned). For every combination of features -- for
  3 nodes, 2 x 48^3 = 221,184 -- the real :func:`cortex_fsm.routing.decide`
  is evaluated (with the excluded nodes in its ``exclude`` set) and its
  outcome and chosen node are emitted as a constant table. Each feature is
  concretised twice (healthy/suspect, unhealthy/unknown, loaded/reloading,
  absent/loading, no discovery/one small GPU, the model asked by id/by
  alias, nodes in name order/reversed) and the two decisions must agree: the
  export fails loudly if the code's answer depends on anything the model
  does not track (that check is what keeps the model honest as the code
  evolves). Routing is Part I's (every Part II key at its reference value)
  plus exclusion: the reference's ``known_down`` reads a down node's
  ``loading`` entry differently from no entry, which this abstraction merges.

Spin then explores every interleaving of polls, request outcomes and
requests and checks, as assertions, H1-H6 (with the same history monitor as
:class:`~cortex_fsm.verify.invariants.HealthHistory`) and F1 after every
event, and R1-R4, R6, R7 and R9 on every request's decision under every
exclusion set (each request is decided once per subset of the nodes), and
as an LTL property (``live``): if the model is catalogued, node 0 is
feasible, and from some point on node 0 answers every poll, fails no request
and no node reports the model recovering, then requests are routed
infinitely often (never rejected forever). Liveness needs weak fairness
(``pan -a -f``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

from ..catalogue import Catalogue, Profile, feasible
from ..engine import Engine
from ..errors import Outcome
from ..fleet import (
    Device,
    Discovery,
    FleetSnapshot,
    ModelEntry,
    ModelsReport,
    ModelStatus,
    Neuron,
    NodeSnapshot,
    PollFailure,
)
from ..health import Event, HealthState, HealthTable, Phase, validate_threshold
from ..policy import Policy
from ..routing import Decision, decide
from .invariants import OrderedView

#: The routing the model is generated from: Part I (Part II keys at reference).
REFERENCE = Policy.reference()

__all__ = [
    "LIVENESS",
    "MAX_NODES",
    "OUTCOMES",
    "STATUSES",
    "AbstractionError",
    "generate",
    "health_rows",
    "model_map_tables",
    "routing_table",
]

MAX_NODES = 3
MODEL = "m"
ALIAS = "alias-of-m"

#: The outcomes a decision can have, in the order of their codes in the model.
OUTCOMES: tuple[Outcome, ...] = (
    Outcome.ROUTE_LOADED,
    Outcome.ROUTE_UNLOADED,
    Outcome.COLD_LOAD,
    Outcome.NO_HEALTHY_NODES,
    Outcome.MODEL_RECOVERING,
    Outcome.FEASIBLE_NODE_UNHEALTHY,
    Outcome.NO_FEASIBLE_NEURON,
    Outcome.MODEL_NOT_FOUND,
)
#: The abstract statuses of the model on a node (code = index), each with its
#: two concretisations.
STATUSES: tuple[tuple[str, tuple[ModelStatus | None, ModelStatus | None]], ...] = (
    ("ABSENT", (None, ModelStatus.LOADING)),
    ("LOADED", (ModelStatus.LOADED, ModelStatus.RELOADING)),
    ("UNLOADED", (ModelStatus.UNLOADED, ModelStatus.UNLOADED)),
    ("RECOVERING", (ModelStatus.RECOVERING, ModelStatus.RECOVERING)),
)
#: Whether a node is live for one decision (code = index): down, routable,
#: routable but in the decision's ``exclude`` set (docs/semantics.md §7).
LIVENESS: tuple[str, ...] = ("DOWN", "LIVE", "EXCLUDED")
#: Values of one node's digit in the routing table's index.
DIGITS = len(LIVENESS) * len(STATUSES) * 2 * 2
_FIT = Discovery(
    devices=(Device(index=0, vram_total_mb=81920), Device(index=1, vram_total_mb=81920)),
    max_prompt_tokens=8192,
)
_SMALL = Discovery(devices=(Device(index=0, vram_total_mb=24000),), max_prompt_tokens=8192)


class AbstractionError(AssertionError):
    """The code's decision depends on something the model does not track."""


def _names(nodes: int) -> tuple[str, ...]:
    return tuple(f"n{i}" for i in range(nodes))


def _abstract(status: ModelStatus | None) -> int:
    """The abstract status code of a concrete status (``None``: not in the map)."""
    for code, (_name, concrete) in enumerate(STATUSES):
        if status in concrete:
            return code
    raise AbstractionError(f"the model does not track the status {status}")


# --- the health machine, as the engine runs it ------------------------------------------------

#: The events of a node's process, in the order of the model's tables.
HEALTH_EVENTS: tuple[Event, ...] = (
    Event.POLL_OK,
    Event.POLL_FAILED,
    Event.REQUEST_OK,
    Event.REQUEST_FAILED,
)
_TABLE_NAME = {
    Event.POLL_OK: "NEXT_OK",
    Event.POLL_FAILED: "NEXT_FAILED",
    Event.REQUEST_OK: "NEXT_ROK",
    Event.REQUEST_FAILED: "NEXT_RFAILED",
}


def _one_node(threshold: int) -> Engine:
    # The defaults of Part II: passive health on, so request outcomes are inputs.
    return Engine(
        [Neuron(name="n0", endpoint="http://n0")], policy=Policy(failure_threshold=threshold)
    )


_OBSERVE: dict[Event, Callable[[Engine, float], object]] = {
    Event.POLL_OK: lambda e, t: e.observe_models("n0", t, ModelsReport(models={})),
    Event.POLL_FAILED: lambda e, t: e.observe_models("n0", t, PollFailure(reason="timeout")),
    Event.REQUEST_OK: lambda e, t: e.observe_request("n0", t, True),
    Event.REQUEST_FAILED: lambda e, t: e.observe_request("n0", t, False, "connect"),
}


def _engine_in(state: HealthState, threshold: int) -> Engine:
    """A one-node engine driven, by polls, into ``state``."""
    engine = _one_node(threshold)
    if state.phase is not Phase.UNKNOWN:
        _OBSERVE[Event.POLL_OK](engine, 0.0)
        failures = {Phase.HEALTHY: 0, Phase.SUSPECT: state.failures}.get(state.phase, threshold)
        for k in range(failures):
            _OBSERVE[Event.POLL_FAILED](engine, 1.0 + k)
    if engine.state("n0") != state:
        raise AbstractionError(
            f"polls do not drive the engine into {state.label} (it is {engine.state('n0').label})"
        )
    return engine


def health_rows(threshold: int) -> dict[Event, list[int]]:
    """For each event, the state (its index in ``HealthTable(T).states``) a real
    engine moves to from each state: the node machines of the model."""
    states = list(HealthTable(threshold).states)
    index = {s: i for i, s in enumerate(states)}
    rows: dict[Event, list[int]] = {}
    for event in HEALTH_EVENTS:
        row = []
        for state in states:
            engine = _engine_in(state, threshold)
            _OBSERVE[event](engine, 100.0)
            after = engine.state("n0")
            if after not in index:
                raise AbstractionError(
                    f"{state.label} on {event.label} leaves the machine ({after.label})"
                )
            row.append(index[after])
        rows[event] = row
    return rows


# --- the model map, as the engine keeps it -----------------------------------------------------


def model_map_tables() -> tuple[list[int], list[int], list[int]]:
    """The engine's own bookkeeping of ``m`` on one node, per abstract status.

    ``after_ok[previous * n + reported]`` is what the engine holds after a
    successful poll that reports ``m`` as ``reported`` (``ABSENT``: not at
    all) when it held ``previous``; ``after_failed[previous]`` is what it
    holds after a failed poll, ``after_request[previous]`` after a request
    outcome (served or failed: both must agree). Each entry is read from a
    real :class:`~cortex_fsm.engine.Engine` under both concretisations of the
    statuses, which must agree.
    """

    def held(previous: ModelStatus | None, then: Callable[[Engine], object]) -> int:
        engine = _one_node(3)
        first = {} if previous is None else {MODEL: previous}
        engine.observe_models(
            "n0", 0.0, ModelsReport(models={"other": ModelStatus.LOADED, **first})
        )
        then(engine)
        entry = engine.status("n0").models.get(MODEL)
        return _abstract(None if entry is None else entry.status)

    def agreed(answers: list[int], what: str) -> int:
        if len(set(answers)) != 1:
            raise AbstractionError(
                f"the engine's model map is not a function of the model's features: {what} "
                f"gives {' or '.join(STATUSES[a][0].lower() for a in sorted(set(answers)))} "
                "depending on the concrete statuses"
            )
        return answers[0]

    def poll(report: ModelsReport | PollFailure) -> Callable[[Engine], object]:
        return lambda engine: engine.observe_models("n0", 1.0, report)

    def request(ok: bool) -> Callable[[Engine], object]:
        return lambda engine: engine.observe_request("n0", 1.0, ok)

    n = len(STATUSES)
    after_ok = []
    for previous, reported in itertools.product(range(n), range(n)):
        answers = []
        for v, w in itertools.product(range(2), range(2)):
            concrete = STATUSES[reported][1][w]
            report = {"other": ModelStatus.LOADED}
            if concrete is not None:
                report[MODEL] = concrete
            answers.append(held(STATUSES[previous][1][v], poll(ModelsReport(models=report))))
        what = (
            f"held {STATUSES[previous][0].lower()}, "
            f"a successful poll reporting {STATUSES[reported][0].lower()}"
        )
        after_ok.append(agreed(answers, what))
    after_failed = [
        agreed(
            [held(STATUSES[previous][1][v], poll(PollFailure(reason="timeout"))) for v in range(2)],
            f"held {STATUSES[previous][0].lower()}, a failed poll",
        )
        for previous in range(n)
    ]
    after_request = [
        agreed(
            [held(STATUSES[previous][1][v], request(ok)) for v in range(2) for ok in (True, False)],
            f"held {STATUSES[previous][0].lower()}, a request outcome",
        )
        for previous in range(n)
    ]
    return after_ok, after_failed, after_request


# --- routing -----------------------------------------------------------------------------------


def _representatives(threshold: int) -> tuple[tuple[HealthState, HealthState], ...]:
    """(non-routable pair, routable pair) of health states, chosen by the code's
    own ``routable`` so that the model's routability is exactly the code's."""
    states = list(HealthTable(threshold).states)
    down = [s for s in states if not s.routable]
    up = [s for s in states if s.routable]
    if not down or not up:
        raise AbstractionError("the health machine has no routable or no unroutable state")
    return ((down[0], down[-1]), (up[0], up[-1]))


def _digit(live: int, status: int, fit: int, pin: int) -> int:
    return live + 3 * status + 12 * fit + 24 * pin


def _features(digit: int) -> tuple[int, int, int, int]:
    return (digit % 3, digit // 3 % 4, digit // 12 % 2, digit // 24)


def _encode(decision: Decision, names: Sequence[str]) -> int:
    try:
        code = OUTCOMES.index(decision.outcome)
    except ValueError:
        raise AbstractionError(
            f"decide() gave {decision.outcome.value}, not a routing outcome"
        ) from None
    node = 0 if decision.node is None else names.index(decision.node) + 1
    return code * 4 + node


_Cache = dict[tuple[int, int, int, int, int], NodeSnapshot]


class _View:
    """A routing view (``routing.FleetView``) over nodes in the order given:
    the fleet as a full scan sees it, built once per input (a ``FleetSnapshot``
    would sort, an ``OrderedView`` copy the maps, on each of the table's
    hundreds of thousands of inputs)."""

    __slots__ = ("nodes",)

    def __init__(self, nodes: Sequence[NodeSnapshot]) -> None:
        self.nodes = tuple(nodes)

    def any_routable(self, exclude: frozenset[str] = frozenset()) -> bool:
        return any(n.routable and n.name not in exclude for n in self.nodes)

    def holders(self, model: str) -> list[NodeSnapshot]:
        return [n for n in self.nodes if model in n.models]

    def feasible_nodes(self, profile: Profile) -> list[NodeSnapshot]:
        return [n for n in self.nodes if feasible(profile, n.name, n.discovery)]


def routing_table(nodes: int, threshold: int) -> list[int]:
    """``decide()`` on every abstract input: entry = outcome code * 4 + node + 1
    (0 for none). Index = catalogued + 2 * sum(digit(node i) * 48**i), see
    :func:`_digit`; the nodes with liveness ``EXCLUDED`` are the decision's
    ``exclude`` set. Each input is decided twice: the first concretisation
    with the nodes in name order and the model asked by id, the second with
    the nodes in reverse order and the model asked by its alias."""
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"the Promela model supports 1..{MAX_NODES} nodes, got {nodes}")
    names = _names(nodes)
    node_cache = _node_cache(names, threshold)
    catalogues: dict[tuple[int, tuple[str, ...]], Catalogue] = {}
    table: list[int] = []
    digits = [_features(d) for d in range(DIGITS)]
    for index in range(2 * DIGITS**nodes):
        catalogued = index & 1
        rest = index >> 1
        features = [digits[rest // DIGITS**i % DIGITS] for i in range(nodes)]
        pinned = tuple(names[i] for i, f in enumerate(features) if f[3])
        if not catalogued and pinned:
            # No profile, so nothing names the pinned nodes: the very same input as
            # with no node pinned (computed already, at a smaller index).
            unpinned = sum(
                _digit(live, s, fit, 0) * DIGITS**i for i, (live, s, fit, _p) in enumerate(features)
            )
            table.append(table[2 * unpinned])
            continue
        excluded = frozenset(names[i] for i, f in enumerate(features) if f[0] == 2)
        key = (catalogued, pinned)
        catalogue = catalogues.get(key)
        if catalogue is None:
            catalogue = catalogues[key] = _catalogue(catalogued, pinned)
        same = _fleet(node_cache, features, 0)
        base = _encode(decide(_View(same), catalogue, MODEL, REFERENCE, excluded), names)
        other = _fleet(node_cache, features, 1)[::-1]
        if _encode(decide(_View(other), catalogue, ALIAS, REFERENCE, excluded), names) != base:
            raise AbstractionError(
                _diagnose(node_cache, features, catalogue, catalogued, names, base)
            )
        table.append(base)
    return table


def _node_cache(names: Sequence[str], threshold: int) -> _Cache:
    """Per node and per variant: the snapshot for every combination of features."""
    reps = _representatives(threshold)
    cache: _Cache = {}
    for i, routable, status, fit, variant in itertools.product(
        range(len(names)), range(2), range(len(STATUSES)), range(2), range(2)
    ):
        concrete = STATUSES[status][1][variant]
        cache[i, routable, status, fit, variant] = NodeSnapshot(
            name=names[i],
            health=reps[routable][variant],
            discovery=_FIT if fit else (None if variant == 0 else _SMALL),
            models={} if concrete is None else {MODEL: ModelEntry(status=concrete)},
        )
    return cache


def _catalogue(catalogued: int, pinned: tuple[str, ...]) -> Catalogue:
    profiles = {}
    if catalogued:
        profiles[MODEL] = Profile(
            id=MODEL, harness="candle", min_devices=2, min_device_vram_mb=40000, pinned_on=pinned
        )
    return Catalogue(profiles=profiles, aliases={ALIAS: MODEL})


def _fleet(
    cache: _Cache, features: Sequence[tuple[int, int, int, int]], variant: int
) -> list[NodeSnapshot]:
    return [
        cache[i, 1 if live else 0, s, fit, variant] for i, (live, s, fit, _p) in enumerate(features)
    ]


def _diagnose(  # noqa: PLR0917 - private, called once
    cache: _Cache,
    features: Sequence[tuple[int, int, int, int]],
    catalogue: Catalogue,
    catalogued: int,
    names: Sequence[str],
    base: int,
) -> str:
    """Which concretisation changes the answer: name it in the error."""
    excluded = frozenset(names[i] for i, f in enumerate(features) if f[0] == 2)
    same = _fleet(cache, features, 0)
    other = _fleet(cache, features, 1)
    tries = [
        (
            "another concrete health state, status or discovery",
            decide(_View(other), catalogue, MODEL, REFERENCE, excluded),
        ),
        (
            "the model asked by its alias",
            decide(_View(same), catalogue, ALIAS, REFERENCE, excluded),
        ),
        (
            "the nodes (and their maps) in reverse order -- an order dependence (R5)",
            decide(
                OrderedView(FleetSnapshot(nodes=tuple(same)), names[::-1], reverse_maps=True),
                catalogue,
                MODEL,
                REFERENCE,
                excluded,
            ),
        ),
    ]
    shown = ", ".join(
        f"{names[i]}({LIVENESS[live].lower()}, status={STATUSES[s][0].lower()}, fit={fit}, "
        f"pinned={p})"
        for i, (live, s, fit, p) in enumerate(features)
    )
    causes = [
        f"{why}: {_show(_encode(d, names), names)}" for why, d in tries if _encode(d, names) != base
    ]
    return (
        f"decide() is not a function of the model's features: catalogued={catalogued}, {shown} "
        f"gives {_show(base, names)}, but with "
        + "; with ".join(causes or ["both changes together: a different answer"])
    )


def _show(code: int, names: Sequence[str]) -> str:
    outcome = OUTCOMES[code // 4]
    node = code % 4
    return outcome.value + (f" -> {names[node - 1]}" if node else "")


# --- the Promela text --------------------------------------------------------------------------

_BLOCK = 8192


def _c_array(name: str, values: Sequence[int], per_line: int = 32) -> Iterator[str]:
    yield f"  static const unsigned char {name}[{len(values)}] = {{"
    for start in range(0, len(values), per_line):
        chunk = values[start : start + per_line]
        yield "    " + ",".join(str(v) for v in chunk) + ","
    yield "  };"


def generate(nodes: int = 3, threshold: int = 3, *, passive_nodes: int = 1) -> str:
    """The Promela model for ``nodes`` nodes and ``threshold`` (see module doc);
    request outcomes reach the first ``passive_nodes`` nodes."""
    validate_threshold(threshold)
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"the Promela model supports 1..{MAX_NODES} nodes, got {nodes}")
    if not 0 <= passive_nodes <= nodes:
        raise ValueError(f"passive_nodes must be in 0..{nodes}, got {passive_nodes}")
    states = list(HealthTable(threshold).states)
    rows = health_rows(threshold)
    table = routing_table(nodes, threshold)
    after_ok, after_failed, after_request = model_map_tables()
    k = nodes
    out: list[str] = []
    w = out.append
    w("/*")
    w(" * cortex_fsm: the node-health machines of k nodes and the routing classification.")
    w(" *")
    w(f" * Generated by `cortex-fsm export promela --nodes {nodes} --threshold {threshold}` from")
    w(" * cortex_fsm.engine.Engine (each health event and model-map update, read from a real")
    w(" * engine in every state) and from cortex_fsm.routing.decide evaluated on every")
    w(" * abstract input. Do not edit: tests/test_promela.py fails when this file is not")
    w(" * what the code generates.")
    w(" *")
    w(" * Check:  spin -a cortex.pml && gcc -O2 -DSAFETY -DNOCLAIM -o pan pan.c")
    w(" *         ./pan -m500000                 (H1-H6, F1, R1-R4, R6, R7, R9)")
    w(" *         spin -DLIVENESS -a cortex.pml && gcc -O2 -o pan pan.c")
    w(" *         ./pan -a -f -m500000 -N live   (liveness, under weak fairness)")
    w(" */")
    w("")
    w(f"#define K {k}")
    w(f"#define T {threshold}")
    w(f"#define NSTATES {len(states)}")
    w("/* nodes 0..PASSIVE-1 see request outcomes; the liveness search leaves them out (they")
    w("   double its states, and its claim is about polls: H5 and H6 are safety) */")
    w("#ifdef LIVENESS")
    w("#define PASSIVE 0")
    w("#else")
    w(f"#define PASSIVE {passive_nodes}")
    w("#endif")
    w("")
    w("/* health states (HealthTable order) */")
    for i, s in enumerate(states):
        w(f"#define S_{s.ident.upper()} {i}")
    w("")
    w("/* outcomes: code * 4 + (chosen node + 1, or 0 for none) in the routing table */")
    for i, o in enumerate(OUTCOMES):
        w(f"#define {o.name} {i}")
    w(f"#define NOUTCOMES {len(OUTCOMES)}")
    w("")
    w("/* the status of the model m on a node */")
    for i, (name, _concrete) in enumerate(STATUSES):
        w(f"#define {name} {i}")
    w("")
    w("/* decide() on every abstract input; index = catalogued + 2 * sum(digit(i) * 48^i),")
    w("   digit(i) = live + 3 * status + 12 * fit + 24 * pinned, live: 0 down, 1 routable,")
    w("   2 routable but excluded from the decision */")
    # Spin limits the text of one c_decl block, so the table comes in blocks.
    blocks = [table[i : i + _BLOCK] for i in range(0, len(table), _BLOCK)]
    for b, block in enumerate(blocks):
        w("c_decl {")
        out.extend(_c_array(f"ROUTING_{b}", block))
        w("}")
    w("c_decl {")
    w(f"  static const unsigned char *ROUTING_BLOCKS[{len(blocks)}] = {{")
    w("    " + ", ".join(f"ROUTING_{b}" for b in range(len(blocks))) + ",")
    w("  };")
    w(f"  #define ROUTING(i) (ROUTING_BLOCKS[(i) / {_BLOCK}][(i) % {_BLOCK}])")
    w("}")
    w("")
    for event in HEALTH_EVENTS:
        w(f"hidden byte {_TABLE_NAME[event]}[NSTATES];")
    w("hidden byte ROUTABLE[NSTATES];")
    w(f"hidden byte AFTER_OK[{len(after_ok)}];     /* the engine's status of m after a poll_ok */")
    w(f"hidden byte AFTER_FAILED[{len(after_failed)}]; /* ... after a poll_failed */")
    w(f"hidden byte AFTER_REQUEST[{len(after_request)}]; /* ... after a request outcome */")
    w("hidden short STATUS[NOUTCOMES];   /* HTTP status the client sees */")
    w("hidden byte RETRY[NOUTCOMES];     /* Retry-After seconds, 0 for none */")
    w("hidden byte ROUTED[NOUTCOMES];")
    w("hidden byte COLD[NOUTCOMES];      /* a cold start: cold load or lazy reload */")
    w("")
    w("byte h[K];           /* health state per node */")
    w("byte st[K];          /* status of m per node */")
    w("bit fit[K];          /* the node's topology fits m's profile */")
    w("bit pin[K];          /* pinned_on names the node (none named: unpinned) */")
    w("bit catalogued;      /* m has a catalogue profile */")
    w("/* the health-history monitor of each node (invariants.HealthHistory) */")
    w("bit ever_ok[K];      /* has had a poll_ok */")
    w("byte streak[K];      /* failures of either kind since the last success (capped) */")
    w("bit armed[K];        /* routable when the streak began */")
    w("bit mixed[K];        /* a request_failed is among them */")
    w("/* observables for the liveness property: part of the state only in its search")
    w("   (spin -DLIVENESS); the safety search would store every state twice over */")
    w("#ifdef LIVENESS")
    w("bit ok0;             /* node 0's last poll succeeded and no failure since */")
    w("bit routed;          /* the last request (no node excluded) was routed */")
    w("#else")
    w("hidden byte ok0, routed;")
    w("#endif")
    w("/* scratch, reset within each step (not part of any stored state) */")
    w("int idx;")
    w("byte dec;")
    w("hidden byte o, chosen, i2, before, rep, xm, dm;")
    w("hidden byte H1, H2, H3, H4, H5, H6, F1, R1, R2, R3, R4, R6, R7, R9, any;")
    w("/* this step is a request_ok that found the node not routable (H5's premise; the")
    w("   history forgets it at the next event, so it is no part of the state) */")
    w("hidden byte revive;")
    w("hidden byte pinned_candidate;")
    w("")
    w("#define ROUTABLE_AT(i) ROUTABLE[h[i]]")
    w("#define EXCLUDED(i) ((xm >> (i)) & 1)")
    w("#define LIVE(i) (ROUTABLE_AT(i) && !EXCLUDED(i))")
    w("#define LIVE3(i) (ROUTABLE_AT(i) -> (EXCLUDED(i) -> 2 : 1) : 0)")
    w("#define INPIN(i) (pin[i] || !(" + " || ".join(f"pin[{i}]" for i in range(k)) + "))")
    w("#define FEASIBLE(i) (fit[i] && INPIN(i))")
    w("#define DIGIT(i) (LIVE3(i) + 3 * st[i] + 12 * fit[i] + 24 * pin[i])")
    w("#define NODE0_FEASIBLE (catalogued && FEASIBLE(0))")
    w("#define NONE_RECOVERING (" + " && ".join(f"st[{i}] != RECOVERING" for i in range(k)) + ")")
    w("")
    w("inline check_health(i) {")
    w("  H1 = (ever_ok[i] || !ROUTABLE_AT(i));")
    w("  assert(H1);")
    w("  H2 = (!(armed[i] && streak[i] >= 1 && streak[i] <= T - 1) || ROUTABLE_AT(i));")
    w("  assert(H2);")
    w("  H3 = (mixed[i] || streak[i] < T || !ROUTABLE_AT(i));")
    w("  assert(H3);")
    w("  H4 = (!(ever_ok[i] && streak[i] == 0 && !revive) || h[i] == S_HEALTHY);")
    w("  assert(H4);")
    w("  H5 = (!revive || !ROUTABLE_AT(i));")
    w("  assert(H5);")
    w("  H6 = (!mixed[i] || streak[i] < T || !ROUTABLE_AT(i));")
    w("  assert(H6)")
    w("}")
    w("")
    w("/* the history of one more failure (req: a request_failed, else a poll_failed) */")
    w("inline failure(i, req) {")
    w("  before = ROUTABLE_AT(i);")
    w("  if")
    w("  :: streak[i] == 0 -> armed[i] = before; mixed[i] = req")
    w("  :: else -> mixed[i] = (mixed[i] || req)")
    w("  fi;")
    w("  if")
    w("  :: ever_ok[i] && streak[i] < T -> streak[i]++")
    w("  :: !ever_ok[i] && streak[i] < 1 -> streak[i]++")
    w("  :: else -> skip")
    w("  fi;")
    w("  if :: i == 0 -> ok0 = 0 :: else -> skip fi")
    w("}")
    w("")

    def keep_map(table: str) -> None:
        """F1 for an event that must keep the model map."""
        w("       before = st[i];")
        w(f"       st[i] = {table}[st[i]];")
        w("       F1 = (st[i] == before);")
        w("       assert(F1);")

    w("proctype node(byte i) {")
    w("  do")
    w("  :: atomic {  /* poll_ok: the node answers, reporting m in some status (or not) */")
    w("       h[i] = NEXT_OK[h[i]];")
    w("       if")
    for name, _c in STATUSES:
        w(f"       :: rep = {name}")
    w("       fi;")
    w(f"       st[i] = AFTER_OK[st[i] * {len(STATUSES)} + rep];")
    w("       /* F1: the model map is what the last successful poll said */")
    w("       F1 = (st[i] == rep);")
    w("       assert(F1);")
    w("       rep = 0;")
    w("       ever_ok[i] = 1; streak[i] = 0; armed[i] = 0; mixed[i] = 0;")
    w("       if :: i == 0 -> ok0 = 1 :: else -> skip fi;")
    w("       check_health(i)")
    w("     }")
    w("  :: atomic {  /* poll_failed: the map is kept */")
    keep_map("AFTER_FAILED")
    w("       failure(i, 0);")
    w("       h[i] = NEXT_FAILED[h[i]];")
    w("       check_health(i)")
    w("     }")
    w("  /* request outcomes: only for a node that has answered a poll (a request is routed")
    w("     only to a routable node, H1), but at any time after, stale ones included */")
    w("  :: atomic {  /* request_ok: a request forwarded to the node was answered below 500 */")
    w("       i < PASSIVE && ever_ok[i];")
    keep_map("AFTER_REQUEST")
    w("       if")
    w("       :: ROUTABLE_AT(i) -> streak[i] = 0; armed[i] = 0; mixed[i] = 0")
    w("       :: else -> revive = 1")
    w("       fi;")
    w("       h[i] = NEXT_ROK[h[i]];")
    w("       check_health(i);")
    w("       revive = 0")
    w("     }")
    w("  :: atomic {  /* request_failed: it failed before its first byte */")
    w("       i < PASSIVE && ever_ok[i];")
    keep_map("AFTER_REQUEST")
    w("       failure(i, 1);")
    w("       h[i] = NEXT_RFAILED[h[i]];")
    w("       check_health(i)")
    w("     }")
    w("  od")
    w("}")
    w("")
    digits = " + ".join("DIGIT(0)" if i == 0 else f"{DIGITS**i} * DIGIT({i})" for i in range(k))
    w("proctype client() {")
    w("  do")
    w("  :: d_step {  /* a request for m, decided once per exclusion set, each judged */")
    w("#ifdef LIVENESS")
    w("       /* the liveness search needs only whether a request is routed; the")
    w("          safety search judges every decision */")
    w(f"       xm = 0; idx = catalogued + 2 * ({digits});")
    w("       c_code { now.dec = ROUTING(now.idx); };")
    w("       routed = ROUTED[dec / 4];")
    w("       idx = 0; dec = 0")
    w("#else")
    w("       /* excluding a node that is down changes nothing: those sets are skipped */")
    w("       dm = " + " + ".join(f"{1 << i} * !ROUTABLE_AT({i})" for i in range(k)) + ";")
    w("       xm = 0;")
    w("       do")
    w(f"       :: xm < {1 << k} && (xm & dm) != 0 -> xm++")
    w(f"       :: xm < {1 << k} && (xm & dm) == 0 ->")
    w(f"            idx = catalogued + 2 * ({digits});")
    w("            c_code { now.dec = ROUTING(now.idx); };")
    w("            o = dec / 4;")
    w("            chosen = dec % 4;")
    w("            any = 0; pinned_candidate = 0;")
    w("            i2 = 0;")
    w("            do")
    w("            :: i2 < K ->")
    w("                 if :: catalogued && !LIVE(i2) && FEASIBLE(i2) -> any = 1")
    w("                 :: else -> skip fi;")
    w(
        "                 if :: LIVE(i2) && FEASIBLE(i2) && pin[i2] -> pinned_candidate = 1"
        " :: else -> skip fi;"
    )
    w("                 i2++")
    w("            :: else -> break")
    w("            od;")
    w("            /* R1: feasible-but-down (or excluded) never yields a 404 */")
    w("            R1 = (!any || STATUS[o] != 404);")
    w("            assert(R1);")
    w("            /* R2: every 503 carries Retry-After; no 404 does */")
    w(
        "            R2 = ((STATUS[o] != 503 || RETRY[o] > 0)"
        " && (STATUS[o] != 404 || RETRY[o] == 0));"
    )
    w("            assert(R2);")
    w("            /* R3: a chosen node is routable; a reject chooses none */")
    w("            R3 = ((ROUTED[o] && chosen > 0 && ROUTABLE_AT(chosen - 1))")
    w("                  || (!ROUTED[o] && chosen == 0));")
    w("            assert(R3);")
    w("            /* R9: a decision never chooses an excluded node */")
    w("            R9 = (chosen == 0 || !EXCLUDED(chosen - 1));")
    w("            assert(R9);")
    w("            /* R4: no cold start while a live node has m recovering */")
    w("            i2 = 0; R4 = 1;")
    w("            do")
    w("            :: i2 < K ->")
    w("                 if :: COLD[o] && LIVE(i2) && st[i2] == RECOVERING -> R4 = 0")
    w("                 :: else -> skip fi;")
    w("                 i2++")
    w("            :: else -> break")
    w("            od;")
    w("            assert(R4);")
    w("            /* R6: route_loaded picks the first (by name; loads are equal here) live")
    w("               node with m loaded */")
    w("            R6 = 1;")
    w("            if")
    w("            :: o == ROUTE_LOADED ->")
    w("                 R6 = (st[chosen - 1] == LOADED && LIVE(chosen - 1));")
    w("                 i2 = 0;")
    w("                 do")
    w("                 :: i2 < chosen - 1 ->")
    w("                      if :: LIVE(i2) && st[i2] == LOADED -> R6 = 0 :: else -> skip fi;")
    w("                      i2++")
    w("                 :: else -> break")
    w("                 od")
    w("            :: else -> skip")
    w("            fi;")
    w("            assert(R6);")
    w("            /* R7: a cold-load target is live, feasible, and pinned if a live")
    w("               feasible pinned node exists */")
    w("            R7 = 1;")
    w("            if")
    w("            :: o == COLD_LOAD ->")
    w(
        "                 R7 = (catalogued && LIVE(chosen - 1) && FEASIBLE(chosen - 1)"
        " && (!pinned_candidate || pin[chosen - 1]))"
    )
    w("            :: else -> skip")
    w("            fi;")
    w("            assert(R7);")
    w("            if :: xm == 0 -> routed = ROUTED[o] :: else -> skip fi;")
    w("            xm++")
    w("       :: else -> break")
    w("       od;")
    w("       xm = 0; dm = 0; idx = 0; dec = 0")
    w("#endif")
    w("     }")
    w("  od")
    w("}")
    w("")
    w("init {")
    w("  d_step {")
    for i, s in enumerate(states):
        ident = s.ident.upper()
        for event in HEALTH_EVENTS:
            w(f"    {_TABLE_NAME[event]}[S_{ident}] = S_{states[rows[event][i]].ident.upper()};")
        w(f"    ROUTABLE[S_{ident}] = {1 if s.routable else 0};")
    for o in OUTCOMES:
        w(
            f"    STATUS[{o.name}] = {o.status}; RETRY[{o.name}] = {o.retry_after or 0}; "
            f"ROUTED[{o.name}] = {1 if o.routed else 0}; COLD[{o.name}] = "
            f"{1 if o.cold_start else 0};"
        )
    for i, value in enumerate(after_ok):
        w(f"    AFTER_OK[{i}] = {STATUSES[value][0]};")
    for i, value in enumerate(after_failed):
        w(f"    AFTER_FAILED[{i}] = {STATUSES[value][0]};")
    for i, value in enumerate(after_request):
        w(f"    AFTER_REQUEST[{i}] = {STATUSES[value][0]};")
    w("  };")
    w("  atomic {")
    w("    /* the configuration: any catalogue entry, any topologies, any pinning */")
    w("    if :: catalogued = 1 :: catalogued = 0 fi;")
    for i in range(k):
        w(f"    if :: fit[{i}] = 1 :: fit[{i}] = 0 fi;")
        w(f"    if :: pin[{i}] = 1 :: pin[{i}] = 0 fi;")
    w("    /* every node starts unknown, with nothing reported */")
    for i in range(k):
        w(f"    h[{i}] = S_UNKNOWN; st[{i}] = ABSENT;")
    for i in range(k):
        w(f"    run node({i});")
    w("    run client()")
    w("  }")
    w("}")
    w("")
    w("/* if m is catalogued and node 0 can host it, and from some point on node 0")
    w("   answers every poll and fails no request, and no node reports m recovering,")
    w("   then requests are routed again and again (none is rejected forever) */")
    w("ltl live { <> [] (NODE0_FEASIBLE && ok0 && NONE_RECOVERING) -> [] <> routed }")
    return "\n".join(out) + "\n"
