"""Replay throughput and decide() latency.

(a) Generates synthetic traces of >= 1M events (fleets of 3 and of 300 nodes,
    mixed polls and requests; see synthetic.py) and reports replay
    throughput as a ratio to the throughput of merely parsing the same lines
    with the stdlib ``json`` module, in the same run. Two parse baselines are
    timed: ``json.loads`` on text-mode lines (the faster) and on binary
    lines; the ratio quoted is against the faster one. A third, stricter
    baseline times ``JSONDecoder.raw_decode`` per line -- the call the trace
    reader's json path makes. Replay is timed as it runs by default (msgspec
    decoding the common lines, when installed) and with ``fast=False`` (every
    line through the json path, as without msgspec).
(b) Times ``routing.decide()`` alone -- the pure decision over the engine's
    indexes, without the engine's per-name decision cache -- for fleets of
    3, 30 and 300 nodes with the model loaded on 3 of them, and the
    engine's cached ``Engine.decide()`` for comparison: median microseconds
    per decision over repeated batches. Both also with an ``exclude`` set
    (docs/semantics.md §7): the replica a failover attempt must avoid, the
    one the decision without it picks. Excluding decisions are never cached.

Usage: python benchmarks/replay_bench.py [--events N] [--workdir DIR] [--quick] [--decide-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import write_trace

from cortex_fsm import Catalogue, Engine, Neuron, Profile
from cortex_fsm.replay import replay
from cortex_fsm.routing import decide
from cortex_fsm.wire import parse_discovery, parse_health, parse_models

# CPU time of this process: on a shared machine, wall-clock time also counts
# the time other processes had the CPU.
_clock = time.process_time


def _parse_text(path: Path) -> float:
    loads = json.loads
    start = _clock()
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            loads(line)
    return _clock() - start


def _parse_binary(path: Path) -> float:
    loads = json.loads
    start = _clock()
    with path.open("rb") as fh:
        for line in fh:
            loads(line)
    return _clock() - start


def _parse_raw_decode(path: Path) -> float:
    """What the trace reader's json path calls per line (JSONDecoder.raw_decode)."""
    decode = json.JSONDecoder().raw_decode
    start = _clock()
    with path.open("rb") as fh:
        for line in fh:
            decode(line.decode())
    return _clock() - start


def _replay(path: Path, fast: bool = True) -> float:
    start = _clock()
    with open(os.devnull, "w") as out:
        replay(str(path), out=out, fast=fast)
    return _clock() - start


def bench_replay(events: int, workdir: Path, rounds: int) -> list[str]:
    rows = []
    for nodes in (3, 300):
        path = workdir / f"synthetic-{nodes}.jsonl"
        if not path.exists():
            write_trace(path, nodes, events)
        lines = sum(1 for _ in path.open("rb"))
        size = path.stat().st_size
        # Rounds interleave the measurements, so a busier minute of the
        # machine weighs on all of them; each column is its best round.
        best = [float("inf")] * 5
        for _ in range(rounds):
            for i, fn in enumerate(
                (
                    _parse_text,
                    _parse_binary,
                    _parse_raw_decode,
                    _replay,
                    lambda p: _replay(p, fast=False),
                )
            ):
                best[i] = min(best[i], fn(path))
        text, binary, raw, rep, slow = best
        rows.append(
            f"| {nodes} | {lines:,} | {size / 1e6:.0f} MB | {lines / text / 1e3:,.0f}k | "
            f"{lines / binary / 1e3:,.0f}k | {lines / raw / 1e3:,.0f}k | "
            f"{lines / rep / 1e3:,.0f}k | **{text / rep:.2f}x** | {raw / rep:.2f}x | "
            f"{lines / slow / 1e3:,.0f}k | {text / slow:.2f}x |"
        )
        print(rows[-1], flush=True)
    return rows


def _fleet(n: int) -> tuple[Engine, Catalogue]:
    names = [f"n{i:03d}" for i in range(n)]
    catalogue = Catalogue(profiles={"m": Profile(id="m")}, aliases={"alias": "m"})
    engine = Engine([Neuron(name=x, endpoint="http://x") for x in names], catalogue)
    holders = {0, n // 2, n - 1}
    for i, name in enumerate(names):
        engine.observe_discovery(
            name, 0.0, parse_discovery({"devices": [{"index": 0, "vram_total_mb": 24000}]})
        )
        body = [{"id": "m" if i in holders else f"other-{i}", "status": "loaded"}]
        engine.observe_models(name, 0.0, parse_models(body))
        engine.observe_health(
            name, 0.0, parse_health({"models": [{"id": "m", "in_flight": i % 3, "queue_depth": 0}]})
        )
    return engine, catalogue


def _median_us(fn: object, batches: int, per_batch: int) -> float:
    samples = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(per_batch):
            fn("alias")  # type: ignore[operator]
        samples.append((time.perf_counter_ns() - start) / per_batch / 1000)
    return statistics.median(samples)


def bench_decide(batches: int) -> list[str]:
    rows = []
    base = None
    for n in (3, 30, 300):
        engine, catalogue = _fleet(n)
        policy = engine.policy
        chosen = engine.decide("alias").node
        assert chosen is not None
        exclude = frozenset({chosen})
        assert engine.decide("alias", exclude).node not in (None, chosen)
        pure = _median_us(
            lambda r, e=engine, c=catalogue, p=policy: decide(e, c, r, p),  # type: ignore[misc]
            batches,
            2000,
        )
        pure_ex = _median_us(
            lambda r, e=engine, c=catalogue, p=policy, x=exclude: decide(e, c, r, p, x),  # type: ignore[misc]
            batches,
            2000,
        )
        cached = _median_us(engine.decide, batches, 2000)
        engine_ex = _median_us(
            lambda r, e=engine, x=exclude: e.decide(r, x),  # type: ignore[misc]
            batches,
            2000,
        )
        base = base or pure
        rows.append(
            f"| {n} | 3 | {pure:.2f} µs | {pure / base:.2f}x | {pure_ex:.2f} µs | "
            f"**{pure_ex / pure:.2f}x** | {cached:.2f} µs | {engine_ex:.2f} µs |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="best of N timings")
    parser.add_argument("--quick", action="store_true", help="100k events, 1 round")
    parser.add_argument("--decide-only", action="store_true", help="only (b)")
    args = parser.parse_args()
    if args.quick:
        args.events, args.rounds = 100_000, 1
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cortex-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, workdir {workdir}")
    if not args.decide_only:
        print("\n(a) replay throughput vs parse-only (lines/s of CPU time, best of rounds)\n")
        print(
            "| nodes | lines | size | json.loads (text) | json.loads (binary) | raw_decode "
            "| replay | replay / json.loads | replay / raw_decode "
            "| replay, json path | json path / json.loads |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        bench_replay(args.events, workdir, args.rounds)
    print("\n(b) decide() median per decision, model loaded on 3 nodes\n")
    print(
        "| nodes | replicas | routing.decide | vs 3 nodes | ... excluding the chosen replica "
        "| exclude / none | Engine.decide (cached) | Engine.decide excluding |"
    )
    print("|---|---|---|---|---|---|---|---|")
    bench_decide(50)
    return 0


if __name__ == "__main__":
    sys.exit(main())
