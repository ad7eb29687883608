"""The ``simulate``, ``score`` and ``sweep`` commands (argument wiring only).

Importing this module imports nothing heavy: the commands import what they
need when they run, so ``cortex-fsm --help`` stays fast without the extra.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = [
    "add_score_arguments",
    "add_simulate_arguments",
    "add_sweep_arguments",
    "score_main",
    "simulate_main",
    "sweep_main",
]


def _seed(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def _output(path: str, option: str) -> None:
    from ..errors import ConfigError
    from ..trace import output_problem

    problem = output_problem(path)
    if problem is not None:
        raise ConfigError(f"{option}: {problem}")


# --- simulate ----------------------------------------------------------------------------------


def add_simulate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="the scenario TOML (see docs/research.md)")
    p.add_argument(
        "-o", "--output", required=True, metavar="TRACE", help="the trace to write (.gz: gzip)"
    )
    p.add_argument("--seed", type=_seed, metavar="N", help="the run's seed (default: [run] seed)")


def simulate_main(args: argparse.Namespace) -> int:
    from .scenario import load_scenario
    from .simulate import simulate_to_file

    scenario = load_scenario(args.scenario)
    if args.seed is not None:
        scenario = scenario.with_seed(args.seed)
    _output(args.output, "-o")
    sim = simulate_to_file(scenario, args.output)
    print(
        f"{args.output}: {sim.events} events, {sim.requests} requests "
        f"({sim.attempts} attempts), seed {scenario.run.seed}",
        file=sys.stderr,
    )
    return 0


# --- score -------------------------------------------------------------------------------------


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", help="a trace with ground truth (written by simulate)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="judge the decisions of another policy: override a policy value (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the score as one JSON object")


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_score(result: dict[str, object], source: str) -> str:
    from .score import MODEL_KEYS, SCORE_KEYS

    lines = [f"score of {source}"]
    width = max(len(k) for k in SCORE_KEYS)
    lines += [f"  {k:<{width}}  {_fmt(result[k])}" for k in SCORE_KEYS]
    per_model = result["per_model"]
    assert isinstance(per_model, dict)
    if per_model:
        w_model = max(len("model"), *(len(m) for m in per_model))
        lines.append("")
        lines.append("  " + "  ".join([f"{'model':<{w_model}}", *(f"{k:>14}" for k in MODEL_KEYS)]))
        for model, values in per_model.items():
            cells = [f"{_fmt(values[k]):>14}" for k in MODEL_KEYS]
            lines.append("  " + "  ".join([f"{model:<{w_model}}", *cells]))
    return "\n".join(lines) + "\n"


def score_main(args: argparse.Namespace) -> int:
    from .frames import score_json

    result = score_json(args.trace, args.set)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write(render_score(result, args.trace))
    return 0


# --- sweep -------------------------------------------------------------------------------------


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="the scenario TOML")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        required=True,
        metavar="KEY=V1,V2,...",
        help="values of a policy key (or failures.KEY, traffic.KEY, run.KEY) to sweep; "
        "repeatable: every combination is run",
    )
    p.add_argument(
        "--seeds", type=_count, default=1, metavar="N", help="seeds per point (default 1)"
    )
    p.add_argument(
        "-o", "--output", metavar="OUT", help="results: .csv or .parquet (default: CSV on stdout)"
    )
    p.add_argument("--plot", metavar="PNG", help="plot the trade-off, Pareto front marked")
    p.add_argument(
        "--plot-x", default="false_evictions", metavar="KEY", help="x axis (a score key)"
    )
    p.add_argument("--plot-y", default="routed_to_down", metavar="KEY", help="y axis (a score key)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=_count, metavar="N", help="local worker processes (default: cores)"
    )
    where.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run on a Dask cluster: tcp://HOST:PORT of its scheduler, "
        "or 'local' for a LocalCluster",
    )
    p.add_argument("--dask-workers", type=_count, metavar="N", help="workers of --dask local")


def sweep_main(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from .scenario import load_scenario, parse_grid
    from .score import SCORE_KEYS
    from .sweep import plot, sweep, write_rows

    scenario = load_scenario(args.scenario)
    grid = [parse_grid(g) for g in args.grid]
    keys = [k for k, _ in grid]
    if args.output is not None:
        _output(args.output, "-o")
        if not args.output.endswith((".csv", ".parquet")):
            raise ConfigError(f"-o {args.output}: the results file must end in .csv or .parquet")
    if args.plot is not None:
        _output(args.plot, "--plot")
        for key in (args.plot_x, args.plot_y):
            if key not in SCORE_KEYS:
                raise ConfigError(
                    f"--plot-x/--plot-y: {key!r} is not a score key ({', '.join(SCORE_KEYS)})"
                )
    rows = sweep(
        scenario,
        grid,
        seeds=args.seeds,
        workers=args.dask_workers if args.dask else args.workers,
        dask=args.dask,
        progress=sys.stderr,
    )
    if args.output is not None:
        write_rows(rows, keys, args.output)
    else:
        import csv

        from .sweep import columns

        writer = csv.writer(sys.stdout, lineterminator="\n")
        cols = columns(keys)
        writer.writerow(cols)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    if args.plot is not None:
        front = plot(
            rows,
            keys,
            args.plot,
            x=args.plot_x,
            y=args.plot_y,
            title=os.path.basename(args.scenario),
        )
        shown = "; ".join(" ".join(f"{k}={v}" for k, v in p.items() if k in keys) for p in front)
        print(f"{args.plot}: Pareto front ({args.plot_x}, {args.plot_y}): {shown}", file=sys.stderr)
    return 0
