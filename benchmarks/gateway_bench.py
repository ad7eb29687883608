"""Gateway overhead: throughput and latency through the gateway vs. straight to a neuron.

Run it from the repository (any machine, loopback only, free ports)::

    python benchmarks/gateway_bench.py [--duration 3] [--rounds 2] [--concurrency 1 32]

It starts a simulated neuron (``token_latency`` 0, so the fake costs as little
as possible and the gateway is what is measured) and a gateway in front of
it, each in its own process, then drives the same non-streaming chat request
at the neuron directly and through the gateway, at each concurrency, in the
same run, alternating between the two paths. The load generator is a minimal
keep-alive HTTP/1.1 client on asyncio (one connection per worker), so it
costs little next to what it measures.

Output: a Markdown table plus the two ratios the targets are about (the
gateway adds <= 1 ms p50 at concurrency 1; keeps >= 50% of the direct
throughput at concurrency 32), ready to paste into ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
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


def _run_gateway(neuron_url: str) -> None:
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


def _measure(port: int, concurrency: int, duration: float) -> tuple[list[float], list[str], float]:
    asyncio.run(_drive(port, concurrency, 0.3))  # warm up connections and caches
    start = time.perf_counter()
    latencies, errors = asyncio.run(_drive(port, concurrency, duration))
    return latencies, errors, time.perf_counter() - start


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per path and level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        if args.role[0] == "neuron":
            _run_neuron()
        else:
            _run_gateway(args.role[1])
        return 0

    neuron, neuron_port = _start("neuron")
    gateway, gateway_port = _start("gateway", f"http://127.0.0.1:{neuron_port}")
    results: dict[tuple[int, str], tuple[list[float], float, list[str]]] = {}
    cpu: dict[tuple[int, str], float] = {}  # seconds of gateway / neuron CPU per row
    try:
        for concurrency in args.concurrency:
            for _ in range(args.rounds):
                for path, port in (("direct", neuron_port), ("gateway", gateway_port)):
                    before = _cpu_seconds(gateway.pid), _cpu_seconds(neuron.pid)
                    latencies, errors, elapsed = _measure(port, concurrency, args.duration)
                    after = _cpu_seconds(gateway.pid), _cpu_seconds(neuron.pid)
                    prev = results.get((concurrency, path), ([], 0.0, []))
                    results[(concurrency, path)] = (
                        prev[0] + latencies,
                        prev[1] + elapsed,
                        prev[2] + errors,
                    )
                    for who, b, a in zip(("gateway", "neuron"), before, after, strict=True):
                        if a is not None and b is not None:
                            key = (concurrency, f"{path}:{who}")
                            cpu[key] = cpu.get(key, 0.0) + a - b
    finally:
        for proc in (gateway, neuron):
            proc.terminate()
            proc.wait(timeout=10)

    print("## Gateway overhead (benchmarks/gateway_bench.py)\n")
    print(
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; simulated neuron with token_latency 0; "
        f"{args.rounds} x {args.duration:g} s per row; non-streaming chat completions, "
        "one keep-alive connection per client.\n"
    )
    print(
        "| concurrency | path | requests/s | p50 ms | p99 ms | errors "
        "| neuron CPU µs/req | gateway CPU µs/req |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    summary: dict[tuple[int, str], tuple[float, float]] = {}
    for (concurrency, path), (latencies, elapsed, errors) in sorted(results.items()):
        rate = len(latencies) / elapsed
        p50 = statistics.median(latencies) * 1000
        p99 = _percentile(latencies, 0.99) * 1000
        summary[(concurrency, path)] = (rate, p50)
        per = [
            cpu.get((concurrency, f"{path}:{who}"), math.nan) / len(latencies) * 1e6
            for who in ("neuron", "gateway")
        ]
        shown = [
            "-" if math.isnan(x) or (path == "direct" and i == 1) else f"{x:.0f}"
            for i, x in enumerate(per)
        ]
        print(
            f"| {concurrency} | {path} | {rate:,.0f} | {p50:.3f} | {p99:.3f} | {len(errors)} "
            f"| {shown[0]} | {shown[1]} |"
        )
    print()
    low, high = min(args.concurrency), max(args.concurrency)
    added = summary[(low, "gateway")][1] - summary[(low, "direct")][1]
    kept = summary[(high, "gateway")][0] / summary[(high, "direct")][0]
    print(f"- added p50 latency at concurrency {low}: {added:.3f} ms (target <= 1 ms)")
    print(f"- throughput kept at concurrency {high}: {kept:.0%} of direct (target >= 50%)")
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"- load average at the end of the run: {load} ({os.cpu_count()} CPUs)")
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
