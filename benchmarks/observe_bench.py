"""CPU a request spends on metrics and the access log, in process.

Run it from the repository::

    python benchmarks/observe_bench.py [--requests 20000] [--repeat 9]

Two gateways (not serving: no sockets) go through what ``Gateway.handle``
does around a routed request -- the exchange record, the decision through
the journal, and ``_finish`` (the metrics and the access log line) -- one
with metrics and an access log (to a file in a temporary directory), one
without, alternating. Prints the CPU time per request of each (min and
median of the repetitions) and the difference: the cost of observing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence

from cortex_fsm import Catalogue, Neuron, Policy, Profile
from cortex_fsm.drivers.config import GatewayConfig
from cortex_fsm.drivers.gateway import _EXCHANGE, Gateway, _Exchange
from cortex_fsm.drivers.logs import AccessLog

MODEL = "bench/Model-1B"


class _Request:
    method = "POST"
    peer = ("127.0.0.1", 5555)
    error_status = None


class _Responder:
    started = True
    status = 200
    bytes_sent = 300
    headers = (
        ("content-type", "application/json"),
        ("content-length", "300"),
        ("x-cortex-request", "r1"),
        ("x-cortex-outcome", "route_loaded"),
        ("x-cortex-node", "bench"),
    )


def _gateway(observe: bool, workdir: str) -> Gateway:
    config = GatewayConfig(
        neurons=(Neuron(name="bench", endpoint="http://127.0.0.1:1"),),
        catalogue=Catalogue(profiles={MODEL: Profile(id=MODEL)}),
        policy=Policy(load="reported"),  # no outcome events here: no local counts to grow
        metrics=observe,
        access_log=None,
    )
    gateway = Gateway(config)
    if observe:
        gateway.access_log = AccessLog(os.path.join(workdir, "access.jsonl"))
    gateway.journal.models("bench", ok=True, body=[{"id": MODEL, "status": "loaded"}])
    return gateway


def _run(gateway: Gateway, count: int) -> float:
    """CPU µs per request."""
    live, finish, route = gateway._live, gateway._finish, gateway.journal.request
    request, responder = _Request(), _Responder()
    log = gateway.access_log
    start = time.process_time()
    for _ in range(count):
        exchange = _Exchange(time.perf_counter(), time.time())
        token = _EXCHANGE.set(exchange)
        live.add(exchange)
        route(MODEL)
        live.discard(exchange)
        _EXCHANGE.reset(token)
        finish(exchange, request, responder, "/v1/chat/completions")  # type: ignore[arg-type]
        if log is not None and len(log._pending) >= 1000:
            log.flush()  # the gateway does every 0.1 s
    return (time.process_time() - start) / count * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        gateways = {False: _gateway(False, workdir), True: _gateway(True, workdir)}
        results: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeat):
            for observe, gateway in gateways.items():
                results[observe].append(_run(gateway, args.requests))
        for gateway in gateways.values():
            if gateway.access_log is not None:
                gateway.access_log.close()
    for observe, label in ((False, "without"), (True, "with")):
        values = results[observe]
        print(
            f"{label:>7} metrics and access log: {min(values):.1f} µs CPU per request "
            f"(median {statistics.median(values):.1f})"
        )
    added_min = min(results[True]) - min(results[False])
    added_median = statistics.median(results[True]) - statistics.median(results[False])
    print(f"  cost of observing: {added_min:.1f} µs (min), {added_median:.1f} µs (median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
