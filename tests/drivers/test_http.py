"""HTTP client and server over real loopback sockets, on asyncio and trio."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pytest
from gateway_support import raw_exchange as raw_exchange_url

from cortex_fsm.drivers.http import (
    BodyTooLarge,
    ConnectError,
    ConnectionClosedError,
    Handler,
    HeadersTooLarge,
    HTTPClient,
    InvalidJSON,
    Limits,
    Request,
    Responder,
    ServerControl,
    UsageError,
    reason_phrase,
    serve,
)

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running(handler: Handler, **kwargs: Any) -> AsyncIterator[tuple[str, int]]:
    """Run ``serve(handler)`` on a free loopback port for the duration of the block."""
    async with anyio.create_task_group() as tg:
        address: tuple[str, int] = await tg.start(partial(serve, handler, **kwargs))
        try:
            yield address
        finally:
            tg.cancel_scope.cancel()


def url(address: tuple[str, int], path: str = "/") -> str:
    return f"http://{address[0]}:{address[1]}{path}"


async def raw_exchange(address: tuple[str, int], data: bytes) -> bytes:
    """Send raw bytes, then read until the server closes (or resets) the connection."""
    return await raw_exchange_url(url(address, ""), data)


async def echo(request: Request, responder: Responder) -> None:
    body = await request.body()
    info = {
        "method": request.method,
        "target": request.target,
        "path": request.path,
        "query": request.query,
        "peer": list(request.peer) if request.peer else None,
        "te": request.header("transfer-encoding"),
        "body": body.decode(),
    }
    await responder.respond(200, [("content-type", "application/json")], json.dumps(info).encode())


async def test_keep_alive_reuses_one_connection(anyio_backend: str) -> None:
    async with running(echo) as address, HTTPClient() as client:
        peers = set()
        for i in range(5):
            resp = await client.request("POST", url(address, f"/n/{i}?q=1"), body=b"x" * i)
            assert resp.status == 200
            info = resp.json()
            assert info["path"] == f"/n/{i}"
            assert info["query"] == "q=1"
            assert info["body"] == "x" * i
            peers.add(tuple(info["peer"]))
        assert len(peers) == 1


async def test_concurrent_requests_each_get_a_connection(anyio_backend: str) -> None:
    gate = anyio.Event()
    arrived = 0

    async def handler(request: Request, responder: Responder) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 3:
            gate.set()
        await gate.wait()
        await responder.respond(200, [], request.target.encode())

    results: list[bytes] = []
    async with running(handler) as address, HTTPClient() as client:

        async def one(i: int) -> None:
            results.append((await client.request("GET", url(address, f"/{i}"))).body)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(one, i)
    assert sorted(results) == [b"/0", b"/1", b"/2"]


async def test_chunked_request_and_response_bodies(anyio_backend: str) -> None:
    async def handler(request: Request, responder: Responder) -> None:
        parts = [chunk async for chunk in request.iter_body()]
        await responder.start(200, [("x-te", request.header("transfer-encoding") or "")])
        for part in parts:
            await responder.send(part.upper())
        await responder.end()

    async def body() -> AsyncIterator[bytes]:
        for word in (b"alpha", b"beta", b"gamma"):
            yield word

    async with running(handler) as address, HTTPClient() as client:
        resp = await client.request("PUT", url(address), body=body())
        assert resp.status == 200
        assert resp.header("x-te") == "chunked"
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.body == b"ALPHABETAGAMMA"
        # and the connection is still good for a fixed-length exchange
        resp = await client.request("POST", url(address), body=b"plain")
        assert resp.body == b"PLAIN"


async def test_streaming_response_arrives_chunk_by_chunk(anyio_backend: str) -> None:
    first_seen = anyio.Event()

    async def handler(request: Request, responder: Responder) -> None:
        await responder.start(200, [("content-type", "text/plain")])
        await responder.send(b"first")
        await first_seen.wait()  # only the client can let us continue
        await responder.send(b"second")
        await responder.end()

    async with running(handler) as address, HTTPClient() as client:
        chunks = []
        with anyio.fail_after(5):
            async with client.stream("GET", url(address)) as resp:
                assert resp.status == 200
                async for chunk in resp.iter_bytes():
                    chunks.append(chunk)
                    first_seen.set()
                assert resp.complete
        assert b"".join(chunks) == b"firstsecond"
        assert chunks[0] == b"first"


async def test_streaming_request_arrives_chunk_by_chunk(anyio_backend: str) -> None:
    first_read = anyio.Event()

    async def handler(request: Request, responder: Responder) -> None:
        seen = []
        async for chunk in request.iter_body():
            seen.append(chunk)
            first_read.set()
        await responder.respond(200, [], b"|".join(seen))

    async def body() -> AsyncIterator[bytes]:
        yield b"one"
        await first_read.wait()  # only the server can let us continue
        yield b"two"

    async with running(handler) as address, HTTPClient() as client:
        with anyio.fail_after(5):
            resp = await client.request("POST", url(address), body=body())
    assert resp.body.startswith(b"one|")
    assert resp.body.replace(b"|", b"") == b"onetwo"


async def test_header_section_too_large_gets_431(anyio_backend: str) -> None:
    limits = Limits(max_header_bytes=1024)
    async with running(echo, limits=limits) as address, HTTPClient() as client:
        resp = await client.request("GET", url(address), headers=[("x-big", "a" * 4000)])
        assert resp.status == 431
        assert resp.json()["error"]["code"] == "request_header_fields_too_large"
        assert resp.header("connection") == "close"
        # a large head that arrives in one piece is refused too
        resp = await client.request("GET", url(address), headers=[("x-big", "a" * 1100)])
        assert resp.status == 431
        assert (await client.request("GET", url(address))).status == 200


async def test_body_over_limit_gets_413(anyio_backend: str) -> None:
    limits = Limits(max_body_bytes=1000)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"y" * 400

    async with running(echo, limits=limits) as address, HTTPClient() as client:
        resp = await client.request("POST", url(address), body=b"x" * 5000)
        assert resp.status == 413
        assert resp.json()["error"]["type"] == "invalid_request_error"
        resp = await client.request("POST", url(address), body=chunks())
        assert resp.status == 413
        resp = await client.request("POST", url(address), body=b"x" * 1000)
        assert resp.status == 200


async def test_handler_may_answer_body_too_large_itself(anyio_backend: str) -> None:
    async def handler(request: Request, responder: Responder) -> None:
        try:
            await request.body()
        except BodyTooLarge:
            await responder.respond(400, [], b"mine")

    async with (
        running(handler, limits=Limits(max_body_bytes=10)) as address,
        HTTPClient() as client,
    ):
        resp = await client.request("POST", url(address), body=b"z" * 100)
        assert (resp.status, resp.body) == (400, b"mine")


async def test_malformed_request_gets_400_and_server_stays_up(anyio_backend: str) -> None:
    async with running(echo) as address:
        answer = await raw_exchange(address, b"THIS IS NOT HTTP\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b'"bad_request"' in answer
        answer = await raw_exchange(address, b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        async with HTTPClient() as client:
            assert (await client.request("GET", url(address))).status == 200


async def test_error_messages_show_bytes_not_python_reprs(anyio_backend: str) -> None:
    async with running(echo) as address:
        answer = await raw_exchange(address, b"HELLO\r\n\r\n")
        message = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["message"]
        assert "bytearray" not in message
        assert "b'HELLO'" in message


async def test_unsupported_http_versions_get_505(anyio_backend: str) -> None:
    async with running(echo) as address:
        for version in (b"9.9", b"2.0"):
            answer = await raw_exchange(address, b"GET / HTTP/" + version + b"\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 505 "), answer[:100]
            assert b'"http_version_not_supported"' in answer
        answer = await raw_exchange(address, b"GET / HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")


async def test_content_length_with_transfer_encoding_is_refused(anyio_backend: str) -> None:
    """RFC 9112 6.1: such a message is a request-smuggling risk; the answer is a
    400 and the connection closes, so nothing pipelined after it is served."""
    async with running(echo) as address:
        smuggled = b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"
        answer = await raw_exchange(
            address,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + smuggled,
        )
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert answer.count(b"HTTP/1.1 ") == 1
        assert b"both Content-Length and Transfer-Encoding" in answer


async def test_expect_100_continue(anyio_backend: str) -> None:
    async with running(echo) as address, await anyio.connect_tcp(*address) as stream:
        head = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        await stream.send(head)
        with anyio.fail_after(5):
            interim = await stream.receive()
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send(b"hello")
            answer = b""
            while not answer.endswith(b"}"):
                answer += await stream.receive()
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b'"body": "hello"' in answer


async def test_half_request_then_stall_is_closed(anyio_backend: str) -> None:
    limits = Limits(header_timeout=0.3)
    async with running(echo, limits=limits) as address:
        start = anyio.current_time()
        answer = await raw_exchange(address, b"GET / HTTP/1.1\r\nHost: x\r\nX-Partial: ")
        assert anyio.current_time() - start < 4
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"request_timeout" in answer
        # an idle connection that never sends anything is closed too
        assert await raw_exchange(address, b"") == b""
        async with HTTPClient() as client:
            assert (await client.request("GET", url(address))).status == 200


async def test_handler_exception_before_start_gives_500(anyio_backend: str) -> None:
    async def handler(request: Request, responder: Responder) -> None:
        raise RuntimeError("boom")

    async with running(handler) as address, HTTPClient() as client:
        resp = await client.request("GET", url(address))
        assert resp.status == 500
        assert resp.json() == {
            "error": {"message": "internal error", "type": "api_error", "code": "internal_error"}
        }
        assert (await client.request("GET", url(address))).status == 500


async def test_custom_error_response(anyio_backend: str) -> None:
    def render(status: int, message: str) -> tuple[Sequence[tuple[str, str]], bytes]:
        return [("content-type", "text/plain"), ("x-gw", "1")], f"{status}:{message}".encode()

    async def handler(request: Request, responder: Responder) -> None:
        raise RuntimeError("boom")

    async with running(handler, error_response=render) as address, HTTPClient() as client:
        resp = await client.request("GET", url(address))
        assert (resp.status, resp.header("x-gw"), resp.body) == (500, "1", b"500:internal error")


async def test_handler_exception_after_start_breaks_the_stream(anyio_backend: str) -> None:
    async def handler(request: Request, responder: Responder) -> None:
        await responder.start(200, [("content-type", "text/event-stream")])
        await responder.send(b"data: 1\n\n")
        raise RuntimeError("upstream died")

    async def fixed_length(request: Request, responder: Responder) -> None:
        await responder.start(200, [("content-length", "100")])
        await responder.send(b"short")
        raise RuntimeError("upstream died")

    async with running(handler) as address, HTTPClient() as client:
        got = []
        with pytest.raises(ConnectionClosedError):
            async with client.stream("GET", url(address)) as resp:
                async for chunk in resp.iter_bytes():
                    got.append(chunk)
        assert got == [b"data: 1\n\n"]
        with pytest.raises(ConnectionClosedError):
            await client.request("GET", url(address))
    async with running(fixed_length) as address, HTTPClient() as client:
        with pytest.raises(ConnectionClosedError):
            await client.request("GET", url(address))


async def test_abort_closes_without_answer(anyio_backend: str) -> None:
    async def handler(request: Request, responder: Responder) -> None:
        await responder.abort()

    async with running(handler) as address, HTTPClient() as client:
        with pytest.raises(ConnectionClosedError):
            await client.request("GET", url(address))


async def test_connect_to_closed_port(anyio_backend: str) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    async with HTTPClient() as client:
        with pytest.raises(ConnectError):
            await client.request("GET", f"http://127.0.0.1:{port}/")


async def test_fail_after_around_a_stalled_server(anyio_backend: str) -> None:
    release = anyio.Event()

    async def handler(request: Request, responder: Responder) -> None:
        await release.wait()
        await responder.respond(200, [], b"late")

    async with running(handler) as address, HTTPClient() as client:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.2):
                await client.request("GET", url(address))
        release.set()
        # the timed-out connection was discarded; a new request works
        assert (await client.request("GET", url(address))).body == b"late"


async def test_unread_response_is_not_pooled(anyio_backend: str) -> None:
    async def handler(request: Request, responder: Responder) -> None:
        await responder.start(200, [])
        await responder.send(b"a" * 10)
        await responder.send(b"b" * 10)
        await responder.end()

    peers = []

    async def who(request: Request, responder: Responder) -> None:
        peers.append(request.peer)
        await handler(request, responder)

    async with running(who) as address, HTTPClient() as client:
        async with client.stream("GET", url(address)) as resp:
            async for _ in resp.iter_bytes():
                break
        await client.request("GET", url(address))
        await client.request("GET", url(address))
    assert peers[0] != peers[1]
    assert peers[1] == peers[2]


async def test_stale_pooled_connection_is_retried(anyio_backend: str) -> None:
    """The server takes the second request on a kept-alive connection, then hangs up."""
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    connections = 0

    async def handle(stream: anyio.abc.SocketStream) -> None:
        nonlocal connections
        connections += 1
        number = connections
        async with stream:
            for _ in range(2):
                data = b""
                while b"\r\n\r\n" not in data:
                    try:
                        data += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                if number == 1 and _ == 1:
                    return  # read the request, close without a response
                await stream.send(ok)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            async with HTTPClient() as client:
                with anyio.fail_after(5):
                    first = await client.request("GET", f"http://127.0.0.1:{port}/a")
                    second = await client.request("GET", f"http://127.0.0.1:{port}/b")
        finally:
            tg.cancel_scope.cancel()
    assert (first.body, second.body) == (b"ok", b"ok")
    assert connections == 2


async def test_pooled_connection_closed_while_idle_is_replaced(anyio_backend: str) -> None:
    peers = []

    async def handler(request: Request, responder: Responder) -> None:
        peers.append(request.peer)
        await responder.respond(200, [], b"ok")

    async def once() -> AsyncIterator[bytes]:
        yield b"cannot be replayed"

    limits = Limits(header_timeout=0.1)
    async with running(handler, limits=limits) as address, HTTPClient() as client:
        assert (await client.request("GET", url(address))).body == b"ok"
        await anyio.sleep(0.4)  # the server closes the idle connection meanwhile
        assert (await client.request("GET", url(address))).body == b"ok"
        await anyio.sleep(0.4)
        # a streamed body cannot be sent twice: the dead connection must be
        # noticed before it is used, not after
        assert (await client.request("POST", url(address), body=once())).body == b"ok"
    assert len(peers) == 3
    assert len(set(peers)) == 3


async def test_post_without_retry_on_fresh_connection_failure(anyio_backend: str) -> None:
    """A fresh connection that fails before the response is not retried."""
    calls = 0

    async def handler(request: Request, responder: Responder) -> None:
        nonlocal calls
        calls += 1
        await responder.abort()

    async with running(handler) as address, HTTPClient() as client:
        with pytest.raises(ConnectionClosedError):
            await client.request("POST", url(address), body=b"once")
    assert calls == 1


async def test_client_limits(anyio_backend: str) -> None:
    async def handler(request: Request, responder: Responder) -> None:
        if request.path == "/headers":
            await responder.respond(200, [("x-big", "h" * 3000)], b"")
        else:
            await responder.respond(200, [], b"b" * 3000)

    limits = Limits(max_header_bytes=1024, max_body_bytes=1000)
    async with running(handler) as address, HTTPClient(limits=limits) as client:
        with pytest.raises(HeadersTooLarge):
            await client.request("GET", url(address, "/headers"))
        with pytest.raises(BodyTooLarge):
            await client.request("GET", url(address, "/body"))
        async with client.stream("GET", url(address, "/body")) as resp:
            assert len(b"".join([c async for c in resp.iter_bytes()])) == 3000


async def test_json_helper_and_bad_urls(anyio_backend: str) -> None:
    async def handler(request: Request, responder: Responder) -> None:
        await responder.respond(200, [], b"<html>")

    async with running(handler) as address, HTTPClient() as client:
        resp = await client.request("GET", url(address))
        with pytest.raises(InvalidJSON, match="not JSON"):
            resp.json()
        with pytest.raises(UsageError):
            await client.request("GET", "ftp://example.invalid/")
        with pytest.raises(UsageError):
            await client.request("GET", "http:///nohost")
        with pytest.raises(UsageError):
            await client.request("GET", url(address), headers=[("bad header", "x")])
    with pytest.raises(UsageError):
        await client.request("GET", url(address))


async def test_head_and_no_content(anyio_backend: str) -> None:
    async def handler(request: Request, responder: Responder) -> None:
        if request.path == "/empty":
            await responder.start(204, [])
            await responder.end()
        else:
            await responder.respond(200, [("content-type", "text/plain")], b"body")

    async with running(handler) as address, HTTPClient() as client:
        head = await client.request("HEAD", url(address))
        assert (head.status, head.body, head.header("content-length")) == (200, b"", "4")
        empty = await client.request("GET", url(address, "/empty"))
        assert (empty.status, empty.body) == (204, b"")
        assert (await client.request("GET", url(address))).body == b"body"


async def test_cancelling_serve_closes_listener(anyio_backend: str) -> None:
    async with running(echo) as address, HTTPClient() as client:
        assert (await client.request("GET", url(address))).status == 200
    async with HTTPClient() as client:
        with pytest.raises(ConnectError):
            await client.request("GET", url(address))


async def test_drain_finishes_requests_in_flight_and_closes_idle_connections(
    anyio_backend: str,
) -> None:
    release = anyio.Event()

    async def slow(request: Request, responder: Responder) -> None:
        if request.path == "/slow":
            await responder.start(200, [("content-type", "text/plain")])
            await responder.send(b"first ")
            await release.wait()
            await responder.send(b"last")
            await responder.end()
        else:
            await responder.respond(200, [], b"quick")

    control = ServerControl()
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(partial(serve, slow, control=control))
        async with await anyio.connect_tcp(host, port) as idle, HTTPClient() as client:
            await idle.send(b"GET /quick HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await idle.receive()).startswith(b"HTTP/1.1 200 OK\r\n")
            async with client.stream("GET", url((host, port), "/slow")) as resp:
                chunks = resp.iter_bytes()
                assert await anext(chunks) == b"first "
                assert control.active == 1
                control.drain()
                # the idle connection is closed at once, new ones are refused
                with anyio.fail_after(5):
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await idle.receive()
                with pytest.raises(OSError):
                    await anyio.connect_tcp(host, port)
                release.set()
                assert b"".join([c async for c in chunks]) == b"last"
                # the last response tells the client not to reuse the connection
                assert resp.header("connection") is None  # started before the drain
        with anyio.fail_after(5):
            while control.connections:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


async def test_a_response_started_while_draining_says_connection_close(
    anyio_backend: str,
) -> None:
    started = anyio.Event()
    go = anyio.Event()

    async def handler(request: Request, responder: Responder) -> None:
        started.set()
        await go.wait()
        await responder.respond(201, [], b"made")

    control = ServerControl()
    async with anyio.create_task_group() as tg:
        address = await tg.start(partial(serve, handler, control=control))
        with anyio.fail_after(5):
            sock = await anyio.connect_tcp(*address)
            await sock.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            await started.wait()
            control.drain()
            go.set()
            received = b""
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    received += await sock.receive()
            await sock.aclose()
        assert received.startswith(b"HTTP/1.1 201 Created\r\n")
        assert b"connection: close\r\n" in received
        assert received.endswith(b"made")
        tg.cancel_scope.cancel()


def test_reason_phrases() -> None:
    assert reason_phrase(200) == b"OK"
    assert reason_phrase(503) == b"Service Unavailable"
    assert reason_phrase(508) == b"Loop Detected"
    assert reason_phrase(599) == b""
