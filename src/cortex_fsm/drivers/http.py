"""HTTP/1.1 client and server over anyio byte streams, framed by h11.

This is the only HTTP machinery the drivers use: the poller and neuron client
talk to neurons through :class:`HTTPClient`, the gateway and the fake neuron
answer through :func:`serve`. It runs on asyncio and on trio.

Rules that hold everywhere in this module:

* **Timeouts belong to the caller.** Nothing here takes a ``timeout=``
  argument; wrap a call in ``anyio.fail_after`` (which raises the builtin
  ``TimeoutError``) or ``anyio.move_on_after``. The one exception is the
  server's own header-read timeout (:attr:`Limits.header_timeout`), a server
  setting that protects it from clients that connect and stall.
* **Foreign exceptions stop at the boundary.** Socket errors, anyio stream
  errors and h11 protocol errors are translated into the :class:`HTTPError`
  hierarchy below. Cancellation is never caught: it always propagates.
* **Structured concurrency.** The server runs one task per connection inside
  a task group; cancelling the scope that runs :func:`serve` closes the
  listener and every connection.

Exceptions::

    HTTPError                      base of everything raised here
    +-- ConnectError               refused, unresolvable, unreachable, cannot listen
    |   +-- TLSError               the TLS handshake failed (an untrusted certificate...)
    +-- RemoteProtocolError        the peer sent something that is not HTTP/1.1
    +-- ConnectionClosedError      the peer went away (mid-message, reset, broken pipe)
    +-- TooLarge
    |   +-- HeadersTooLarge        header section over Limits.max_header_bytes
    |   +-- BodyTooLarge           body over Limits.max_body_bytes
    +-- UsageError (ValueError)    the caller asked for something HTTP cannot carry
    +-- InvalidJSON (ValueError)   Response.json() on a body that is not JSON

Client::

    async with HTTPClient(limits=Limits()) as client:
        resp = await client.request("GET", "http://10.0.0.5:8080/models")
        resp.status, resp.headers, resp.body, resp.json(), resp.header("x-a")
        resp = await client.request("GET", "https://gpu-a.lan/health", tls=context)

        async with client.stream("POST", url, headers=[...], body=chunks) as resp:
            async for chunk in resp.iter_bytes(): ...      # or: await resp.read()

``body`` is ``bytes`` (sent with ``content-length``), an async iterable of
``bytes`` (sent chunked unless the caller gives a ``content-length``) or
``None``. Response headers are ``(lowercased name, value)`` string pairs.
``https://`` URLs are spoken over TLS with the certificate and host name
checked: against ``tls`` (an ``ssl.SSLContext``, e.g. from
``ssl.create_default_context(cafile=...)`` to trust a private CA) when
given, else against the system's trusted CAs. A handshake that fails is a
:class:`TLSError`. Idle connections are kept per ``(host, port, TLS context)``, at most
:attr:`Limits.max_keepalive_per_host` of them. A connection goes back to the
pool only when its response was read to the end and both sides agree to keep
it alive; anything else (an unread body, an error, a cancellation) closes it.
A pooled connection that turns out to be dead is replaced transparently: it is
probed before reuse, and if it still fails before a single byte of the
response arrived, the request is sent once more on a fresh connection,
whatever the method: a server that closes a kept-alive connection without
answering is taken not to have acted on the request. This happens only when
the body is ``bytes`` or ``None``, which can be sent again.

:attr:`Limits.max_body_bytes` bounds what :meth:`StreamingResponse.read` (and
so :meth:`HTTPClient.request`) accumulates; :meth:`StreamingResponse.iter_bytes`
is not bounded, so long event streams can be relayed.

Server::

    async def handler(request: Request, responder: Responder) -> None:
        data = await request.body()              # or: async for c in request.iter_body()
        await responder.respond(200, [("content-type", "text/plain")], b"hi")
        # or: await responder.start(200, headers)
        #     await responder.send(b"..."); await responder.end()

    host, port = await task_group.start(partial(serve, handler, port=0))
    # serve(..., tls=context) speaks TLS (HTTPS) with a server-side ssl.SSLContext

Every status line the server sends carries its reason phrase
(:func:`reason_phrase`). A :class:`ServerControl` passed to :func:`serve`
drains it: no more connections are accepted, idle keep-alive connections are
closed, requests in progress finish, and :func:`serve` returns once no
connection is left (:attr:`ServerControl.active` counts the requests being
handled).

Server-generated answers (each closes the connection): a malformed request
gets 400, an oversized header section 431, a body over the limit 413 (when
the handler has not started its response yet), a request head that does not
arrive within :attr:`Limits.header_timeout` 408 (an idle keep-alive
connection is simply closed), a handler that raises before starting its
response 500. A handler that raises after starting its response gets its
connection aborted, so the client sees a broken message rather than a short
one that looks complete. After the handler returns, an unread rest of the
request body is drained (within the header timeout) so the connection can be
kept alive. The bodies of the server's own answers come from
``error_response(status, message) -> (headers, body)``, by default
:func:`default_error_response` (an OpenAI-style JSON error envelope).

Reading a request body and sending a response have no built-in timeout: a
handler that must not wait forever on a slow client wraps those calls in
``anyio.fail_after`` itself. ``Responder.abort()`` closes the connection at
once, without (the rest of) a response.
"""

from __future__ import annotations

