"""Topology that survives a restart: declared in cortex.toml, or kept in [gateway] state_dir.

docs/semantics.md §10: a gateway that starts while the only host able to
run a model is down answers that model 503 + Retry-After (the host is
feasible but down), not 404 (nobody could ever run it) -- provided it knows
the host's topology without asking it.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from gateway_support import BIG, SMALL, chat_body, gateway_config, neuron, wait_until

from cortex_fsm import Device, Neuron, TraceReader
from cortex_fsm.drivers.config import NeuronSettings, load_config
from cortex_fsm.drivers.fake_neuron import FakeNeuron
from cortex_fsm.drivers.gateway import Gateway
from cortex_fsm.drivers.http import HTTPClient, Response
from cortex_fsm.drivers.topology import STATE_FILE
from cortex_fsm.health import Phase
from cortex_fsm.trace import DiscoveryEvent

pytestmark = pytest.mark.anyio

TWO_BIG_GPUS = (Device(index=0, vram_total_mb=81920), Device(index=1, vram_total_mb=81920))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Run:
    def __init__(self, gateway: Gateway, client: HTTPClient) -> None:
        self.gateway = gateway
        self.client = client

    async def chat(self, model: str) -> Response:
        return await self.client.request(
            "POST", self.gateway.url + "/v1/chat/completions", body=chat_body(model)
        )


@asynccontextmanager
async def gateway(
    big: str,
    small: str,
    *,
    declared: tuple[Device, ...] | None = None,
    record: str | None = None,
    **config: Any,
) -> AsyncIterator[Run]:
    """A gateway in front of ``big`` (2 GPUs when up) and ``small`` (serves SMALL)."""
    devices = {} if declared is None else {"big": declared}
    conf = gateway_config([("big", big), ("small", small)], devices=devices, **config)
    gw = Gateway(conf, record=record)
    async with anyio.create_task_group() as tg, HTTPClient() as client:
        await tg.start(gw.run)
        try:
            await wait_until(lambda: gw.engine.state("small").phase is Phase.HEALTHY)
            yield Run(gw, client)
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def fakes(*, big_up: bool) -> AsyncIterator[dict[str, str]]:
    """Fake neurons: ``small`` always, ``big`` (2 x 80 GB) only when ``big_up``."""
    async with anyio.create_task_group() as tg:
        urls = {"big": f"http://127.0.0.1:{closed_port()}"}
        configs = [neuron("small", SMALL)]
        if big_up:
            configs.append(neuron("big", gpus=2, vram_mb=81920))
        for config in configs:
            fake = FakeNeuron(config)
            await tg.start(fake.run)
            urls[config.name] = fake.url
        try:
            yield urls
        finally:
            tg.cancel_scope.cancel()


async def assert_feasible_but_down(run: Run) -> None:
    resp = await run.chat(BIG)
    assert resp.status == 503, resp.body
    assert resp.header("x-cortex-outcome") == "feasible_node_unhealthy"
    assert resp.header("retry-after") == "3"


async def test_declared_topology_answers_503_while_its_host_is_down(
    anyio_backend: str, tmp_path: Path
) -> None:
    trace = tmp_path / "declared.jsonl"
    async with fakes(big_up=False) as urls:
        # Without a declaration the gateway cannot know "big" could run BIG: 404.
        async with gateway(urls["big"], urls["small"]) as run:
            resp = await run.chat(BIG)
            assert (resp.status, resp.header("x-cortex-outcome")) == (404, "no_feasible_neuron")
        async with gateway(
            urls["big"], urls["small"], declared=TWO_BIG_GPUS, record=str(trace)
        ) as run:
            await assert_feasible_but_down(run)
            assert (await run.chat(SMALL)).status == 200
            discovery = run.gateway.engine.discovery("big")
            assert discovery is not None
            assert not discovery.complete  # a live discovery will replace it
            assert [d.vram_total_mb for d in discovery.devices] == [81920, 81920]
    with TraceReader(trace) as reader:
        assert reader.header.neurons[0].devices == TWO_BIG_GPUS  # recorded in the header too
        first = next(iter(reader))
    assert isinstance(first, DiscoveryEvent)
    assert (first.node, first.source) == ("big", "declared")
    assert first.body == {
        "devices": [{"index": 0, "vram_total_mb": 81920}, {"index": 1, "vram_total_mb": 81920}]
    }


async def test_a_live_discovery_replaces_the_declared_one_and_a_difference_is_logged(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cortex_fsm.topology")
    one_gpu = (Device(index=0, vram_total_mb=81920),)
    async with (
        fakes(big_up=True) as urls,
        gateway(urls["big"], urls["small"], declared=one_gpu) as run,
    ):
        await wait_until(lambda: run.gateway.engine.state("big").phase is Phase.HEALTHY)
        discovery = run.gateway.engine.discovery("big")
        assert discovery is not None and discovery.complete
        assert len(discovery.devices) == 2
        resp = await run.chat(BIG)  # two GPUs now: a cold load on "big"
        assert (resp.status, resp.header("x-cortex-outcome")) == (200, "cold_load")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "cortex_fsm.topology"]
    (mismatch,) = [x for x in lines if x["event"] == "topology_mismatch"]
    assert mismatch["node"] == "big"
    assert mismatch["declared"] == [{"index": 0, "vram_total_mb": 81920}]
    assert len(mismatch["discovered"]) == 2


async def test_state_dir_carries_the_topology_across_a_restart(
    anyio_backend: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    async with (
        fakes(big_up=True) as urls,
        gateway(urls["big"], urls["small"], state_dir=str(state)) as run,
    ):
        await wait_until(lambda: run.gateway.engine.state("big").phase is Phase.HEALTHY)
        await wait_until((state / STATE_FILE).exists)
    saved = json.loads((state / STATE_FILE).read_text())
    assert saved["format"] == "cortex-fsm-state"
    assert saved["version"] == 1
    assert len(saved["discovery"]["big"]["devices"]) == 2
    assert saved["discovery"]["big"]["max_prompt_tokens"] > 0
    assert sorted(p.name for p in state.iterdir()) == [STATE_FILE]  # no temporary left
    # The host is down when the gateway comes back: the cache says what it was.
    trace = tmp_path / "restart.jsonl"
    async with fakes(big_up=False) as urls:
        async with gateway(
            urls["big"], urls["small"], state_dir=str(state), record=str(trace)
        ) as run:
            await assert_feasible_but_down(run)
            discovery = run.gateway.engine.discovery("big")
            assert discovery is not None and not discovery.complete
        # ... and without the cache, the same restart is the 404 this prevents.
        async with gateway(urls["big"], urls["small"]) as run:
            assert (await run.chat(BIG)).status == 404
    with TraceReader(trace) as reader:
        first = next(iter(reader))
    assert isinstance(first, DiscoveryEvent)
    assert (first.node, first.ok, first.source) == ("big", True, "cache")
    assert isinstance(first.body, dict) and "max_prompt_tokens" not in first.body
    # A failed fetch of a down host never overwrote the cache.
    assert json.loads((state / STATE_FILE).read_text()) == saved


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"format": "other"}',
        b'{"format": "cortex-fsm-state", "version": 1, "discovery": {"big": {"devices": "two"}}}',
    ],
)
async def test_a_bad_state_file_is_reported_and_replaced(
    anyio_backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    caplog.set_level(logging.INFO, logger="cortex_fsm.topology")
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_bytes(content)
    async with (
        fakes(big_up=False) as urls,
        gateway(urls["big"], urls["small"], state_dir=str(state)) as run,
    ):
        assert (await run.chat(BIG)).status == 404  # as if there were no cache
    (line,) = [
        json.loads(r.getMessage()) for r in caplog.records if r.name == "cortex_fsm.topology"
    ]
    assert line["event"] == "state_unreadable"
    assert line["message"].startswith(f"{state / STATE_FILE}: ")
    async with (
        fakes(big_up=True) as urls,
        gateway(urls["big"], urls["small"], state_dir=str(state)) as run,
    ):
        await wait_until(lambda: run.gateway.engine.state("big").phase is Phase.HEALTHY)
        await wait_until(lambda: b"cortex-fsm-state" in (state / STATE_FILE).read_bytes())


async def test_an_unwritable_state_dir_is_logged_not_fatal(
    anyio_backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cortex_fsm.topology")
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).mkdir()  # os.replace onto a directory fails
    async with (
        fakes(big_up=True) as urls,
        gateway(urls["big"], urls["small"], state_dir=str(state)) as run,
    ):
        await wait_until(lambda: run.gateway.engine.state("big").phase is Phase.HEALTHY)
        await wait_until(lambda: any("state_unwritable" in r.getMessage() for r in caplog.records))
        assert (await run.chat(BIG)).status == 200
    assert not [p for p in state.iterdir() if p.name.endswith(".tmp")]


def test_serve_config_with_state_dir_and_declared_topology(tmp_path: Path) -> None:
    path = tmp_path / "cortex.toml"
    path.write_text(
        '[gateway]\nstate_dir = "var/cortex"\n'
        '[[neurons]]\nname = "big"\nendpoint = "http://big:1"\ngpus = 2\nvram_mb = 81920\n'
    )
    config = load_config(path)
    gw = Gateway(config)
    assert gw.topology.path == tmp_path / "var" / "cortex" / STATE_FILE
    assert gw.topology.declared == {"big": TWO_BIG_GPUS}


async def test_a_reload_brings_the_topology_of_a_node_it_adds(anyio_backend: str) -> None:
    async with fakes(big_up=False) as urls, gateway(urls["big"], urls["small"]) as run:
        assert (await run.chat(BIG)).status == 404  # nobody known to fit it
        gw = run.gateway
        spare = Neuron(name="spare", endpoint=urls["big"], devices=TWO_BIG_GPUS)
        keyed = NeuronSettings(headers=(("Authorization", "Bearer k"),))
        new = attrs.evolve(
            gw.config, neurons=(*gw.config.neurons, spare), settings={"small": keyed}
        )
        gw.reload(new)
        # "small" comes back with its headers (removed and added: new settings).
        assert gw._upstreams["small"].headers == (("Authorization", "Bearer k"),)
        await wait_until(lambda: gw.engine.state("small").phase is Phase.HEALTHY)
        await assert_feasible_but_down(run)  # "spare" is declared to fit it: 503
        gw.reload(attrs.evolve(new, neurons=gw.config.neurons[:2]))
        assert "spare" not in gw.topology.declared
        assert (await run.chat(BIG)).status == 404
