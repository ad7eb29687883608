"""``cortex-fsm verify --config``: the model checker on a gateway's own fleet.

``cortex-fsm verify`` explores small abstract worlds (docs/verification.md).
This module builds one :class:`~cortex_fsm.verify.explorer.World` from a
``cortex.toml`` instead -- its nodes with their declared topologies, its
catalogue and aliases, its policy -- and explores it with the same explorer,
checking every invariant on every state, plus one the configuration itself
must meet:

* ``SERVED`` -- while every node is up, every model and alias the
  configuration names is served (never a 404), and a catalogued model is
  served as itself. A model no node's topology can host, an alias to a
  model that does not exist, an alias chain (looked up once: the second hop
  is never followed, docs/semantics.md §3) and an alias that shadows a
  catalogued model each break it, and the counterexample is a trace that
  ``cortex-fsm replay`` reproduces.

The world
---------
* **Start**: the fleet as a gateway sees it once started and polled once:
  every neuron's declared topology fed as a ``declared`` discovery
  (docs/semantics.md §10), then every node's first ``/models`` answer, with
  nothing loaded. Nodes without a declared topology have none (a live
  ``/discovery`` could say anything); backends of other kinds never have
  one (§11).
* **Moves**, on every node: a ``/models`` answer with nothing loaded, one
  with every catalogued model loaded, a failed poll, and a request for the
  first catalogued model that fails on the node (passive health, §6; the
  failover's exclusions, §7).
* **Requests** asked on every state: every catalogued model, every alias and
  one name nobody configured; every catalogued model also with each node,
  and with every node, excluded.

Symmetry
--------
Nodes with the same kind, the same declared topology and the same pins
(the set of models whose ``pinned_on`` names them) are interchangeable:
feasibility (§3 rule 5), the answers they may give and every invariant treat
them alike, and their names matter only to break ties, by order. The world
keeps at most two representatives per class: its first and its last node by
name. Two, because an invariant compares a decision with what *other* nodes
hold -- a chosen node against a down one (R1), a chosen replica against a
competing one (R6), a failed node against the next candidate (R9, R10) --
so each class needs room for a node in one state and another in a
different one; the first and the last by name, because a tie between
classes is broken by name, and with both kept every "a node of class A
sorts before (or after) a node of class B" that the fleet has, the world
has too. What this leaves out: states in which three or more nodes of one
class are each in a different state (three replicas of one model with three
distinct loads and recencies, for instance). The report says how many nodes
stood for how many.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from io import StringIO
from pathlib import Path
from typing import Any

import attrs

from ..catalogue import Catalogue
from ..engine import Engine
from ..errors import ConfigError
from ..fleet import Neuron
from ..policy import Policy
from ..routing import Decision
from ..trace import TraceWriter, output_problem
from ..verify.explorer import (
    ExploreResult,
    Violation,
    World,
    _final_requests,
    _path_events,
    _typed,
    _World,
    crash_reproduced,
    crashed,
    replay_verdict,
)
from ..verify.invariants import ALL_INVARIANTS, INVARIANTS, spec_model
from ..verify.monitor import Monitor

__all__ = [
    "DEFAULT_DEPTH",
    "SERVED",
    "ConfigResult",
    "ConfigWorld",
    "NodeClass",
    "add_config_argument",
    "config_world",
    "render",
    "verify_config",
    "verify_config_main",
]

SERVED = (
    "while every node is up, every model and alias the configuration names is served "
    "(never a 404), a catalogued model as itself"
)
#: Observations from the start state, unless --depth says otherwise.
DEFAULT_DEPTH = 3
#: The name asked on every state that no configuration names.
UNCONFIGURED = "cortex-fsm/not-configured"


@attrs.frozen(slots=True, kw_only=True)
class NodeClass:
    """Interchangeable nodes: one kind, one declared topology, the same pins."""

    kind: str
    devices: tuple[int, ...] | None  # VRAM per device, sorted; None: not declared
    pinned: tuple[str, ...]  # models pinned on these nodes
    members: tuple[str, ...]  # every node of the class, by name
    kept: tuple[str, ...]  # its representatives in the world

    def describe(self) -> str:
        if self.kind != "neuron":
            shape = f"{self.kind} backend"
        elif self.devices is None:
            shape = "topology not declared"
        else:
            shape = f"{len(self.devices)} GPU(s) {list(self.devices)} MB"
        pins = f", pinned: {', '.join(self.pinned)}" if self.pinned else ""
        return (
            f"{len(self.members)} node(s) ({shape}{pins}) as {len(self.kept)}: "
            f"{', '.join(self.kept)}"
        )


@attrs.frozen(slots=True, kw_only=True)
class ConfigWorld:
    """The world built from a configuration, and what it stands for."""

    world: World
    source: str
    neurons: tuple[Neuron, ...]  # every configured node
    classes: tuple[NodeClass, ...]
    #: the records fed before the exploration starts (declared topologies, first polls)
    prelude: tuple[Mapping[str, Any], ...]
    #: names SERVED judges (catalogued models and aliases whose answer the configuration decides)
    judged: tuple[str, ...]


def _classes(neurons: Sequence[Neuron], catalogue: Catalogue, reps: int) -> list[NodeClass]:
    groups: dict[tuple[Any, ...], list[str]] = {}
    for n in neurons:
        devices = None if n.devices is None else tuple(sorted(d.vram_total_mb for d in n.devices))
        pinned = tuple(sorted(p.id for p in catalogue.profiles.values() if n.name in p.pinned_on))
        groups.setdefault((n.kind, devices, pinned), []).append(n.name)
    out = []
    for (kind, devices, pinned), names in groups.items():
        members = tuple(sorted(names))
        kept = members if len(members) <= reps else (*members[: reps - 1], members[-1])
        out.append(NodeClass(kind=kind, devices=devices, pinned=pinned, members=members, kept=kept))
    return out


def _entry(model: str, status: str) -> dict[str, object]:
    return {"id": model, "harness": "candle", "status": status, "devices": [0]}


def _judged(neurons: Sequence[Neuron], catalogue: Catalogue) -> tuple[str, ...]:
    """The names whose answer, with every node up, the configuration alone decides:
    not those a backend of another kind or a node of unknown topology may serve."""
    backends = any(n.kind != "neuron" for n in neurons)
    out = []
    for name in (*catalogue.profiles, *catalogue.aliases):
        model = spec_model(catalogue, name)
        profile = catalogue.profiles.get(model)
        if profile is None:
            if model in catalogue.aliases or not backends:  # a chain, or nobody else serves it
                out.append(name)
            continue
        allowed = [n for n in neurons if not profile.pinned_on or n.name in profile.pinned_on]
        if all(n.kind == "neuron" and n.devices is not None for n in allowed):
            out.append(name)
    return tuple(out)


def config_world(
    config: Any,
    *,
    depth: int = DEFAULT_DEPTH,
    reps: int = 2,
    source: str = "cortex.toml",
) -> ConfigWorld:
    """The world of a :class:`~cortex_fsm.drivers.config.GatewayConfig`."""
    from ..drivers.topology import declared_body

    neurons: tuple[Neuron, ...] = tuple(config.neurons)
    catalogue: Catalogue = config.catalogue
    policy: Policy = config.policy
    classes = _classes(neurons, catalogue, reps)
    kept = {name for c in classes for name in c.kept}
    names = tuple(n.name for n in neurons if n.name in kept)
    by_name = {n.name: n for n in neurons}
    models = tuple(catalogue.profiles)
    polls: dict[str, object] = {
        "none": [],
        "all": [_entry(m, "loaded") for m in models],
        "failed": None,
    }
    prelude: list[Mapping[str, Any]] = []
    for name in names:
        devices = by_name[name].devices
        if by_name[name].kind == "neuron" and devices is not None:
            body = declared_body(devices)
            prelude.append({"kind": "discovery", "t": 0.0, "node": name, "ok": True, "body": body})
    for name in names:
        prelude.append(
            {"kind": "models", "t": 0.0, "node": name, "ok": True, "body": polls["none"]}
        )
    node_moves: list[tuple[str, str]] = [("models", "none"), ("models", "failed")]
    if models:
        node_moves.insert(1, ("models", "all"))
        node_moves.append(("attempt", "failed"))
    requests = (*models, *catalogue.aliases, UNCONFIGURED)
    world = World(
        name="config",
        about=f"the fleet, catalogue and policy of {source}",
        names=names,
        policy=policy,
        depth=depth,
        node_moves=tuple(node_moves),
        catalogue=catalogue,
        requests=tuple(dict.fromkeys(requests)),
        exclude_requests=models,
        polls=polls,
        model=models[0] if models else UNCONFIGURED,
        endpoints={n: by_name[n].endpoint for n in names},
    )
    return ConfigWorld(
        world=world,
        source=source,
        neurons=neurons,
        classes=tuple(classes),
        prelude=tuple(prelude),
        judged=_judged(neurons, catalogue),
    )


class _ConfigExplorer(_World):
    """The explorer over a configuration's world: it starts from the prelude and
    checks SERVED beside every invariant."""

    def __init__(self, spec: ConfigWorld, *, stop_at_first: bool) -> None:
        super().__init__(spec.world, stop_at_first=stop_at_first)
        self.spec = spec
        self.checked["SERVED"] = 0

    def fresh(self) -> tuple[Engine, Monitor]:
        engine, monitor = super().fresh()
        monitor = self.apply(engine, monitor, self.spec.prelude)
        return engine, monitor

    def check(
        self,
        engine: Engine,
        monitor: Monitor,
        asked: Sequence[tuple[str, frozenset[str], Decision]],
    ) -> list[Violation]:
        found = super().check(engine, monitor, asked)
        if not all(n.routable for n in monitor.nodes):
            return found
        judged = set(self.spec.judged)
        for requested, exclude, decision in asked:
            if exclude or requested not in judged:
                continue
            self.checked["SERVED"] += 1
            detail = None
            if decision.status == 404:
                detail = f"a request for {requested!r} gets {_told(decision)}"
            elif requested in self.catalogue.profiles and decision.model != requested:
                detail = (
                    f"a request for the catalogued model {requested!r} is served as "
                    f"{decision.model!r} ({_told(decision)})"
                )
            if detail is not None:
                found.append(
                    Violation(
                        invariant="SERVED",
                        detail=f"{detail}, with every node up",
                        request=requested,
                    )
                )
        return found


def _told(decision: Decision) -> str:
    if decision.node is not None:
        return f"{decision.outcome.value} -> {decision.node}"
    retry = decision.retry_after
    return f"{decision.outcome.value} ({decision.status}" + (
        f", Retry-After {retry})" if retry is not None else ")"
    )


@attrs.frozen(slots=True, kw_only=True)
class ConfigResult:
    """One exploration of a configuration's world."""

    spec: ConfigWorld
    result: ExploreResult
    trace: str | None = None  # the counterexample, when written
    replayed: bool = False  # ... and its replay gives the violating decision (or raises the same)

    @property
    def ok(self) -> bool:
        return self.result.ok