import contextlib
import functools
import http as _stdlib_http
import json
import logging
import re
import select
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final, NoReturn, TypeAlias, cast
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
import h11
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

from ..wire import load_json

__all__ = [
    "BodyTooLarge",
    "ConnectError",
    "ConnectionClosedError",
    "ErrorRenderer",
    "HTTPClient",
    "HTTPError",
    "Handler",
    "HeaderPairs",
    "HeadersTooLarge",
    "InvalidJSON",
    "Limits",
    "RemoteProtocolError",
    "Request",
    "RequestBody",
    "Responder",
    "ServerControl",
    "Response",
    "StreamingResponse",
    "TLSError",
    "TooLarge",
    "UsageError",
    "default_error_response",
    "reason_phrase",
    "serve",
]

_log = logging.getLogger(__name__)

HeaderPairs: TypeAlias = tuple[tuple[str, str], ...]
"""Headers as received: ``(lowercased name, value)`` pairs, in wire order."""

RequestBody: TypeAlias = bytes | AsyncIterable[bytes] | None
"""What a client request may carry."""

_READ_SIZE: Final = 65536
_VERSIONS: Final = (b"1.1", b"1.0")
#: h11 quotes offending bytes as ``bytearray(b'...')``; messages show just ``b'...'``.
_BYTEARRAY: Final = re.compile(r"bytearray\((b'[^']*'|b\"[^\"]*\")\)")
_TARGET_CACHE_SIZE: Final = 1024
# After a server-generated error we stop writing, then read and discard what
# the client is still sending for a short while before closing. Closing a
# socket with unread input makes the kernel send a reset, which can destroy
# the error response before the client reads it.
_LINGER_SECONDS: Final = 1.0
_LINGER_MAX_BYTES: Final = 1 << 20
# Translated at every stream operation (TimeoutError is an OSError, but the
# TimeoutError of anyio.fail_after is raised outside this module, at the
# caller's scope, after the cancellation we never catch).
_IO_ERRORS: Final = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


# --------------------------------------------------------------------------
# Exceptions


class HTTPError(Exception):
    """Base class of every error raised by this module."""


class ConnectError(HTTPError):
    """No connection: refused, unresolvable, unreachable (or cannot listen)."""


class TLSError(ConnectError):
    """The TLS handshake failed: an untrusted or mismatched certificate, or no TLS at all."""


class RemoteProtocolError(HTTPError):
    """The peer sent bytes that are not valid HTTP/1.1."""


class ConnectionClosedError(HTTPError):
    """The peer closed or reset the connection before the message was complete."""


class TooLarge(HTTPError):
    """A message exceeded one of the configured :class:`Limits`."""


class HeadersTooLarge(TooLarge):
    """The header section exceeded :attr:`Limits.max_header_bytes`."""


class BodyTooLarge(TooLarge):
    """The body exceeded :attr:`Limits.max_body_bytes`."""


class UsageError(HTTPError, ValueError):
    """The caller asked for something HTTP cannot carry (bad URL, header, status)."""


class InvalidJSON(HTTPError, ValueError):
    """:meth:`Response.json` was called on a body that is not valid JSON."""


# --------------------------------------------------------------------------
# Configuration


@attrs.frozen(kw_only=True)
class Limits:
    """Size limits and the server's header-read timeout."""

    max_header_bytes: int = attrs.field(default=16 * 1024, validator=attrs.validators.ge(256))
    """Request line / status line plus all header fields, in bytes."""
    max_body_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=attrs.validators.ge(0))
    """Largest body read as a whole (server: any request body; client: ``read()``)."""
    header_timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    """Server only: seconds allowed for a request head to arrive (also the idle
    keep-alive timeout between requests)."""
    max_keepalive_per_host: int = attrs.field(default=8, validator=attrs.validators.ge(0))
    """Client only: idle connections kept per ``(host, port)``."""


def _coerce_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    try:
        return [(name.encode("ascii"), value.encode("latin-1")) for name, value in headers]
    except (UnicodeEncodeError, AttributeError, ValueError, TypeError) as exc:
        raise UsageError(f"header cannot be sent: {exc}") from None


