"""``cortex-fsm verify`` and ``cortex-fsm export``: argument parsing and reports.

``verify`` is what a CI job calls: exit status 0 when every invariant holds on
every explored state, 1 on a violation (the shortest counterexample is printed
and written as a replayable v2 trace) or a coverage gap of the default bound,
2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from ..trace import AtomicOutput, output_problem
from .explorer import (
    DEFAULT_WORLDS,
    EXCLUDE_REQUESTS,
    REQUESTS,
    VerifyResult,
    World,
    crashed,
    explore,
    replay_verdict,
    write_counterexample,
)
from .invariants import ALL_INVARIANTS, INVARIANTS

__all__ = [
    "add_export_arguments",
    "add_verify_arguments",
    "default_jobs",
    "export_main",
    "render_result",
    "verify_main",
]

MAX_NODES = 6
MAX_THRESHOLD = 9
#: The threshold whose health transitions the default bound must all reach.
COVERAGE_THRESHOLD = 3


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


def _world(text: str) -> str:
    names = [w.name for w in DEFAULT_WORLDS]
    if text not in names:
        raise argparse.ArgumentTypeError(f"unknown world {text!r} (known: {', '.join(names)})")
    return text


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Explore the real engine breadth first, world by world (small fleets, each with "
        "its policy, alphabet of observations and depth), and check every invariant of "
        "docs/semantics.md on every state and decision, against what the observations say. "
        "Exit 0: all hold and the default bound reached every routing-table row, health "
        "transition and reject; 1: a violation (shortest counterexample printed and written "
        "as a v2 trace that 'cortex-fsm replay' reproduces) or a coverage gap; 2: bad arguments."
    )
    parser.add_argument(
        "--world",
        action="append",
        type=_world,
        metavar="NAME",
        help="explore only this world (repeatable; default: all of "
        + ", ".join(w.name for w in DEFAULT_WORLDS)
        + ")",
    )
    parser.add_argument(
        "--nodes",
        type=_bounded_int(1, MAX_NODES),
        default=None,
        metavar="N",
        help=f"nodes in every world (1..{MAX_NODES}; default: each world's own)",
    )
    parser.add_argument(
        "--threshold",
        type=_bounded_int(1, MAX_THRESHOLD),
        default=None,
        metavar="T",
        help=f"failure_threshold in every world (1..{MAX_THRESHOLD}; default: each world's)",
    )
    parser.add_argument(
        "--depth",
        type=_bounded_int(0, 1000),
        default=None,
        metavar="D",
        help="explore states up to D observations from the start in every world "
        "(default: each world's own)",
    )
    parser.add_argument(
        "--jobs",
        type=_bounded_int(1, 64),
        default=None,
        metavar="J",
        help="worker processes, one world each at a time (default: the usable CPUs, at most 2)",
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


def _progress(stream: TextIO) -> Callable[[str, int, int, int, float], None]:
    def report(world: str, level: int, states: int, transitions: int, seconds: float) -> None:
        print(
            f"  {world}: depth {level}, {states} states, {transitions} transitions, "
            f"{seconds:.1f} s",
            file=stream,
            flush=True,
        )

    return report


def selected_worlds(args: argparse.Namespace) -> list[World]:
    chosen = getattr(args, "world", None)
    worlds = [w for w in DEFAULT_WORLDS if not chosen or w.name in chosen]
    return [
        w.with_bound(
            nodes=getattr(args, "nodes", None),
            threshold=getattr(args, "threshold", None),
            depth=getattr(args, "depth", None),
        )
        for w in worlds
    ]


def is_default_bound(args: argparse.Namespace) -> bool:
    return not any(getattr(args, k, None) for k in ("world", "nodes", "threshold")) and (
        getattr(args, "depth", None) is None
    )


def verify_main(args: argparse.Namespace) -> int:
    jobs = getattr(args, "jobs", None) or default_jobs()
    out = sys.stdout
    problem = output_problem(args.counterexample)
    if problem is not None:  # found now, not after a long search
        print(f"cortex-fsm verify: error: --counterexample: {problem}", file=sys.stderr)
        return 2
    worlds = selected_worlds(args)
    print(_banner(worlds, jobs), file=out, flush=True)
    result = explore(
        worlds=worlds,
        jobs=jobs,
        stop_at_first=not getattr(args, "all", False),
        progress=None if getattr(args, "quiet", False) else _progress(sys.stderr),
    )
    if result.counterexample is not None:
        result = write_counterexample(result, args.counterexample, worlds)
    default = is_default_bound(args)
    out.write(render_result(result, require_coverage=default, worlds=worlds))
    out.flush()
    if not result.ok:
        return 1
    return 1 if default and _gaps(result) else 0


def _banner(worlds: list[World], jobs: int) -> str:
    lines = [
        f"cortex-fsm verify: {len(worlds)} world{'s' if len(worlds) != 1 else ''}, "
        f"{jobs} job{'s' if jobs != 1 else ''}",
        f"  requests on every state: {', '.join(REQUESTS)}; also with each node and with "
        f"every node excluded: {', '.join(EXCLUDE_REQUESTS)}",
        "  catalogue: big (2 GPUs >= 40000 MB; aliases tier/big, small), tier/chain -> "
        "tier/big (an alias chain: one lookup only), pin (pinned on n1), small (shadowed "
        "by its alias); free is known only from polls",
    ]
    for w in worlds:
        lines.append(
            f"  {w.name:<16} {w.nodes} nodes, T={w.policy.failure_threshold}, depth {w.depth}, "
            f"{w.policy.describe_changes()}: {w.about}"
        )
    return "\n".join(lines)


def _gaps(result: VerifyResult) -> list[str]:
    from ..routing import RULES

    coverage = result.coverage
    gaps = [
        f"routing row {i} (rule {RULES[i].rule}, {RULES[i].outcome.value})"
        for i in coverage.missing_rows()
    ]
    gaps += [
        f"health transition {s} --{e}--> {a} (T={COVERAGE_THRESHOLD})"
        for s, e, a in coverage.missing_transitions(COVERAGE_THRESHOLD)
    ]
    gaps += [f"reject {o}" for o in coverage.missing_answers()]
    return gaps


def render_result(
    result: VerifyResult, *, require_coverage: bool = False, worlds: Sequence[World] = ()
) -> str:
    lines = [""]
    for w in result.worlds:
        if w.stopped_early:
            reach = "stopped at the first violation"
        elif w.complete:
            reach = "complete"
        else:
            reach = "bound reached"
        lines.append(
            f"world {w.world:<16} {w.states:>7} states {w.transitions:>8} transitions  "
            f"depth {w.depth} ({reach})  {w.seconds:.1f} s"
        )
    lines += [
        f"total {result.states} states, {result.transitions} transitions, "
        f"{result.seconds:.1f} s with {result.jobs} job{'s' if result.jobs != 1 else ''}",
        "",
    ]
    cx = result.counterexample
    failed = {v.invariant for v in cx.violations} if cx is not None else set()
    for w in result.worlds:
        failed |= set(w.violated)
    stopped = any(w.stopped_early for w in result.worlds)
    checked = result.checked
    for name in ALL_INVARIANTS:
        if name in failed:
            verdict = "FAIL"
        elif stopped:
            verdict = "----"  # not established: the exploration stopped early
        else:
            verdict = "PASS"
        lines.append(f"{verdict}  {name:<6}  {INVARIANTS[name]}  ({checked.get(name, 0)} checks)")
    lines += ["", *_coverage_lines(result, require_coverage)]
    if cx is None:
        lines += ["", "all invariants hold on every explored state"]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"counterexample in world {cx.world} ({len(cx.moves)} "
        f"observation{'s' if len(cx.moves) != 1 else ''}, a shortest one):",
    ]
    if not cx.moves:
        lines.append("  (the initial state)")
    world = next((w for w in worlds if w.name == cx.world), None)
    for step, move in enumerate(cx.moves, start=1):
        lines.append(f"  t={step:<3} {move.describe(world)}")
    # A move that raised leaves no state: what is shown is the one it was taken from.
    lines.append("before the last observation, which raised:" if crashed(cx) else "then:")
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
        again = replay_verdict(cx, cx.replayed)
        lines.append(f"written to {cx.trace} ({again}): cortex-fsm replay {cx.trace} [--summary]")
    return "\n".join(lines) + "\n"


def _coverage_lines(result: VerifyResult, required: bool) -> list[str]:
    from ..routing import RULES

    coverage = result.coverage
    rows = len(coverage.rows & set(range(len(RULES))))
    transitions = len(coverage.transitions)
    rejects = sorted({o for o, _r in coverage.answers})
    lines = [
        f"coverage: {rows} of {len(RULES)} routing-table rows; "
        f"{transitions} health transitions; rejects told: {', '.join(rejects) or 'none'}",
    ]
    gaps = _gaps(result)
    if gaps:
        head = "NOT REACHED (the default bound must reach them)" if required else "not reached"
        lines.append(f"{head}: " + "; ".join(gaps))
    else:
        lines.append(
            f"every routing-table row, every health transition (T={COVERAGE_THRESHOLD}) and "
            "every reject was reached"
        )
    return lines


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
        default=COVERAGE_THRESHOLD,
        metavar="T",
        help=f"failure_threshold (default {COVERAGE_THRESHOLD})",
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
