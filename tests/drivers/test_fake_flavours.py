"""The fake neuron's flavours answer as vLLM, SGLang, llama.cpp, Ollama and OpenAI servers do.

Each flavour's answers are read back through the gateway's own adapters
(:mod:`cortex_fsm.backends`), so the shapes the fake serves and the shapes
the adapters expect are checked against each other, over real sockets.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

import cortex_fsm
from cortex_fsm.backends import BACKENDS, Answer, Load, guess_kind
from cortex_fsm.backends import SNIFF_CALLS as SNIFF
from cortex_fsm.drivers.fake_neuron import FakeNeuron, FakeNeuronConfig
from cortex_fsm.drivers.http import HTTPClient, Response
from cortex_fsm.drivers.neuron_client import NeuronClient, Upstream
from cortex_fsm.fleet import ModelsReport, ModelStatus, PollFailure

pytestmark = pytest.mark.anyio

LOADED = ModelStatus.LOADED


class Server:
    def __init__(self, fake: FakeNeuron, client: HTTPClient) -> None:
        self.fake = fake
        self.client = client
        self.neurons = NeuronClient(client)

    async def get(self, path: str) -> Response:
        return await self.client.request("GET", self.fake.url + path)

    async def post(self, path: str, payload: object) -> Response:
        body = json.dumps(payload).encode()
        return await self.client.request("POST", self.fake.url + path, body=body)

    async def answers(self, *paths: str) -> dict[str, Answer]:
        node = Upstream.plain(self.fake.url)
        return {p: await self.neurons.get(node, p) for p in paths}

    async def poll(self, known: tuple[str, ...] = ()) -> object:
        """One models poll as the poller does it, through the flavour's adapter."""
        kind = BACKENDS[self.fake.config.flavor]
        answers = await self.answers(kind.liveness)
        failure = kind.live(answers[kind.liveness])
        if failure is not None:
            return failure
        answers |= await self.answers(*kind.model_calls)
        return kind.models(answers, known)

    async def load(self, models: list[str]) -> object:
        kind = BACKENDS[self.fake.config.flavor]
        assert kind.metrics is not None and kind.load is not None
        answer = (await self.answers(kind.metrics))[kind.metrics]
        return kind.load(answer, models)


