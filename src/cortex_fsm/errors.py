"""Outcomes, reject classification and the OpenAI error envelope (docs/semantics.md §4).

Every outcome a request can have is an :class:`Outcome`. The three routing
outcomes send the request somewhere; every other outcome is a *reject* and
maps, through :data:`REJECTS` (data, one row per reject), to the HTTP status,
OpenAI error ``type``/``code`` and ``Retry-After`` the client sees.

The retryable/permanent split is the point of the table: a 503 carries
``Retry-After`` and tells clients to come back; a 404 tells them to give up.
R2 (every 503 carries Retry-After; no 404 does) is checked against this table
by the verification suite.

The gateway extension of §4 (classifying failures *after* a node was chosen
by their cause) is the second table, :data:`IO_FAILURES`, keyed by the phase
of the request and the cause; :func:`classify_io_failure` reads it, or the
reference table when the policy asks for ``io_errors = "reference"``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping

import attrs

__all__ = [
    "REJECTS",
    "IO_FAILURES",
    "IO_FAILURES_REFERENCE",
    "ConfigError",
    "CortexError",
    "ErrorClass",
    "IOCause",
    "IOPhase",
    "Outcome",
    "TraceError",
    "UnknownNodeError",
    "attempt_result",
    "classify_io_failure",
    "error_envelope",
    "status_cause",
]


class CortexError(Exception):
    """Base of the errors this package raises on bad input."""


class ConfigError(CortexError, ValueError):
    """Invalid configuration: a policy value, a catalogue entry, a config key."""


class UnknownNodeError(CortexError, KeyError):
    """A node name the engine was not configured with."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TraceError(CortexError):
    """A malformed trace. ``str()`` names the file, the line and the problem."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")


class Outcome(enum.Enum):
    """What a request is told: a route, or a reject."""

    ROUTE_LOADED = "route_loaded"
    ROUTE_UNLOADED = "route_unloaded"
    COLD_LOAD = "cold_load"
    NO_HEALTHY_NODES = "no_healthy_nodes"
    MODEL_RECOVERING = "model_recovering"
    FEASIBLE_NODE_UNHEALTHY = "feasible_node_unhealthy"
    NO_FEASIBLE_NEURON = "no_feasible_neuron"
    MODEL_NOT_FOUND = "model_not_found"
    # I/O-phase failures of the gateway (after a node was chosen).
    ENDPOINT_RESOLVE_FAILED = "endpoint_resolve_failed"
    COLD_LOAD_FAILED = "cold_load_failed"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"

    @property
    def routed(self) -> bool:
        return self in _ROUTED

    @property
    def cold_start(self) -> bool:
        return self is Outcome.ROUTE_UNLOADED or self is Outcome.COLD_LOAD

    @property
    def status(self) -> int:
        """The HTTP status the client sees (200 for a route)."""
        return 200 if self in _ROUTED else REJECTS[self].status

    @property
    def retry_after(self) -> int | None:
        return None if self in _ROUTED else REJECTS[self].retry_after


_ROUTED = frozenset({Outcome.ROUTE_LOADED, Outcome.ROUTE_UNLOADED, Outcome.COLD_LOAD})


@attrs.frozen(slots=True, kw_only=True)
class ErrorClass:
    """How one reject reaches the client."""

    status: int
    type: str
    code: str
    retry_after: int | None
    message: str  # a template; ``{model}`` and ``{node}`` are filled in


_UNAVAILABLE = "service_unavailable"

#: docs/semantics.md §4, one row per reject.
REJECTS: Mapping[Outcome, ErrorClass] = {
    Outcome.MODEL_NOT_FOUND: ErrorClass(
        status=404,
        type="invalid_request_error",
        code="model_not_found",
        retry_after=None,
        message="The model '{model}' does not exist",
    ),
    Outcome.NO_HEALTHY_NODES: ErrorClass(
        status=503,
        type="api_error",
        code=_UNAVAILABLE,
        retry_after=5,
        message="No healthy neurons are available; retry later",
    ),
    Outcome.MODEL_RECOVERING: ErrorClass(
        status=503,
        type="api_error",
        code=_UNAVAILABLE,
        retry_after=2,
        message="The model '{model}' is recovering on neuron '{node}'; retry shortly",
    ),
    Outcome.FEASIBLE_NODE_UNHEALTHY: ErrorClass(
        status=503,
        type="api_error",
        code=_UNAVAILABLE,
        retry_after=3,
        message="Every neuron able to serve '{model}' is unhealthy right now; retry later",
    ),
    Outcome.NO_FEASIBLE_NEURON: ErrorClass(
        status=404,
        type="api_error",
        code=_UNAVAILABLE,
        retry_after=None,
        message="No neuron has the topology '{model}' needs",
    ),
    Outcome.ENDPOINT_RESOLVE_FAILED: ErrorClass(
        status=404,
        type="api_error",
        code=_UNAVAILABLE,
        retry_after=None,
        message="Neuron '{node}' could not resolve an endpoint for '{model}'",
    ),
    Outcome.COLD_LOAD_FAILED: ErrorClass(
        status=404,
        type="api_error",
        code=_UNAVAILABLE,
        retry_after=None,
        message="Neuron '{node}' failed to load '{model}'",
    ),
    Outcome.UPSTREAM_UNAVAILABLE: ErrorClass(
        status=503,
        type="api_error",
        code=_UNAVAILABLE,
        retry_after=3,
        message="Neuron '{node}' is unavailable for '{model}'; retry later",
    ),
}


def error_envelope(
    outcome: Outcome,
    *,
    model: str = "",
    node: str | None = None,
    message: str | None = None,
    retry_after: int | None = None,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The HTTP status, headers and JSON body a reject is answered with.

    ``retry_after`` is the policy's value for this reject (``Decision.retry_after``,
    ``Policy.retry_after``); None takes the reference value. A reject without
    ``Retry-After`` (a 404) never gets one, whatever is passed.
    """
    cls = REJECTS.get(outcome)
    if cls is None:
        raise ValueError(f"{outcome} is not a reject: there is no error envelope for it")
    text = message if message is not None else cls.message.format(model=model, node=node or "?")
    body = json.dumps({"error": {"message": text, "type": cls.type, "code": cls.code}})
    headers = [("content-type", "application/json")]
    if cls.retry_after is not None:
        seconds = cls.retry_after if retry_after is None else retry_after
        headers.append(("retry-after", str(seconds)))
    return cls.status, headers, body.encode()


