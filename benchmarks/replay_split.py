"""Where replay's time goes: reading versus the engine, against parse-only baselines.

On the synthetic traces of replay_bench.py (1M events by default, fleets of
3 and 300 nodes), CPU time, best of ``--rounds``:

* ``json.loads`` -- the parse-only baseline of docs/performance.md;
* ``msgspec`` -- ``msgspec.json.Decoder().decode`` per line, untyped (dicts),
  and typed: each line decoded into a tagged union of structs for the
  request, models, health and discovery kinds (validating field types as
  it decodes), when msgspec is installed;
* ``reader`` -- ``TraceReader.records()`` alone: parse and validate every line;
* ``engine`` -- ``Replayer.run`` over the records already in memory, decision
  lines written to /dev/null: the engine and the output alone;
* ``replay`` -- both, as ``cortex-fsm replay`` runs them.

Replay can reach the parse-only rate only if reader + engine together cost
no more than ``json.loads``; the ``engine`` column alone says how much of
that budget is left for reading.

Usage: python benchmarks/replay_split.py [--events N] [--workdir DIR] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import write_trace

from cortex_fsm.replay import Replayer, replay
from cortex_fsm.trace import TraceReader


def cpu(fn: Any, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def msgspec_decoders() -> tuple[Any, Any] | None:
    try:
        import msgspec
    except ImportError:
        return None

    class Request(msgspec.Struct, tag_field="kind", tag="request"):
        t: float
        id: str
        model: str

    class Models(msgspec.Struct, tag_field="kind", tag="models"):
        t: float
        node: str
        ok: bool
        body: Any = None
        error: str = ""

    class Health(msgspec.Struct, tag_field="kind", tag="health"):
        t: float
        node: str
        ok: bool
        body: Any = None

    class Discovery(msgspec.Struct, tag_field="kind", tag="discovery"):
        t: float
        node: str
        ok: bool
        body: Any = None

    class Header(msgspec.Struct, tag_field="kind", tag="header"):
        format: str
        version: int
        policy: Any = None
        neurons: Any = None
        catalogue: Any = None

    union = Request | Models | Health | Discovery | Header
    return msgspec.json.Decoder().decode, msgspec.json.Decoder(union).decode


def per_line(path: Path, decode: Any) -> Any:
    def run() -> None:
        with path.open("rb") as fh:
            for line in fh:
                decode(line)

    return run


def bench(path: Path, rounds: int) -> str:
    lines = sum(1 for _ in path.open("rb"))
    loads = cpu(per_line(path, json.loads), rounds)
    cells = [f"{lines / loads / 1e3:,.0f}k"]
    decoders = msgspec_decoders()
    if decoders is None:
        cells += ["-", "-"]
    else:
        for decode in decoders:
            cells.append(f"{lines / cpu(per_line(path, decode), rounds) / 1e3:,.0f}k")

    def read() -> None:
        with TraceReader(path) as trace:
            for _ in trace.records():
                pass

    reader = cpu(read, rounds)
    with TraceReader(path) as trace:
        header = trace.header
        records = list(trace.records())

    def engine() -> None:
        with open(os.devnull, "w") as out:
            Replayer(header, header.policy).run(records, out.write)

    engine_s = cpu(engine, rounds)

    def full() -> None:
        with open(os.devnull, "w") as out:
            replay(str(path), out=out)

    total = cpu(full, rounds)
    cells += [
        f"{lines / reader / 1e3:,.0f}k ({loads / reader:.2f}x)",
        f"{lines / engine_s / 1e3:,.0f}k ({loads / engine_s:.2f}x)",
        f"{lines / total / 1e3:,.0f}k (**{loads / total:.2f}x**)",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cortex-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, workdir {workdir}")
    print("lines/s of CPU time (ratio: json.loads time / this time)\n")
    print("| nodes | json.loads | msgspec (dicts) | msgspec (typed) | reader | engine | replay |")
    print("|---|---|---|---|---|---|---|")
    for nodes in (3, 300):
        path = workdir / f"synthetic-{nodes}.jsonl"
        if not path.exists():
            write_trace(path, nodes, args.events)
        print(f"| {nodes} " + bench(path, args.rounds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
