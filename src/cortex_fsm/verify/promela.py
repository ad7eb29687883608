"""``cortex-fsm export promela``: a Spin model generated from the code.

Theory of operation
-------------------
The model has two parts, both *derived* from the Python code, never written
by hand:

* **k health machines.** The transition table is ``HealthTable(T)`` (itself
  expanded from :data:`cortex_fsm.health.TRANSITIONS` by ``step()``), and
  routability is ``HealthState.routable``: both are emitted as constant
  arrays. Each node has a poller process that, at any time, makes the node
  answer a poll (and report the model in any status) or fail one.

* **The engine's model-map bookkeeping.** What the engine holds for ``m`` on
  a node after a successful poll reporting it in some status (or not at
  all), and after a failed poll, is read from a real :class:`Engine` for
  every abstract (previous, reported) pair, under both concretisations, and
  emitted as two constant arrays; the pollers update ``st`` through them
  and assert F1 (the map is what the last successful poll said; a failed
  poll keeps it).

* **The routing classification.** Routing is abstracted to one catalogued (or
  uncatalogued) model ``m`` and, per node, four features: routable, the
  status of ``m`` on it (absent, loaded, unloaded, recovering), whether its
  topology fits the profile, and whether ``pinned_on`` names it (no node
  named: the profile is unpinned). For every combination of features -- for
  3 nodes, 2 x 32^3 = 65,536 -- the real :func:`cortex_fsm.routing.decide`
  is evaluated and its outcome and chosen node are emitted as a constant
  table. Each feature is concretised twice (healthy/suspect, unhealthy/
  unknown, loaded/reloading, absent/loading, no discovery/one small GPU, the
  model asked by id/by alias, nodes in name order/reversed) and the two
  decisions must agree: the export fails loudly if the code's answer depends
  on anything the model does not track (that check is what keeps the model
  honest as the code evolves).

Spin then explores every interleaving of polls and requests and checks, as
assertions, H1-H4 (with the same poll-history monitor as
:class:`~cortex_fsm.verify.invariants.PollHistory`) after every poll and
F1 after every poll, R1-R4, R6 and R7 on every request's decision, and as an LTL property
(``live``): if the model is catalogued, node 0 is feasible, and from some
point on node 0 answers every poll and no node reports the model
recovering, then requests are routed infinitely often (never rejected
forever). Liveness needs weak fairness (``pan -a -f``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from ..catalogue import Catalogue, Profile
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
    "MAX_NODES",
    "OUTCOMES",
    "STATUSES",
    "AbstractionError",
    "generate",
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


def model_map_tables() -> tuple[list[int], list[int]]:
    """The engine's own bookkeeping of ``m`` on one node, per abstract status.

    ``after_ok[previous * n + reported]`` is what the engine holds after a
    successful poll that reports ``m`` as ``reported`` (``ABSENT``: not at
    all) when it held ``previous``; ``after_failed[previous]`` is what it
    holds after a failed poll. Each entry is read from a real
    :class:`~cortex_fsm.engine.Engine` under both concretisations of the two
    statuses, which must agree.
    """

    def held(previous: ModelStatus | None, then: ModelsReport | PollFailure) -> int:
        engine = Engine([Neuron(name="n0", endpoint="http://n0")])
        first = {} if previous is None else {MODEL: previous}
        engine.observe_models(
            "n0", 0.0, ModelsReport(models={"other": ModelStatus.LOADED, **first})
        )
        engine.observe_models("n0", 1.0, then)
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

    n = len(STATUSES)
    after_ok = []
    for previous, reported in itertools.product(range(n), range(n)):
        answers = []
        for v, w in itertools.product(range(2), range(2)):
            concrete = STATUSES[reported][1][w]
            report = {"other": ModelStatus.LOADED}
            if concrete is not None:
                report[MODEL] = concrete
            answers.append(held(STATUSES[previous][1][v], ModelsReport(models=report)))
        what = (
            f"held {STATUSES[previous][0].lower()}, "
            f"a successful poll reporting {STATUSES[reported][0].lower()}"
        )
        after_ok.append(agreed(answers, what))
    after_failed = [
        agreed(
            [held(STATUSES[previous][1][v], PollFailure(reason="timeout")) for v in range(2)],
            f"held {STATUSES[previous][0].lower()}, a failed poll",
        )
        for previous in range(n)
    ]
    return after_ok, after_failed


def _representatives(threshold: int) -> tuple[tuple[HealthState, HealthState], ...]:
    """(non-routable pair, routable pair) of health states, chosen by the code's
    own ``routable`` so that the model's routability is exactly the code's."""
    states = list(HealthTable(threshold).states)
    down = [s for s in states if not s.routable]
    up = [s for s in states if s.routable]
    if not down or not up:
        raise AbstractionError("the health machine has no routable or no unroutable state")
    return ((down[0], down[-1]), (up[0], up[-1]))


def _digit(routable: int, status: int, fit: int, pin: int) -> int:
    return routable + 2 * status + 8 * fit + 16 * pin


def _encode(decision: Decision, names: Sequence[str]) -> int:
    try:
        code = OUTCOMES.index(decision.outcome)
    except ValueError:
        raise AbstractionError(
            f"decide() gave {decision.outcome.value}, not a routing outcome"
        ) from None
    node = 0 if decision.node is None else names.index(decision.node) + 1
    return code * 4 + node


def routing_table(nodes: int, threshold: int) -> list[int]:
    """``decide()`` on every abstract input: entry = outcome code * 4 + node + 1
    (0 for none). Index = catalogued + 2 * sum(digit(node i) * 32**i)."""
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"the Promela model supports 1..{MAX_NODES} nodes, got {nodes}")
    names = _names(nodes)
    reps = _representatives(threshold)
    # Per node and per variant: the snapshot for every combination of features.
    node_cache: dict[tuple[int, int, int, int, int], NodeSnapshot] = {}
    for i, routable, status, fit, variant in itertools.product(
        range(nodes), range(2), range(len(STATUSES)), range(2), range(2)
    ):
        concrete = STATUSES[status][1][variant]
        node_cache[i, routable, status, fit, variant] = NodeSnapshot(
            name=names[i],
            health=reps[routable][variant],
            discovery=_FIT if fit else (None if variant == 0 else _SMALL),
            models={} if concrete is None else {MODEL: ModelEntry(status=concrete)},
        )
    catalogues: dict[tuple[int, tuple[str, ...]], Catalogue] = {}
    table: list[int] = []
    for index in range(2 * 32**nodes):
        catalogued = index & 1
        rest = index >> 1
        digits = [(rest >> (5 * i)) & 31 for i in range(nodes)]
        features = [(d & 1, (d >> 1) & 3, (d >> 3) & 1, (d >> 4) & 1) for d in digits]
        pinned = tuple(names[i] for i, f in enumerate(features) if f[3])
        key = (catalogued, pinned)
        catalogue = catalogues.get(key)
        if catalogue is None:
            profiles = {}
            if catalogued:
                profiles[MODEL] = Profile(
                    id=MODEL,
                    harness="candle",
                    min_devices=2,
                    min_device_vram_mb=40000,
                    pinned_on=pinned,
                )
            catalogue = catalogues[key] = Catalogue(profiles=profiles, aliases={ALIAS: MODEL})
        base = _encode(decide(_fleet(node_cache, features, 0), catalogue, MODEL, REFERENCE), names)
        other = _fleet(node_cache, features, 1)
        view = OrderedView(other, names[::-1], reverse_maps=True)
        if _encode(decide(view, catalogue, ALIAS, REFERENCE), names) != base:
            raise AbstractionError(
                _diagnose(node_cache, features, catalogue, catalogued, names, base)
            )
        table.append(base)
    return table


def _fleet(
    cache: dict[tuple[int, int, int, int, int], NodeSnapshot],
    features: Sequence[tuple[int, int, int, int]],
    variant: int,
) -> FleetSnapshot:
    return FleetSnapshot(
        nodes=tuple(cache[i, r, s, fit, variant] for i, (r, s, fit, _p) in enumerate(features))
    )


def _diagnose(  # noqa: PLR0917 - private, called once
    cache: dict[tuple[int, int, int, int, int], NodeSnapshot],
    features: Sequence[tuple[int, int, int, int]],
    catalogue: Catalogue,
    catalogued: int,
    names: Sequence[str],
    base: int,
) -> str:
    """Which concretisation changes the answer: name it in the error."""
    same = _fleet(cache, features, 0)
    other = _fleet(cache, features, 1)
    tries = [
        (
            "another concrete health state, status or discovery",
            decide(other, catalogue, MODEL, REFERENCE),
        ),
        ("the model asked by its alias", decide(same, catalogue, ALIAS, REFERENCE)),
        (
            "the nodes (and their maps) in reverse order -- an order dependence (R5)",
            decide(OrderedView(same, names[::-1], reverse_maps=True), catalogue, MODEL, REFERENCE),
        ),
    ]
    shown = ", ".join(
        f"{names[i]}(routable={r}, status={STATUSES[s][0].lower()}, fit={fit}, pinned={p})"
        for i, (r, s, fit, p) in enumerate(features)
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


_BLOCK = 8192


def _c_array(name: str, values: Sequence[int], per_line: int = 32) -> Iterator[str]:
    yield f"  static const unsigned char {name}[{len(values)}] = {{"
    for start in range(0, len(values), per_line):
        chunk = values[start : start + per_line]
        yield "    " + ",".join(str(v) for v in chunk) + ","
    yield "  };"


def generate(nodes: int = 3, threshold: int = 3) -> str:
    """The Promela model for ``nodes`` nodes and ``threshold`` (see module doc)."""
    validate_threshold(threshold)
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"the Promela model supports 1..{MAX_NODES} nodes, got {nodes}")
    health = HealthTable(threshold)
    states = list(health.states)
    index = {s: i for i, s in enumerate(states)}
    healthy = index[HealthState(phase=Phase.HEALTHY)]
    table = routing_table(nodes, threshold)
    after_ok, after_failed = model_map_tables()
    k = nodes
    out: list[str] = []
    w = out.append
    w("/*")
    w(" * cortex_fsm: the node-health machines of k nodes and the routing classification.")
    w(" *")
    w(f" * Generated by `cortex-fsm export promela --nodes {nodes} --threshold {threshold}` from")
    w(" * cortex_fsm.health.HealthTable (the transition table) and from")
    w(" * cortex_fsm.routing.decide evaluated on every abstract input. Do not edit:")
    w(" * tests/test_promela.py fails when this file is not what the code generates.")
    w(" *")
    w(" * Check:  spin -a cortex.pml")
    w(" *         gcc -O2 -DSAFETY -DNOCLAIM -o pan pan.c && ./pan -m100000     (H1-H4, R1-R7)")
    w(" *         gcc -O2 -o pan pan.c && ./pan -a -f -m100000 -N live        (liveness)")
    w(" */")
    w("")
    w(f"#define K {k}")
    w(f"#define T {threshold}")
    w(f"#define NSTATES {len(states)}")
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
    w("/* decide() on every abstract input; index = catalogued + 2 * sum(digit(i) * 32^i),")
    w("   digit(i) = routable + 2 * status + 8 * fit + 16 * pinned */")
    # Spin limits the text of one c_decl block, so the table comes in blocks.
    blocks = [table[i : i + _BLOCK] for i in range(0, len(table), _BLOCK)]
    lookup = " : ".join(
        f"(i) < {(b + 1) * _BLOCK} ? ROUTING_{b}[(i) - {b * _BLOCK}]"
        for b in range(len(blocks) - 1)
    )
    last = f"ROUTING_{len(blocks) - 1}[(i) - {(len(blocks) - 1) * _BLOCK}]"
    for b, block in enumerate(blocks):
        w("c_decl {")
        out.extend(_c_array(f"ROUTING_{b}", block))
        if b == len(blocks) - 1:
            w(f"  #define ROUTING(i) ({lookup + ' : ' if lookup else ''}{last})")
        w("}")
    w("")
    w("hidden byte NEXT_OK[NSTATES];")
    w("hidden byte NEXT_FAILED[NSTATES];")
    w("hidden byte ROUTABLE[NSTATES];")
    w(f"hidden byte AFTER_OK[{len(after_ok)}];     /* the engine's status of m after a poll_ok */")
    w(f"hidden byte AFTER_FAILED[{len(after_failed)}]; /* ... and after a poll_failed */")
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
    w("/* the poll-history monitor of each node (invariants.PollHistory) */")
    w("bit ever_ok[K];")
    w("byte streak[K];")
    w("bit armed[K];")
    w("/* observables for the liveness property */")
    w("bit ok0;             /* node 0's last poll succeeded */")
    w("bit routed;          /* the last request was routed */")
    w("/* scratch, reset within each step (not part of any stored state) */")
    w("int idx;")
    w("byte dec;")
    w("hidden byte o, chosen, i2, before, rep;")
    w("hidden byte H1, H2, H3, H4, F1, R1, R2, R3, R4, R6, R7, any, pinned_candidate;")
    w("")
    w("#define ROUTABLE_AT(i) ROUTABLE[h[i]]")
    w("#define INPIN(i) (pin[i] || !(" + " || ".join(f"pin[{i}]" for i in range(k)) + "))")
    w("#define FEASIBLE(i) (fit[i] && INPIN(i))")
    w("#define DIGIT(i) (ROUTABLE_AT(i) + 2 * st[i] + 8 * fit[i] + 16 * pin[i])")
    w("#define NODE0_FEASIBLE (catalogued && FEASIBLE(0))")
    w("#define NONE_RECOVERING (" + " && ".join(f"st[{i}] != RECOVERING" for i in range(k)) + ")")
    w("")
    w("inline check_health(i) {")
    w("  H1 = (ever_ok[i] || !ROUTABLE_AT(i));")
    w("  assert(H1);")
    w("  H2 = (!(armed[i] && streak[i] >= 1 && streak[i] <= T - 1) || ROUTABLE_AT(i));")
    w("  assert(H2);")
    w("  H3 = (streak[i] < T || !ROUTABLE_AT(i));")
    w("  assert(H3);")
    w("  H4 = (!(ever_ok[i] && streak[i] == 0) || h[i] == S_HEALTHY);")
    w("  assert(H4)")
    w("}")
    w("")
    w("proctype poller(byte i) {")
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
    w("       ever_ok[i] = 1; streak[i] = 0; armed[i] = 0;")
    w("       if :: i == 0 -> ok0 = 1 :: else -> skip fi;")
    w("       check_health(i)")
    w("     }")
    w("  :: atomic {  /* poll_failed */")
    w("       before = st[i];")
    w("       st[i] = AFTER_FAILED[st[i]];")
    w("       /* F1: a failed poll keeps the model map */")
    w("       F1 = (st[i] == before);")
    w("       assert(F1);")
    w("       before = ROUTABLE_AT(i);")
    w("       if :: streak[i] == 0 -> armed[i] = before :: else -> skip fi;")
    w("       if")
    w("       :: ever_ok[i] && streak[i] < T -> streak[i]++")
    w("       :: !ever_ok[i] && streak[i] < 1 -> streak[i]++")
    w("       :: else -> skip")
    w("       fi;")
    w("       h[i] = NEXT_FAILED[h[i]];")
    w("       if :: i == 0 -> ok0 = 0 :: else -> skip fi;")
    w("       check_health(i)")
    w("     }")
    w("  od")
    w("}")
    w("")
    digits = " + ".join("DIGIT(0)" if i == 0 else f"{32**i} * DIGIT({i})" for i in range(k))
    w("proctype client() {")
    w("  do")
    w("  :: d_step {  /* a request for m: the decision, judged */")
    w(f"       idx = catalogued + 2 * ({digits});")
    w("       c_code { now.dec = ROUTING(now.idx); };")
    w("       o = dec / 4;")
    w("       chosen = dec % 4;")
    w("       any = 0; pinned_candidate = 0;")
    w("       i2 = 0;")
    w("       do")
    w("       :: i2 < K ->")
    w("            if :: catalogued && !ROUTABLE_AT(i2) && FEASIBLE(i2) -> any = 1")
    w("            :: else -> skip fi;")
    w(
        "            if :: ROUTABLE_AT(i2) && FEASIBLE(i2) && pin[i2] -> pinned_candidate = 1"
        " :: else -> skip fi;"
    )
    w("            i2++")
    w("       :: else -> break")
    w("       od;")
    w("       /* R1: feasible-but-down never yields a 404 */")
    w("       R1 = (!any || STATUS[o] != 404);")
    w("       assert(R1);")
    w("       /* R2: every 503 carries Retry-After; no 404 does */")
    w("       R2 = ((STATUS[o] != 503 || RETRY[o] > 0) && (STATUS[o] != 404 || RETRY[o] == 0));")
    w("       assert(R2);")
    w("       /* R3: a chosen node is routable; a reject chooses none */")
    w("       R3 = ((ROUTED[o] && chosen > 0 && ROUTABLE_AT(chosen - 1))")
    w("             || (!ROUTED[o] && chosen == 0));")
    w("       assert(R3);")
    w("       /* R4: no cold start while a routable node has m recovering */")
    w("       i2 = 0; R4 = 1;")
    w("       do")
    w("       :: i2 < K ->")
    w("            if :: COLD[o] && ROUTABLE_AT(i2) && st[i2] == RECOVERING -> R4 = 0")
    w("            :: else -> skip fi;")
    w("            i2++")
    w("       :: else -> break")
    w("       od;")
    w("       assert(R4);")
    w("       /* R6: route_loaded picks the first (by name; loads are equal here) routable")
    w("          node with m loaded */")
    w("       R6 = 1;")
    w("       if")
    w("       :: o == ROUTE_LOADED ->")
    w("            R6 = (st[chosen - 1] == LOADED && ROUTABLE_AT(chosen - 1));")
    w("            i2 = 0;")
    w("            do")
    w("            :: i2 < chosen - 1 ->")
    w("                 if :: ROUTABLE_AT(i2) && st[i2] == LOADED -> R6 = 0 :: else -> skip fi;")
    w("                 i2++")
    w("            :: else -> break")
    w("            od")
    w("       :: else -> skip")
    w("       fi;")
    w("       assert(R6);")
    w("       /* R7: a cold-load target is routable, feasible, and pinned if a routable")
    w("          feasible pinned node exists */")
    w("       R7 = 1;")
    w("       if")
    w("       :: o == COLD_LOAD ->")
    w(
        "            R7 = (catalogued && ROUTABLE_AT(chosen - 1) && FEASIBLE(chosen - 1)"
        " && (!pinned_candidate || pin[chosen - 1]))"
    )
    w("       :: else -> skip")
    w("       fi;")
    w("       assert(R7);")
    w("       routed = ROUTED[o];")
    w("       idx = 0; dec = 0")
    w("     }")
    w("  od")
    w("}")
    w("")
    w("init {")
    w("  d_step {")
    for s in states:
        w(f"    NEXT_OK[S_{s.ident.upper()}] = S_{health.step(s, Event.POLL_OK).ident.upper()};")
        w(
            f"    NEXT_FAILED[S_{s.ident.upper()}] = "
            f"S_{health.step(s, Event.POLL_FAILED).ident.upper()};"
        )
        w(f"    ROUTABLE[S_{s.ident.upper()}] = {1 if s.routable else 0};")
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
        w(f"    run poller({i});")
    w("    run client()")
    w("  }")
    w("}")
    w("")
    w("/* if m is catalogued and node 0 can host it, and from some point on node 0")
    w("   answers every poll and no node reports m recovering, then requests are")
    w("   routed again and again (none is rejected forever) */")
    w("ltl live { <> [] (NODE0_FEASIBLE && ok0 && NONE_RECOVERING) -> [] <> routed }")
    _ = healthy
    return "\n".join(out) + "\n"
