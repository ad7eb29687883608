"""``cortex-fsm verify`` and ``cortex-fsm export``: argument parsing and reports.

``verify`` is what a CI job calls: exit status 0 when every invariant holds on
every explored state, 1 on a violation (the shortest counterexample is printed
and written as a replayable v1 trace), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TextIO

from ..trace import AtomicOutput, output_problem
from .explorer import (
    MAX_NODES,
    REQUESTS,
    ExploreResult,
    explore,
    explorer_catalogue,
    node_names,
    write_counterexample,
)
from .invariants import ALL_INVARIANTS, INVARIANTS

__all__ = [
    "DEFAULT_DEPTH",
    "add_export_arguments",
    "add_verify_arguments",
    "default_jobs",
    "export_main",
    "render_result",
    "verify_main",
]

#: The default bound: 3 nodes, threshold 3, every state within 6 observations.
DEFAULT_NODES = 3
DEFAULT_THRESHOLD = 3
DEFAULT_DEPTH = 6
MAX_THRESHOLD = 9


def default_jobs() -> int:
    """Worker processes for the exploration: the CPUs this process may use, at most 2."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


def _bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _depth(text: str) -> int | None:
    if text.lower() in ("none", "unbounded", "inf"):
        return None
    return _bounded_int(0, 1000)(text)


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Explore the engine's abstract state space breadth first (the real engine, "
        "every observation of a small complete alphabet from every reachable state) "
        "and check every invariant of docs/semantics.md on every state and decision. "
        "Exit 0: all hold; 1: a violation (shortest counterexample printed and "
        "written as a v1 trace that 'cortex-fsm replay' reproduces); 2: bad arguments."
    )
    parser.add_argument(
        "--nodes",
        type=_bounded_int(1, MAX_NODES),
        default=DEFAULT_NODES,
        metavar="N",
        help=f"number of nodes (1..{MAX_NODES}, default {DEFAULT_NODES})",
    )
    parser.add_argument(
        "--threshold",
        type=_bounded_int(1, MAX_THRESHOLD),
        default=DEFAULT_THRESHOLD,
        metavar="T",
        help=f"failure_threshold (1..{MAX_THRESHOLD}, default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--depth",
        type=_depth,
        default=DEFAULT_DEPTH,
        metavar="D",
        help=f"explore states up to D observations from the start (default {DEFAULT_DEPTH}); "
        "'none' explores until no new state appears",
    )
    parser.add_argument(
        "--jobs",
        type=_bounded_int(1, 64),
        default=None,
        metavar="J",
        help="worker processes (default: the usable CPUs, at most 2)",
    )
    parser.add_argument(
        "--counterexample",
        default="verify-counterexample.jsonl",
        metavar="PATH",
        help="where to write the counterexample trace on a violation "
        "(default verify-counterexample.jsonl)",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="keep exploring after a violation (violating states are not expanded) and "
        "report the first counterexample found; the default stops at the first",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _progress(stream: TextIO) -> Callable[[int, int, int, float], None]:
    def report(level: int, states: int, transitions: int, seconds: float) -> None:
        print(
            f"  depth {level}: {states} states, {transitions} transitions, {seconds:.1f} s",
            file=stream,
            flush=True,
        )

    return report


def verify_main(args: argparse.Namespace) -> int:
    nodes = getattr(args, "nodes", DEFAULT_NODES)
    threshold = getattr(args, "threshold", DEFAULT_THRESHOLD)
    depth = getattr(args, "depth", DEFAULT_DEPTH)
    jobs = getattr(args, "jobs", None) or default_jobs()
    out = sys.stdout
    try:
        if not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"--nodes must be between 1 and {MAX_NODES}")
        if not isinstance(threshold, int) or not 1 <= threshold <= MAX_THRESHOLD:
            raise ValueError(f"--threshold must be between 1 and {MAX_THRESHOLD}")
        if depth is not None and (not isinstance(depth, int) or depth < 0):
            raise ValueError("--depth must be a non-negative integer or 'none'")
        problem = output_problem(args.counterexample)
        if problem is not None:  # found now, not after a long search
            raise ValueError(f"--counterexample: {problem}")
    except ValueError as exc:
        print(f"cortex-fsm verify: error: {exc}", file=sys.stderr)
        return 2
    print(_banner(nodes, threshold, depth, jobs), file=out, flush=True)
    result = explore(
        nodes,
        threshold,
        depth,
        jobs=jobs,
        stop_at_first=not getattr(args, "all", False),
        progress=None if getattr(args, "quiet", False) else _progress(sys.stderr),
    )
    if result.counterexample is not None:
        result = write_counterexample(result, args.counterexample)
    out.write(render_result(result))
    out.flush()
    return 0 if result.ok else 1


