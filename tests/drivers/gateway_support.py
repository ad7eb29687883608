"""Running a gateway in front of simulated neurons, on free loopback ports, for tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc

from cortex_fsm import Catalogue, Device, Neuron, Policy, Profile
from cortex_fsm.drivers.config import GatewayConfig
from cortex_fsm.drivers.fake_neuron import FakeNeuron, FakeNeuronConfig
from cortex_fsm.drivers.gateway import Gateway
from cortex_fsm.drivers.http import HTTPClient, Request, Responder, Response, serve
from cortex_fsm.health import Phase
from cortex_fsm.routing import Decision
from cortex_fsm.trace import decision_line

BIG = "org/Big-70B"
SMALL = "org/Small-8B"

CATALOGUE = Catalogue(
    profiles={
        BIG: Profile(id=BIG, harness="candle", min_devices=2, min_device_vram_mb=40000),
        SMALL: Profile(id=SMALL, harness="candle"),
    },
    aliases={"tier/large": BIG, "tier/small": SMALL},
)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


def chat_body(model: str, content: str = "hello there", **extra: Any) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    ).encode()


class DecisionLines:
    """A decision listener: the gateway's decisions as the lines a replay writes.

    A failover attempt reuses its request's id (docs/semantics.md §7), so the
    n-th decision of an id is its attempt n (attempt 1 carries no number).
    """

    def __init__(self, gateway: Gateway) -> None:
        self.lines: list[str] = []
        self._attempts: dict[str, int] = {}
        gateway.journal.decision_listeners.append(self)

    def __call__(self, request_id: str, t: float, decision: Decision) -> None:
        n = self._attempts[request_id] = self._attempts.get(request_id, 0) + 1
        self.lines.append(decision_line(decision, request_id, t, None if n == 1 else n))


class Fleet:
    """A running gateway, its neurons (by name) and a client."""

    def __init__(
        self,
        gateway: Gateway,
        neurons: dict[str, Any],
        client: HTTPClient,
        scopes: dict[str, anyio.CancelScope],
    ) -> None:
        self.gateway = gateway
        self.neurons = neurons
        self.client = client
        self._scopes = scopes

    def kill(self, name: str) -> None:
        """Stop fake neuron ``name`` at once: its listener and connections close."""
        self._scopes[name].cancel()

    @property
    def engine(self) -> Any:
        return self.gateway.engine

    def phase(self, node: str) -> Phase:
        return self.gateway.engine.state(node).phase

    async def wait_phase(self, node: str, phase: Phase, timeout: float = 5.0) -> None:
        await wait_until(lambda: self.phase(node) is phase, timeout)

    async def wait_healthy(self, timeout: float = 5.0) -> None:
        await wait_until(
            lambda: all(s.phase is Phase.HEALTHY for s in self.engine.states().values()), timeout
        )

    async def get(self, path: str) -> Response:
        return await self.client.request("GET", self.gateway.url + path)

    async def post(self, path: str, body: bytes) -> Response:
        headers = [("content-type", "application/json")]
        return await self.client.request(
            "POST", self.gateway.url + path, headers=headers, body=body
        )

    async def chat(self, model: str, **extra: Any) -> Response:
        return await self.post("/v1/chat/completions", chat_body(model, **extra))


def gateway_config(
    neurons: Sequence[tuple[str, str]],
    *,
    catalogue: Catalogue = CATALOGUE,
    policy: Policy | None = None,
    kinds: Mapping[str, str] | None = None,
    devices: Mapping[str, tuple[Device, ...]] | None = None,
    **settings: Any,
) -> GatewayConfig:
    """``kinds`` and ``devices``: a node's backend kind and declared topology, by name."""
    values: dict[str, Any] = {
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "poll_timeout": 0.5,
        "endpoint_timeout": 1.0,
        "load_timeout": 3.0,
        "request_timeout": 2.0,
        "client_timeout": 2.0,
    }
    values.update(settings)
    return GatewayConfig(
        neurons=tuple(
            Neuron(
                name=name,
                endpoint=url,
                kind=(kinds or {}).get(name, "neuron"),
                devices=(devices or {}).get(name),
            )
            for name, url in neurons
        ),
        catalogue=catalogue,
        policy=policy if policy is not None else Policy(poll_interval=0.1),
        **values,
    )