@asynccontextmanager
async def serving(
    flavor: str, *models: str | tuple[str, str], **config: Any
) -> AsyncIterator[Server]:
    config.setdefault("token_latency", 0.0)
    fake = FakeNeuron(
        FakeNeuronConfig(name=f"fake-{flavor}", flavor=flavor, models=models, **config)
    )
    async with anyio.create_task_group() as tg, HTTPClient() as client:
        await tg.start(fake.run)
        try:
            yield Server(fake, client)
        finally:
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("flavor", ["openai", "vllm", "sglang", "llamacpp"])
async def test_openai_style_flavours_list_loaded_models(anyio_backend: str, flavor: str) -> None:
    async with serving(flavor, "org/M", ("org/Gone", "unloaded")) as s:
        assert await s.poll() == ModelsReport(models={"org/M": LOADED})
        listing = (await s.get("/v1/models")).json()
        assert listing["object"] == "list"
        (entry,) = listing["data"]
        assert entry["id"] == "org/M"
        assert entry["object"] == "model"
        assert entry["owned_by"] == {"openai": "system"}.get(flavor, flavor)
        # A model not served here is a 404, not a lazy load.
        chat = await s.post("/v1/chat/completions", {"model": "org/Gone", "messages": []})
        assert chat.status == 404
        ok = await s.post(
            "/v1/chat/completions",
            {"model": "org/M", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert ok.status == 200
        assert ok.json()["object"] == "chat.completion"


@pytest.mark.parametrize(
    ("flavor", "running", "waiting", "labels"),
    [
        (
            "vllm",
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            {"engine", "model_name"},
        ),
        (
            "sglang",
            "sglang:num_running_reqs",
            "sglang:num_queue_reqs",
            {"model_name", "engine_type", "tp_rank", "pp_rank"},
        ),
        ("llamacpp", "llamacpp:requests_processing", "llamacpp:requests_deferred", set()),
    ],
)
async def test_metrics_flavours_report_queue_and_in_flight(
    anyio_backend: str, flavor: str, running: str, waiting: str, labels: set[str]
) -> None:
    async with serving(flavor, "m", token_latency=0.2) as s:
        s.fake.set_queue("m", 4)
        resp = await s.get("/metrics")
        assert resp.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
        families = {f.name: f for f in text_string_to_metric_families(resp.body.decode())}
        assert families[running].type == "gauge"
        assert families[waiting].type == "gauge"
        (sample,) = families[waiting].samples
        assert sample.value == 4
        assert set(sample.labels) == labels
        assert await s.load(["m"]) == {"m": Load(in_flight=0, queue_depth=4)}
        # A request being answered shows as running.
        async with anyio.create_task_group() as tg:
            body = {"model": "m", "prompt": "a b c", "max_tokens": 2}
            tg.start_soon(s.post, "/v1/completions", body)
            with anyio.fail_after(5):
                while s.fake.in_flight("m") == 0:
                    await anyio.sleep(0.01)
            assert await s.load(["m"]) == {"m": Load(in_flight=1, queue_depth=4)}
        families = {
            f.name: f
            for f in text_string_to_metric_families((await s.get("/metrics")).body.decode())
        }
        prompt = next(
            name for name in families if name.endswith(("prompt_tokens", "prompt_tokens_total"))
        )
        assert families[prompt].type == "counter"
        assert families[prompt].samples[0].value == 3


async def test_llamacpp_loading(anyio_backend: str) -> None:
    async with serving("llamacpp", "g.gguf") as s:
        assert (await s.get("/health")).json() == {"status": "ok"}
        control = await s.post("/_control", {"action": "set_loading", "loading": True})
        assert control.json()["loading"] is True
        health = await s.get("/health")
        assert health.status == 503
        assert health.json() == {
            "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}
        }
        # Everything but the model lists answers the same.
        for path in ("/metrics", "/v1/chat/completions"):
            assert (await s.get(path)).status == 503
        assert (await s.get("/v1/models")).status == 200
        assert await s.poll() == ModelsReport(models={"g.gguf": ModelStatus.RECOVERING})
        await s.post("/_control", {"action": "set_loading", "loading": False})
        assert await s.poll() == ModelsReport(models={"g.gguf": LOADED})
        # The model list answers in Ollama's shape too, under three paths.
        for path in ("/v1/models", "/models", "/api/tags"):
            body = (await s.get(path)).json()
            assert [m["name"] for m in body["models"]] == ["g.gguf"]
            assert [m["id"] for m in body["data"]] == ["g.gguf"]
        bad = await s.post("/_control", {"action": "set_loading", "loading": "yes"})
        assert bad.status == 400


async def test_set_loading_is_llamacpp_only(anyio_backend: str) -> None:
    async with serving("vllm", "m") as s:
        answer = await s.post("/_control", {"action": "set_loading", "loading": True})
        assert answer.status == 400
        assert "llamacpp" in answer.json()["error"]["message"]


async def test_ollama_loads_on_first_request(anyio_backend: str) -> None:
    async with serving("ollama", "qwen3:8b", ("llama3.2:latest", "unloaded")) as s:
        assert (await s.get("/")).body == b"Ollama is running"
        assert await s.poll() == ModelsReport(
            models={"qwen3:8b": LOADED, "llama3.2:latest": ModelStatus.UNLOADED}
        )
        ps = (await s.get("/api/ps")).json()["models"]
        assert [m["name"] for m in ps] == ["qwen3:8b"]
        assert {"size_vram", "expires_at", "digest", "details"} <= set(ps[0])
        # "llama3.2" means llama3.2:latest; asking for it loads it.
        chat = await s.post(
            "/v1/chat/completions",
            {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status == 200
        assert chat.json()["model"] == "llama3.2"
        assert await s.poll() == ModelsReport(
            models={"qwen3:8b": LOADED, "llama3.2:latest": LOADED}
        )
        assert [m["id"] for m in (await s.get("/v1/models")).json()["data"]] == [
            "qwen3:8b",
            "llama3.2:latest",
        ]
        assert (await s.get("/metrics")).body == b"404 page not found"


@pytest.mark.parametrize("flavor", ["neuron", "openai", "vllm", "sglang", "llamacpp", "ollama"])
async def test_every_flavour_embeds_and_streams(anyio_backend: str, flavor: str) -> None:
    async with serving(flavor, "m") as s:
        embedded = await s.post("/v1/embeddings", {"model": "m", "input": ["one two", "three"]})
        assert embedded.status == 200
        body = embedded.json()
        assert [d["index"] for d in body["data"]] == [0, 1]
        assert all(len(d["embedding"]) == 8 for d in body["data"])
        assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
        assert (await s.post("/v1/embeddings", {"model": "m", "input": []})).status == 400
        again = await s.post("/v1/embeddings", {"model": "m", "input": "one two"})
        assert again.json()["data"][0]["embedding"] == body["data"][0]["embedding"]
        stream = await s.post(
            "/v1/chat/completions",
            {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        )
        assert stream.header("content-type") == "text/event-stream"
        assert stream.body.endswith(b"data: [DONE]\n\n")
        state = (await s.get("/_control")).json()
        assert state["flavor"] == flavor


@pytest.mark.parametrize("flavor", ["openai", "vllm", "sglang", "llamacpp", "ollama"])
async def test_each_flavour_is_recognised(anyio_backend: str, flavor: str) -> None:
    async with serving(flavor, "m") as s:
        guess = guess_kind(await s.answers(*SNIFF))
        assert guess is not None
        assert guess[0] == flavor


async def test_the_neuron_is_recognised_and_faults_apply_to_flavours(anyio_backend: str) -> None:
    async with serving("neuron", "m") as s:
        assert guess_kind(await s.answers(*SNIFF)) == (
            "neuron",
            "GET /models answers a neuron's model array",
        )
    async with serving("vllm", "m") as s:
        s.fake.fail()
        assert await s.poll() == PollFailure(reason="status:500")
        s.fake.resume()
        assert (await s.get("/health")).status == 200
        assert (await s.get("/nowhere")).body == b'{"detail":"Not Found"}'


async def test_api_key_and_https(anyio_backend: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    async with serving("vllm", "m", tls=server, api_key="k1") as s:
        assert s.fake.url.startswith("https://127.0.0.1:")
        node = Upstream(name="v", endpoint=s.fake.url, kind="vllm", tls=client_tls)
        refused = await s.neurons.get(node, "/health")
        assert refused.status == 401
        keyed = Upstream(
            name="v",
            endpoint=s.fake.url,
            kind="vllm",
            headers=(("Authorization", "Bearer k1"),),
            tls=client_tls,
        )
        assert (await s.neurons.get(keyed, "/health")).status == 200
        assert (await s.neurons.get(keyed, "/v1/models")).status == 200
        # /_control needs no key (it is the test's, not the server's).
        control = await s.client.request("GET", s.fake.url + "/_control", tls=client_tls)
        assert control.status == 200


def test_cli_flavour_with_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    src = str(Path(cortex_fsm.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    argv = [
        sys.executable,
        "-m",
        "cortex_fsm.cli",
        "fake-neuron",
        "--name",
        "v1",
        "--flavor",
        "sglang",
        "--model",
        "org/M",
        "--tls-cert",
        str(tmp_path / "server.pem"),
        "--tls-key",
        str(tmp_path / "server.pem"),
    ]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("fake neuron v1 listening on https://127.0.0.1:"), line
            url = line.split()[-1]

            async def poll() -> object:
                context = ssl.create_default_context()
                ca.configure_trust(context)
                async with HTTPClient() as http:
                    node = Upstream(name="v1", endpoint=url, kind="sglang", tls=context)
                    client = NeuronClient(http)
                    answers = {p: await client.get(node, p) for p in ("/health", "/v1/models")}
                    return BACKENDS["sglang"].models(answers, ())

            assert anyio.run(poll) == ModelsReport(models={"org/M": LOADED})
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0
    bad = subprocess.run(
        [*argv[:6], "--flavor", "vllm", "--tls-cert", str(tmp_path / "server.pem")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr == "cortex-fsm fake-neuron: error: --tls-cert and --tls-key go together\n"
