"""What a gateway calls per request under ``load = "max"``: ``Engine.route`` and
its ``Engine.observe_outcome``.

A model loaded on R live replicas (3, 6, 30; different reported loads) of a
fleet of 30 nodes, the default policy (``load = "max"``: every routed request
moves its replica's local count and recency, §8 of docs/semantics.md, so the
cached decision goes and the next request is rule 2's pick among the kept
replicas). Requests are routed under a key and finished after a delay of
``--open`` requests, so about that many are open at any time, spread over the
replicas. Reported: the median over batches of microseconds per routed
request (route and outcome), and, for comparison, the cached
``Engine.decide`` for the same model (no load moves in between).

Usage: python benchmarks/route_bench.py [--batches N] [--open K]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import deque

from cortex_fsm import Catalogue, Engine, Neuron, Profile
from cortex_fsm.wire import parse_health, parse_models


def fleet(replicas: int, nodes: int = 30) -> Engine:
    names = [f"n{i:02d}" for i in range(nodes)]
    engine = Engine(
        [Neuron(name=x, endpoint=f"http://{x}") for x in names],
        Catalogue(profiles={"m": Profile(id="m")}),
    )
    for i, name in enumerate(names):
        model = "m" if i < replicas else f"other-{i}"
        engine.observe_models(name, 0.0, parse_models([{"id": model, "status": "loaded"}]))
        reading = {"models": [{"id": model, "in_flight": i % 3, "queue_depth": 0}]}
        engine.observe_health(name, 0.0, parse_health(reading))
    return engine


def per_request_us(engine: Engine, batches: int, per_batch: int, open_: int) -> float:
    route, outcome = engine.route, engine.observe_outcome
    pending: deque[tuple[tuple[str, int], str | None]] = deque()
    n = 0
    samples = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(per_batch):
            n += 1
            key = (f"r{n}", 1)
            pending.append((key, route("m", 1.0, key=key).node))
            if len(pending) > open_:
                done, node = pending.popleft()
                outcome(done, 1.0, node=node, ok=True)
        samples.append((time.perf_counter_ns() - start) / per_batch / 1000)
    return statistics.median(samples)


def cached_decide_us(engine: Engine, batches: int, per_batch: int) -> float:
    decide = engine.decide
    samples = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(per_batch):
            decide("m")
        samples.append((time.perf_counter_ns() - start) / per_batch / 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--open", type=int, default=16, dest="open_")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"30 nodes, about {args.open_} requests open; median of {args.batches} batches\n")
    print("| replicas | route + outcome | Engine.decide (cached) |")
    print("|---:|---:|---:|")
    for replicas in (3, 6, 30):
        engine = fleet(replicas)
        pair = per_request_us(engine, args.batches, 2000, args.open_)
        cached = cached_decide_us(engine, args.batches, 2000)
        print(f"| {replicas} | {pair:.2f} µs | {cached:.2f} µs |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