def _decode_headers(headers: Sequence[tuple[bytes, bytes]]) -> HeaderPairs:
    return tuple(
        (name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in headers
    )


def _tls_reason(exc: ssl.SSLError) -> str:
    """``certificate verify failed: self-signed certificate`` rather than the whole repr."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    return exc.reason or str(exc)


def _find_header(headers: HeaderPairs, name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers:
        if key == wanted:
            return value
    return None


def _has_header(headers: Sequence[tuple[str, str]], name: str) -> bool:
    return any(key.lower() == name for key, _ in headers)


def _origin_form(target: str) -> str:
    """RFC 9112 3.2.2: a server accepts ``http://host/path?q`` and uses ``/path?q``."""
    if target[:7].lower() != "http://" and target[:8].lower() != "https://":
        return target
    try:
        parts = urlsplit(target)
    except ValueError:
        return target  # unusable: it will match no route
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _find_raw(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bool:
    """Whether h11's (lower-cased) ``headers`` hold ``name``."""
    return any(key == name for key, _ in headers)


def _head_size(first_line: int, headers: Sequence[tuple[bytes, bytes]]) -> int:
    return first_line + sum(len(name) + len(value) + 4 for name, value in headers)


# --------------------------------------------------------------------------
# One h11 connection over one anyio stream, with translated errors


class _Wire:
    """An h11 connection bound to a byte stream; every error leaves translated."""

    def __init__(self, stream: anyio.abc.ByteStream, role: Any, limits: Limits) -> None:
        self.stream = stream
        self.limits = limits
        self.h11 = h11.Connection(role, max_incomplete_event_size=limits.max_header_bytes)
        self.eof = False
        self.broken = False
        self.bytes_received = 0
        """Bytes received since the current request/response cycle started."""

    async def receive_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._translate_protocol_error(exc) from None
            if event is not h11.NEED_DATA:
                return cast("h11.Event | type[h11.PAUSED]", event)
            data = await self._receive()
            try:
                self.h11.receive_data(data)
            except RuntimeError as exc:  # h11 refuses data after EOF
                self.broken = True
                raise ConnectionClosedError("connection closed") from exc

    def _translate_protocol_error(self, exc: h11.RemoteProtocolError) -> HTTPError:
        if self.eof:
            self.broken = True
            return ConnectionClosedError(f"peer closed the connection mid-message ({exc})")
        if exc.error_status_hint == 431:
            return HeadersTooLarge(f"header section exceeds {self.limits.max_header_bytes} bytes")
        return RemoteProtocolError(_BYTEARRAY.sub(r"\1", str(exc)))

    async def _receive(self) -> bytes:
        if self.eof:
            return b""
        try:
            data = await self.stream.receive(_READ_SIZE)
        except anyio.EndOfStream:
            self.eof = True
            return b""
        except _IO_ERRORS as exc:
            self.broken = True
            raise ConnectionClosedError(f"connection lost while reading: {exc!r}") from exc
        self.bytes_received += len(data)
        return data

    async def send_event(self, event: h11.Event) -> None:
        await self.send_events((event,))

    async def send_events(self, events: Sequence[h11.Event]) -> None:
        """Send several events with one write (fewer syscalls and wake-ups)."""
        if self.broken:
            raise ConnectionClosedError("connection is no longer usable")
        try:
            data = b"".join([self.h11.send(event) or b"" for event in events])
        except h11.LocalProtocolError as exc:
            self.broken = True
            raise UsageError(str(exc)) from None
        if data:
            try:
                await self.stream.send(data)
            except _IO_ERRORS as exc:
                self.broken = True
                raise ConnectionClosedError(f"connection lost while writing: {exc!r}") from exc

    def next_cycle(self) -> None:
        self.h11.start_next_cycle()
        self.bytes_received = len(self.h11.trailing_data[0])

    async def aclose(self) -> None:
        self.broken = True
        await _aclose_quietly(self.stream)

    async def linger_and_close(self) -> None:
        """Close after an error answer, letting the client read it first."""
        self.broken = True
        try:
            with anyio.move_on_after(_LINGER_SECONDS):
                with contextlib.suppress(NotImplementedError):  # TLS streams have no half-close
                    await self.stream.send_eof()
                drained = 0
                while drained < _LINGER_MAX_BYTES:
                    drained += len(await self.stream.receive(_READ_SIZE))
        except (anyio.EndOfStream, *_IO_ERRORS):
            pass
        finally:
            await _aclose_quietly(self.stream)


async def _aclose_quietly(stream: anyio.abc.AsyncResource) -> None:
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(*_IO_ERRORS):
            await stream.aclose()


# --------------------------------------------------------------------------
# Client


@attrs.frozen(kw_only=True)
class Response:
    """A complete response, as returned by :meth:`HTTPClient.request`."""

    status: int
    headers: HeaderPairs
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        return _find_header(self.headers, name)

    def json(self) -> Any:
        """The body decoded as JSON; raises :class:`InvalidJSON` if it is not."""
        try:
            return load_json(self.body)
        except ValueError as exc:
            preview = self.body[:80]
            raise InvalidJSON(
                f"response body (HTTP {self.status}) is not JSON: {exc}; starts with {preview!r}"
            ) from None


class _ClientConnection(_Wire):
    def __init__(self, stream: anyio.abc.ByteStream, key: _PoolKey, limits: Limits) -> None:
        super().__init__(stream, h11.CLIENT, limits)
        self.key = key
        self.socket_stream = stream
        # Looked up once: the probe below runs before every reuse.
        self._raw_socket = stream.extra(SocketAttribute.raw_socket, None)

    def looks_alive(self) -> bool:
        """Probe an idle pooled connection without blocking.

        An idle HTTP/1.1 connection must have nothing to read: readable means
        the server closed it (EOF or reset) or sent garbage; both disqualify.
        """
        if self.broken or self.eof or self.h11.trailing_data != (b"", False):
            return False
        sock = self._raw_socket
        if sock is None:
            return True  # cannot probe; rely on the retry
        try:
            fd = sock.fileno()
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                return not poller.poll(0)
            readable, _, _ = select.select([fd], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def reusable(self) -> bool:
        return (
            not self.broken and self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE
        )


class StreamingResponse:
    """A response whose body is read on demand, inside :meth:`HTTPClient.stream`."""

    def __init__(self, conn: _ClientConnection, head: h11.Response, limits: Limits) -> None:
        self._conn = conn
        self._limits = limits
        self.status: int = head.status_code
        self.reason: str = head.reason.decode("latin-1")
        self.headers: HeaderPairs = _decode_headers(head.headers)
        self._done = False

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        return _find_header(self.headers, name)

    @property
    def complete(self) -> bool:
        """Whether the whole body has been received."""
        return self._done

    def iter_bytes(self) -> AsyncIterator[bytes]:
        """Iterate over the (rest of the) body, chunk by chunk, as it arrives."""
        return _ChunkIterator(self._next_chunk)

    async def read(self) -> bytes:
        """Read the rest of the body; raises :class:`BodyTooLarge` over the limit."""
        limit = self._limits.max_body_bytes
        declared = self.header("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"response body of {declared} bytes exceeds {limit}")
        parts: list[bytes] = []
        total = 0
        while (chunk := await self._next_chunk()) is not None:
            total += len(chunk)
            if total > limit:
                raise BodyTooLarge(f"response body exceeds {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def _next_chunk(self) -> bytes | None:
        while not self._done:
            event = await self._conn.receive_event()
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
            else:
                self._conn.broken = True
                raise RemoteProtocolError(f"unexpected {type(event).__name__} in response body")
        return None


class _ChunkIterator:
    """Async iterator over a pull function (not a generator: nothing to finalize)."""

    def __init__(self, pull: Callable[[], Awaitable[bytes | None]]) -> None:
        self._pull = pull

    def __aiter__(self) -> _ChunkIterator:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._pull()
        if chunk is None:
            raise StopAsyncIteration
        return chunk


@attrs.frozen
class _Target:
    host: str
    port: int
    target: str
    host_header: str
    tls: bool = False


_PoolKey: TypeAlias = tuple[str, int, ssl.SSLContext | None]
"""Idle connections are kept per ``(host, port, TLS context or None)``."""
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def _parse_url(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"invalid URL {url!r}: {exc}") from None
    default = _DEFAULT_PORTS.get(parts.scheme)
    if default is None:
        raise UsageError(f"only http:// and https:// URLs are supported, got {url!r}")
    host = parts.hostname
    if not host:
        raise UsageError(f"URL has no host: {url!r}")
    port = default if port is None else port
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    return _Target(host, port, target, host_header, tls=parts.scheme == "https")


class HTTPClient:
    """An HTTP/1.1 client with a small keep-alive pool per ``(host, port)``.

    Safe to share between tasks: each request takes a connection of its own.
    Use as an async context manager (or call :meth:`aclose`) so idle pooled
    connections get closed.
    """

    def __init__(self, *, limits: Limits | None = None) -> None:
        self.limits = limits if limits is not None else Limits()
        self._idle: dict[_PoolKey, list[_ClientConnection]] = {}
        self._default_tls: ssl.SSLContext | None = None
        self._targets: dict[str, _Target] = {}  # parsed URLs (a client talks to few)
        self._closed = False

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every idle connection; the client cannot be used afterwards."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await conn.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: RequestBody = None,
        tls: ssl.SSLContext | None = None,
    ) -> Response:
        """Send a request and read the whole response (bounded by ``max_body_bytes``).

        ``tls``: the context that checks an ``https://`` server (default: the
        system's trusted CAs); unused for ``http://``.
        """
        async with self.stream(method, url, headers=headers, body=body, tls=tls) as resp:
            data = await resp.read()
        return Response(status=resp.status, headers=resp.headers, body=data)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: RequestBody = None,
        tls: ssl.SSLContext | None = None,
    ) -> AsyncIterator[StreamingResponse]:
        """Send a request; yield the response as soon as its head has arrived.

        The body is read inside the ``async with`` block. Leaving the block
        before the body is complete closes the connection.
        """
        if self._closed:
            raise UsageError("HTTPClient is closed")
        target = self._targets.get(url)
        if target is None:
            target = _parse_url(url)
            if len(self._targets) >= _TARGET_CACHE_SIZE:
                self._targets.clear()
            self._targets[url] = target
        request = self._build_request(method, target, headers, body)
        replayable = body is None or isinstance(body, bytes)
        context = None
        if target.tls:
            context = tls if tls is not None else self._system_tls()
        key = (target.host, target.port, context)

        conn, reused = await self._acquire(key)
        try:
            try:
                head = await self._exchange(conn, request, body)
            except ConnectionClosedError:
                if not (reused and replayable and conn.bytes_received == 0):
                    raise
                # The server closed the pooled connection while it sat idle:
                # nothing of a response came back, so send again, once, fresh.
                await conn.aclose()
                conn = await self._connect(key)
                head = await self._exchange(conn, request, body)
        except BaseException:
            await conn.aclose()
            raise

        response = StreamingResponse(conn, head, self.limits)
        try:
            yield response
        finally:
            if not (response.complete and self._release(conn)):
                await conn.aclose()

    def _build_request(
        self,
        method: str,
        target: _Target,
        headers: Sequence[tuple[str, str]],
        body: RequestBody,
    ) -> h11.Request:
        extra: list[tuple[str, str]] = []
        if not _has_header(headers, "host"):
            extra.append(("host", target.host_header))
        framed = _has_header(headers, "content-length") or _has_header(headers, "transfer-encoding")
        if not framed:
            if isinstance(body, bytes):
                extra.append(("content-length", str(len(body))))
            elif body is not None:
                extra.append(("transfer-encoding", "chunked"))
            elif method.upper() in ("POST", "PUT", "PATCH"):
                extra.append(("content-length", "0"))
        try:
            return h11.Request(
                method=method,
                target=target.target,
                headers=_coerce_headers([*extra, *headers]),
            )
        except h11.LocalProtocolError as exc:
            raise UsageError(f"request cannot be sent: {exc}") from None
        except (UnicodeEncodeError, TypeError) as exc:
            raise UsageError(f"request cannot be sent: {exc}") from None

    def _system_tls(self) -> ssl.SSLContext:
        if self._default_tls is None:
            self._default_tls = ssl.create_default_context()
        return self._default_tls

    async def _acquire(self, key: _PoolKey) -> tuple[_ClientConnection, bool]:
        pool = self._idle.get(key)
        while pool:
            conn = pool.pop()
            if conn.looks_alive():
                return conn, True
            await conn.aclose()
        return await self._connect(key), False

    async def _connect(self, key: _PoolKey) -> _ClientConnection:
        host, port, context = key
        stream: anyio.abc.ByteStream
        try:
            if context is None:
                stream = await anyio.connect_tcp(host, port)
            else:
                # Not "standard compatible": HTTP frames its own messages, and
                # many servers close without a TLS close_notify.
                stream = await anyio.connect_tcp(
                    host,
                    port,
                    ssl_context=context,
                    tls_hostname=host,
                    tls_standard_compatible=False,
                )
        except ssl.SSLError as exc:
            raise TLSError(f"TLS handshake with {host}:{port} failed: {_tls_reason(exc)}") from exc
        except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            raise TLSError(f"{host}:{port} closed the connection during the TLS handshake") from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return _ClientConnection(stream, key, self.limits)

    def _release(self, conn: _ClientConnection) -> bool:
        """Put ``conn`` back in the pool if it can be reused; return whether it was."""
        if self._closed or not conn.reusable():
            return False
        pool = self._idle.setdefault(conn.key, [])
        if len(pool) >= self.limits.max_keepalive_per_host:
            return False
        conn.next_cycle()
        pool.append(conn)
        return True

    async def _exchange(
        self, conn: _ClientConnection, request: h11.Request, body: RequestBody
    ) -> h11.Response:
        try:
            await self._send_request(conn, request, body)
        except ConnectionClosedError as send_error:
            # The server may have answered early (say 413) and closed its end;
            # its answer is more useful than our broken pipe.
            try:
                return await self._read_head(conn)
            except HTTPError:
                raise send_error from None
        return await self._read_head(conn)

    async def _send_request(
        self, conn: _ClientConnection, request: h11.Request, body: RequestBody
    ) -> None:
        if body is None or isinstance(body, bytes):
            # Head, body and end in one write.
            events: list[h11.Event] = [request]
            if body:
                events.append(h11.Data(data=body))
            events.append(h11.EndOfMessage())
            await conn.send_events(events)
            return
        await conn.send_event(request)
        async for chunk in body:
            if chunk:
                await conn.send_event(h11.Data(data=chunk))
        await conn.send_event(h11.EndOfMessage())

    async def _read_head(self, conn: _ClientConnection) -> h11.Response:
        while True:
            event = await conn.receive_event()
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and friends
            if isinstance(event, h11.Response):
                size = _head_size(len(event.reason) + 13, event.headers)
                if size > self.limits.max_header_bytes:
                    conn.broken = True
                    raise HeadersTooLarge(
                        f"response header section of {size} bytes exceeds "
                        f"{self.limits.max_header_bytes}"
                    )
                return event
            if isinstance(event, h11.ConnectionClosed):
                conn.broken = True
                raise ConnectionClosedError("connection closed before a response arrived")
            conn.broken = True
            raise RemoteProtocolError(f"unexpected {type(event).__name__} instead of a response")


# --------------------------------------------------------------------------
# Server


class Request:
    """An incoming request; the body is read on demand by the handler."""

    def __init__(self, conn: _ServerConnection, head: h11.Request) -> None:
        self._conn = conn
        self.method: str = head.method.decode("ascii")
        self.target: str = _origin_form(head.target.decode("latin-1"))
        """Path and query as sent, e.g. ``/models/org%2FBig/endpoint?x=1`` (an
        absolute-form target, ``http://host/path``, reduced to its path and query)."""
        self.headers: HeaderPairs = _decode_headers(head.headers)
        self.http_version: str = head.http_version.decode("ascii")
        self.peer: tuple[str, int] | None = conn.peer
        """The client's ``(address, port)`` when known."""
        self._received = 0
        self._done = False

    @property
    def path(self) -> str:
        """The target without its query string (still percent-encoded)."""
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        """The query string without ``?`` (empty when absent)."""
        return self.target.partition("?")[2]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        return _find_header(self.headers, name)

    @property
    def error_status(self) -> int | None:
        """The status the server answers on its own because reading this request
        failed (413 for a body over the limit, 400 for a malformed one), if so."""
        return self._conn.failure_status

    async def body(self) -> bytes:
        """Read the whole (remaining) body; :class:`BodyTooLarge` over the limit."""
        parts: list[bytes] = []
        while (chunk := await self._next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def iter_body(self) -> AsyncIterator[bytes]:
        """Iterate over the body as it arrives (also bounded by the limit)."""
        return _ChunkIterator(self._next_chunk)

    async def _next_chunk(self) -> bytes | None:
        conn = self._conn
        limit = conn.limits.max_body_bytes
        while not self._done:
            if conn.failure is not None:
                raise conn.failure
            if self._received == 0:
                declared = self.header("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    conn.fail(
                        413, BodyTooLarge(f"request body of {declared} bytes exceeds {limit}")
                    )
                if conn.h11.they_are_waiting_for_100_continue:
                    await conn.send_event(h11.InformationalResponse(status_code=100, headers=[]))
            try:
                event = await conn.receive_event()
            except (RemoteProtocolError, HeadersTooLarge) as exc:
                conn.fail(400, RemoteProtocolError(f"malformed request body: {exc}"))
            except ConnectionClosedError as exc:
                conn.fail(None, exc)
            if isinstance(event, h11.Data):
                self._received += len(event.data)
                if self._received > limit:
                    conn.fail(413, BodyTooLarge(f"request body exceeds {limit} bytes"))
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
            else:
                conn.fail(400, RemoteProtocolError(f"unexpected {type(event).__name__}"))
        return None


class Responder:
    """Sends the response to one :class:`Request`.

    It keeps what was sent, for access logs: :attr:`status` and
    :attr:`headers` once started, and :attr:`bytes_sent` (body bytes).
    """

    def __init__(self, conn: _ServerConnection, request_method: str) -> None:
        self._conn = conn
        self._head_only = request_method == "HEAD"
        self.started = False
        self.ended = False
        self.aborted = False
        self.status: int | None = None
        """The status sent, once started."""
        self.headers: Sequence[tuple[str, str]] = ()
        """The headers sent, once started."""
        self.bytes_sent = 0
        """Body bytes handed to the connection so far."""

    async def start(self, status: int, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Send the status line and headers.

        Without ``content-length`` (or ``transfer-encoding``) the body is sent
        chunked, so it can be streamed with :meth:`send`.
        """
        await self._conn.send_event(self._head(status, headers))

    def _head(self, status: int, headers: Sequence[tuple[str, str]]) -> h11.Response:
        if self.started or self.aborted:
            raise UsageError("response already started")
        headers = list(headers)
        framed = _has_header(headers, "content-length") or _has_header(headers, "transfer-encoding")
        if not framed and not self._head_only and status >= 200 and status not in (204, 304):
            headers.append(("transfer-encoding", "chunked"))
        if self._conn.closing and not _has_header(headers, "connection"):
            headers.append(("connection", "close"))  # draining: this is the last response
        try:
            event = h11.Response(
                status_code=status,
                headers=_coerce_headers(headers),
                reason=_REASONS.get(status, b""),
            )
        except h11.LocalProtocolError as exc:
            raise UsageError(f"response cannot be sent: {exc}") from None
        self.started = True
        self.status = status
        self.headers = headers
        return event

    async def send(self, chunk: bytes) -> None:
        """Send a piece of the body (raises :class:`ConnectionClosedError` if the
        client has gone)."""
        if not self.started or self.ended:
            raise UsageError("send() outside start()...end()")
        if self.aborted:
            raise ConnectionClosedError("response was aborted")
        if chunk and not self._head_only:
            await self._conn.send_event(h11.Data(data=chunk))
            self.bytes_sent += len(chunk)

    async def end(self) -> None:
        """Finish the response."""
        if not self.started:
            raise UsageError("end() before start()")
        if self.aborted:
            raise ConnectionClosedError("response was aborted")
        if not self.ended:
            self.ended = True
            await self._conn.send_event(h11.EndOfMessage())

    async def respond(
        self, status: int, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> None:
        """Send a complete response with a ``content-length``."""
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("content-length", str(len(body))))
        # Head, body and end in one write.
        events: list[h11.Event] = [self._head(status, headers)]
        if body and not self._head_only:
            events.append(h11.Data(data=body))
        self.ended = True
        events.append(h11.EndOfMessage())
        await self._conn.send_events(events)
        if not self._head_only:
            self.bytes_sent += len(body)

    async def abort(self) -> None:
        """Close the connection at once, without (the rest of) a response."""
        self.aborted = True
        await self._conn.aclose()


def _reason_phrases() -> dict[int, bytes]:
    phrases = {status.value: status.phrase.encode("ascii") for status in _stdlib_http.HTTPStatus}
    phrases[508] = b"Loop Detected"
    return phrases


_REASONS: Final = _reason_phrases()


def reason_phrase(status: int) -> bytes:
    """The reason phrase of a status line (RFC 9110's name; ``b""`` for an unnamed status)."""
    return _REASONS.get(status, b"")


ErrorRenderer: TypeAlias = Callable[[int, str], tuple[Sequence[tuple[str, str]], bytes]]
"""``(status, message) -> (headers, body)`` for server-generated error answers."""

Handler: TypeAlias = Callable[[Request, Responder], Awaitable[None]]
"""``async def handler(request, responder) -> None``."""

_ERROR_CODES: Final = {
    400: "bad_request",
    408: "request_timeout",
    413: "request_too_large",
    431: "request_header_fields_too_large",
    500: "internal_error",
    505: "http_version_not_supported",
}


def default_error_response(status: int, message: str) -> tuple[Sequence[tuple[str, str]], bytes]:
    """An OpenAI-style ``{"error": {"message", "type", "code"}}`` JSON body."""
    envelope = {
        "error": {
            "message": message,
            "type": "invalid_request_error" if status < 500 or status == 505 else "api_error",
            "code": _ERROR_CODES.get(status, f"http_{status}"),
        }
    }
    return [("content-type", "application/json")], json.dumps(envelope).encode()


class ServerControl:
    """Drains a running :func:`serve` (pass one in as ``control``).

    :meth:`drain` stops accepting connections and closes the listening
    sockets, closes every connection that is waiting for a request, and lets
    requests in progress finish (a response started after the drain began
    carries ``connection: close``); each connection closes when its request
    is done, and :func:`serve` returns once none is left. The caller bounds
    how long that may take (cancel the scope that runs :func:`serve`).
    """

    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        """Requests being handled right now."""
        self._connections: set[_ServerConnection] = set()
        self._accepting: anyio.CancelScope | None = None

    @property
    def connections(self) -> int:
        """Open client connections."""
        return len(self._connections)

    def drain(self) -> None:
        """Stop accepting; finish what is in progress; then :func:`serve` returns."""
        if self.draining:
            return
        self.draining = True
        if self._accepting is not None:
            self._accepting.cancel()
        for conn in list(self._connections):
            conn.close_if_idle()


class _ServerConnection(_Wire):
    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        handler: Handler,
        limits: Limits,
        render_error: ErrorRenderer,
        control: ServerControl,
    ) -> None:
        super().__init__(stream, h11.SERVER, limits)
        self.handler = handler
        self.render_error = render_error
        self.control = control
        self._waiting: anyio.CancelScope | None = None
        self.peer: tuple[str, int] | None = None
        with contextlib.suppress(Exception):
            address = stream.extra(SocketAttribute.remote_address)
            if isinstance(address, tuple):
                self.peer = (str(address[0]), int(address[1]))
        self.failure: HTTPError | None = None
        self.failure_status: int | None = None

    @property
    def closing(self) -> bool:
        """The server is draining: this connection serves no further request."""
        return self.control.draining

    def close_if_idle(self) -> None:
        """Close now if waiting for a request of which nothing has arrived yet."""
        waiting = self._waiting
        if (
            waiting is not None
            and self.h11.their_state is h11.IDLE
            and not self.h11.trailing_data[0]
        ):
            waiting.cancel()

    def fail(self, status: int | None, error: HTTPError) -> NoReturn:
        """Record why reading the request failed (and what to answer), then raise."""
        self.broken = self.broken or status is None
        self.failure, self.failure_status = error, status
        raise error

    async def run(self) -> None:
        while True:
            head = await self._read_head()
            if head is None:
                return
            if not await self._handle(head) or self.control.draining:
                return
            self.next_cycle()

    async def _read_head(self) -> h11.Request | None:
        error: tuple[int, str] | None = None
        with anyio.move_on_after(self.limits.header_timeout) as scope:
            self._waiting = scope
            if self.control.draining:
                self.close_if_idle()
            try:
                event = await self.receive_event()
            except HeadersTooLarge as exc:
                error = (431, str(exc))
            except RemoteProtocolError as exc:
                error = (400, f"malformed request: {exc}")
            except ConnectionClosedError:
                return None
            finally:
                self._waiting = None
        if scope.cancelled_caught:
            if self.h11.their_state is h11.IDLE and not self.h11.trailing_data[0]:
                return None  # idle keep-alive connection: just close it
            error = (408, "request head not received in time")
        elif error is None:
            if isinstance(event, h11.Request):
                size = _head_size(len(event.method) + len(event.target) + 11, event.headers)
                if size > self.limits.max_header_bytes:
                    error = (431, f"header section exceeds {self.limits.max_header_bytes} bytes")
                elif event.http_version not in _VERSIONS:
                    shown = event.http_version.decode("ascii", "replace")
                    error = (505, f"HTTP/{shown} is not supported (HTTP/1.1 and 1.0 are)")
                elif _find_raw(event.headers, b"transfer-encoding") and _find_raw(
                    event.headers, b"content-length"
                ):
                    # RFC 9112 6.1: a message with both is a smuggling risk; refuse it.
                    error = (400, "malformed request: both Content-Length and Transfer-Encoding")
                else:
                    return event
            else:
                return None  # ConnectionClosed (or nothing more to read)
        await self._send_error(*error)
        return None

    async def _handle(self, head: h11.Request) -> bool:
        """Run the handler for one request; return whether to keep the connection."""
        request = Request(self, head)
        responder = Responder(self, request.method)
        self.failure = None
        self.failure_status = None
        control = self.control
        control.active += 1
        try:
            return await self._run_handler(request, responder)
        finally:
            control.active -= 1

    async def _run_handler(self, request: Request, responder: Responder) -> bool:
        try:
            await self.handler(request, responder)
        except Exception as exc:
            if responder.aborted:
                return False
            if responder.started:
                _log.warning(
                    "handler failed after starting its response to %s %s; aborting",
                    request.method,
                    request.target,
                    exc_info=not isinstance(exc, ConnectionClosedError),
                )
                await self.aclose()
                return False
            if self.failure is not None:
                if self.failure_status is not None:
                    await self._send_error(self.failure_status, str(self.failure))
                else:
                    await self.aclose()
                return False
            _log.error("handler failed on %s %s", request.method, request.target, exc_info=True)
            await self._send_error(500, "internal error")
            return False
        if responder.aborted or self.broken:
            return False
        if not responder.started:
            if self.failure is not None and self.failure_status is not None:
                await self._send_error(self.failure_status, str(self.failure))
            else:
                _log.error("handler returned without a response to %s", request.target)
                await self._send_error(500, "no response")
            return False
        if not responder.ended:
            try:
                await responder.end()
            except HTTPError:
                return False
        return await self._finish_request(request)

    async def _finish_request(self, request: Request) -> bool:
        """Read what is left of the request body so the connection can be reused."""
        if self.h11.our_state is not h11.DONE:
            return False
        if self.h11.their_state is h11.DONE:
            return True
        if self.h11.they_are_waiting_for_100_continue or self.failure is not None:
            await self.linger_and_close()
            return False
        with anyio.move_on_after(self.limits.header_timeout):
            try:
                while await request._next_chunk() is not None:
                    pass
            except HTTPError:
                await self.linger_and_close()
                return False
            return self.h11.their_state is h11.DONE
        await self.linger_and_close()
        return False

    async def _send_error(self, status: int, message: str) -> None:
        """Answer with a server-generated error (if still possible), then close."""
        with anyio.move_on_after(self.limits.header_timeout):
            try:
                headers, body = self.render_error(status, message)
                headers = [(k, v) for k, v in headers if k.lower() not in _FRAMING]
                headers += [("content-length", str(len(body))), ("connection", "close")]
                if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE) and not self.broken:
                    await self.send_event(
                        h11.Response(
                            status_code=status,
                            headers=_coerce_headers(headers),
                            reason=_REASONS.get(status, b""),
                        )
                    )
                    await self.send_event(h11.Data(data=body))
                    await self.send_event(h11.EndOfMessage())
            except (HTTPError, h11.LocalProtocolError):
                pass
        await self.linger_and_close()


_FRAMING: Final = ("content-length", "transfer-encoding", "connection")


async def _serve_connection(
    handler: Handler,
    limits: Limits,
    render_error: ErrorRenderer,
    control: ServerControl,
    stream: anyio.abc.SocketStream,
    *,
    tls: ssl.SSLContext | None = None,
) -> None:
    connection: anyio.abc.ByteStream = stream
    conn: _ServerConnection | None = None
    try:
        if tls is not None:
            connection = await _tls_handshake(stream, tls, limits)
            if connection is stream:
                return
        conn = _ServerConnection(connection, handler, limits, render_error, control)
        control._connections.add(conn)
        try:
            await conn.run()
        except Exception:
            _log.exception("connection from %s failed", conn.peer)
    finally:
        if conn is not None:
            control._connections.discard(conn)
        await _aclose_quietly(connection)


async def _tls_handshake(
    stream: anyio.abc.SocketStream, context: ssl.SSLContext, limits: Limits
) -> anyio.abc.ByteStream:
    """The server side of a TLS handshake (within the header timeout); ``stream`` if it failed."""
    with anyio.move_on_after(limits.header_timeout):
        try:
            return await TLSStream.wrap(
                stream, server_side=True, ssl_context=context, standard_compatible=False
            )
        except (ssl.SSLError, anyio.EndOfStream, *_IO_ERRORS) as exc:
            _log.debug("TLS handshake failed: %s", exc)
    return stream


async def _accept_loop(
    listener: anyio.abc.SocketListener,
    task_group: anyio.abc.TaskGroup,
    serve_one: Callable[[anyio.abc.SocketStream], Coroutine[Any, Any, None]],
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except anyio.ClosedResourceError:
            return
        except (OSError, anyio.BrokenResourceError) as exc:
            # For example out of file descriptors: back off, keep serving.
            _log.warning("accept failed: %s", exc)
            await anyio.sleep(0.1)
            continue
        task_group.start_soon(serve_one, stream)


async def serve(
    handler: Handler,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: Limits | None = None,
    error_response: ErrorRenderer | None = None,
    control: ServerControl | None = None,
    tls: ssl.SSLContext | None = None,
    task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP/1.1 on ``host:port`` until cancelled, or drained through ``control``.

    Reports the bound ``(host, port)`` through ``task_status`` (use
    ``port=0`` and ``await task_group.start(...)`` to get a free port).
    Raises :class:`ConnectError` if the address cannot be bound. With
    ``tls`` (a server-side ``ssl.SSLContext`` holding a certificate) every
    connection speaks TLS; a handshake that fails or does not finish within
    :attr:`Limits.header_timeout` closes that connection.
    """
    limits = limits if limits is not None else Limits()
    render_error = error_response if error_response is not None else default_error_response
    control = control if control is not None else ServerControl()
    try:
        multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise ConnectError(f"cannot listen on {host}:{port}: {exc}") from exc
    async with multi:
        listeners = [lst for lst in multi.listeners if isinstance(lst, anyio.abc.SocketListener)]
        bound = listeners[0].extra(SocketAttribute.local_address)
        assert isinstance(bound, tuple)
        serve_one = functools.partial(
            _serve_connection, handler, limits, render_error, control, tls=tls
        )
        async with anyio.create_task_group() as connections:
            with anyio.CancelScope() as accepting:
                control._accepting = accepting
                if control.draining:
                    accepting.cancel()
                async with anyio.create_task_group() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(_accept_loop, listener, connections, serve_one)
                    task_status.started((str(bound[0]), int(bound[1])))
            # Draining: refuse new connections at once; the open ones finish.
            control._accepting = None
            for listener in listeners:
                await _aclose_quietly(listener)
