"""A gateway in front of vLLM, SGLang, llama.cpp, Ollama and OpenAI servers (fake ones).

docs/semantics.md §11, end to end over real sockets: each kind's models are
routed, spread by its own load reading, and its failures are what the
engine already knows how to answer.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pytest
import trustme
from gateway_support import neuron, running_fleet, wait_until

from cortex_fsm import Catalogue, Policy
from cortex_fsm.drivers.config import NeuronSettings
from cortex_fsm.drivers.http import Request, Responder, serve
from cortex_fsm.fleet import ModelStatus
from cortex_fsm.health import Phase

pytestmark = pytest.mark.anyio

NO_CATALOGUE = Catalogue()
METRICS_KINDS = ["vllm", "sglang", "llamacpp"]
ALL_KINDS = ["openai", "vllm", "sglang", "llamacpp", "ollama"]


def kinds(**by_node: str) -> dict[str, Any]:
    return {"kinds": by_node}


def model_for(kind: str) -> str:
    return "qwen3:8b" if kind == "ollama" else "org/M"


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_each_kind_s_models_are_routed_straight_to_v1(anyio_backend: str, kind: str) -> None:
    model = model_for(kind)
    async with running_fleet(
        neuron("a", model, flavor=kind), catalogue=NO_CATALOGUE, **kinds(a=kind)
    ) as fleet:
        resp = await fleet.chat(model)
        assert resp.status == 200, resp.body
        assert resp.header("x-cortex-node") == "a"
        assert resp.header("x-cortex-outcome") == "route_loaded"
        assert resp.json()["object"] == "chat.completion"
        completion = await fleet.post(
            "/v1/completions", json.dumps({"model": model, "prompt": "x"}).encode()
        )
        assert completion.status == 200
        embedding = await fleet.post(
            "/v1/embeddings", json.dumps({"model": model, "input": "x y"}).encode()
        )
        assert embedding.status == 200
        assert embedding.json()["usage"]["prompt_tokens"] == 2
        targets = [target for _, target in fleet.neurons["a"].requests]
        assert "/v1/chat/completions" in targets
        assert "/v1/completions" in targets
        assert "/v1/embeddings" in targets
        # No neuron daemon calls: no discovery, no endpoint lookup, no load.
        assert not any(t.startswith(("/discovery", "/models/")) for t in targets)
        assert fleet.engine.discovery("a") is None
        listing = (await fleet.get("/v1/models")).json()
        assert [m["id"] for m in listing["data"]] == [model]


@pytest.mark.parametrize("kind", METRICS_KINDS)
async def test_requests_spread_by_each_kind_s_metrics(anyio_backend: str, kind: str) -> None:
    async with running_fleet(
        neuron("a", "org/M", flavor=kind),
        neuron("b", "org/M", flavor=kind),
        catalogue=NO_CATALOGUE,
        **kinds(a=kind, b=kind),
    ) as fleet:
        for busy, idle in (("a", "b"), ("b", "a")):
            fleet.neurons[busy].set_queue("org/M", 7)
            fleet.neurons[idle].set_queue("org/M", 0)
            await wait_until(
                lambda busy=busy, idle=idle: (
                    fleet.engine.snapshot().node(busy).busy.get("org/M") == 7
                    and fleet.engine.snapshot().node(idle).busy.get("org/M") == 0
                )
            )
            for _ in range(3):
                resp = await fleet.chat("org/M")
                assert resp.status == 200
                assert resp.header("x-cortex-node") == idle


async def test_ollama_unloaded_models_are_served_directly(anyio_backend: str) -> None:
    async with running_fleet(
        neuron("o", "qwen3:8b", ("llama3.2:latest", "unloaded"), flavor="ollama"),
        catalogue=NO_CATALOGUE,
        **kinds(o="ollama"),
    ) as fleet:
        status = fleet.engine.status("o")
        assert status.models["llama3.2:latest"].status is ModelStatus.UNLOADED
        resp = await fleet.chat("llama3.2:latest")
        assert resp.status == 200
        assert resp.header("x-cortex-outcome") == "route_unloaded"
        assert fleet.neurons["o"].model_status("llama3.2:latest") == "loaded"
        await wait_until(
            lambda: fleet.engine.status("o").models["llama3.2:latest"].status is ModelStatus.LOADED
        )


async def test_a_loading_llamacpp_answers_model_recovering(anyio_backend: str) -> None:
    async with running_fleet(
        neuron("l", "g.gguf", flavor="llamacpp"), catalogue=NO_CATALOGUE, **kinds(l="llamacpp")
    ) as fleet:
        fleet.neurons["l"].set_loading(True)
        await wait_until(
            lambda: fleet.engine.status("l").models["g.gguf"].status is ModelStatus.RECOVERING
        )
        assert fleet.phase("l") is Phase.HEALTHY  # loading is not a failure
        resp = await fleet.chat("g.gguf")
        assert resp.status == 503
        assert resp.header("retry-after") == "2"
        assert resp.header("x-cortex-outcome") == "model_recovering"
        fleet.neurons["l"].set_loading(False)
        await wait_until(
            lambda: fleet.engine.status("l").models["g.gguf"].status is ModelStatus.LOADED
        )
        assert (await fleet.chat("g.gguf")).status == 200


def poller_lines(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "cortex_fsm.poller"]
    return [line for line in lines if line["event"] == event]


@pytest.mark.parametrize(
    ("flavor", "configured", "symptom", "guess"),
    [
        ("vllm", "neuron", "answered GET /models with status:404", "vllm"),
        ("llamacpp", "neuron", "answered GET /models with a JSON object", "llamacpp"),
        ("ollama", "neuron", "answered GET /models with status:404", "ollama"),
        ("neuron", "vllm", "answered GET /v1/models with status:404", "neuron"),
        ("sglang", "ollama", "answered GET /api/tags with status:404", "sglang"),
        ("openai", "vllm", "answered GET /health with status:404", "openai"),
    ],
)
async def test_a_wrong_kind_is_named_once(
    anyio_backend: str,
    caplog: pytest.LogCaptureFixture,
    *,
    flavor: str,
    configured: str,
    symptom: str,
    guess: str,
) -> None:
    caplog.set_level(logging.INFO, logger="cortex_fsm.poller")
    async with running_fleet(
        neuron("x", "org/M", flavor=flavor),
        catalogue=NO_CATALOGUE,
        wait=False,
        **kinds(x=configured),
    ) as fleet:
        await fleet.wait_phase("x", Phase.UNHEALTHY)
        rounds = fleet.gateway.poll_rounds()["x"]
        await wait_until(lambda: fleet.gateway.poll_rounds()["x"] >= rounds + 3)
    (line,) = poller_lines(caplog, "wrong_kind")
    assert (line["node"], line["kind"], line["guess"]) == ("x", configured, guess)
    assert line["message"].startswith(f"node 'x' (kind = \"{configured}\") {symptom}, but it")
    assert line["message"].endswith(f'set kind = "{guess}" in its [[neurons]] entry')


class Scripted:
    """A server whose answer per path a test sets: ``(status, content type, body)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.answers: dict[str, tuple[int, str, bytes]] = {}
        self.port = 0

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
        await request.body()
        status, content_type, body = self.answers.get(request.path, (404, "text/plain", b"no"))
        await responder.respond(status, [("content-type", content_type)], body)