def verify_config(
    path: str | os.PathLike[str],
    *,
    depth: int = DEFAULT_DEPTH,
    counterexample: str | os.PathLike[str] | None = None,
    stop_at_first: bool = True,
) -> ConfigResult:
    """Model-check the gateway configuration at ``path`` (raises
    :class:`~cortex_fsm.errors.ConfigError` when it cannot be read). On a
    violation, the shortest counterexample is written to ``counterexample``
    (when given) as a trace ``cortex-fsm replay`` reproduces."""
    from ..drivers.config import load_config

    config = load_config(path)
    spec = config_world(config, depth=depth, source=os.fspath(path))
    explorer = _ConfigExplorer(spec, stop_at_first=stop_at_first)
    result = explorer.run(None)
    out = ConfigResult(spec=spec, result=result)
    if result.counterexample is not None and counterexample is not None:
        out = _write(out, explorer, os.fspath(counterexample))
    return out


def _write(out: ConfigResult, explorer: _ConfigExplorer, path: str) -> ConfigResult:
    """Write the counterexample (prelude, path, the final requests) and replay it."""
    from ..replay import replay
    from ..trace import decision_line

    cx = out.result.counterexample
    assert cx is not None
    with TraceWriter(path, explorer.header()) as writer:
        for rec in out.spec.prelude:
            writer.write(_typed(rec))
        for event in _path_events(explorer, cx):
            writer.write(event)
    if crashed(cx):
        return attrs.evolve(out, trace=path, replayed=crash_reproduced(path, cx))
    lines = StringIO()
    replay(path, out=lines)
    finals = _final_requests(cx, out.spec.world.requests)
    got = lines.getvalue().splitlines()[-len(finals) :]
    engine, _monitor, _steps = explorer.replay_path(cx.moves)
    t = float(len(cx.moves))
    want = [
        decision_line(engine.decide(r, x), f"final-{i}", t).rstrip("\n")
        for i, (r, x) in enumerate(finals)
    ]
    return attrs.evolve(out, trace=path, replayed=got[:1] == want[:1])


