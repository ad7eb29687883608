"""Neurons (and clients) that answer badly: the gateway stays up, says what went
wrong in one log line, and tells clients what the tables say."""

from __future__ import annotations

import json
import logging

import anyio
import pytest
from gateway_support import (
    SMALL,
    ScriptedNeuron,
    chat_body,
    envelope,
    raw_exchange,
    running_fleet,
    wait_until,
)

from cortex_fsm import Policy
from cortex_fsm.drivers.http import HTTPClient
from cortex_fsm.drivers.neuron_client import (
    Fetched,
    NeuronClient,
    NeuronError,
    endpoint_path,
    rewrite_loopback,
    url_problem,
)
from cortex_fsm.errors import IOCause
from cortex_fsm.health import Phase
from cortex_fsm.wire import load_json

pytestmark = pytest.mark.anyio

DEEP = b"[" * 100_000 + b"]" * 100_000
#: One attempt per request: the one node's own failure is the answer (with
#: failover, the next attempt would exclude it and answer no_healthy_nodes).
ONE_ATTEMPT = Policy(poll_interval=0.1, max_attempts=1)


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    found = []
    for record in caplog.records:
        try:
            fields = json.loads(record.getMessage())
        except ValueError:
            continue
        if isinstance(fields, dict) and fields.get("event") == name:
            found.append(fields)
    return found


def test_json_nested_too_deeply_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        load_json(DEEP)
    with pytest.raises(ValueError):
        load_json(b"\xff")
    assert load_json(b'{"a": [1]}') == {"a": [1]}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:8080/v1", None),
        ("http://[::1]:9/", None),
        ("https://h:1", None),
        ("ftp://h:1", "not an http:// or https:// URL"),
        ("http://", "no host"),
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://127.0.0.1:99999", "Port out of range"),
        ("http://127.0.0.1:abc", "Port could not be cast"),
        ("http://h:1/a b", "spaces"),
        ("http://h:1/\r\nX-Evil: 1", "control"),
        ("http://a\x00b:1", "control"),
        ("http://gpü:1", "non-ASCII"),
    ],
)
def test_url_problem(url: str, problem: str | None) -> None:
    found = url_problem(url)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_helpers_refuse_cleanly() -> None:
    # an id that is not valid Unicode (JSON can carry lone surrogates)
    with pytest.raises(ValueError, match="not valid Unicode"):
        endpoint_path("\ud800")
    # a URL that cannot be parsed is left alone (the caller refuses it)
    assert rewrite_loopback("http://[::1", "http://gpu:1") == "http://[::1"
    assert rewrite_loopback("http://localhost:99999", "http://gpu:1") == "http://localhost:99999"


async def test_the_neuron_client_turns_hostile_answers_into_failures(anyio_backend: str) -> None:
    script = ScriptedNeuron("s")
    async with anyio.create_task_group() as tg, HTTPClient() as http:
        await tg.start(script.run)
        client = NeuronClient(http)
        script.polls["/models"] = DEEP
        assert await client.fetch(script.url, "/models") == Fetched.failure("invalid json")
        for answer in (
            DEEP,
            b'{"url": "http://[::1"}',
            b'{"url": "http://127.0.0.1:99999"}',
            b'{"url": "http://127.0.0.1:abc"}',
            b'{"url": "http://"}',
            b'{"url": "http://127.0.0.1:1/a b"}',
            b'{"url": "http://h:1/x\\r\\nX-Evil: 1"}',
        ):
            script.behaviour["endpoint"] = ("status", 200, answer)
            with pytest.raises(NeuronError) as info:
                await client.resolve_endpoint(script.url, "m")
            assert info.value.cause is IOCause.BAD_BODY, answer
            assert "no usable url" in info.value.detail
        with pytest.raises(NeuronError) as info:
            await client.resolve_endpoint(script.url, "\ud800")
        assert info.value.cause is IOCause.BAD_BODY
        tg.cancel_scope.cancel()


async def test_deeply_nested_poll_answers_do_not_bring_the_gateway_down(
    anyio_backend: str,
) -> None:
    script = ScriptedNeuron("s", gpus=1, models=[(SMALL, "loaded")])
    for path in ("/discovery", "/models", "/health"):
        script.polls[path] = DEEP
    async with running_fleet(scripted=[script], wait=False) as f:
        await wait_until(lambda: f.gateway.poll_rounds()["s"] >= 2)
        status = f.engine.status("s")
        assert status.state.phase is Phase.UNHEALTHY  # never healthy: one failure is enough
        assert status.last_ok is None
        assert status.last_failure == "invalid json"
        assert (await f.get("/health")).status == 200
        # once the neuron answers properly, it is routable
        script.polls.clear()
        await f.wait_phase("s", Phase.HEALTHY)
        assert (await f.chat(SMALL)).status == 200


