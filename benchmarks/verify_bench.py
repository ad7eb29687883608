"""How long the model checker's default bound takes, world by world.

Runs every world of ``cortex-fsm verify``'s default bound alone in this
process (CPU seconds, wall seconds, states, transitions), then the whole
default bound as ``cortex-fsm verify`` runs it (``--jobs`` worker
processes, default 2): the wall time of that run is the number the 60 s
target is about. CPU time is the steadier figure on a shared machine; wall
time is what a CI job waits.

Usage: python benchmarks/verify_bench.py [--jobs J] [--skip-worlds]
"""

from __future__ import annotations

import argparse
import resource
import time

from cortex_fsm.verify.explorer import DEFAULT_WORLDS, explore_world, verify


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--skip-worlds", action="store_true", help="only the whole bound")
    args = parser.parse_args()
    if not args.skip_worlds:
        print("| world | nodes | depth | states | transitions | CPU s | wall s |")
        print("|---|---|---|---|---|---|---|")
        total_cpu = 0.0
        for world in DEFAULT_WORLDS:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            result = explore_world(world)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            total_cpu += cpu
            assert result.ok, result.counterexample
            print(
                f"| `{world.name}` | {world.nodes} | {world.depth} | {result.states:,} | "
                f"{result.transitions:,} | {cpu:.1f} | {wall:.1f} |",
                flush=True,
            )
        print(f"\nall worlds, one process: {total_cpu:.1f} CPU s")
    cpu0, wall0 = _children_cpu(), time.perf_counter()
    result = verify(jobs=args.jobs)
    wall = time.perf_counter() - wall0
    cpu = _children_cpu() - cpu0
    assert result.ok, result.counterexample
    print(
        f"default bound with {args.jobs} jobs: {wall:.1f} s wall, {cpu:.1f} CPU s in the "
        f"workers, {result.states:,} states, {result.transitions:,} transitions"
    )


if __name__ == "__main__":
    main()