def _banner(nodes: int, threshold: int, depth: int | None, jobs: int) -> str:
    names = node_names(nodes)
    catalogue = explorer_catalogue(nodes)
    pinned = sorted({n for p in catalogue.profiles.values() for n in p.pinned_on})
    free = [n for n in names if n not in pinned]
    bound = "no depth bound" if depth is None else f"depth bound {depth}"
    lines = [
        f"cortex-fsm verify: {nodes} node{'s' if nodes != 1 else ''}, "
        f"failure_threshold {threshold}, {bound}, {jobs} job{'s' if jobs != 1 else ''}",
        "  per node: /models reports nothing, big loaded, recovering or unloaded; a "
        "malformed body; a failed poll; /health with no load or big busy; load and "
        "unload of big; /discovery with 1 small or 2 big GPUs (while it has none)",
        f"  requests on every state: {', '.join(REQUESTS)}; catalogue: big (2 GPUs >= 40 GB, "
        f"alias tier/big), pin (1 GPU, pinned on {', '.join(pinned)})",
        f"  symmetry: {', '.join(free)} interchangeable"
        + (f"; {', '.join(pinned)} kept apart (pinned)" if pinned else ""),
    ]
    return "\n".join(lines)


def render_result(result: ExploreResult) -> str:
    if result.stopped_early:
        depth = f"{result.depth} (stopped at the first violation)"
    elif result.complete:
        depth = f"{result.depth} (complete: every reachable abstract state explored"
        depth += ", violating states not expanded)" if result.violated else ")"
    else:
        depth = f"{result.depth} (bound reached: deeper states not explored)"
    lines = [
        f"states       {result.states}",
        f"transitions  {result.transitions}",
        f"depth        {depth}",
        f"time         {result.seconds:.1f} s ({result.states_per_second:.0f} states/s, "
        f"{result.transitions / max(result.seconds, 1e-9):.0f} transitions/s)",
        "",
    ]
    cx = result.counterexample
    failed = {v.invariant for v in cx.violations} if cx is not None else set()
    failed |= set(result.violated)
    for name in ALL_INVARIANTS:
        if name in failed:
            verdict = "FAIL"
        elif result.stopped_early:
            verdict = "----"  # not established: the exploration stopped early
        else:
            verdict = "PASS"
        count = result.checked.get(name, 0)
        where = (
            f", first broken at depth {result.violated[name]}" if name in result.violated else ""
        )
        lines.append(f"{verdict}  {name:<4}  {INVARIANTS[name]}  ({count} checks{where})")
    if cx is None:
        lines += ["", "all invariants hold on every explored state"]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"counterexample ({len(cx.moves)} observation{'s' if len(cx.moves) != 1 else ''}, "
        "a shortest one):",
    ]
    if not cx.moves:
        lines.append("  (the initial state)")
    for step, move in enumerate(cx.moves, start=1):
        lines.append(f"  t={step:<3} {move.describe()}")
    lines.append("then:")
    lines.append("  health: " + ", ".join(f"{n} {label}" for n, label in cx.states))
    for requested, decision in cx.decisions:
        shown = decision.outcome.value
        if decision.node is not None:
            shown += f" -> {decision.node}"
        else:
            retry = decision.retry_after
            shown += f" ({decision.status}" + (f", Retry-After {retry})" if retry else ")")
        lines.append(f"  request {requested!r}: {shown}")
    lines.append("violates:")
    for v in cx.violations:
        lines.append(f"  {v.invariant}  {INVARIANTS[v.invariant]}: {v.detail}")
    if cx.trace is not None:
        again = (
            "its replay gives the decisions above"
            if cx.replayed
            else "WARNING: its replay does not give the decisions above"
        )
        lines.append(f"written to {cx.trace} ({again}): cortex-fsm replay {cx.trace} [--summary]")
    return "\n".join(lines) + "\n"


# --- export -------------------------------------------------------------------------------------


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Generate a formal model from the code's tables: 'promela' writes a Spin model "
        "of k nodes' health machines and the routing classification (obtained by "
        "evaluating the real decide() on every abstract input)."
    )
    parser.add_argument("format", choices=("promela",), help="the model language")
    parser.add_argument(
        "--nodes",
        type=_bounded_int(1, 3),
        default=3,
        metavar="K",
        help="number of nodes in the model (1..3, default 3)",
    )
    parser.add_argument(
        "--threshold",
        type=_bounded_int(1, MAX_THRESHOLD),
        default=DEFAULT_THRESHOLD,
        metavar="T",
        help=f"failure_threshold (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="PATH",
        help="write the model to PATH (default: stdout)",
    )


def export_main(args: argparse.Namespace) -> int:
    from .promela import generate

    text = generate(nodes=args.nodes, threshold=args.threshold)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    problem = output_problem(args.output)
    if problem is not None:
        print(f"cortex-fsm export: error: -o: {problem}", file=sys.stderr)
        return 2
    try:
        with AtomicOutput(args.output) as out:
            out.write(text)
    except OSError as exc:
        print(
            f"cortex-fsm export: error: cannot write {args.output}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    return 0