@asynccontextmanager
async def running_fleet(
    *configs: FakeNeuronConfig,
    scripted: Sequence[ScriptedNeuron] = (),
    catalogue: Catalogue = CATALOGUE,
    policy: Policy | None = None,
    record: str | None = None,
    wait: bool = True,
    **settings: Any,
) -> AsyncIterator[Fleet]:
    """Fake neurons (and scripted ones) plus a gateway in front of them."""
    neurons: dict[str, Any] = {}
    scopes: dict[str, anyio.CancelScope] = {}

    async def run_neuron(
        neuron: FakeNeuron, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.CancelScope() as scope:
            scopes[neuron.name] = scope
            await neuron.run(task_status=task_status)

    async with anyio.create_task_group() as tg:
        for config in configs:
            neuron = FakeNeuron(config)
            await tg.start(run_neuron, neuron)
            neurons[config.name] = neuron
        for script in scripted:
            await tg.start(script.run)
            neurons[script.name] = script
        config = gateway_config(
            [(name, n.url) for name, n in neurons.items()],
            catalogue=catalogue,
            policy=policy,
            **settings,
        )
        gateway = Gateway(config, record=record)
        await tg.start(gateway.run)
        try:
            async with HTTPClient() as client:
                fleet = Fleet(gateway, neurons, client, scopes)
                if wait:
                    await fleet.wait_healthy()
                yield fleet
        finally:
            tg.cancel_scope.cancel()


def neuron(name: str, *models: str | tuple[str, str], **kw: Any) -> FakeNeuronConfig:
    """A fake neuron config; no token latency unless asked for (tests measure the gateway)."""
    kw.setdefault("token_latency", 0.0)
    return FakeNeuronConfig(name=name, models=list(models), **kw)


class ScriptedNeuron:
    """A neuron whose polls always succeed and whose other answers a test chooses.

    ``behaviour[key]`` for key ``load``, ``endpoint`` or ``forward`` is one of
    ``("status", code, body_bytes)``, ``"drop"`` (close without answering),
    ``"stall"`` (never answer), ``"short"`` (announce a longer body, send part,
    close), ``"sse-break"`` (an event stream that breaks after one event),
    ``"sse-half"`` (... that breaks in the middle of its second event) or
    ``"flood"`` (an endless event stream; ``flood_ended`` is set when the
    connection is gone). ``polls[path]`` replaces the answer body of a poll
    (``/discovery``, ``/models``, ``/health``) with the given bytes.
    """

    def __init__(self, name: str, *, gpus: int = 2, models: Sequence[tuple[str, str]] = ()):
        self.name = name
        self.gpus = gpus
        self.models = dict(models)
        self.behaviour: dict[str, Any] = {}
        self.polls: dict[str, bytes] = {}
        self.flood_ended = anyio.Event()
        self.calls: list[tuple[str, str, bytes]] = []
        self.headers: list[tuple[tuple[str, str], ...]] = []
        """The headers of each call, in the order of ``calls``."""
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            _, self.port = await tg.start(partial(serve, self.handle, port=0))
            task_status.started(self.port)

    async def handle(self, request: Request, responder: Responder) -> None:
        body = await request.body()
        path = request.path
        self.calls.append((request.method, request.target, body))
        self.headers.append(request.headers)
        if path in self.polls:
            await responder.respond(200, [("content-type", "application/json")], self.polls[path])
            return
        if path == "/discovery":
            devices = [
                {"index": i, "name": "GPU", "vram_total_mb": 81920, "compute_capability": "9.0"}
                for i in range(self.gpus)
            ]
            await _json(responder, 200, {"devices": devices, "max_prompt_tokens": 4096})
            return
        if path == "/models":
            await _json(responder, 200, [{"id": m, "status": s} for m, s in self.models.items()])
            return
        if path == "/health":
            await _json(responder, 200, {"uptime_secs": 1, "devices": []})
            return
        if path == "/models/load":
            key, default = "load", {"status": "loaded"}
        elif path.endswith("/endpoint"):
            key, default = "endpoint", {"url": f"http://localhost:{self.port}/"}
        else:
            key, default = "forward", {"id": "x", "object": "chat.completion", "choices": []}
        action = self.behaviour.get(key)
        if action is None:
            await _json(responder, 200, default)
        elif action == "drop":
            await responder.abort()
        elif action == "stall":
            await anyio.sleep_forever()
        elif action == "short":
            await responder.start(
                200, [("content-type", "application/json"), ("content-length", "100")]
            )
            await responder.send(b'{"partial": ')
            await anyio.sleep(0.05)
            await responder.abort()
        elif action == "sse-break":
            await responder.start(200, [("content-type", "text/event-stream")])
            await responder.send(b'data: {"choices": []}\n\n')
            await anyio.sleep(0.05)
            await responder.abort()
        elif action == "sse-half":
            await responder.start(200, [("content-type", "text/event-stream")])
            await responder.send(b'data: {"i": 0}\n\ndata: {"i": 1')
            await anyio.sleep(0.05)
            await responder.abort()
        elif action == "flood":
            await responder.start(200, [("content-type", "text/event-stream")])
            event = b"data: " + b"x" * 65536 + b"\n\n"
            try:
                while True:
                    await responder.send(event)
            finally:
                self.flood_ended.set()
        else:
            _, status, payload = action
            await responder.respond(status, [("content-type", "application/json")], payload)


async def _json(responder: Responder, status: int, value: object) -> None:
    await responder.respond(
        status, [("content-type", "application/json")], json.dumps(value).encode()
    )


async def raw_exchange(url: str, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes to the gateway, read until it closes the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    received: list[bytes] = []
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(data)
        with anyio.fail_after(timeout):
            while True:
                try:
                    received.append(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    return b"".join(received)


def envelope(body: bytes) -> dict[str, Any]:
    obj = json.loads(body)
    assert set(obj) == {"error"}
    assert set(obj["error"]) == {"message", "type", "code"}
    error: dict[str, Any] = obj["error"]
    return error
