"""The gateway over real loopback sockets: routing, streaming, reports, rejects, abuse."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from gateway_support import (
    BIG,
    SMALL,
    ScriptedNeuron,
    chat_body,
    envelope,
    neuron,
    raw_exchange,
    running_fleet,
    wait_until,
)

from cortex_fsm import Catalogue, ModelStatus, Policy, Profile
from cortex_fsm.drivers.http import HTTPClient
from cortex_fsm.health import Phase

pytestmark = pytest.mark.anyio


async def test_routes_to_the_loaded_replica_and_touches_it(anyio_backend: str) -> None:
    async with running_fleet(neuron("big", BIG, gpus=2, vram_mb=81920)) as f:
        resp = await f.chat("tier/large", max_tokens=3)
        assert resp.status == 200
        assert resp.header("x-cortex-node") == "big"
        assert resp.header("x-cortex-outcome") == "route_loaded"
        assert resp.header("x-cortex-request") == "r1"
        answer = resp.json()
        # the alias was rewritten to the resolved id before forwarding
        assert answer["model"] == BIG
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert f.engine.status("big").models[BIG].last_accessed is not None
        completions = await f.post(
            "/v1/completions", json.dumps({"model": BIG, "prompt": "hi"}).encode()
        )
        assert completions.status == 200
        assert completions.json()["object"] == "text_completion"
        assert ("POST", "/v1/completions") in f.neurons["big"].requests


async def test_least_busy_replica_follows_health_readings(anyio_backend: str) -> None:
    async with running_fleet(neuron("a", SMALL), neuron("b", SMALL)) as f:
        assert (await f.chat(SMALL)).header("x-cortex-node") == "a"  # tie: smallest name
        f.neurons["a"].set_queue(SMALL, 4)
        await wait_until(lambda: f.engine.snapshot().node("a").busy.get(SMALL) == 4)
        assert (await f.chat(SMALL)).header("x-cortex-node") == "b"


async def test_streaming_is_relayed_chunk_by_chunk(anyio_backend: str) -> None:
    async with running_fleet(neuron("big", BIG, gpus=2, vram_mb=81920, token_latency=0.1)) as f:
        arrivals: list[float] = []
        chunks: list[bytes] = []
        body = chat_body(BIG, max_tokens=6, stream=True)
        async with f.client.stream(
            "POST", f.gateway.url + "/v1/chat/completions", body=body
        ) as resp:
            assert resp.status == 200
            assert resp.header("content-type") == "text/event-stream"
            assert resp.header("x-cortex-node") == "big"
            async for chunk in resp.iter_bytes():
                arrivals.append(anyio.current_time())
                chunks.append(chunk)
        text = b"".join(chunks).decode()
        assert text.endswith("data: [DONE]\n\n")
        assert len(chunks) >= 5
        # tokens arrive spread over time, not all at once at the end
        assert arrivals[-1] - arrivals[0] >= 0.3


async def test_models_listing(anyio_backend: str) -> None:
    async with running_fleet(
        neuron("big", BIG, gpus=2, vram_mb=81920),
        neuron("a", SMALL, ("extra/Loaded-1B", "loaded"), ("extra/Gone", "unloaded")),
    ) as f:
        resp = await f.get("/v1/models")
        assert resp.status == 200
        listing = resp.json()
        assert listing["object"] == "list"
        by_id = {m["id"]: m for m in listing["data"]}
        assert set(by_id) == {BIG, SMALL, "extra/Loaded-1B", "tier/large", "tier/small"}
        assert [m["id"] for m in listing["data"]] == sorted(by_id)
        # an alias is an entry of its own, in the OpenAI shape, naming its target
        alias = by_id["tier/large"]
        assert alias["object"] == "model"
        assert alias["alias_of"] == BIG
        assert alias["loaded"] is True
        assert alias["locations"] == [{"node": "big", "status": "loaded"}]
        big = by_id[BIG]
        assert {"id", "object", "created", "owned_by"} <= set(big)
        assert big["object"] == "model"
        assert isinstance(big["created"], int)
        assert big["loaded"] is True
        assert big["feasible_on"] == ["big"]
        assert big["locations"] == [{"node": "big", "status": "loaded"}]
        assert big["aliases"] == ["tier/large"]
        assert by_id[SMALL]["feasible_on"] == ["a", "big"]
        assert by_id["extra/Loaded-1B"]["feasible_on"] == []


async def test_health_report_ok_then_degraded(anyio_backend: str) -> None:
    async with running_fleet(
        neuron("a", SMALL),
        neuron("b", SMALL),
        policy=Policy(poll_interval=0.05, failure_threshold=2),
    ) as f:
        report = (await f.get("/health")).json()
        assert report["status"] == "ok"
        node = report["nodes"][0]
        assert node["name"] == "a"
        assert node["state"] == "healthy"
        assert node["consecutive_failures"] == 0
        assert isinstance(node["last_ok"], float)
        f.neurons["b"].fail()
        await f.wait_phase("b", Phase.UNHEALTHY)
        report = (await f.get("/health")).json()
        assert report["status"] == "degraded"
        b = report["nodes"][1]
        assert b["state"] == "unhealthy"
        assert b["routable"] is False
        assert b["consecutive_failures"] >= 2
        assert b["last_failure"] == "status:500"


async def test_cold_load_then_forward(anyio_backend: str) -> None:
    catalogue = Catalogue(
        profiles={BIG: Profile(id=BIG, harness="candle", min_devices=2, source="hf")}
    )
    async with running_fleet(
        neuron("big", gpus=2, vram_mb=81920, load_delay=0.2), catalogue=catalogue
    ) as f:
        responses = []

        async def one() -> None:
            responses.append(await f.chat(BIG))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
        assert [r.status for r in responses] == [200] * 4
        assert {r.header("x-cortex-outcome") for r in responses} == {"cold_load"}
        # one load for the four requests, with the spec the catalogue asks for
        loads = [t for m, t in f.neurons["big"].requests if t == "/models/load"]
        assert loads == ["/models/load"]
        assert f.neurons["big"].model_status(BIG) == "loaded"
        assert f.engine.status("big").models[BIG].status is ModelStatus.LOADED
        again = await f.chat(BIG)
        assert again.header("x-cortex-outcome") == "route_loaded"


async def test_rejects_use_the_envelope_and_retry_after(anyio_backend: str) -> None:
    async with running_fleet(
        neuron("big", BIG, gpus=2, vram_mb=81920),
        neuron("small", SMALL),
        policy=Policy(poll_interval=0.05, failure_threshold=1),
    ) as f:
        resp = await f.chat("nobody/knows")
        assert resp.status == 404
        assert resp.header("retry-after") is None
        assert envelope(resp.body) == {
            "message": "The model 'nobody/knows' does not exist",
            "type": "invalid_request_error",
            "code": "model_not_found",
        }
        f.neurons["big"].drop()
        await f.wait_phase("big", Phase.UNHEALTHY)
        resp = await f.chat("tier/large")
        assert resp.status == 503
        assert resp.header("retry-after") == "3"
        assert resp.header("x-cortex-outcome") == "feasible_node_unhealthy"
        assert envelope(resp.body)["code"] == "service_unavailable"
        f.neurons["small"].drop()
        await f.wait_phase("small", Phase.UNHEALTHY)
        resp = await f.chat(SMALL)
        assert resp.status == 503
        assert resp.header("retry-after") == "5"
        assert resp.header("x-cortex-outcome") == "no_healthy_nodes"


async def test_model_recovering_is_a_503(anyio_backend: str) -> None:
    async with running_fleet(neuron("a", (SMALL, "recovering"))) as f:
        resp = await f.chat(SMALL)
        assert resp.status == 503
        assert resp.header("retry-after") == "2"
        assert "recovering on neuron 'a'" in envelope(resp.body)["message"]


async def test_bad_requests_over_raw_http(anyio_backend: str) -> None:
    async with running_fleet(neuron("a", SMALL), max_body_bytes=2000) as f:

        def post(body: bytes, path: str = "/v1/chat/completions") -> bytes:
            return (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body

        async def check(data: bytes, status: int, type_: str, code: str) -> None:
            answer = await raw_exchange(f.gateway.url, data)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
            error = envelope(body)
            assert (error["type"], error["code"]) == (type_, code)

        await check(post(b"{not json"), 400, "invalid_request_error", "invalid_request")
        await check(post(b"[1, 2]"), 400, "invalid_request_error", "invalid_request")
        await check(post(b'{"messages": []}'), 400, "invalid_request_error", "invalid_request")
        await check(post(b'{"model": 7}'), 400, "invalid_request_error", "invalid_request")
        await check(post(b"x" * 5000), 413, "invalid_request_error", "request_too_large")
        await check(post(b"{}", "/v1/nothing"), 404, "invalid_request_error", "not_found")
        await check(
            b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            405,
            "invalid_request_error",
            "method_not_allowed",
        )
        await check(b"NOT HTTP AT ALL\r\n\r\n", 400, "invalid_request_error", "bad_request")
        # a chunked body over the limit is refused too
        chunked = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"400\r\n" + b"y" * 1024 + b"\r\n" for _ in range(3))
            + b"0\r\n\r\n"
        )
        await check(chunked, 413, "invalid_request_error", "request_too_large")
        # and the gateway keeps serving
        assert (await f.chat(SMALL)).status == 200
        assert (await f.get("/health")).status == 200


async def test_half_a_request_then_silence(anyio_backend: str) -> None:
    async with running_fleet(neuron("a", SMALL), client_timeout=0.3) as f:
        start = anyio.current_time()
        answer = await raw_exchange(f.gateway.url, b"POST /v1/chat/completions HTTP/1.1\r\nHo")
        assert answer.startswith(b"HTTP/1.1 408 ")
        # the head arrived, half the body did not
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        answer = await raw_exchange(f.gateway.url, head + b'{"model": "org/Sm')
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"request_timeout" in answer
        assert anyio.current_time() - start < 3
        assert (await f.chat(SMALL)).status == 200


async def test_keep_alive_between_requests(anyio_backend: str) -> None:
    async with running_fleet(neuron("a", SMALL)) as f:
        host, port = f.gateway.address or ("", 0)
        async with await anyio.connect_tcp(host, port) as stream:
            for i in range(3):
                body = chat_body(SMALL, content=f"turn {i}")
                await stream.send(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                data = b""
                with anyio.fail_after(5):
                    while b"\r\n\r\n" not in data:
                        data += await stream.receive()
                    head, _, rest = data.partition(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    while len(rest) < length:
                        rest += await stream.receive()
                assert head.startswith(b"HTTP/1.1 200 ")
                assert json.loads(rest)["object"] == "chat.completion"


async def test_two_hundred_concurrent_requests(anyio_backend: str) -> None:
    async with running_fleet(neuron("a", SMALL), neuron("b", SMALL)) as f:
        results: dict[int, dict[str, Any]] = {}
        async with HTTPClient() as client:

            async def one(i: int) -> None:
                body = chat_body(SMALL, content=f"request number {i}", max_tokens=2)
                with anyio.fail_after(30):
                    resp = await client.request(
                        "POST", f.gateway.url + "/v1/chat/completions", body=body
                    )
                assert resp.status == 200, resp.body
                assert i not in results
                results[i] = resp.json()

            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(one, i)
        assert sorted(results) == list(range(200))
        ids = {r["id"] for r in results.values()}
        assert len(ids) == 200  # every answer distinct: none lost, none duplicated
        served = sum(
            1
            for n in f.neurons.values()
            for method, target in n.requests
            if target == "/v1/chat/completions"
        )
        assert served == 200
        assert f.gateway.journal.requests == 200


async def test_neuron_killed_mid_stream(anyio_backend: str) -> None:
    async with running_fleet(
        neuron("a", SMALL, token_latency=0.05), neuron("big", BIG, gpus=2, vram_mb=81920)
    ) as f:
        body = chat_body(SMALL, stream=True, max_tokens=20)
        text = b""
        with anyio.fail_after(10):
            async with f.client.stream(
                "POST", f.gateway.url + "/v1/chat/completions", body=body
            ) as resp:
                assert resp.status == 200
                async for chunk in resp.iter_bytes():
                    text += chunk
                    f.kill("a")
                assert resp.complete  # the stream was ended cleanly
        events = [e for e in text.decode().split("\n\n") if e]
        assert len(events) >= 2
        assert events[-1].startswith("data: ")
        error = json.loads(events[-1][len("data: ") :])["error"]
        assert error["code"] == "service_unavailable"
        assert "failed while streaming" in error["message"]
        assert "[DONE]" not in text.decode()
        # the gateway keeps serving
        assert (await f.chat(BIG)).status == 200
        assert (await f.get("/health")).status == 200


async def test_upstream_dies_mid_stream(anyio_backend: str) -> None:
    script = ScriptedNeuron("s", gpus=1, models=[(SMALL, "loaded")])
    # one attempt: the only node's own failure is the answer (not a failover's reject)
    async with running_fleet(
        scripted=[script], policy=Policy(poll_interval=0.1, max_attempts=1)
    ) as f:
        script.behaviour["forward"] = "sse-break"
        async with f.client.stream(
            "POST", f.gateway.url + "/v1/chat/completions", body=chat_body(SMALL, stream=True)
        ) as resp:
            assert resp.status == 200
            text = (await resp.read()).decode()
        assert text.startswith('data: {"choices": []}\n\n')
        assert '"code": "service_unavailable"' in text.split("\n\n")[1]
        # a framed (non-stream) answer cut short is read whole before answering, so
        # the client still gets a proper, retryable status
        script.behaviour["forward"] = "short"
        resp = await f.chat(SMALL)
        assert resp.status == 503
        assert resp.header("retry-after") == "3"
        assert resp.header("x-cortex-outcome") == "upstream_unavailable"
        script.behaviour.pop("forward")
        assert (await f.chat(SMALL)).status == 200
