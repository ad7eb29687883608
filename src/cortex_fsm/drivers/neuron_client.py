"""Talking to one neuron's daemon API (docs/semantics.md §1 and §3), over :class:`HTTPClient`.

Nothing here decides anything. The poll fetches (``/discovery``, ``/models``,
``/health``) come back as a :class:`Fetched` value -- the answer or the
reason there is none -- which the poller hands to the engine. The lifecycle
calls (load, unload, endpoint) either succeed or raise :class:`NeuronError`
carrying the *cause* of the failure (:class:`~cortex_fsm.errors.IOCause`);
what the client is told about it is decided by
:func:`cortex_fsm.errors.classify_io_failure`, not here.

Timeouts belong to the caller: wrap a call in ``anyio.fail_after``; the
``TimeoutError`` it raises is the caller's to classify (as a transport failure).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import attrs

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
    """Why ``url`` cannot be an inference base URL (``http://host[:port][/path]``), or ``None``."""
    if not url.startswith("http://"):
        return "not an http:// URL"
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


class NeuronClient:
    """The neuron daemon API over a shared :class:`HTTPClient` (its pool is reused)."""

    def __init__(self, http: HTTPClient) -> None:
        self.http = http

    # -- polls --------------------------------------------------------------------------

    async def fetch(self, endpoint: str, path: str) -> Fetched:
        """``GET {endpoint}{path}`` as a poll answer. Never raises an HTTP error."""
        try:
            resp = await self.http.request("GET", endpoint + path)
        except HTTPError as exc:
            return Fetched.failure(transport_reason(exc))
        if not 200 <= resp.status < 300:
            return Fetched.failure(f"status:{resp.status}")
        try:
            body: Any = load_json(resp.body)
        except ValueError:
            return Fetched.failure("invalid json")
        return Fetched(ok=True, body=body)

    # -- lifecycle ------------------------------------------------------------------------

    async def _call(self, method: str, url: str, body: bytes | None = None) -> Response:
        try:
            return await self.http.request(method, url, headers=_JSON if body else (), body=body)
        except HTTPError as exc:
            raise NeuronError(IOCause.TRANSPORT, f"{transport_reason(exc)}: {exc}") from exc

    async def load(self, endpoint: str, spec: LoadSpec) -> None:
        """``POST /models/load``. An answer whose body says ``already loaded`` is success."""
        resp = await self._call("POST", endpoint + "/models/load", load_body(spec))
        if 200 <= resp.status < 300 or _ALREADY_LOADED in resp.body.lower():
            return
        raise NeuronError(
            status_cause(resp.status),
            f"load of {spec.model_id!r} answered {resp.status}: {_preview(resp.body)}",
            status=resp.status,
        )

    async def unload(self, endpoint: str, model_id: str) -> None:
        """``POST /models/unload`` with ``{"model_id": ...}``."""
        body = json.dumps({"model_id": model_id}).encode()
        resp = await self._call("POST", endpoint + "/models/unload", body)
        if not 200 <= resp.status < 300:
            raise NeuronError(
                status_cause(resp.status),
                f"unload of {model_id!r} answered {resp.status}: {_preview(resp.body)}",
                status=resp.status,
            )

    async def resolve_endpoint(self, endpoint: str, model_id: str) -> str:
        """``GET /models/{id}/endpoint`` -> the inference base URL, loopback rewritten."""
        try:
            path = endpoint_path(model_id)
        except ValueError as exc:
            raise NeuronError(IOCause.BAD_BODY, str(exc)) from None
        resp = await self._call("GET", endpoint + path)
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
        return rewrite_loopback(url, endpoint)
