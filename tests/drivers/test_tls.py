"""HTTPS: the client checks certificates (system CAs, or a private CA), the server speaks TLS."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio
import pytest
import trustme

from cortex_fsm.drivers.http import (
    ConnectError,
    HTTPClient,
    Request,
    Responder,
    TLSError,
    serve,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1", "localhost"))).configure_cert(context)
    return context


def trusting(ca: trustme.CA, tmp_path: Path) -> ssl.SSLContext:
    """A client context built the way the gateway builds one from ``ca_file``."""
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return ssl.create_default_context(cafile=str(pem))


class Echo:
    def __init__(self) -> None:
        self.peers: list[tuple[str, int] | None] = []

    async def __call__(self, request: Request, responder: Responder) -> None:
        self.peers.append(request.peer)
        body = await request.body()
        if request.path == "/stream":
            await responder.start(200, [("content-type", "text/event-stream")])
            for i in range(3):
                await responder.send(f"data: {i}\n\n".encode())
            await responder.end()
            return
        text = f"{request.method} {request.target} {request.header('authorization')} ".encode()
        await responder.respond(200, [("content-type", "text/plain")], text + body)


@asynccontextmanager
async def tls_server(
    context: ssl.SSLContext | None, handler: Echo
) -> AsyncIterator[tuple[str, int]]:
    async with anyio.create_task_group() as tg:
        address: tuple[str, int] = await tg.start(partial(serve, handler, tls=context))
        try:
            yield address
        finally:
            tg.cancel_scope.cancel()


async def test_https_with_a_private_ca(anyio_backend: str, ca: trustme.CA, tmp_path: Path) -> None:
    echo = Echo()
    client_tls = trusting(ca, tmp_path)
    async with tls_server(server_context(ca), echo) as (host, port), HTTPClient() as client:
        base = f"https://{host}:{port}"
        first = await client.request(
            "POST",
            base + "/x?q=1",
            headers=[("authorization", "Bearer k")],
            body=b"hi",
            tls=client_tls,
        )
        assert (first.status, first.body) == (200, b"POST /x?q=1 Bearer k hi")
        second = await client.request("GET", base + "/y", tls=client_tls)
        assert second.body == b"GET /y None "
        # Kept alive: both requests came over one TLS connection.
        assert echo.peers[0] == echo.peers[1]
        async with client.stream("GET", base + "/stream", tls=client_tls) as resp:
            chunks = [c async for c in resp.iter_bytes()]
        assert b"".join(chunks) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        # The same server under its name: the certificate names localhost too.
        named = await client.request("GET", f"https://localhost:{port}/z", tls=client_tls)
        assert named.status == 200


async def test_an_untrusted_certificate_is_refused(anyio_backend: str, ca: trustme.CA) -> None:
    async with tls_server(server_context(ca), Echo()) as (host, port), HTTPClient() as client:
        # No context: the system's CAs, which do not know this private CA.
        with pytest.raises(TLSError, match="certificate verify failed"):
            await client.request("GET", f"https://{host}:{port}/")


async def test_a_certificate_for_another_name_is_refused(
    anyio_backend: str, ca: trustme.CA, tmp_path: Path
) -> None:
    context = server_context(ca, "gpu-a.example")
    async with tls_server(context, Echo()) as (host, port), HTTPClient() as client:
        with pytest.raises(TLSError, match=r"certificate verify failed: .*match"):
            await client.request("GET", f"https://{host}:{port}/", tls=trusting(ca, tmp_path))


async def test_https_to_a_plain_http_server_is_a_tls_error(
    anyio_backend: str, ca: trustme.CA, tmp_path: Path
) -> None:
    async with tls_server(None, Echo()) as (host, port), HTTPClient() as client:
        with pytest.raises(TLSError) as caught:
            await client.request("GET", f"https://{host}:{port}/", tls=trusting(ca, tmp_path))
        assert isinstance(caught.value, ConnectError)
        # ... and the plain server is still fine.
        assert (await client.request("GET", f"http://{host}:{port}/")).status == 200


async def test_a_plain_client_cannot_talk_to_a_tls_server(
    anyio_backend: str, ca: trustme.CA
) -> None:
    echo = Echo()
    async with tls_server(server_context(ca), echo) as (host, port):
        with anyio.fail_after(5):
            async with await anyio.connect_tcp(host, port) as stream:
                await stream.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                received = b""
                try:
                    while True:
                        received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
        assert not received.startswith(b"HTTP/1.1 200")
        assert echo.peers == []