class IOPhase(enum.Enum):
    """Where, after a node was chosen, a request failed."""

    LOAD = "load"  # POST /models/load
    ENDPOINT = "endpoint"  # GET /models/{id}/endpoint
    FORWARD = "forward"  # the inference request, before the first response byte


class IOCause(enum.Enum):
    """Why it failed."""

    TRANSPORT = "transport"  # refused, reset, timed out
    STATUS_5XX = "status_5xx"
    STATUS_4XX = "status_4xx"
    BAD_BODY = "bad_body"  # e.g. an endpoint answer without "url"


def status_cause(status: int) -> IOCause:
    """The cause of a neuron's non-2xx answer: 4xx rejects the request; any other
    status (5xx, and the 1xx/3xx a neuron has no business sending) is the neuron
    failing, never a reason for a permanent 404."""
    return IOCause.STATUS_4XX if 400 <= status < 500 else IOCause.STATUS_5XX


#: The gateway's classification (docs/semantics.md §4 extension, the default).
IO_FAILURES: Mapping[tuple[IOPhase, IOCause], Outcome] = {
    (IOPhase.LOAD, IOCause.TRANSPORT): Outcome.UPSTREAM_UNAVAILABLE,
    (IOPhase.LOAD, IOCause.STATUS_5XX): Outcome.UPSTREAM_UNAVAILABLE,
    (IOPhase.LOAD, IOCause.STATUS_4XX): Outcome.COLD_LOAD_FAILED,
    (IOPhase.LOAD, IOCause.BAD_BODY): Outcome.COLD_LOAD_FAILED,
    (IOPhase.ENDPOINT, IOCause.TRANSPORT): Outcome.UPSTREAM_UNAVAILABLE,
    (IOPhase.ENDPOINT, IOCause.STATUS_5XX): Outcome.UPSTREAM_UNAVAILABLE,
    (IOPhase.ENDPOINT, IOCause.STATUS_4XX): Outcome.ENDPOINT_RESOLVE_FAILED,
    (IOPhase.ENDPOINT, IOCause.BAD_BODY): Outcome.ENDPOINT_RESOLVE_FAILED,
    (IOPhase.FORWARD, IOCause.TRANSPORT): Outcome.UPSTREAM_UNAVAILABLE,
    (IOPhase.FORWARD, IOCause.STATUS_5XX): Outcome.UPSTREAM_UNAVAILABLE,
    # A 4xx answer to the forwarded request is the neuron's own verdict on the
    # request (e.g. a bad parameter): the gateway passes it through unchanged.
}

#: The reference gateway: every load or endpoint failure is a permanent 404.
#: (It has no rule for a failed forward; we answer 503 there in both modes.)
IO_FAILURES_REFERENCE: Mapping[tuple[IOPhase, IOCause], Outcome] = {
    (phase, cause): (
        Outcome.COLD_LOAD_FAILED
        if phase is IOPhase.LOAD
        else Outcome.ENDPOINT_RESOLVE_FAILED
        if phase is IOPhase.ENDPOINT
        else Outcome.UPSTREAM_UNAVAILABLE
    )
    for phase, cause in IO_FAILURES
}


def classify_io_failure(
    phase: IOPhase, cause: IOCause, *, io_errors: str = "extension"
) -> Outcome | None:
    """The reject for a failure after a node was chosen, per the policy's ``io_errors``.

    ``None`` means the neuron's answer is passed to the client unchanged
    (a 4xx to the forwarded request).
    """
    table = IO_FAILURES_REFERENCE if io_errors == "reference" else IO_FAILURES
    return table.get((phase, cause))


#: How an ``outcome`` event's ``error`` names a neuron answer that rejects the
#: request rather than failing (a 4xx, or a body the gateway cannot use).
_REJECTING_ERROR = "bad_answer"


def attempt_result(*, node: str | None, source: str, status: int, error: str | None) -> bool | None:
    """What one attempt's outcome says about its node's health (docs/semantics.md §6).

    ``True``: ``request_ok`` (the node answered the forwarded request below 500).
    ``False``: ``request_failed`` (a transport failure, a timeout, or a 5xx --
    any non-4xx status -- before the first byte, on any call made for the
    request: exactly what the §4 extension calls ``upstream_unavailable``).
    ``None``: neither (no node was chosen; or the node rejected the request
    with a 4xx or an unusable answer, which says nothing about its health).

    ``error`` is the outcome event's text: ``status:NNN`` for an HTTP status,
    ``bad_answer...`` for an unusable body, anything else a transport reason
    (``connect``, ``timeout``, ``closed``...).
    """
    if node is None:
        return None
    if source == "upstream":
        return status < 500
    if error is None:
        return None
    if error.startswith("status:"):
        code = error[7:10]
        return None if code.isdigit() and code[0] == "4" else False
    if error.startswith(_REJECTING_ERROR):
        return None
    return False
