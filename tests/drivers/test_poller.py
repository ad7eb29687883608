"""The poller against simulated neurons: §1 order, concurrency, transitions, logging."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from gateway_support import neuron, wait_until

from cortex_fsm import Engine, Neuron, Policy, TraceHeader, TraceReader, TraceWriter
from cortex_fsm.drivers.fake_neuron import FakeNeuron, FakeNeuronConfig
from cortex_fsm.drivers.http import HTTPClient
from cortex_fsm.drivers.journal import Journal
from cortex_fsm.drivers.neuron_client import NeuronClient
from cortex_fsm.drivers.poller import Poller
from cortex_fsm.health import Phase

pytestmark = pytest.mark.anyio


class Rig:
    def __init__(self, journal: Journal, poller: Poller, fakes: dict[str, FakeNeuron]) -> None:
        self.journal = journal
        self.poller = poller
        self.fakes = fakes
        self.engine = journal.engine


@asynccontextmanager
async def rig(
    configs: Sequence[FakeNeuronConfig],
    *,
    threshold: int = 3,
    interval: float = 0.05,
    timeout: float = 0.5,
    record: Path | None = None,
    start: bool = True,
) -> AsyncIterator[Rig]:
    fakes = {c.name: FakeNeuron(c) for c in configs}
    async with anyio.create_task_group() as tg, HTTPClient() as http:
        for fake in fakes.values():
            await tg.start(fake.run)
        neurons = [Neuron(name=n, endpoint=f.url) for n, f in fakes.items()]
        policy = Policy(failure_threshold=threshold)
        engine = Engine(neurons, policy=policy)
        recorder = None
        if record is not None:
            recorder = TraceWriter(record, TraceHeader(neurons=tuple(neurons), policy=policy))
        journal = Journal(engine, recorder=recorder)
        poller = Poller(journal, NeuronClient(http), neurons, interval=interval, timeout=timeout)
        if start:
            tg.start_soon(poller.run)
        try:
            yield Rig(journal, poller, fakes)
        finally:
            tg.cancel_scope.cancel()
            if recorder is not None:
                recorder.close()


async def test_one_round_follows_section_1(anyio_backend: str, tmp_path: Path) -> None:
    trace = tmp_path / "poll.jsonl"
    configs = [neuron("a", "org/M", gpus=2), neuron("b", "org/M", max_prompt_tokens=0)]
    async with rig(configs, record=trace, start=False) as r:
        for _ in range(2):
            for n in r.poller.neurons:
                await r.poller.poll_once(n)
        assert r.engine.state("a").phase is Phase.HEALTHY
        discovery = r.engine.discovery("a")
        assert discovery is not None
        assert len(discovery.devices) == 2
        assert r.poller.rounds == {"a": 2, "b": 2}
    with TraceReader(trace) as reader:
        kinds = [(e.node, type(e).__name__) for e in reader]  # type: ignore[union-attr]
    # a's discovery is complete (max_prompt_tokens > 0): fetched once; b's every round
    assert kinds == [
        ("a", "DiscoveryEvent"),
        ("a", "ModelsEvent"),
        ("a", "HealthEvent"),
        ("b", "DiscoveryEvent"),
        ("b", "ModelsEvent"),
        ("b", "HealthEvent"),
        ("a", "ModelsEvent"),
        ("a", "HealthEvent"),
        ("b", "DiscoveryEvent"),
        ("b", "ModelsEvent"),
        ("b", "HealthEvent"),
    ]


async def test_failures_walk_the_health_table_and_are_logged(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cortex_fsm.health")
    async with rig([neuron("a", "org/M")], threshold=2) as r:
        await wait_until(lambda: r.engine.state("a").phase is Phase.HEALTHY)
        r.fakes["a"].fail()
        await wait_until(lambda: r.engine.state("a").phase is Phase.UNHEALTHY)
        assert r.engine.status("a").last_failure == "status:500"
        r.fakes["a"].resume()
        await wait_until(lambda: r.engine.state("a").phase is Phase.HEALTHY)
    lines = [
        json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "cortex_fsm.health"
    ]
    assert [(x["from"], x["to"]) for x in lines] == [
        ("unknown", "healthy"),
        ("healthy", "suspect(1)"),
        ("suspect(1)", "unhealthy"),
        ("unhealthy", "healthy"),
    ]
    assert all(x["event"] == "health_transition" and x["node"] == "a" for x in lines)
    assert lines[1]["cause"] == "poll_failed: status:500"
    assert lines[0]["t"] <= lines[1]["t"] <= lines[2]["t"] <= lines[3]["t"]


async def test_a_stalled_neuron_does_not_delay_the_others(anyio_backend: str) -> None:
    configs = [neuron("slow", "org/M"), neuron("fast", "org/M")]
    async with rig(configs, interval=0.05, timeout=0.4) as r:
        await wait_until(lambda: r.engine.state("slow").phase is Phase.HEALTHY)
        r.fakes["slow"].stall(30)
        before = dict(r.poller.rounds)
        # the first /models of "slow" to stall times out after 0.4 s ...
        await wait_until(lambda: r.engine.state("slow").label == "suspect(1)", timeout=3)
        assert r.engine.status("slow").last_failure == "timeout"
        # ... while "fast" went on being polled every 0.05 s
        assert r.poller.rounds["fast"] - before["fast"] >= 4
        assert r.poller.rounds["slow"] - before["slow"] <= 1
        assert r.engine.state("fast").phase is Phase.HEALTHY
        r.fakes["slow"].resume()
        await wait_until(lambda: r.engine.state("slow").phase is Phase.HEALTHY)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_neuron_is_never_routable(anyio_backend: str) -> None:
    async with HTTPClient() as http:
        engine = Engine([Neuron(name="ghost", endpoint=f"http://127.0.0.1:{closed_port()}")])
        journal = Journal(engine)
        poller = Poller(journal, NeuronClient(http), engine.neurons, interval=0.01, timeout=0.5)
        await poller.poll_once(engine.neurons[0])
        assert engine.state("ghost").phase is Phase.UNHEALTHY  # H1: never answered
        assert engine.status("ghost").last_failure == "connect"
        assert engine.discovery("ghost") is None


async def test_health_readings_replace_the_load(anyio_backend: str) -> None:
    async with rig([neuron("a", "org/M")], start=False) as r:
        n = r.poller.neurons[0]
        r.fakes["a"].set_queue("org/M", 3)
        await r.poller.poll_once(n)
        assert r.engine.snapshot().node("a").busy == {"org/M": 3}
        r.fakes["a"].set_queue("org/M", 0)
        await r.poller.poll_once(n)
        assert r.engine.snapshot().node("a").busy == {"org/M": 0}


async def test_a_stopped_poller_records_no_answer_already_on_its_way(
    anyio_backend: str, tmp_path: Path
) -> None:
    """A reload that removes a node stops its poller; an answer that was already
    on its way (the node's removal races it) must not reach the journal, which
    no longer knows the node, nor a node of the same name added in its place."""
    trace = tmp_path / "stop.jsonl"
    async with rig([neuron("a", "org/M")], record=trace, start=False, timeout=5.0) as r:
        (a,) = r.poller.neurons
        await r.poller.poll_once(a)
        assert r.poller.rounds == {"a": 1}
        r.fakes["a"].stall(30)
        async with anyio.create_task_group() as tg:
            tg.start_soon(r.poller.poll_once, a)
            await anyio.sleep(0.3)  # its /models request is out, and stalled
            r.poller.stop()
            r.fakes["a"].resume()  # the stalled answer arrives after the stop
        assert r.poller.rounds == {"a": 1}
        await r.poller.poll_once(a)  # and a stopped poller polls no more
        assert r.poller.rounds == {"a": 1}
    with TraceReader(trace) as reader:
        polls = [type(e).__name__ for e in reader if getattr(e, "node", None) == "a"]
    assert polls == ["DiscoveryEvent", "ModelsEvent", "HealthEvent"]