# --- the command --------------------------------------------------------------------------------


def render(out: ConfigResult) -> str:
    spec, result = out.spec, out.result
    world = spec.world
    lines = [
        f"cortex-fsm verify --config {spec.source}: {len(spec.neurons)} node(s) as "
        f"{len(world.names)}, {len(world.the_catalogue().profiles)} model(s), "
        f"{len(world.the_catalogue().aliases)} alias(es); {world.policy.describe()}",
    ]
    lines += [f"  {c.describe()}" for c in spec.classes]
    lines.append(
        f"  start: declared topologies, every node polled once (nothing loaded); moves per "
        f"node: {', '.join(f'{k} {v}' for k, v in world.node_moves)}; depth {world.depth}"
    )
    if result.stopped_early:
        reach = "stopped at the first violation"
    elif result.complete:
        reach = "complete: every reachable state"
    else:
        reach = f"bound reached at depth {world.depth}"
    lines += [
        "",
        f"{result.states} states, {result.transitions} transitions, depth {result.depth} "
        f"({reach}), {result.seconds:.1f} s",
        "",
    ]
    failed = set(result.violated)
    names = [*ALL_INVARIANTS, "SERVED"]
    for name in names:
        verdict = "FAIL" if name in failed else ("----" if result.stopped_early else "PASS")
        sentence = SERVED if name == "SERVED" else INVARIANTS[name]
        lines.append(f"{verdict}  {name:<6}  {sentence}  ({result.checked.get(name, 0)} checks)")
    lines += ["", _left_out(spec, result)]
    cx = result.counterexample
    if cx is None:
        lines += ["", "all invariants hold on every explored state"]
        return "\n".join(lines) + "\n"
    lines += ["", f"counterexample ({len(cx.moves)} observation(s) after the start):"]
    for step, move in enumerate(cx.moves, start=1):
        lines.append(f"  t={step:<3} {move.describe(world)}")
    # A move that raised leaves no state: what is shown is the one it was taken from.
    lines.append("before the last observation, which raised:" if crashed(cx) else "then:")
    lines.append("  health: " + ", ".join(f"{n} {label}" for n, label in cx.states))
    asked = {v.request for v in cx.violations if v.request is not None}
    for requested, decision in cx.decisions:
        if requested in asked:
            lines.append(f"  request {requested!r}: {_told(decision)}")
    lines.append("violates:")
    for v in cx.violations:
        sentence = SERVED if v.invariant == "SERVED" else INVARIANTS[v.invariant]
        lines.append(f"  {v.invariant}  {sentence}: {v.detail}")
    if out.trace is not None:
        again = replay_verdict(cx, out.replayed)
        lines.append(f"written to {out.trace} ({again}): cortex-fsm replay {out.trace}")
    return "\n".join(lines) + "\n"