async def test_a_deeply_nested_request_body_is_a_400(anyio_backend: str) -> None:
    script = ScriptedNeuron("s", gpus=1, models=[(SMALL, "loaded")])
    async with running_fleet(scripted=[script]) as f:
        resp = await f.post("/v1/chat/completions", b'{"model": "m", "x": ' + DEEP + b"}")
        assert resp.status == 400
        error = envelope(resp.body)
        assert error["code"] == "invalid_request"
        assert "nested too deeply" in error["message"]
        resp = await f.post("/v1/chat/completions", b'{"model": ')
        assert "line 1 column" in envelope(resp.body)["message"]  # where the JSON broke
        assert (await f.chat(SMALL)).status == 200


@pytest.mark.parametrize(
    "answer",
    [
        b'{"url": "http://[::1"}',
        b'{"url": "http://127.0.0.1:99999"}',
        b'{"url": "http://"}',
        b'{"url": "http://127.0.0.1:1/a b"}',
    ],
)
async def test_an_unusable_endpoint_url_is_endpoint_resolve_failed(
    anyio_backend: str, answer: bytes
) -> None:
    script = ScriptedNeuron("s", gpus=1, models=[(SMALL, "loaded")])
    async with running_fleet(scripted=[script]) as f:
        script.behaviour["endpoint"] = ("status", 200, answer)
        resp = await f.chat(SMALL)
        assert resp.status == 404
        assert resp.header("x-cortex-outcome") == "endpoint_resolve_failed"
        assert "no usable url" in envelope(resp.body)["message"]
        script.behaviour.clear()
        assert (await f.chat(SMALL)).status == 200


async def test_a_model_id_that_is_not_unicode(anyio_backend: str) -> None:
    script = ScriptedNeuron("s", gpus=1, models=[("\ud800", "loaded"), (SMALL, "loaded")])
    async with running_fleet(scripted=[script]) as f:
        resp = await f.post("/v1/chat/completions", b'{"model": "\\ud800"}')
        assert resp.status == 404
        assert resp.header("x-cortex-outcome") == "endpoint_resolve_failed"
        assert "not valid Unicode" in envelope(resp.body)["message"]
        assert (await f.chat(SMALL)).status == 200


async def test_a_stream_cut_mid_event_ends_that_event_before_the_error(
    anyio_backend: str,
) -> None:
    script = ScriptedNeuron("s", gpus=1, models=[(SMALL, "loaded")])
    async with running_fleet(scripted=[script]) as f:
        script.behaviour["forward"] = "sse-half"
        async with f.client.stream(
            "POST", f.gateway.url + "/v1/chat/completions", body=chat_body(SMALL, stream=True)
        ) as resp:
            text = (await resp.read()).decode()
        events = [e for e in text.split("\n\n") if e]
        assert events[0] == 'data: {"i": 0}'
        assert events[1] == 'data: {"i": 1'  # what the neuron sent, left as it was
        error = json.loads(events[2].removeprefix("data: "))["error"]
        assert error["code"] == "service_unavailable"


async def test_a_client_that_stops_reading_is_dropped(anyio_backend: str) -> None:
    script = ScriptedNeuron("s", gpus=1, models=[(SMALL, "loaded")])
    async with running_fleet(scripted=[script], request_timeout=0.5) as f:
        script.behaviour["forward"] = "flood"
        body = chat_body(SMALL, stream=True)
        host, port = f.gateway.url.removeprefix("http://").rsplit(":", 1)
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            # never read: the gateway gives up on this client, and the neuron's
            # stream is closed with it
            with anyio.fail_after(20):
                await script.flood_ended.wait()
        script.behaviour.clear()
        assert (await f.chat(SMALL)).status == 200