VLLM_LIST = json.dumps({"object": "list", "data": [{"id": "org/M", "object": "model"}]}).encode()
GOOD_METRICS = (
    b"# TYPE vllm:num_requests_running gauge\n"
    b'vllm:num_requests_running{engine="0",model_name="org/M"} 1\n'
    b"# TYPE vllm:num_requests_waiting gauge\n"
    b'vllm:num_requests_waiting{engine="0",model_name="org/M"} 2\n'
)


@asynccontextmanager
async def scripted_vllm() -> AsyncIterator[tuple[Any, Scripted]]:
    script = Scripted("s")
    script.answers = {
        "/health": (200, "application/json", b""),
        "/v1/models": (200, "application/json", VLLM_LIST),
        "/metrics": (200, "text/plain", GOOD_METRICS),
        "/v1/chat/completions": (200, "application/json", b'{"object": "chat.completion"}'),
    }
    async with running_fleet(
        scripted=[script],  # type: ignore[list-item]
        catalogue=NO_CATALOGUE,
        policy=Policy(poll_interval=0.05, failure_threshold=1),
        **kinds(s="vllm"),
    ) as fleet:
        yield fleet, script


@pytest.mark.parametrize(
    ("path", "answer", "reason"),
    [
        ("/v1/models", (200, "application/json", b"[]"), "expected an object, got an array"),
        ("/v1/models", (200, "application/json", b'{"data": 3}'), "data is a number, not a list"),
        ("/v1/models", (200, "application/json", b"\xff\xfe\xfd"), "/v1/models: invalid json"),
        ("/v1/models", (500, "text/plain", b"boom"), "/v1/models: status:500"),
        ("/health", (503, "application/json", b"{}"), "status:503"),
    ],
)
async def test_a_malformed_model_list_is_a_logged_poll_failure(
    anyio_backend: str,
    caplog: pytest.LogCaptureFixture,
    path: str,
    answer: tuple[int, str, bytes],
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="cortex_fsm.poller")
    async with scripted_vllm() as (fleet, script):
        script.answers[path] = answer
        await fleet.wait_phase("s", Phase.UNHEALTHY)
        last = fleet.engine.status("s").last_failure
        assert last is not None and reason in last
        script.answers = {
            "/health": (200, "application/json", b""),
            "/v1/models": (200, "application/json", VLLM_LIST),
            "/metrics": (200, "text/plain", GOOD_METRICS),
        }
        await fleet.wait_phase("s", Phase.HEALTHY)
    (unusable,) = [x for x in poller_lines(caplog, "answer_unusable") if x["path"] == path]
    assert reason in unusable["reason"]
    assert poller_lines(caplog, "answer_usable")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe\x00", "not UTF-8"),
        (b'vllm:num_requests_running{model_name="org/M} 1\n', "not Prometheus text"),
        (b"vllm:num_requests_running 1\n", "no vllm:num_requests_waiting gauge"),
        (b"<html>no metrics here</html>", "no vllm:num_requests_running"),
    ],
)
async def test_bad_metrics_change_nothing_and_are_logged(
    anyio_backend: str, caplog: pytest.LogCaptureFixture, body: bytes, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="cortex_fsm.poller")
    async with scripted_vllm() as (fleet, script):
        await wait_until(lambda: fleet.engine.snapshot().node("s").busy == {"org/M": 3})
        script.answers["/metrics"] = (200, "text/plain", body)
        await wait_until(lambda: bool(poller_lines(caplog, "answer_unusable")))
        rounds = fleet.gateway.poll_rounds()["s"]
        await wait_until(lambda: fleet.gateway.poll_rounds()["s"] >= rounds + 2)
        # A load reading that cannot be used changes nothing: health and load stay.
        assert fleet.phase("s") is Phase.HEALTHY
        assert fleet.engine.snapshot().node("s").busy == {"org/M": 3}
        assert (await fleet.chat("org/M")).status == 200
    (line,) = poller_lines(caplog, "answer_unusable")
    assert line["path"] == "/metrics"
    assert reason in line["reason"]


async def test_headers_and_https_reach_the_backend(
    anyio_backend: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    key = (("Authorization", "Bearer s3cret"),)
    settings = {
        "good": NeuronSettings(headers=key, ca_file=str(ca_file)),
        "nokey": NeuronSettings(ca_file=str(ca_file)),
        "noca": NeuronSettings(headers=key),
    }
    configs = [
        neuron(name, "org/M", flavor="vllm", tls=server_tls, api_key="s3cret") for name in settings
    ]
    async with running_fleet(
        *configs,
        catalogue=NO_CATALOGUE,
        wait=False,
        settings=settings,
        **kinds(**dict.fromkeys(settings, "vllm")),
    ) as fleet:
        await fleet.wait_phase("good", Phase.HEALTHY)
        await fleet.wait_phase("nokey", Phase.UNHEALTHY)
        await fleet.wait_phase("noca", Phase.UNHEALTHY)
        assert fleet.engine.status("nokey").last_failure == "status:401"
        assert fleet.engine.status("noca").last_failure == "tls"
        resp = await fleet.chat("org/M")
        assert resp.status == 200
        assert resp.header("x-cortex-node") == "good"
        assert ("POST", "/v1/chat/completions") in fleet.neurons["good"].requests