def _left_out(spec: ConfigWorld, result: ExploreResult) -> str:
    parts = []
    merged = sum(len(c.members) - len(c.kept) for c in spec.classes)
    if merged:
        parts.append(
            f"{merged} node(s) merged into their class's representatives (states with three "
            "or more nodes of one class each in a different state)"
        )
    if not result.complete:
        parts.append(f"everything more than {spec.world.depth} observations after the start")
    parts.append(
        "answers other than the three /models answers (no load readings, statuses other "
        "than loaded, live topologies other than the declared ones), loads and unloads, "
        "nodes joining or leaving, reloads"
    )
    unjudged = [
        n
        for n in (*spec.world.the_catalogue().profiles, *spec.world.the_catalogue().aliases)
        if n not in spec.judged
    ]
    if unjudged:
        parts.append(
            f"SERVED for {', '.join(unjudged)} (a node of unknown topology or a backend of "
            "another kind may serve them)"
        )
    return "left out by the bound: " + "; ".join(parts)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="model-check this gateway configuration instead of the built-in worlds: its "
        "nodes (two per class of identical topology and pins), catalogue, aliases and "
        f"policy, plus {SERVED!r}; with --depth (default {DEFAULT_DEPTH})",
    )


def verify_config_main(args: argparse.Namespace) -> int:
    """``cortex-fsm verify``: the configuration's world with ``--config``, else
    the built-in worlds."""
    from ..verify import verify_main

    if args.config is None:
        return verify_main(args)
    for option in ("world", "nodes", "threshold"):
        if getattr(args, option, None):
            print(
                f"cortex-fsm verify: error: --{option} cannot be combined with --config "
                "(the configuration decides it)",
                file=sys.stderr,
            )
            return 2
    problem = output_problem(args.counterexample)
    if problem is not None:
        print(f"cortex-fsm verify: error: --counterexample: {problem}", file=sys.stderr)
        return 2
    depth = DEFAULT_DEPTH if args.depth is None else args.depth
    try:
        out = verify_config(
            Path(args.config),
            depth=depth,
            counterexample=args.counterexample,
            stop_at_first=not getattr(args, "all", False),
        )
    except ConfigError as exc:
        print(f"cortex-fsm verify: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(out))
    return 0 if out.ok else 1