async def test_an_endpoint_that_leads_back_to_the_gateway_is_not_a_loop(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cortex_fsm")
    script = ScriptedNeuron("s", gpus=1, models=[(SMALL, "loaded")])
    async with running_fleet(scripted=[script], policy=ONE_ATTEMPT) as f:
        url = json.dumps({"url": f.gateway.url}).encode()
        script.behaviour["endpoint"] = ("status", 200, url)
        with anyio.fail_after(5):
            resp = await f.chat(SMALL)
        assert resp.status == 503
        assert resp.header("x-cortex-outcome") == "upstream_unavailable"
        assert "508" in envelope(resp.body)["message"]
        assert f.gateway.journal.requests == 1  # the looped request was not routed again
        assert len(_events(caplog, "loop_detected")) == 1
        # a forwarded request names the gateways it passed through
        script.behaviour.clear()
        assert (await f.chat(SMALL)).status == 200
        forwarded = [c for c in script.calls if c[1] == "/v1/chat/completions"]
        assert forwarded


async def test_too_many_gateways_on_the_path_is_a_508(anyio_backend: str) -> None:
    script = ScriptedNeuron("s", gpus=1, models=[(SMALL, "loaded")])
    async with running_fleet(scripted=[script]) as f:
        body = chat_body(SMALL)
        hops = ",".join(f"g{i}" for i in range(8))
        answer = await raw_exchange(
            f.gateway.url,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + f"x-cortex-hop: {hops}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body,
        )
        assert answer.startswith(b"HTTP/1.1 508 ")
        assert envelope(answer.partition(b"\r\n\r\n")[2])["code"] == "loop_detected"


async def test_unusable_discovery_and_health_answers_are_logged_once(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cortex_fsm")
    script = ScriptedNeuron("s", gpus=1, models=[(SMALL, "loaded")])
    script.polls["/discovery"] = b'{"devices": [{"index": "0", "vram_total_mb": 1}]}'
    script.polls["/health"] = b'{"models": "lots"}'
    async with running_fleet(scripted=[script]) as f:
        start = f.gateway.poll_rounds()["s"]
        await wait_until(lambda: f.gateway.poll_rounds()["s"] >= start + 3)
        unusable = _events(caplog, "answer_unusable")
        paths = sorted(str(e["path"]) for e in unusable)
        assert paths == ["/discovery", "/health"]  # once each, not once per poll
        reasons = {e["path"]: e["reason"] for e in unusable}
        assert "index" in str(reasons["/discovery"])
        assert "models" in str(reasons["/health"])
        assert f.phase("s") is Phase.HEALTHY  # neither changes health
        script.polls.clear()
        await wait_until(lambda: len(_events(caplog, "answer_usable")) == 2)


@pytest.mark.parametrize("status", [302, 307, 999])
async def test_a_load_answered_with_neither_2xx_nor_4xx_is_retryable(
    anyio_backend: str, status: int
) -> None:
    """Only a 4xx is the neuron rejecting the load spec (a permanent 404); any
    other non-2xx answer is the neuron failing (503, Retry-After)."""
    script = ScriptedNeuron("s", gpus=2)
    async with running_fleet(scripted=[script], policy=ONE_ATTEMPT) as f:
        script.behaviour["load"] = ("status", status, b"{}")
        resp = await f.chat("org/Big-70B")
        assert resp.status == 503
        assert resp.header("retry-after") == "3"
        assert f"answered {status}" in envelope(resp.body)["message"]
        script.behaviour["load"] = ("status", 422, b"{}")
        resp = await f.chat("org/Big-70B")
        assert resp.status == 404
        assert resp.header("x-cortex-outcome") == "cold_load_failed"


async def test_a_model_name_past_the_limit_is_a_400_and_not_remembered(
    anyio_backend: str,
) -> None:
    script = ScriptedNeuron("s", gpus=1, models=[(SMALL, "loaded")])
    async with running_fleet(scripted=[script], max_body_bytes=1 << 20) as f:
        resp = await f.post("/v1/chat/completions", chat_body("x" * 100_000))
        assert resp.status == 400
        assert "longer than 1024 characters" in envelope(resp.body)["message"]
        assert len(resp.body) < 500  # the name is not echoed back
        assert f.gateway.journal.requests == 0  # never decided, never cached
        resp = await f.post("/v1/chat/completions", chat_body("y" * 1024))
        assert resp.status == 404  # at the limit: an ordinary unknown model


async def test_head_and_absolute_form_targets(anyio_backend: str) -> None:
    script = ScriptedNeuron("s", gpus=1, models=[(SMALL, "loaded")])
    async with running_fleet(scripted=[script]) as f:

        async def ask(line: str, extra: str = "") -> tuple[bytes, bytes]:
            data = f"{line}\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode()
            head, _, body = (await raw_exchange(f.gateway.url, data)).partition(b"\r\n\r\n")
            return head.lower(), body

        for path in ("/health", "/v1/models"):
            head, body = await ask(f"HEAD {path} HTTP/1.1")
            assert head.startswith(b"http/1.1 200 "), head
            assert body == b""
        head, _ = await ask("POST /health HTTP/1.1", "Content-Length: 0\r\n")
        assert head.startswith(b"http/1.1 405 ")
        assert b"\r\nallow: get, head" in head
        # RFC 9112 3.2.2: an absolute-form target is served by its path
        head, body = await ask(f"GET {f.gateway.url}/health?x=1 HTTP/1.1")
        assert head.startswith(b"http/1.1 200 ")
        assert "s" in {n["name"] for n in json.loads(body)["nodes"]}
