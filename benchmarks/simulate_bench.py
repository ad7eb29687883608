"""Simulation throughput: simulated requests per second of CPU, 30-node fleet.

The fleet: 30 two-GPU nodes, ten catalogued models each loaded on six nodes,
outages (MTBF 30 min, MTTR 1 min), 12 blips an hour, 2% slow polls, polled
every 5 s; Poisson traffic at 500 requests/s over the ten models (weighted
1..10), default policy (failover, passive health, load = "max"). Three
timings, best of ``--rounds``, CPU time of this process:

* ``simulate`` -- the trace written (to a file in ``--workdir``);
* ``simulate, no trace`` -- the engine and the simulation alone;
* ``sweep run`` -- what one sweep task does: simulate and score, no trace;

and, for scale, the engine alone: the same trace's records applied with
``replay.apply_record`` (what any simulation must at least cost).

Usage: python benchmarks/simulate_bench.py [--seconds S] [--rounds N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from cortex_fsm.engine import Engine
from cortex_fsm.replay import apply_record
from cortex_fsm.research.scenario import Scenario, scenario_from_mapping
from cortex_fsm.research.simulate import simulate
from cortex_fsm.research.sweep import score_scenario
from cortex_fsm.trace import TraceReader

MODELS = [f"org/model-{i}" for i in range(10)]


def fleet(seconds: float) -> Scenario:
    return scenario_from_mapping(
        {
            "run": {"duration_s": seconds, "seed": 1},
            "policy": {"poll_interval": 5.0},
            "models": [{"id": m} for m in MODELS],
            "neurons": [
                {
                    "name": f"node-{i:02d}",
                    "gpus": 2,
                    "loaded": [MODELS[i % 10], MODELS[(i + 3) % 10]],
                }
                for i in range(30)
            ],
            "failures": {
                "mtbf_s": 1800.0,
                "mttr_s": 60.0,
                "blip_per_hour": 12.0,
                "blip_s": 5.0,
                "slow_poll": 0.02,
            },
            "traffic": {"rate_per_s": 500.0, "models": {m: 1 + i for i, m in enumerate(MODELS)}},
        },
        where="simulate_bench",
    )


def cpu(fn: object, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        fn()  # type: ignore[operator]
        best = min(best, time.process_time() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=400.0, help="simulated seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cortex-sim-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = fleet(args.seconds)
    trace = workdir / "fleet30.jsonl"

    def with_trace() -> None:
        with trace.open("w") as out:
            simulate(scenario, out)

    requests = simulate(scenario).requests
    rows = [
        ("simulate (trace written)", cpu(with_trace, args.rounds)),
        ("simulate, no trace", cpu(lambda: simulate(scenario), args.rounds)),
        ("sweep run (simulate + score)", cpu(lambda: score_scenario(scenario), args.rounds)),
    ]
    with TraceReader(trace) as reader:
        header = reader.header
        records = list(reader.records())

    def engine_only() -> None:
        engine = Engine(header.neurons, header.catalogue, header.policy)
        for kind, fields in records:
            apply_record(engine, kind, fields)

    rows.append(("engine alone (apply_record of the trace)", cpu(engine_only, args.rounds)))
    # The interpreter's build matters as much as the code: say which one ran.
    interpreter = os.path.realpath(sys.executable)
    print(f"python {sys.version.split()[0]} ({interpreter}), {os.cpu_count()} cores")
    print(
        f"30 nodes, {requests:,} requests in {args.seconds:g} simulated s, "
        f"{len(records):,} events\n"
    )
    print("| what | CPU s | simulated requests / s |")
    print("|---|---:|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} | {requests / seconds:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
