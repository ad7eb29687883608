"""CPU the engine side of one request costs the gateway, in process.

Run it from the repository::

    python benchmarks/journal_bench.py [--requests 20000] [--repeat 9]

What the request path asks of the journal per request, on a fleet of two
equal replicas (no sockets):

- ``decision only``: ``Journal.request`` -- a request before outcomes were
  recorded (under ``load = "reported"``, so no in-flight count is left open);
- ``decision + outcome``: ``Journal.request`` then ``Journal.outcome`` for
  that attempt (``request_ok``, the end of its in-flight count) -- what the
  gateway does for every request now, under the default policy;
- ``failover``: a first attempt that fails (its outcome a ``connect``
  failure), a second decision excluding its node, and that attempt's
  outcome -- what a request that meets a dead replica costs.

Each is timed with and without a recording (a ``TraceWriter`` to a file in
a temporary directory). Prints CPU microseconds per request: min and median
of the repetitions, alternating the variants.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cortex_fsm import Catalogue, Engine, Neuron, Policy, Profile
from cortex_fsm.drivers.journal import Journal
from cortex_fsm.trace import TraceHeader, TraceWriter

MODEL = "bench/Model-1B"
NODES = ("a", "b")


def _journal(policy: Policy, record: Path | None) -> Journal:
    neurons = [Neuron(name=n, endpoint=f"http://{n}") for n in NODES]
    catalogue = Catalogue(profiles={MODEL: Profile(id=MODEL)})
    engine = Engine(neurons, catalogue, policy)
    journal = Journal(engine)
    for node in NODES:
        journal.models(node, ok=True, body=[{"id": MODEL, "status": "loaded"}])
    if record is not None:
        journal.recorder = TraceWriter(record, TraceHeader(neurons=tuple(neurons)))
    return journal


def _decision_only(journal: Journal) -> None:
    journal.request(MODEL)


def _with_outcome(journal: Journal) -> None:
    rid, decision = journal.request(MODEL)
    journal.outcome(
        rid, 1, node=decision.node, status=200, retry_after=None, source="upstream", error=None
    )


def _failover(journal: Journal) -> None:
    rid, first = journal.request(MODEL)
    assert first.node is not None
    journal.outcome(
        rid, 1, node=first.node, status=503, retry_after=3, source="gateway", error="connect"
    )
    _, second = journal.request(MODEL, exclude=(first.node,), attempt=2, request_id=rid)
    journal.outcome(
        rid, 2, node=second.node, status=200, retry_after=None, source="upstream", error=None
    )
    # keep both replicas healthy for the next round: the failure was staged
    journal.engine.observe_request(first.node, 0.0, True)


VARIANTS: dict[str, tuple[Policy, Callable[[Journal], None]]] = {
    "decision only (load = reported)": (Policy(load="reported"), _decision_only),
    "decision + outcome (defaults)": (Policy(), _with_outcome),
    "failover: 2 decisions + 2 outcomes": (Policy(), _failover),
}


def _cpu_us(step: Callable[[Journal], None], journal: Journal, requests: int) -> float:
    start = time.process_time_ns()
    for _ in range(requests):
        step(journal)
    return (time.process_time_ns() - start) / requests / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    samples: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="cortex-journal-bench-") as tmp:
        for rep in range(args.repeat):
            for i, (name, (policy, step)) in enumerate(VARIANTS.items()):
                for recording in (False, True):
                    record = Path(tmp) / f"{rep}-{i}-{recording}.jsonl" if recording else None
                    journal = _journal(policy, record)
                    us = _cpu_us(step, journal, args.requests)
                    if journal.recorder is not None:
                        journal.recorder.close()
                    samples.setdefault((name, recording), []).append(us)
    print(f"{args.requests} requests x {args.repeat} repetitions; CPU µs per request\n")
    print("| per request | no recording (min / median) | recording (min / median) |")
    print("|---|---:|---:|")
    for name in VARIANTS:
        cells = []
        for recording in (False, True):
            values = samples[(name, recording)]
            cells.append(f"{min(values):.1f} / {statistics.median(values):.1f}")
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
