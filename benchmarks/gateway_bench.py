"""Gateway overhead: throughput and latency through the gateway vs. straight to a neuron.

Run it from the repository (any machine, loopback only, free ports)::

    python benchmarks/gateway_bench.py [--duration 3] [--rounds 5] [--concurrency 1 32]

It starts a simulated neuron (``token_latency`` 0, so the fake costs as little
as possible and the gateway is what is measured) and two gateways in front of
it, each in its own process: ``gateway`` as ``serve`` runs by default (Prometheus
metrics collected, one access log line per request, written to a file) and
``gateway-bare`` with both off (``metrics = false``, ``access_log = false``).
It drives the same non-streaming chat request at the neuron directly and
through each gateway, at each concurrency, in the same run, rotating the order
of the three paths. The load generator is a minimal
keep-alive HTTP/1.1 client on asyncio (one connection per worker), so it
costs little next to what it measures.

Each row is measured ``--rounds`` times; in every round the three
measurements run back to back (rotating which goes first), so the
ratios are taken per round and a noisy neighbour affects both sides of a
pair alike. The CPU time each process (load generator, neuron, gateway) spends
per request is measured over the timed window of each round.

Output: a Markdown table (medians of the rounds) plus the two ratios the
targets are about (the gateway adds <= 1 ms p50 at concurrency 1; keeps >= 50%
of the direct throughput at concurrency 32) as median and range over the
rounds, ready to paste into ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MODEL = "bench/Model-1B"
_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
).encode()


# --------------------------------------------------------------------------
# The two servers, each run in a child process of this script


def _run_neuron() -> None:
    import anyio

    from cortex_fsm.drivers.fake_neuron import FakeNeuron, FakeNeuronConfig

    neuron = FakeNeuron(
        FakeNeuronConfig(name="bench", models=[(MODEL, "loaded")], token_latency=0.0)
    )

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(neuron.run)
            print(f"ready {port}", flush=True)

    anyio.run(main)


def _run_gateway(neuron_url: str, observe: str, access_log: str) -> None:
    import anyio

    from cortex_fsm import Catalogue, Neuron, Policy, Profile
    from cortex_fsm.drivers.config import GatewayConfig
    from cortex_fsm.drivers.gateway import Gateway
    from cortex_fsm.health import Phase

    config = GatewayConfig(
        neurons=(Neuron(name="bench", endpoint=neuron_url),),
        catalogue=Catalogue(profiles={MODEL: Profile(id=MODEL)}),
        policy=Policy(poll_interval=10.0),
        listen_host="127.0.0.1",
        listen_port=0,
        metrics=observe == "on",
        access_log=access_log if observe == "on" else None,
    )
    gateway = Gateway(config)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            _, port = await tg.start(gateway.run)
            while gateway.engine.state("bench").phase is not Phase.HEALTHY:
                await anyio.sleep(0.01)
            print(f"ready {port}", flush=True)

    anyio.run(main)


def _start(*role: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--role", *role],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        raise SystemExit(f"gateway_bench: {role[0]} did not start (got {line!r})")
    return proc, int(line.split()[1])


# --------------------------------------------------------------------------
# The load generator


async def _worker(port: int, until: float, latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(_BODY)}\r\n\r\n".encode()
        + _BODY
    )
    clock = time.perf_counter
    try:
        while clock() < until:
            start = clock()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(clock() - start)
            if not head.startswith(b"HTTP/1.1 200 "):
                errors.append(head.split(b"\r\n", 1)[0].decode())
    finally:
        writer.close()


async def _drive(port: int, concurrency: int, duration: float) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    until = time.perf_counter() + duration
    await asyncio.gather(*(_worker(port, until, latencies, errors) for _ in range(concurrency)))
    return latencies, errors


@dataclass
class _Run:
    """One timed measurement of one path at one concurrency."""

    rate: float  # requests/s
    p50: float  # ms
    p99: float  # ms
    errors: list[str]
    cpu: dict[str, float]  # process -> CPU µs per request (NaN where unknown)
    busy: float  # CPU seconds used by the three processes per wall second


def _measure(port: int, concurrency: int, duration: float, pids: dict[str, int]) -> _Run:
    asyncio.run(_drive(port, concurrency, 0.3))  # warm up connections and caches
    before = {who: _cpu_seconds(pid) for who, pid in pids.items()}
    own = time.process_time()  # the load generator runs in this process
    start = time.perf_counter()
    latencies, errors = asyncio.run(_drive(port, concurrency, duration))
    elapsed = time.perf_counter() - start
    own = time.process_time() - own
    after = {who: _cpu_seconds(pid) for who, pid in pids.items()}
    count = max(1, len(latencies))
    cpu = {"client": own / count * 1e6}
    for who, b in before.items():
        a = after[who]
        cpu[who] = math.nan if a is None or b is None else (a - b) / count * 1e6
    total = sum(x for x in cpu.values() if not math.isnan(x)) * count / 1e6
    return _Run(
        rate=len(latencies) / elapsed,
        p50=statistics.median(latencies) * 1000 if latencies else math.nan,
        p99=_percentile(latencies, 0.99) * 1000 if latencies else math.nan,
        errors=errors,
        cpu=cpu,
        busy=total / elapsed,
    )


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _spread(values: Sequence[float], fmt: str) -> str:
    """``median (min-max)`` of per-round values."""
    return (
        f"{format(statistics.median(values), fmt)} "
        f"({format(min(values), fmt)}-{format(max(values), fmt)})"
    )


def _cpu_cell(values: Sequence[float]) -> str:
    known = [v for v in values if not math.isnan(v)]
    return "-" if not known else f"{statistics.median(known):.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per path and level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        if args.role[0] == "neuron":
            _run_neuron()
        else:
            _run_gateway(*args.role[1:4])
        return 0

    neuron, neuron_port = _start("neuron")
    neuron_url = f"http://127.0.0.1:{neuron_port}"
    workdir = tempfile.mkdtemp(prefix="gateway-bench-")
    access_log = os.path.join(workdir, "access.jsonl")
    gateway, gateway_port = _start("gateway", neuron_url, "on", access_log)
    bare, bare_port = _start("gateway", neuron_url, "off", access_log)
    runs: dict[tuple[int, str], list[_Run]] = {}
    try:
        for concurrency in args.concurrency:
            for round_ in range(args.rounds):
                # The three paths back to back, in rotating order (a triple per round).
                paths = [
                    ("direct", neuron_port, gateway.pid),
                    ("gateway", gateway_port, gateway.pid),
                    ("gateway-bare", bare_port, bare.pid),
                ]
                shift = round_ % len(paths)
                for path, port, pid in paths[shift:] + paths[:shift]:
                    pids = {"gateway": pid, "neuron": neuron.pid}
                    run = _measure(port, concurrency, args.duration, pids)
                    runs.setdefault((concurrency, path), []).append(run)
    finally:
        for proc in (gateway, bare, neuron):
            proc.terminate()
            proc.wait(timeout=10)
        logged = os.path.getsize(access_log) if os.path.exists(access_log) else 0
        shutil.rmtree(workdir, ignore_errors=True)

    print("## Gateway overhead (benchmarks/gateway_bench.py)\n")
    print(
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; simulated neuron with token_latency 0; non-streaming chat "
        f"completions, one keep-alive connection per client; {args.rounds} rounds of "
        f"{args.duration:g} s per row (direct, gateway and gateway-bare back to back in "
        "each round, rotating which goes first); medians of the rounds, CPU time per "
        "request measured over the timed window of each round. `gateway`: metrics "
        "collected and an access log line per request (to a file; "
        f"{logged / 1e6:.1f} MB written in the run); `gateway-bare`: both off.\n"
    )
    print(
        "| concurrency | path | requests/s | p50 ms | p99 ms | errors "
        "| client CPU µs/req | neuron CPU µs/req | gateway CPU µs/req |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for (concurrency, path), rows in sorted(runs.items()):
        errors = sum(len(r.errors) for r in rows)
        gateway_cpu = "-" if path == "direct" else _cpu_cell([r.cpu["gateway"] for r in rows])
        print(
            f"| {concurrency} | {path} | {statistics.median(r.rate for r in rows):,.0f} "
            f"| {statistics.median(r.p50 for r in rows):.3f} "
            f"| {statistics.median(r.p99 for r in rows):.3f} | {errors} "
            f"| {_cpu_cell([r.cpu['client'] for r in rows])} "
            f"| {_cpu_cell([r.cpu['neuron'] for r in rows])} | {gateway_cpu} |"
        )
    print()
    low, high = min(args.concurrency), max(args.concurrency)
    for path in ("gateway", "gateway-bare"):
        added = [
            g.p50 - d.p50 for d, g in zip(runs[(low, "direct")], runs[(low, path)], strict=True)
        ]
        kept = [
            g.rate / d.rate * 100
            for d, g in zip(runs[(high, "direct")], runs[(high, path)], strict=True)
        ]
        gateway_cpu = [r.cpu["gateway"] for r in runs[(high, path)]]
        print(f"`{path}`:\n")
        if not any(math.isnan(x) for x in gateway_cpu):
            print(
                f"- **gateway CPU per request at concurrency {high}: "
                f"{_spread(gateway_cpu, '.0f')} µs** (median, min-max of the rounds)"
            )
        print(
            f"- added p50 latency at concurrency {low}: {_spread(added, '.3f')} ms "
            "(target <= 1 ms; per round, gateway minus direct)"
        )
        print(
            f"- throughput kept at concurrency {high}: {_spread(kept, '.0f')} % of direct "
            "(target >= 50%; per round, gateway / direct)\n"
        )
    busy = [r.busy for r in runs[(high, "gateway")]]
    print(
        f"- CPU in use in the gateway rows at concurrency {high}: {_spread(busy, '.2f')} "
        f"cores of {os.cpu_count()} (client + gateway + neuron); throughput is that "
        "divided by the three CPU columns added up, so the gateway's column decides "
        "how much of the direct throughput is kept"
    )
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"- load average at the end of the run: {load} ({os.cpu_count()} CPUs)")
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
