"""The simulated neuron, over real loopback sockets, on asyncio and trio."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import cortex_fsm
from cortex_fsm.drivers.fake_neuron import (
    FakeNeuron,
    FakeNeuronConfig,
    add_fake_neuron_arguments,
    run_fake_neuron,
)
from cortex_fsm.drivers.http import ConnectionClosedError, HTTPClient, Response

pytestmark = pytest.mark.anyio


class Neuron:
    """A running fake neuron plus a client pointed at it."""

    def __init__(self, neuron: FakeNeuron, client: HTTPClient) -> None:
        self.neuron = neuron
        self.client = client

    async def get(self, path: str) -> Response:
        return await self.client.request("GET", self.neuron.url + path)

    async def post(self, path: str, payload: object) -> Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = [("content-type", "application/json")]
        return await self.client.request("POST", self.neuron.url + path, headers=headers, body=body)


@asynccontextmanager
async def running(**config: Any) -> AsyncIterator[Neuron]:
    config.setdefault("token_latency", 0.0)
    neuron = FakeNeuron(FakeNeuronConfig(**config))
    async with anyio.create_task_group() as tg:
        port = await tg.start(neuron.run)
        assert port == neuron.port
        try:
            async with HTTPClient() as client:
                yield Neuron(neuron, client)
        finally:
            tg.cancel_scope.cancel()


def sse_events(body: bytes) -> list[str]:
    """The ``data:`` payloads of an event stream, in order."""
    assert body.endswith(b"\n\n")
    events = []
    for block in body.decode().split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        events.append(block[len("data: ") :])
    return events


CHAT = {"model": "m", "messages": [{"role": "user", "content": "tell me about rivers"}]}


async def test_discovery(anyio_backend: str) -> None:
    async with running(name="gpu-a", gpus=2, vram_mb=81920, max_prompt_tokens=4096) as n:
        resp = await n.get("/discovery")
        assert resp.status == 200
        assert resp.header("x-neuron") == "gpu-a"
        info = resp.json()
        assert set(info) == {
            "hostname",
            "os",
            "kernel",
            "cuda_version",
            "driver_version",
            "devices",
            "harnesses",
            "max_prompt_tokens",
        }
        assert info["hostname"] == "gpu-a"
        assert info["harnesses"] == ["candle"]
        assert info["max_prompt_tokens"] == 4096
        assert [d["index"] for d in info["devices"]] == [0, 1]
        assert all(d["vram_total_mb"] == 81920 for d in info["devices"])
        device_keys = {"index", "name", "vram_total_mb", "compute_capability"}
        assert all(set(d) == device_keys for d in info["devices"])


async def test_models_and_health(anyio_backend: str) -> None:
    models = (("a", "loaded"), ("b", "unloaded"), ("c", "recovering"))
    async with running(models=models) as n:
        listed = (await n.get("/models")).json()
        assert [(m["id"], m["status"]) for m in listed] == list(models)
        assert all(m["harness"] == "candle" and m["devices"] == [0] for m in listed)
        assert listed[0]["vram_used_mb"] > 0
        assert listed[1]["vram_used_mb"] == 0
        health = (await n.get("/health")).json()
        assert isinstance(health["uptime_secs"], int) and health["uptime_secs"] >= 0
        assert health["devices"][0]["index"] == 0
        assert health["models"] == [
            {"id": "a", "in_flight": 0, "queue_depth": 0},
            {"id": "b", "in_flight": 0, "queue_depth": 0},
            {"id": "c", "in_flight": 0, "queue_depth": 0},
        ]


async def test_health_counts_requests_in_flight(anyio_backend: str) -> None:
    async with running(models=["m"], token_latency=0.05) as n:
        url = n.neuron.url + "/v1/chat/completions"
        body = json.dumps({**CHAT, "stream": True, "max_tokens": 4}).encode()
        with anyio.fail_after(5):
            async with n.client.stream("POST", url, body=body) as resp:
                async for _ in resp.iter_bytes():
                    break  # the response has started, the model is busy
                health = (await n.get("/health")).json()
                assert health["models"] == [{"id": "m", "in_flight": 1, "queue_depth": 0}]
                assert n.neuron.in_flight("m") == 1
                await resp.read()
        health = (await n.get("/health")).json()
        assert health["models"][0]["in_flight"] == 0


async def test_load_with_source_prefix_and_already_loaded(anyio_backend: str) -> None:
    async with running(gpus=2) as n:
        spec = {
            "model_id": "hf:org/Big-70B",
            "harness": "candle",
            "quant": "q4",
            "tensor_parallel": 2,
            "devices": [0, 1],
        }
        resp = await n.post("/models/load", spec)
        assert resp.status == 200
        assert resp.json()["status"] == "loaded"
        assert b"already loaded" not in resp.body
        listed = (await n.get("/models")).json()
        assert [(m["id"], m["status"], m["devices"]) for m in listed] == [
            ("org/Big-70B", "loaded", [0, 1])
        ]
        again = await n.post("/models/load", spec)
        assert again.status == 200
        assert b"already loaded" in again.body
        plain = await n.post("/models/load", {"model_id": "org/Small:Q4", "harness": "candle"})
        assert plain.status == 200
        assert n.neuron.models() == {"org/Big-70B": "loaded", "org/Small:Q4": "loaded"}


async def test_load_rejects_bad_specs(anyio_backend: str) -> None:
    async with running(gpus=2) as n:
        for spec in (
            b"not json",
            b"[1, 2]",
            {"harness": "candle"},
            {"model_id": "m", "harness": ""},
            {"model_id": "m", "harness": 5},
            {"model_id": "m", "harness": "candle", "devices": [2]},
            {"model_id": "m", "harness": "candle", "devices": [0, 0]},
            {"model_id": "m", "harness": "candle", "tensor_parallel": 3},
        ):
            resp = await n.post("/models/load", spec)
            assert resp.status == 400, spec
            assert resp.json()["error"]["type"] == "invalid_request_error"
        assert n.neuron.models() == {}
        # the catalogue's harness is optional: without one, the neuron's own
        assert (await n.post("/models/load", {"model_id": "m"})).status == 200
        assert (await n.get("/models")).json()[0]["harness"] == "candle"


async def test_load_delay_shows_loading(anyio_backend: str) -> None:
    async with running(load_delay=0.3) as n:
        seen = []

        async def load() -> None:
            resp = await n.post("/models/load", {"model_id": "m", "harness": "candle"})
            seen.append(resp.status)

        async with anyio.create_task_group() as tg:
            tg.start_soon(load)
            with anyio.fail_after(5):
                while n.neuron.model_status("m") != "loading":
                    await anyio.sleep(0.01)
            listed = (await n.get("/models")).json()
            assert listed[0]["status"] == "loading"
        assert seen == [200]
        assert n.neuron.model_status("m") == "loaded"


async def test_unload_and_lazy_reload(anyio_backend: str) -> None:
    async with running(models=["m"]) as n:
        resp = await n.post("/models/unload", {"model_id": "m"})
        assert resp.status == 200
        assert (await n.get("/models")).json()[0]["status"] == "unloaded"
        missing = await n.post("/models/unload", {"model_id": "nope"})
        assert missing.status == 404
        bad = await n.post("/models/unload", {"model": "m"})
        assert bad.status == 400
        chat = await n.post("/v1/chat/completions", CHAT)
        assert chat.status == 200
        assert n.neuron.model_status("m") == "loaded"


async def test_endpoint_lookup(anyio_backend: str) -> None:
    async with running(models=["org/Big-70B"]) as n:
        resp = await n.get("/models/org%2FBig-70B/endpoint")
        assert resp.status == 200
        assert resp.json() == {"url": f"http://127.0.0.1:{n.neuron.port}"}
        assert (await n.get("/models/org/Big-70B/endpoint")).status == 200
        unknown = await n.get("/models/org%2FOther/endpoint")
        assert unknown.status == 404
        assert unknown.header("x-neuron") == "neuron-1"


async def test_chat_completion(anyio_backend: str) -> None:
    async with running(name="n1", models=["m"]) as n:
        resp = await n.post("/v1/chat/completions", CHAT)
        assert resp.status == 200
        assert resp.header("x-neuron") == "n1"
        data = resp.json()
        assert data["object"] == "chat.completion"
        assert data["model"] == "m"
        assert isinstance(data["created"], int)
        assert data["id"].startswith("chatcmpl-")
        (choice,) = data["choices"]
        assert choice["index"] == 0
        assert choice["message"]["role"] == "assistant"
        content = choice["message"]["content"]
        words = content.split()
        assert 1 <= len(words) <= 16
        assert choice["finish_reason"] == ("length" if len(words) == 16 else "stop")
        assert data["usage"] == {
            "prompt_tokens": 4,
            "completion_tokens": len(words),
            "total_tokens": 4 + len(words),
        }
        again = (await n.post("/v1/chat/completions", CHAT)).json()
        assert again["choices"][0]["message"]["content"] == content
        other = (
            await n.post("/v1/chat/completions", {**CHAT, "messages": [{"content": "x y"}]})
        ).json()
        assert other["choices"][0]["message"]["content"] != content
        short = (await n.post("/v1/chat/completions", {**CHAT, "max_tokens": 2})).json()
        assert short["choices"][0]["message"]["content"] == " ".join(words[:2])
        assert short["choices"][0]["finish_reason"] == "length"
    async with running(name="n2", models=["m"]) as n:
        elsewhere = (await n.post("/v1/chat/completions", CHAT)).json()
        assert elsewhere["choices"][0]["message"]["content"] != content


async def test_chat_streaming(anyio_backend: str) -> None:
    async with running(models=["m"]) as n:
        whole = (await n.post("/v1/chat/completions", CHAT)).json()
        payload = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        resp = await n.post("/v1/chat/completions", payload)
        assert resp.status == 200
        assert resp.header("content-type") == "text/event-stream"
        assert resp.header("transfer-encoding") == "chunked"
        events = sse_events(resp.body)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        usage_chunk = chunks[-1]
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"] == whole["usage"]
        final = chunks[-2]["choices"][0]
        assert (final["delta"], final["finish_reason"]) == (
            {},
            whole["choices"][0]["finish_reason"],
        )
        tokens = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
        assert len(tokens) == whole["usage"]["completion_tokens"]
        assert "".join(tokens) == whole["choices"][0]["message"]["content"]


async def test_completions_plain_and_streaming(anyio_backend: str) -> None:
    async with running(models=["m"]) as n:
        request = {"model": "m", "prompt": "once upon a time", "max_tokens": 5}
        data = (await n.post("/v1/completions", request)).json()
        assert data["object"] == "text_completion"
        assert data["id"].startswith("cmpl-")
        (choice,) = data["choices"]
        assert len(choice["text"].split()) <= 5
        assert data["usage"]["prompt_tokens"] == 4
        resp = await n.post("/v1/completions", {**request, "stream": True})
        events = sse_events(resp.body)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "text_completion" for c in chunks)
        assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
        assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]


async def test_inference_needs_a_serving_model(anyio_backend: str) -> None:
    models = (("loading-m", "loading"), ("rec", "recovering"), ("rel", "reloading"))
    async with running(models=models) as n:
        for model in ("loading-m", "rec", "nobody"):
            resp = await n.post("/v1/chat/completions", {**CHAT, "model": model})
            assert resp.status == 404, model
            assert resp.json()["error"]["code"] == "model_not_found"
            assert resp.json()["error"]["type"] == "invalid_request_error"
        assert (await n.post("/v1/chat/completions", {**CHAT, "model": "rel"})).status == 200
        bad = await n.post("/v1/chat/completions", {"model": "rel", "messages": "hi"})
        assert bad.status == 400
        bad = await n.post("/v1/completions", {"model": "rel", "prompt": "x", "max_tokens": -1})
        assert bad.status == 400


async def test_prompt_limit(anyio_backend: str) -> None:
    async with running(models=["m"], max_prompt_tokens=3) as n:
        resp = await n.post("/v1/completions", {"model": "m", "prompt": "one two three four"})
        assert resp.status == 400
        assert resp.json()["error"]["code"] == "context_length_exceeded"
        assert (await n.post("/v1/completions", {"model": "m", "prompt": "one two"})).status == 200


async def test_unknown_route_and_method(anyio_backend: str) -> None:
    async with running() as n:
        assert (await n.get("/nope")).status == 404
        assert (await n.post("/discovery", {})).status == 405
        assert (await n.get("/models/load")).status == 405


async def test_control_stall_and_resume_over_http(anyio_backend: str) -> None:
    async with running(models=["m"]) as n:
        state = (await n.post("/_control", {"action": "stall", "seconds": 30})).json()
        assert state["stall_seconds"] == 30
        with pytest.raises(TimeoutError), anyio.fail_after(0.2):
            await n.get("/models")
        # the control endpoint itself is never stalled
        with anyio.fail_after(2):
            assert (await n.get("/_control")).json()["stall_seconds"] == 30
        results = []

        async def stalled() -> None:
            results.append((await n.get("/models")).status)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stalled)
                await anyio.sleep(0.1)
                assert results == []
                await n.post("/_control", {"action": "resume"})
        assert results == [200]
        assert (await n.get("/_control")).json()["stall_seconds"] == 0


async def test_stall_ends_by_itself(anyio_backend: str) -> None:
    async with running() as n:
        n.neuron.stall(0.2)
        with anyio.fail_after(5):
            assert (await n.get("/discovery")).status == 200


async def test_control_fail_and_drop_over_http(anyio_backend: str) -> None:
    async with running(models=["m"]) as n:
        assert (await n.post("/_control", {"action": "fail"})).json()["fail"] is True
        resp = await n.get("/models")
        assert resp.status == 500
        assert resp.json()["error"]["type"] == "api_error"
        assert (await n.post("/v1/chat/completions", CHAT)).status == 500
        assert (await n.post("/_control", {"action": "drop"})).json()["drop"] is True
        with pytest.raises(ConnectionClosedError):
            await n.get("/models")
        with pytest.raises(ConnectionClosedError):
            await n.post("/v1/chat/completions", CHAT)
        state = (await n.post("/_control", {"action": "resume"})).json()
        assert (state["fail"], state["drop"], state["stall_seconds"]) == (False, False, 0)
        assert (await n.get("/models")).status == 200


async def test_control_set_status_and_queue_over_http(anyio_backend: str) -> None:
    async with running(models=["m"]) as n:
        resp = await n.post(
            "/_control", {"action": "set_status", "model": "m", "status": "recovering"}
        )
        assert resp.status == 200
        assert (await n.get("/models")).json()[0]["status"] == "recovering"
        resp = await n.post(
            "/_control", {"action": "set_status", "model": "new", "status": "loaded"}
        )
        assert resp.json()["models"]["new"]["status"] == "loaded"
        resp = await n.post("/_control", {"action": "set_queue", "model": "m", "queue_depth": 7})
        assert resp.status == 200
        health = (await n.get("/health")).json()
        assert {"id": "m", "in_flight": 0, "queue_depth": 7} in health["models"]
        for bad, status in (
            ({"action": "set_status", "model": "m", "status": "bogus"}, 400),
            ({"action": "set_queue", "model": "ghost", "queue_depth": 1}, 404),
            ({"action": "set_queue", "model": "m", "queue_depth": -1}, 400),
            ({"action": "stall", "seconds": "soon"}, 400),
            (b'{"action": "stall", "seconds": NaN}', 400),
            (b'{"action": "stall", "seconds": Infinity}', 400),
            ({"action": "set_queue", "model": ["m"], "queue_depth": 1}, 400),
            ({"action": "set_queue", "model": {}, "queue_depth": 1}, 400),
            ({"action": "explode"}, 400),
        ):
            assert (await n.post("/_control", bad)).status == status, bad
        assert n.neuron.fault_state()["models"]["m"]["queue_depth"] == 7
        assert n.neuron.fault_state()["stall_seconds"] == 0
        # a prompt nested past any sensible depth is the client's mistake
        deep: object = "hi"
        for _ in range(500):
            deep = [deep]
        resp = await n.post("/v1/chat/completions", {"model": "m", "messages": [{"content": deep}]})
        assert resp.status == 400
        assert "nested" in resp.json()["error"]["message"]


async def test_in_process_faults(anyio_backend: str) -> None:
    async with running(models=["m"]) as n:
        neuron = n.neuron
        neuron.fail()
        assert (await n.get("/health")).status == 500
        neuron.drop()
        with pytest.raises(ConnectionClosedError):
            await n.get("/health")
        neuron.resume()
        assert (await n.get("/health")).status == 200
        neuron.set_status("m", "unloaded")
        assert (await n.get("/models")).json()[0]["status"] == "unloaded"
        neuron.set_queue("m", 3)
        assert (await n.get("/health")).json()["models"][0]["queue_depth"] == 3
        with pytest.raises(KeyError):
            neuron.set_queue("ghost", 1)
        with pytest.raises(ValueError, match="status"):
            neuron.set_status("m", "sleeping")
        neuron.stall(30)
        with pytest.raises(TimeoutError), anyio.fail_after(0.2):
            await n.get("/health")
        neuron.resume()
        with anyio.fail_after(2):
            assert (await n.get("/health")).status == 200
        assert neuron.requests[-1] == ("GET", "/health")


async def test_run_fake_neuron_reports_port(anyio_backend: str) -> None:
    config = FakeNeuronConfig(name="solo", models=(("m", "loaded"),), token_latency=0)
    async with anyio.create_task_group() as tg:
        port = await tg.start(run_fake_neuron, config)
        async with HTTPClient() as client:
            resp = await client.request("GET", f"http://127.0.0.1:{port}/discovery")
        assert resp.json()["hostname"] == "solo"
        tg.cancel_scope.cancel()


def _chat_with_openai(base_url: str) -> tuple[str, str]:
    import openai

    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=10) as client:
        plain = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello there"}], max_tokens=6
        )
        stream = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hello there"}],
            max_tokens=6,
            stream=True,
        )
        streamed = "".join(
            chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
        )
    return plain.choices[0].message.content or "", streamed


async def test_openai_client_understands_it(anyio_backend: str) -> None:
    async with running(models=["m"]) as n:
        plain, streamed = await anyio.to_thread.run_sync(_chat_with_openai, n.neuron.url + "/v1")
    assert plain
    assert plain == streamed


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="status"):
        FakeNeuronConfig(models=(("m", "asleep"),))
    with pytest.raises(ValueError):
        FakeNeuronConfig(gpus=-1)
    assert FakeNeuronConfig(models=["a", ("b", "unloaded")]).models == (
        ("a", "loaded"),
        ("b", "unloaded"),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cortex-fsm fake-neuron")
    add_fake_neuron_arguments(parser)
    return parser


def test_cli_arguments() -> None:
    argv = "--name n --gpus 2 --vram 1000 --model org/M:recovering --model hf:org/X --model plain"
    args = _parser().parse_args(argv.split())
    assert (args.name, args.gpus, args.vram, args.port) == ("n", 2, 1000, 0)
    assert args.models == [("org/M", "recovering"), ("hf:org/X", "loaded"), ("plain", "loaded")]
    for bad in (
        ["--gpus", "-1"],
        ["--gpus", "100000000000000000000"],
        ["--port", "70000"],
        ["--model", ":loaded"],
        ["--vram", "x"],
        ["--token-latency", "inf"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            _parser().parse_args(bad)
        assert exit_info.value.code == 2


def test_cli_runs_until_interrupted() -> None:
    src = str(Path(cortex_fsm.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    script = (
        "import argparse, sys\n"
        "from cortex_fsm.drivers.fake_neuron import add_fake_neuron_arguments, fake_neuron_main\n"
        "p = argparse.ArgumentParser()\n"
        "add_fake_neuron_arguments(p)\n"
        "sys.exit(fake_neuron_main(p.parse_args(sys.argv[1:])))\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, "--name", "cli-n", "--model", "m"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("fake neuron cli-n listening on http://127.0.0.1:"), line
            port = int(line.rsplit(":", 1)[1])
            body = _get(port, "/models")
            assert json.loads(body)[0]["id"] == "m"
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def _get(port: int, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return str(resp.read().decode())
