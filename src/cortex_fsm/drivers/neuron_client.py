"""Talking to one neuron's daemon API (docs/semantics.md §1 and §3), over :class:`HTTPClient`.

Nothing here decides anything. The poll fetches (``/discovery``, ``/models``,
``/health``) come back as a :class:`Fetched` value -- the answer or the
reason there is none -- which the poller hands to the engine. The lifecycle
calls (load, unload, endpoint) either succeed or raise :class:`NeuronError`
carrying the *cause* of the failure (:class:`~cortex_fsm.errors.IOCause`);
what the client is told about it is decided by
:func:`cortex_fsm.errors.classify_io_failure`, not here.

Every call goes to an :class:`Upstream`: a node's endpoint with what it takes
to talk to it -- its backend ``kind``, the ``headers`` sent on every call and
the TLS context that checks an ``https://`` endpoint.

Timeouts belong to the caller: wrap a call in ``anyio.fail_after``; the
``TimeoutError`` it raises is the caller's to classify (as a transport failure).
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import attrs

from ..backends import Answer
from ..catalogue import LoadSpec
from ..errors import IOCause, status_cause
from ..wire import load_json
from .http import (
    ConnectError,
    ConnectionClosedError,
    HTTPClient,
    HTTPError,
    RemoteProtocolError,
    Response,
    TLSError,
    TooLarge,
)

__all__ = [
    "LOOPBACK_HOSTS",
    "Fetched",
    "NeuronClient",
    "NeuronError",
    "Upstream",
    "endpoint_path",
    "load_body",
    "rewrite_loopback",
    "transport_reason",
    "url_problem",
]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::1"})
_ALREADY_LOADED = b"already loaded"
_JSON = [("content-type", "application/json")]


@attrs.frozen(slots=True, kw_only=True)
class Fetched:
    """A poll fetch: ``ok`` with the parsed JSON ``body``, or not ``ok`` with an ``error``.

    ``error`` is short and stable (``timeout``, ``connect``, ``tls``, ``closed``,
    ``protocol``, ``too large``, ``status:503``, ``invalid json``) since it
    goes into traces.
    """

    ok: bool
    body: object = None
    error: str = ""

    @classmethod
    def failure(cls, error: str) -> Fetched:
        return cls(ok=False, error=error)


@attrs.frozen(kw_only=True)
class Upstream:
    """How to reach one node: its endpoint, backend kind, headers and TLS context."""

    name: str
    endpoint: str
    """Base URL without a trailing ``/`` (``http://gpu-a.lan:13131``)."""
    kind: str = "neuron"
    headers: tuple[tuple[str, str], ...] = ()
    """Sent on every call to the node: polls, lifecycle calls, forwarded requests."""
    tls: ssl.SSLContext | None = attrs.field(default=None, eq=False)
    """Checks an ``https://`` endpoint's certificate (``None``: the system's CAs)."""

    @classmethod
    def plain(cls, endpoint: str, name: str = "") -> Upstream:
        """A neuron at ``endpoint`` with no headers and the default TLS checks."""
        return cls(name=name or endpoint, endpoint=endpoint.rstrip("/"))

    def with_headers(self, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` followed by this node's own."""
        return [*headers, *self.headers]


class NeuronError(Exception):
    """A lifecycle call failed; ``cause`` says why, ``status`` is the HTTP status if any."""

    def __init__(self, cause: IOCause, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail
        self.status = status


def transport_reason(exc: BaseException) -> str:
    """A short, stable name for a transport failure (used in traces and messages)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, TLSError):
        return "tls"
    if isinstance(exc, ConnectError):
        return "connect"
    if isinstance(exc, ConnectionClosedError):
        return "closed"
    if isinstance(exc, RemoteProtocolError):
        return "protocol"
    if isinstance(exc, TooLarge):
        return "too large"
    return type(exc).__name__


def endpoint_path(model_id: str) -> str:
    """``/models/{id}/endpoint`` with the id percent-encoded (``/`` too).

    Raises ``ValueError`` for an id that is not valid Unicode (a lone
    surrogate, which JSON's ``\\ud800`` escapes can produce).
    """
    try:
        return f"/models/{quote(model_id, safe='')}/endpoint"
    except UnicodeEncodeError:
        raise ValueError(f"the model id {model_id!r} is not valid Unicode") from None


_UNSAFE_IN_URL = re.compile(r"[\x00-\x20\x7f]")


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a base URL (``http[s]://host[:port][/path]``), or ``None``."""
    if not url.startswith(("http://", "https://")):
        return "not an http:// or https:// URL"
    if not url.isascii() or _UNSAFE_IN_URL.search(url):
        return "it holds spaces, control or non-ASCII characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - validates the port (range, digits)
    except ValueError as exc:
        return str(exc)
    if not host:
        return "it has no host"
    return None


def load_body(spec: LoadSpec) -> bytes:
    """The ``POST /models/load`` body: the load spec without its absent values."""
    return json.dumps({k: v for k, v in spec.to_json().items() if v is not None}).encode()


def rewrite_loopback(url: str, neuron_endpoint: str) -> str:
    """docs/semantics.md §3: a loopback host in ``url`` becomes the neuron endpoint's host.

    Port, path and query of ``url`` are kept; the result has no trailing ``/``.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
        target = urlsplit(neuron_endpoint).hostname
    except ValueError:
        return url.rstrip("/")  # not a URL we can rewrite: left for the caller to refuse
    if host is not None and host.lower() in LOOPBACK_HOSTS and target:
        shown = f"[{target}]" if ":" in target else target
        netloc = shown if port is None else f"{shown}:{port}"
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url.rstrip("/")


def _preview(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace").strip()
    return text or "(empty body)"


def _upstream(node: Upstream | str) -> Upstream:
    return Upstream.plain(node) if isinstance(node, str) else node


class NeuronClient:
    """The neuron daemon API over a shared :class:`HTTPClient` (its pool is reused).

    Every call takes the node as an :class:`Upstream`, or as a bare endpoint
    URL (a plain neuron: no headers, the system's CAs).
    """

    def __init__(self, http: HTTPClient) -> None:
        self.http = http

    # -- polls --------------------------------------------------------------------------

    async def get(self, node: Upstream | str, path: str) -> Answer:
        """``GET {endpoint}{path}``: the raw answer, or why there is none. Never raises."""
        node = _upstream(node)
        try:
            resp = await self.http.request(
                "GET", node.endpoint + path, headers=node.headers, tls=node.tls
            )
        except HTTPError as exc:
            return Answer.failed(path, transport_reason(exc))
        return Answer(path=path, status=resp.status, body=resp.body)

    async def fetch(self, node: Upstream | str, path: str) -> Fetched:
        """``GET {endpoint}{path}`` as a JSON poll answer. Never raises an HTTP error."""
        answer = await self.get(node, path)
        if answer.status is None:
            return Fetched.failure(answer.error)
        if not answer.ok:
            return Fetched.failure(answer.problem)
        try:
            body: Any = load_json(answer.body)
        except ValueError:
            return Fetched.failure("invalid json")
        return Fetched(ok=True, body=body)

    # -- lifecycle ------------------------------------------------------------------------

    async def _call(
        self, node: Upstream | str, method: str, path: str, body: bytes | None = None
    ) -> Response:
        node = _upstream(node)
        headers = node.with_headers(_JSON if body else ())
        try:
            return await self.http.request(
                method, node.endpoint + path, headers=headers, body=body, tls=node.tls
            )
        except HTTPError as exc:
            raise NeuronError(IOCause.TRANSPORT, f"{transport_reason(exc)}: {exc}") from exc

    async def load(self, node: Upstream | str, spec: LoadSpec) -> None:
        """``POST /models/load``. An answer whose body says ``already loaded`` is success."""
        resp = await self._call(node, "POST", "/models/load", load_body(spec))
        if 200 <= resp.status < 300 or _ALREADY_LOADED in resp.body.lower():
            return
        raise NeuronError(
            status_cause(resp.status),
            f"load of {spec.model_id!r} answered {resp.status}: {_preview(resp.body)}",
            status=resp.status,
        )

    async def unload(self, node: Upstream | str, model_id: str) -> None:
        """``POST /models/unload`` with ``{"model_id": ...}``."""
        body = json.dumps({"model_id": model_id}).encode()
        resp = await self._call(node, "POST", "/models/unload", body)
        if not 200 <= resp.status < 300:
            raise NeuronError(
                status_cause(resp.status),
                f"unload of {model_id!r} answered {resp.status}: {_preview(resp.body)}",
                status=resp.status,
            )

    async def resolve_endpoint(self, node: Upstream | str, model_id: str) -> str:
        """``GET /models/{id}/endpoint`` -> the inference base URL, loopback rewritten."""
        try:
            path = endpoint_path(model_id)
        except ValueError as exc:
            raise NeuronError(IOCause.BAD_BODY, str(exc)) from None
        resp = await self._call(node, "GET", path)
        if not 200 <= resp.status < 300:
            raise NeuronError(
                status_cause(resp.status),
                f"endpoint of {model_id!r} answered {resp.status}: {_preview(resp.body)}",
                status=resp.status,
            )
        try:
            answer = load_json(resp.body)
        except ValueError:
            answer = None
        url = answer.get("url") if isinstance(answer, dict) else None
        problem = url_problem(url) if isinstance(url, str) else "no url"
        if problem is not None:
            raise NeuronError(
                IOCause.BAD_BODY,
                f"endpoint of {model_id!r}: no usable url ({problem}) in {_preview(resp.body)}",
                status=resp.status,
            )
        assert isinstance(url, str)
        return rewrite_loopback(url, _upstream(node).endpoint)
