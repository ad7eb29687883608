"""The neuron client against the simulated neuron (and a scripted one), on loopback."""

from __future__ import annotations

import anyio
import pytest
from gateway_support import ScriptedNeuron, neuron

from cortex_fsm import LoadSpec
from cortex_fsm.drivers.fake_neuron import FakeNeuron
from cortex_fsm.drivers.http import HTTPClient
from cortex_fsm.drivers.neuron_client import (
    Fetched,
    NeuronClient,
    NeuronError,
    endpoint_path,
    load_body,
    rewrite_loopback,
)
from cortex_fsm.errors import IOCause

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("url", "endpoint", "expected"),
    [
        ("http://127.0.0.1:8080", "http://gpu-a.lan:13131", "http://gpu-a.lan:8080"),
        ("http://localhost:8080/", "http://gpu-a.lan:13131", "http://gpu-a.lan:8080"),
        ("http://0.0.0.0:9000/v1/", "http://10.0.0.5:13131", "http://10.0.0.5:9000/v1"),
        ("http://[::1]:9000/x", "http://gpu-a.lan", "http://gpu-a.lan:9000/x"),
        ("http://LOCALHOST:1", "http://[fd00::5]:13131", "http://[fd00::5]:1"),
        ("http://127.0.0.1/p", "http://gpu:1", "http://gpu/p"),
        ("http://other.lan:8080/", "http://gpu-a.lan:13131", "http://other.lan:8080"),
        ("http://127.0.0.2:8080", "http://gpu-a.lan:13131", "http://127.0.0.2:8080"),
    ],
)
def test_rewrite_loopback(url: str, endpoint: str, expected: str) -> None:
    assert rewrite_loopback(url, endpoint) == expected


def test_endpoint_path_encodes_the_id() -> None:
    assert endpoint_path("org/Big-70B") == "/models/org%2FBig-70B/endpoint"
    assert endpoint_path("hf:org/M Q4?x") == "/models/hf%3Aorg%2FM%20Q4%3Fx/endpoint"


def test_load_body_leaves_out_absent_values() -> None:
    spec = LoadSpec(model_id="m", harness="candle", quant=None, tensor_parallel=None, devices=(0,))
    assert load_body(spec) == b'{"model_id": "m", "harness": "candle", "devices": [0]}'


async def test_lifecycle_against_the_fake_neuron(anyio_backend: str) -> None:
    fake = FakeNeuron(neuron("n", ("org/M", "loaded"), gpus=2))
    async with anyio.create_task_group() as tg, HTTPClient() as http:
        await tg.start(fake.run)
        client = NeuronClient(http)
        spec = LoadSpec(
            model_id="hf:org/New", harness="candle", quant="q4", tensor_parallel=2, devices=(0, 1)
        )
        await client.load(fake.url, spec)
        assert fake.model_status("org/New") == "loaded"
        await client.load(fake.url, spec)  # "already loaded": success
        with pytest.raises(NeuronError) as info:
            bad = LoadSpec(
                model_id="x", harness="candle", quant=None, tensor_parallel=None, devices=(7,)
            )
            await client.load(fake.url, bad)
        assert info.value.cause is IOCause.STATUS_4XX
        assert info.value.status == 400

        url = await client.resolve_endpoint(fake.url, "org/New")
        assert url == fake.url  # 127.0.0.1 -> the endpoint's host (also 127.0.0.1)
        localhost = fake.url.replace("127.0.0.1", "localhost")
        assert await client.resolve_endpoint(localhost, "org/New") == localhost
        with pytest.raises(NeuronError) as info:
            await client.resolve_endpoint(fake.url, "org/Unknown")
        assert info.value.cause is IOCause.STATUS_4XX

        await client.unload(fake.url, "org/New")
        assert fake.model_status("org/New") == "unloaded"
        with pytest.raises(NeuronError) as info:
            await client.unload(fake.url, "org/Unknown")
        assert info.value.status == 404

        fake.fail()
        for call in (
            client.load(fake.url, spec),
            client.resolve_endpoint(fake.url, "org/M"),
            client.unload(fake.url, "org/M"),
        ):
            with pytest.raises(NeuronError) as info:
                await call
            assert info.value.cause is IOCause.STATUS_5XX
        fake.drop()
        with pytest.raises(NeuronError) as info:
            await client.load(fake.url, spec)
        assert info.value.cause is IOCause.TRANSPORT
        tg.cancel_scope.cancel()


async def test_poll_fetches(anyio_backend: str) -> None:
    fake = FakeNeuron(neuron("n", "org/M"))
    async with anyio.create_task_group() as tg, HTTPClient() as http:
        await tg.start(fake.run)
        client = NeuronClient(http)
        models = await client.fetch(fake.url, "/models")
        assert models.ok
        assert isinstance(models.body, list)
        assert models.body[0]["id"] == "org/M"
        assert (await client.fetch(fake.url, "/nowhere")) == Fetched.failure("status:404")
        fake.fail()
        assert (await client.fetch(fake.url, "/models")) == Fetched.failure("status:500")
        fake.drop()
        assert (await client.fetch(fake.url, "/models")).error == "closed"
        tg.cancel_scope.cancel()
    # nobody listens there any more
    async with HTTPClient() as http:
        assert (await NeuronClient(http).fetch(fake.url, "/models")).error == "connect"


async def test_bad_answers(anyio_backend: str) -> None:
    script = ScriptedNeuron("s")
    async with anyio.create_task_group() as tg, HTTPClient() as http:
        await tg.start(script.run)
        client = NeuronClient(http)
        script.behaviour["forward"] = ("status", 200, b"not json")
        assert (await client.fetch(script.url, "/v1/x")) == Fetched.failure("invalid json")
        for answer in (b"[]", b"{}", b'{"url": 5}', b'{"url": "ftp://x"}', b"nope"):
            script.behaviour["endpoint"] = ("status", 200, answer)
            with pytest.raises(NeuronError) as info:
                await client.resolve_endpoint(script.url, "m")
            assert info.value.cause is IOCause.BAD_BODY
        script.behaviour["load"] = ("status", 500, b"model ALREADY LOADED on gpu 0")
        spec = LoadSpec(model_id="m", harness="h", quant=None, tensor_parallel=None, devices=())
        await client.load(script.url, spec)  # "already loaded" wins over the status
        script.behaviour["load"] = "stall"
        with pytest.raises(TimeoutError), anyio.fail_after(0.2):
            await client.load(script.url, spec)  # the caller's timeout
        tg.cancel_scope.cancel()
