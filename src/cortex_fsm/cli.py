"""The ``cortex-fsm`` command.

Exit status: 0 success; 1 a check failed (``verify``); 2 bad input or
arguments (a malformed trace or config, a missing file, an unknown option).
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Iterator, Sequence
from typing import IO

from .errors import CortexError

__all__ = ["main"]

PROG = "cortex-fsm"


class _Usage(Exception):
    """A usage error found after argument parsing."""


_MESSAGE_LIMIT = 1000


def _fail(message: str) -> int:
    if len(message) > _MESSAGE_LIMIT:  # a huge offending value is not worth echoing whole
        half = _MESSAGE_LIMIT // 2
        message = f"{message[:half]} ...[{len(message) - 2 * half} characters]... {message[-half:]}"
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _decisions_sink(target: str | None, trace: str) -> Iterator[IO[str] | None]:
    """Decision lines go to a file that appears only when complete, or stdout."""
    if target is None:
        yield None
        return
    if target == "-":
        yield sys.stdout
        return
    from .trace import AtomicOutput, output_problem

    problem = output_problem(target)
    if problem is not None:
        raise _Usage(f"--decisions: {problem}")
    with contextlib.suppress(OSError):
        if os.path.samefile(target, trace):
            raise _Usage(f"--decisions: {target} is the trace being replayed")
    try:
        sink = AtomicOutput(target)
    except OSError as exc:
        raise _Usage(f"--decisions: cannot write {target}: {exc.strerror}") from None
    try:
        yield sink.stream
    except BaseException:
        sink.discard()
        raise
    try:
        sink.commit()
    except OSError as exc:
        raise _Usage(f"--decisions: cannot write {target}: {exc.strerror or exc}") from None


def _cmd_replay(args: argparse.Namespace) -> int:
    from .replay import compare, render_comparison, render_summary, replay

    if args.json and not args.summary:
        raise _Usage("--json goes with --summary (decision lines are JSON already)")
    if args.json and args.compare:
        raise _Usage("--json cannot be combined with --compare")
    report = bool(args.summary or args.compare)
    # Decision lines go to --decisions, or to stdout unless stdout carries a report.
    target = args.decisions if args.decisions is not None else (None if report else "-")
    with _decisions_sink(target, args.trace) as out:
        if args.compare:
            comparison = compare(args.trace, args.compare, overrides=args.set, out=out)
            sys.stdout.write(render_comparison(comparison, source=args.trace))
            return 0
        summary = replay(args.trace, overrides=args.set, out=out)
    if args.summary and args.json:
        import json

        from .research.frames import summary_json

        sys.stdout.write(json.dumps(summary_json(summary)) + "\n")
    elif args.summary:
        sys.stdout.write(render_summary(summary, source=args.trace))
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from .tables import health_markdown, routing_markdown

    parts: list[str] = []
    if args.which in ("routing", "all"):
        parts.append(routing_markdown())
    if args.which in ("health", "all"):
        parts.append(health_markdown())
    sys.stdout.write("\n".join(parts))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Routing and node-health policy engine for an LLM inference gateway.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    rp = sub.add_parser(
        "replay",
        help="replay a trace and write what every request would have been told",
        description=(
            "Replay a v1 trace (.jsonl or .jsonl.gz). Decision lines go to --decisions OUT "
            "(written to a temporary file and renamed when complete; '-' for stdout), or to "
            "stdout when neither --summary nor --compare is given."
        ),
    )
    rp.add_argument("trace", help="the trace file")
    rp.add_argument("--decisions", metavar="OUT", help="write decision lines to OUT")
    rp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a policy value of the trace header (repeatable)",
    )
    rp.add_argument(
        "--summary",
        action="store_true",
        help="print counts per outcome and status, and per node its transitions and time "
        "in each state",
    )
    rp.add_argument(
        "--json",
        action="store_true",
        help="with --summary: print the summary as one JSON object",
    )
    rp.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also replay under the policy changed by KEY=VALUE (repeatable) and list the "
        "requests whose outcome differs, with both summaries side by side",
    )
    rp.set_defaults(func=_cmd_replay)

    tp = sub.add_parser(
        "table",
        help="print the routing decision table and the health transition table as Markdown",
    )
    tp.add_argument("which", nargs="?", choices=("all", "routing", "health"), default="all")
    tp.set_defaults(func=_cmd_table)

    from .drivers.demo import add_demo_arguments, demo_main
    from .drivers.fake_neuron import add_fake_neuron_arguments, fake_neuron_main
    from .drivers.gateway import add_serve_arguments, serve_main

    sp = sub.add_parser(
        "serve",
        help="run the gateway: an OpenAI-compatible server in front of the neurons",
        description="Run the gateway described by a cortex.toml (see docs/gateway.md) "
        "until Ctrl-C or SIGTERM.",
    )
    add_serve_arguments(sp)
    sp.set_defaults(func=serve_main)

    dp = sub.add_parser(
        "demo",
        help="play the two-GPU incident live: simulated neurons, the gateway, real traffic",
        description="Start three simulated neurons and the gateway on free loopback ports, "
        "drive traffic through it while the 2-GPU host stalls and recovers, print the "
        "timeline, and check that replaying the recorded trace gives the same decisions.",
    )
    add_demo_arguments(dp)
    dp.set_defaults(func=demo_main)

    fp = sub.add_parser(
        "fake-neuron",
        help="run a simulated neuron (GPU host) with fault injection",
    )
    add_fake_neuron_arguments(fp)
    fp.set_defaults(func=fake_neuron_main)

    from .ci.check import add_check_arguments, check_main

    cp = sub.add_parser(
        "check",
        help="lint a gateway configuration: models no node can host, broken aliases, bad pins",
    )
    add_check_arguments(cp)
    cp.set_defaults(func=check_main)

    from .ci.audit import add_audit_arguments, audit_main

    ap = sub.add_parser(
        "audit",
        help="runtime verification of a recorded trace: its decisions, answers and health "
        "against the invariants",
    )
    add_audit_arguments(ap)
    ap.set_defaults(func=audit_main)

    from .research.cli import (
        add_score_arguments,
        add_simulate_arguments,
        add_sweep_arguments,
        score_main,
        simulate_main,
        sweep_main,
    )

    sim = sub.add_parser(
        "simulate",
        help="simulate a fleet under the policy and write a trace with ground truth",
        description="Run the discrete-event simulation of a scenario TOML (see docs/research.md) "
        "and write a v2 trace with truth events. Same scenario and seed: same bytes.",
    )
    add_simulate_arguments(sim)
    sim.set_defaults(func=simulate_main)

    sc = sub.add_parser(
        "score",
        help="score a simulated trace: what requests were told against what was true",
    )
    add_score_arguments(sc)
    sc.set_defaults(func=score_main)

    sw = sub.add_parser(
        "sweep",
        help="re-simulate a scenario over a grid of policies, score each, tabulate and plot",
        description="Simulate the scenario at every grid point (common random numbers across "
        "points), score each run, and write one row per (point, seed).",
    )
    add_sweep_arguments(sw)
    sw.set_defaults(func=sweep_main)

    from .verify import add_export_arguments, add_verify_arguments, export_main

    vp = sub.add_parser(
        "verify",
        help="model-check the engine: every invariant on every reachable state within a bound",
    )
    add_verify_arguments(vp)
    from .ci.worlds import add_config_argument, verify_config_main

    add_config_argument(vp)
    vp.set_defaults(func=verify_config_main)

    ep = sub.add_parser(
        "export",
        help="generate a formal model of the health machines and routing (Promela, for Spin)",
    )
    add_export_arguments(ep)
    ep.set_defaults(func=export_main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Names and ids come from traces and neurons, and JSON can carry lone
    # surrogates; show them escaped rather than fail to print them.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (CortexError, _Usage) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); nothing more to say.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    return code


if __name__ == "__main__":
    sys.exit(main())
