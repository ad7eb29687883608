"""One fault script through a plain LiteLLM Router and through the same Router with cortex_fsm.

Run it from the repository (loopback only, free ports; needs the ``litellm`` extra)::

    python benchmarks/litellm_faults.py [--flavor vllm|openai] [--scale 1.0]

Each of the two runs starts three fake neurons of the chosen flavour (``a``,
``b``, ``c``; fresh processes, so both runs start from the same healthy
fleet), puts them behind one LiteLLM model group as three deployments, and
sends the same phases of requests (``--concurrency`` at a time) through
``Router.acompletion``:

``healthy``   every deployment up (a few requests through a throwaway router
              come first, so neither run pays LiteLLM's start-up costs);
``killed``    ``a`` is killed (SIGKILL) as the phase starts, and stays dead;
``flapping``  ``b`` alternates between answering 500 and answering well,
              every ``--flap`` seconds;
``slow``      ``b`` is well again; ``c`` holds every request ``--stall``
              seconds, longer than the router's ``timeout``.

Both routers are built the same way -- LiteLLM's defaults (cooldowns,
retries, simple-shuffle) plus ``timeout`` -- and the second run only adds
``install(router)`` with cortex_fsm's default policy and probes. Each phase
is a fixed number of requests. Per phase and router it prints: requests
sent, the failures the client saw, attempts LiteLLM sent to the dead
deployment, wrong 404s or 429s among the failures (the group always had a
live deployment, so neither is ever right), the time from ``a``'s death to
the last attempt sent to it (so far), and the client-side p50/p95 latency.
The last line is one JSON object with ``litellm_failed`` and
``cortex_failed`` (every phase summed). The whole run takes under 120 s on
the 2-core development machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

SRC = str(Path(__file__).resolve().parent.parent / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

GROUP = "g"
MESSAGES = [{"role": "user", "content": "hello"}]
PHASES = ("healthy", "killed", "flapping", "slow")


# --------------------------------------------------------------------------
# The fleet: fake neurons in processes of their own


class Server:
    def __init__(self, name: str, flavor: str) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "cortex_fsm.cli", "fake-neuron"),
                *("--name", name, "--flavor", flavor, "--model", "m"),
                *("--token-latency", "0.002"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.url = ""

    def wait(self) -> None:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(60):
                raise SystemExit(f"fake neuron {self.name} did not start")
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            raise SystemExit(f"fake neuron {self.name} did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[1].strip()

    def control(self, **action: object) -> None:
        request = urllib.request.Request(
            self.url + "/_control",
            data=json.dumps(action).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def start_fleet(flavor: str) -> dict[str, Server]:
    fleet = {name: Server(name, flavor) for name in ("a", "b", "c")}
    for server in fleet.values():
        server.wait()
    return fleet


# --------------------------------------------------------------------------
# What happened: every attempt LiteLLM made, every request the client sent


@dataclass
class Phase:
    name: str
    sent: int = 0
    failed: int = 0
    wrong: int = 0  # 404s and 429s
    to_dead: int = 0
    death_to_last: float | None = None
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def row(self, router: str) -> str:
        gap = "-" if self.death_to_last is None else f"{self.death_to_last:.1f} s"
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) if lat else 0.0
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else 0.0
        return (
            f"| {self.name} | {router} | {self.sent} | {self.failed} | {self.to_dead} "
            f"| {self.wrong} | {gap} | {p50 * 1000:.0f} / {p95 * 1000:.0f} ms |"
        )


def make_recorder() -> Any:
    from litellm.integrations.custom_logger import CustomLogger

    class Recorder(CustomLogger):  # type: ignore[misc]
        """Every attempt: (time, deployment id, ok), once per LiteLLM call id."""

        def __init__(self) -> None:
            super().__init__()
            self.name = f"bench-{id(self):x}"
            self.attempts: list[tuple[float, str, bool]] = []
            self._seen: set[str] = set()
            self._lock = threading.Lock()

        def _add(self, data: Any, ok: bool) -> None:
            call = str(data.get("litellm_call_id"))
            info = data.get("model_info") or {}
            with self._lock:
                if call not in self._seen:
                    self._seen.add(call)
                    self.attempts.append((time.monotonic(), str(info.get("id")), ok))

        async def async_post_call_success_deployment_hook(
            self, request_data: Any, response: Any, call_type: Any
        ) -> None:
            self._add(request_data, True)

        async def async_post_call_failure_deployment_hook(
            self, request_data: Any, exception: Any, call_type: Any, fallback_depth: Any = None
        ) -> None:
            self._add(request_data, False)

    return Recorder()


# --------------------------------------------------------------------------
# One run


async def _send(router: Any, phase: Phase, n: int, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            began = time.monotonic()
            try:
                await router.acompletion(model=GROUP, messages=MESSAGES, max_tokens=4)
            except Exception as exc:
                phase.failed += 1
                status = getattr(exc, "status_code", None)
                if status in (404, 429):
                    phase.wrong += 1
                key = f"{type(exc).__name__} {status}"
                phase.errors[key] = phase.errors.get(key, 0) + 1
            phase.latencies.append(time.monotonic() - began)
            phase.sent += 1

    await asyncio.gather(*(one() for _ in range(n)))


def warm_up(flavor: str) -> None:
    """A few requests through a throwaway router first, so LiteLLM's one-time start-up
    costs land on neither run (the first would pay them)."""
    from litellm import Router

    server = Server("warm", flavor)
    server.wait()
    try:
        router = Router(
            model_list=[
                {
                    "model_name": GROUP,
                    "litellm_params": {
                        "model": "openai/m",
                        "api_base": server.url + "/v1",
                        "api_key": "unused",
                    },
                }
            ]
        )

        async def some() -> None:
            for _ in range(8):
                await router.acompletion(model=GROUP, messages=MESSAGES, max_tokens=4)

        asyncio.run(some())
    finally:
        server.kill()


def run(args: argparse.Namespace, *, cortex: bool) -> list[Phase]:
    import litellm
    from litellm import Router

    from cortex_fsm.integrations.litellm import install

    fleet = start_fleet(args.flavor)
    model_list = [
        {
            "model_name": GROUP,
            "litellm_params": {
                "model": "openai/m",
                "api_base": server.url + "/v1",
                "api_key": "unused",
            },
            "model_info": {"id": name, "kind": args.flavor},
        }
        for name, server in fleet.items()
    ]
    router = Router(model_list=model_list, timeout=args.timeout)
    recorder = make_recorder()
    litellm.logging_callback_manager.add_litellm_callback(recorder)
    installed = install(router) if cortex else None
    n = {name: max(4, round(count * args.scale)) for name, count in args.requests.items()}
    phases = [Phase(name) for name in PHASES]
    stop_flapping = threading.Event()

    def flap() -> None:
        failing = False
        while not stop_flapping.wait(args.flap):
            failing = not failing
            fleet["b"].control(action="fail" if failing else "resume")
        fleet["b"].control(action="resume")

    flapper = threading.Thread(target=flap, name="flapper")

    async def drive() -> None:
        died = 0.0
        for phase in phases:
            began = time.monotonic()
            if phase.name == "killed":
                await asyncio.to_thread(fleet["a"].kill)
                died = time.monotonic()
            elif phase.name == "flapping":
                flapper.start()
            elif phase.name == "slow":
                stop_flapping.set()
                await asyncio.to_thread(flapper.join)
                await asyncio.to_thread(fleet["c"].control, action="stall", seconds=args.stall)
            await _send(router, phase, n[phase.name], args.concurrency)
            ended = time.monotonic()
            to_dead = [t for t, dep, _ok in recorder.attempts if dep == "a" and died and t >= died]
            phase.to_dead = sum(1 for t in to_dead if began <= t < ended)
            if died:
                phase.death_to_last = (max(to_dead) - died) if to_dead else 0.0

    try:
        asyncio.run(drive())
    finally:
        stop_flapping.set()
        if flapper.is_alive():
            flapper.join()
        if installed is not None:
            installed.close()
        litellm.logging_callback_manager.remove_callback_from_all_lists(recorder)
        for server in fleet.values():
            server.kill()
    return phases


# --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavor", choices=("vllm", "openai"), default="vllm")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every phase's count")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1.5, help="the Router's timeout (s)")
    parser.add_argument("--stall", type=float, default=3.0, help="how long c holds a request")
    parser.add_argument("--flap", type=float, default=0.5, help="b's half-period (s)")
    args = parser.parse_args(argv)
    args.requests = {"healthy": 40, "killed": 60, "flapping": 60, "slow": 40}

    began = time.monotonic()
    import litellm  # noqa: F401  (the import alone takes seconds: not part of either run)

    imported = time.monotonic() - began
    warm_up(args.flavor)
    results = {"litellm": run(args, cortex=False), "cortex_fsm": run(args, cortex=True)}
    print(
        f"flavor {args.flavor}, concurrency {args.concurrency}, Router timeout {args.timeout} s, "
        f"c stalls {args.stall} s, b flaps every {args.flap} s; import litellm {imported:.1f} s"
    )
    print()
    print(
        "| phase | router | sent | client failures | sent to dead | wrong 404/429 "
        "| death -> last routed | p50 / p95 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i in range(len(PHASES)):
        for router, phases in results.items():
            print(phases[i].row(router))
    print()
    for router, phases in results.items():
        for phase in phases:
            if phase.errors:
                print(f"{router} {phase.name}: {phase.errors}")
    totals = {router: sum(p.failed for p in phases) for router, phases in results.items()}
    summary = {
        "litellm_failed": totals["litellm"],
        "cortex_failed": totals["cortex_fsm"],
        "per_phase": {
            phase: {router: results[router][i].failed for router in results}
            for i, phase in enumerate(PHASES)
        },
        "seconds": round(time.monotonic() - began, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
