"""The gateway: an OpenAI-compatible HTTP server in front of the neurons.

Thin by design. For every inference request it reads the body, asks the
engine -- synchronously, through the :class:`~cortex_fsm.drivers.journal.Journal`,
so the request is recorded exactly as it was decided -- and then carries the
decision out: answer a reject, or cold-load, resolve the endpoint and forward.
A failure after a node was chosen is classified by
:func:`cortex_fsm.errors.classify_io_failure` (docs/semantics.md §4 and its extension),
never here; one that is ``upstream_unavailable`` before any byte reached the
client is decided again without the failed nodes, up to the policy's
``max_attempts`` (docs/semantics.md §7). Each attempt's outcome is recorded
through the journal, which makes it passive health (§6) and ends the
attempt's local in-flight count (§8).

Endpoints::

    POST /v1/chat/completions, /v1/completions,       routed to a neuron by the
         /v1/embeddings, /v1/responses, /v1/messages  body's "model"
    GET  /v1/models                                   catalogue, aliases + loaded models
    GET  /health                                      per node health, overall ok/degraded
    GET  /healthz                                     200 while the process serves
    GET  /readyz                                      200 when a node is routable, else 503
    GET  /metrics                                     Prometheus text

With API keys configured, every endpoint but the three probes needs one
(``Authorization: Bearer KEY`` or ``x-api-key: KEY``); the key is checked
against SHA-256 digests in constant time and never forwarded. Every request
but a probe gets one access log line (:class:`~cortex_fsm.drivers.logs.AccessLog`).

Every answer to an inference request carries ``x-cortex-request`` (the id in
the recording), ``x-cortex-outcome`` (the engine's outcome, or the I/O
failure's), when routed, ``x-cortex-node``, and on a failover attempt
``x-cortex-attempt``.

Run it with :meth:`Gateway.run` in a task group (``port=0`` in the config
picks a free port; ``task_status`` reports the bound address), or from the
command line: ``cortex-fsm serve --config cortex.toml [--record trace.jsonl.gz]``.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from functools import partial
from typing import Any, Final

import anyio
import anyio.abc
import attrs

from ..backends import BACKENDS
from ..catalogue import LoadSpec, feasible
from ..engine import Engine
from ..errors import (
    REJECTS,
    ConfigError,
    CortexError,
    IOCause,
    IOPhase,
    Outcome,
    attempt_result,
    classify_io_failure,
    error_envelope,
    status_cause,
)
from ..fleet import ModelStatus, Neuron
from ..routing import Decision
from ..trace import ModelsEvent, OutcomeEvent, TraceWriter, output_problem
from ..wire import load_json
from .config import GatewayConfig, keys_from_env, load_config, parse_listen
from .http import (
    HTTPClient,
    HTTPError,
    Limits,
    Request,
    Responder,
    ServerControl,
    StreamingResponse,
    default_error_response,
    serve,
)
from .journal import Journal
from .logs import FLUSH_INTERVAL, LOG_FORMATS, AccessLog
from .logs import configure_logging as _configure_logging
from .metrics import CONTENT_TYPE, NO_OUTCOME, GatewayMetrics
from .neuron_client import NeuronClient, NeuronError, Upstream, transport_reason
from .poller import Poller
from .topology import Topology

__all__ = [
    "Gateway",
    "add_serve_arguments",
    "configure_logging",
    "expected_failure",
    "run_gateway",
    "serve_main",
]

_log = logging.getLogger("cortex_fsm.gateway")

_JSON_TYPE: Final = ("content-type", "application/json")
_INFERENCE: Final = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
)
_PROBES: Final = frozenset({"/healthz", "/readyz", "/metrics"})
_ROUTES: Final = {
    **dict.fromkeys(sorted(_INFERENCE), "POST"),
    "/v1/models": "GET",
    "/health": "GET",
    **dict.fromkeys(sorted(_PROBES), "GET"),
}
# Not relayed from the neuron's answer: hop-by-hop and framing headers (we frame
# the relayed body ourselves), and our own headers.
_NOT_RELAYED: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-cortex-attempt",
        "x-cortex-node",
        "x-cortex-outcome",
        "x-cortex-request",
    }
)
_ATTEMPT_HEADER: Final = "x-cortex-attempt"
#: Canonical ``error`` texts of outcome events (docs/trace-format.md) made here.
_BAD_ANSWER: Final = "bad_answer"
_CLIENT_CLOSED: Final = "client_closed"
_CLIENT_STALLED: Final = "client_stalled"
_INTERRUPTED: Final = "interrupted"
#: Client headers passed on to the neuron (never ``authorization`` or ``x-api-key``:
#: the client's key is this gateway's business; per-neuron headers are configured).
_FORWARDED_REQUEST_HEADERS: Final = (
    "accept",
    "x-request-id",
    "anthropic-version",
    "anthropic-beta",
)
#: Forwarded requests carry the tokens of the gateways they passed through, so
#: a neuron endpoint that leads back to a gateway already on the path (or a
#: chain longer than this) is answered 508 instead of looping.
_HOP_HEADER: Final = "x-cortex-hop"
_MAX_HOPS: Final = 8
_MAX_MODEL_NAME: Final = 1024
_SERVING: Final = (ModelStatus.LOADED, ModelStatus.RELOADING)
_BUFFER_LIMIT: Final = 1 << 20  # bytes: framed answers up to this are read whole


def _envelope(message: str, type_: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


@attrs.define
class _PendingLoad:
    """A cold load in progress: later requests for the same (node, model) wait for it."""

    done: anyio.Event = attrs.field(factory=anyio.Event)
    finished: bool = False
    error: NeuronError | None = None


@attrs.define(eq=False)
class _Exchange:
    """One client request, as the access log and the metrics see it."""

    started: float
    """``time.perf_counter()`` when the request head had arrived."""
    wall: float
    """``time.time()`` at the same moment."""
    decision: Decision | None = None
    """The latest decision made for it."""
    request_id: str | None = None
    decisions: int = 0
    outcomes: int = 0
    """Outcome events recorded for it (one per attempt, when the request path records them)."""


#: The exchange of the request the current task is serving (set in ``handle``):
#: the journal's decision listener files each decision under it.
_EXCHANGE: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar(
    "cortex_exchange", default=None
)


class _Journal(Journal):
    """The journal, telling the gateway of every event it applies (for the metrics)."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float]) -> None:
        super().__init__(engine, clock=clock)
        self.event_listeners: list[Callable[[Any, object], None]] = []

    def apply(self, event: Any) -> Any:
        result = super().apply(event)
        for listener in self.event_listeners:
            listener(event, result)
        return result


class _Failed(Exception):
    """An I/O failure after the node was chosen, before anything reached the client.

    ``detail`` is for people (messages, logs); ``error`` is the outcome event's
    canonical text (docs/trace-format.md): a transport reason (``connect``,
    ``timeout``, ``closed``, ...), ``status:NNN``, or ``bad_answer: ...``.
    """

    def __init__(self, phase: IOPhase, cause: IOCause, detail: str, error: str) -> None:
        super().__init__(detail)
        self.phase = phase
        self.cause = cause
        self.detail = detail
        self.error = error


def _neuron_failure(phase: IOPhase, exc: NeuronError) -> _Failed:
    """A failed lifecycle call as a :class:`_Failed`, with its canonical error text."""
    if exc.cause is IOCause.BAD_BODY:
        error = f"{_BAD_ANSWER}: {exc.detail}"
    elif exc.status is not None:
        error = f"status:{exc.status}"
    elif isinstance(exc.__cause__, BaseException):
        error = transport_reason(exc.__cause__)
    else:
        error = exc.detail.partition(":")[0]  # made here: "timeout"
    return _Failed(phase, exc.cause, exc.detail, error)


@attrs.define(eq=False)
class _Attempt:
    """One attempt of a client request (docs/semantics.md §7): its decision and
    whether its outcome has been recorded."""

    request_id: str
    number: int
    decision: Decision
    settled: bool = False


class Gateway:
    """The engine, its poller and the HTTP front end, wired together."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        record: str | os.PathLike[str] | None = None,
        recorder: TraceWriter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.engine = Engine(config.neurons, config.catalogue, config.policy)
        self.journal = _Journal(self.engine, clock=clock)
        self.record_path = None if record is None else os.fspath(record)
        self._recorder = recorder
        self._owned: TraceWriter | None = None
        self.address: tuple[str, int] | None = None
        """The bound ``(host, port)`` once running."""
        self.created = int(time.time())
        self._hop = secrets.token_hex(8)
        self._upstreams: dict[str, Upstream] = config.upstreams()
        self.topology = Topology.of(config)
        """Declared and cached topologies (docs/semantics.md §10)."""
        self._endpoint_cache: dict[tuple[str, str], tuple[int, str]] = {}
        self._loads: dict[tuple[str, str], _PendingLoad] = {}
        self._http: HTTPClient | None = None
        self._neurons: NeuronClient | None = None
        self._pollers: dict[str, tuple[Poller, anyio.CancelScope]] = {}
        """One poller per neuron, each in a task of its own."""
        self._task_group: anyio.abc.TaskGroup | None = None
        self.server_limits = Limits(
            max_body_bytes=config.max_body_bytes, header_timeout=config.client_timeout
        )
        self.client_limits = Limits(max_keepalive_per_host=256)
        self.cycles: dict[str, int] = {}
        """Lifecycle cycles (evictions) per node since start (docs/semantics.md §5)."""
        self.server = ServerControl()
        """Drains the HTTP server (see :meth:`drain`)."""
        self._live: set[_Exchange] = set()
        self.metrics: GatewayMetrics | None = None
        """The Prometheus metrics (None with ``[gateway] metrics = false``: not collected)."""
        self.access_log: AccessLog | None = None
        """Open while running, when the configuration asks for an access log."""
        self.journal.decision_listeners.append(self._on_decision)
        if config.metrics:
            self.metrics = GatewayMetrics(lambda: self.engine, self._in_flight)
            self.journal.transition_listeners.append(self.metrics.on_transition)
            self.journal.event_listeners.append(self._on_event)

    @property
    def url(self) -> str:
        """``http://host:port`` of the running gateway."""
        if self.address is None:
            raise RuntimeError("the gateway is not running")
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # -- running --------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve and poll until cancelled; reports the bound ``(host, port)``.

        With ``record`` set, every observation and request is written to that
        trace (closed, complete, when this returns or :meth:`close_recording`
        is called); with ``recorder``, to that open
        :class:`~cortex_fsm.trace.TraceWriter` (which its owner closes). The
        ``record`` file is created once the gateway listens: a gateway that
        cannot start leaves an earlier recording of that name alone.

        It also returns, normally, once :meth:`drain` has let every request
        in flight finish.
        """
        try:
            async with HTTPClient(limits=self.client_limits) as http:
                self._http = http
                self._neurons = NeuronClient(http)
                self._open_access_log()
                async with anyio.create_task_group() as tg:
                    self.address = await tg.start(self._serve, tg.cancel_scope)
                    # No await between here and the poller's start: nothing is
                    # observed or routed before the recording is open.
                    if self.record_path is not None:
                        self._owned = TraceWriter(self.record_path, self.config.trace_header())
                        self.journal.recorder = self._owned
                    else:
                        self.journal.recorder = self._recorder
                    self.topology.seed(self.journal)
                    self._task_group = tg
                    for neuron in self.config.neurons:
                        self._start_polling(neuron)
                    tg.start_soon(self._flush_logs, name="flush logs")
                    task_status.started(self.address)
        finally:
            self._task_group = None
            self._pollers.clear()
            self.close_recording()
            if self.access_log is not None:
                self.access_log.close()
                self.access_log = None

    async def _serve(
        self,
        everything: anyio.CancelScope,
        *,
        task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        await serve(
            self.handle,
            host=self.config.listen_host,
            port=self.config.listen_port,
            limits=self.server_limits,
            error_response=default_error_response,
            control=self.server,
            task_status=task_status,
        )
        everything.cancel()  # drained: stop polling too

    async def _flush_logs(self) -> None:
        """Write the access log and the recording out every 0.1 s (a crash loses no more)."""
        while True:
            await anyio.sleep(FLUSH_INTERVAL)
            if self.access_log is not None:
                self.access_log.flush()
            recorder = self.journal.recorder
            if recorder is not None:
                recorder.flush()

    def _open_access_log(self) -> None:
        where = self.config.access_log
        if where is not None:
            self.access_log = AccessLog(None if where == "-" else where)

    def close_recording(self) -> None:
        """Stop recording; complete the ``record`` file (idempotent)."""
        self.journal.recorder = None
        owned, self._owned = self._owned, None
        if owned is not None:
            owned.close()

    @property
    def draining(self) -> bool:
        return self.server.draining

    def drain(self) -> None:
        """Stop accepting connections; :meth:`run` returns when requests in flight are done."""
        if not self.server.draining:
            _log.info(
                json.dumps(
                    {
                        "event": "draining",
                        "in_flight": self.server.active,
                        "connections": self.server.connections,
                        "timeout_s": self.config.drain_timeout,
                    }
                )
            )
        self.server.drain()

    def reload(self, new: GatewayConfig) -> list[str]:
        """Apply a newly read configuration without dropping a connection.

        Returns (and logs, as one ``reloaded`` line) what changed. Neurons
        added and removed, the catalogue (aliases included) and the policy go
        through the journal, so the recording has them (``neuron_added``,
        ``neuron_removed``, ``reconfigured``); the gateway's own settings and
        keys apply to the next request. ``listen`` cannot change without a
        restart (the socket is bound), nor can ``max_body_bytes``,
        ``client_timeout``, ``metrics`` and ``state_dir``; those are kept as they were and
        named in the log line. The access log is opened again in any case
        (so SIGHUP after a log rotation is enough).
        """
        old = self.config
        kept: list[str] = []
        if (new.listen_host, new.listen_port) != (old.listen_host, old.listen_port):
            kept.append("listen")
            new = attrs.evolve(new, listen_host=old.listen_host, listen_port=old.listen_port)
        if (new.max_body_bytes, new.client_timeout) != (old.max_body_bytes, old.client_timeout):
            kept += [
                key
                for key in ("max_body_bytes", "client_timeout")
                if getattr(new, key) != getattr(old, key)
            ]
            new = attrs.evolve(
                new, max_body_bytes=old.max_body_bytes, client_timeout=old.client_timeout
            )
        if new.metrics != old.metrics:
            kept.append("metrics")
            new = attrs.evolve(new, metrics=old.metrics)
        if new.state_dir != old.state_dir:
            kept.append("state_dir")
            new = attrs.evolve(new, state_dir=old.state_dir)
        changed = [
            field.name
            for field in attrs.fields(GatewayConfig)
            if field.eq
            and field.name not in ("source", "api_keys")
            and getattr(new, field.name) != getattr(old, field.name)
        ]
        if new.api_keys != old.api_keys:
            changed.append("api_keys")
        self.config = new
        removed, added = self._apply_fleet(old, new)
        for poller, _ in self._pollers.values():
            poller.interval = new.policy.poll_interval
            poller.timeout = new.poll_timeout
        if not new.endpoint_cache:
            self._endpoint_cache.clear()
        self._reopen_access_log(old.access_log)
        if self.metrics is not None:
            self.metrics.on_reload(applied=True)
        _log.info(
            json.dumps(
                {
                    "event": "reloaded",
                    "config": new.source,
                    "changed": changed,
                    "not_applied": kept,
                    "neurons_removed": removed,
                    "neurons_added": added,
                    "api_keys": len(new.api_keys),
                }
            )
        )
        return changed

    def _apply_fleet(self, old: GatewayConfig, new: GatewayConfig) -> tuple[list[str], list[str]]:
        """Neurons, catalogue and policy of a reload, through the journal (so recorded).

        A neuron whose entry changed (its endpoint, say) is removed and added
        again: it starts ``unknown``. Removals come first, then the catalogue
        and policy, then additions, so a new node is polled under the new policy.
        """
        before = {n.name: (n, old.settings_of(n.name)) for n in old.neurons}
        after = {n.name: (n, new.settings_of(n.name)) for n in new.neurons}
        removed = [name for name, n in before.items() if after.get(name) != n]
        added = [n for name, (n, s) in after.items() if before.get(name) != (n, s)]
        for name in removed:
            self._stop_polling(name)
            self.journal.neuron_removed(name)
            self._upstreams.pop(name, None)
            self.topology.remove(name)
            for key in [key for key in self._endpoint_cache if key[0] == name]:
                del self._endpoint_cache[key]
        catalogue = new.catalogue if new.catalogue != old.catalogue else None
        policy = new.policy if new.policy != old.policy else None
        if catalogue is not None or policy is not None:
            self.journal.reconfigured(catalogue=catalogue, policy=policy)
        for neuron in added:
            self.journal.neuron_added(neuron)
            self._upstreams[neuron.name] = new.upstream(neuron.name)
            self.topology.add(self.journal, neuron)
            if self.metrics is not None:
                self.metrics.add_node(neuron.name)
            self._start_polling(neuron)
        return removed, [n.name for n in added]

    def _start_polling(self, neuron: Neuron) -> None:
        """Poll ``neuron`` in a task of its own (a reload may stop it)."""
        if self._task_group is None or self._neurons is None:
            return  # not running: run() starts the polls
        poller = Poller(
            self.journal,
            self._neurons,
            [neuron],
            interval=self.engine.policy.poll_interval,
            timeout=self.config.poll_timeout,
            upstreams={neuron.name: self._upstreams[neuron.name]},
            topology=self.topology,
        )
        scope = anyio.CancelScope()
        self._pollers[neuron.name] = (poller, scope)
        self._task_group.start_soon(self._poll, poller, scope, name=f"poll {neuron.name}")

    def poll_rounds(self) -> dict[str, int]:
        """Completed poll rounds per neuron polled now."""
        return {name: poller.rounds[name] for name, (poller, _) in self._pollers.items()}

    @staticmethod
    async def _poll(poller: Poller, scope: anyio.CancelScope) -> None:
        with scope:
            await poller.run()

    def _stop_polling(self, name: str) -> None:
        entry = self._pollers.pop(name, None)
        if entry is not None:
            entry[0].stop()  # an answer already in is not recorded either
            entry[1].cancel()

    def _reopen_access_log(self, before: str | None) -> None:
        if self.address is None:
            return  # not running: run() opens it
        where = self.config.access_log
        try:
            if where == before and self.access_log is not None:
                self.access_log.reopen()
                return
            old, self.access_log = self.access_log, None
            self._open_access_log()
        except OSError as exc:
            _log.error(json.dumps({"event": "access_log_failed", "path": where, "error": str(exc)}))
            return
        if old is not None:
            old.close()

    # -- observing (metrics, access log) ----------------------------------------------------

    def _on_decision(self, request_id: str, t: float, decision: Decision) -> None:
        if self.metrics is not None:
            self.metrics.on_decision(decision)
        exchange = _EXCHANGE.get()
        if exchange is not None:
            exchange.request_id = request_id
            exchange.decision = decision
            exchange.decisions += 1

    def _on_event(self, event: object, result: object) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        if isinstance(event, OutcomeEvent):
            exchange = _EXCHANGE.get()
            if exchange is not None:
                exchange.outcomes += 1
            if event.node is not None:
                verdict = attempt_result(
                    node=event.node, source=event.source, status=event.status, error=event.error
                )
                metrics.on_attempt(
                    event.node, "ok" if verdict else "error" if verdict is None else "failed"
                )
        elif isinstance(event, ModelsEvent):
            metrics.on_poll(
                event.node, event.ok and self.engine.status(event.node).consecutive_failures == 0
            )

    def _in_flight(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for exchange in self._live:
            decision = exchange.decision
            if decision is not None and decision.node is not None:
                counts[decision.node] = counts.get(decision.node, 0) + 1
        return counts

    # -- HTTP -----------------------------------------------------------------------------

    async def handle(self, request: Request, responder: Responder) -> None:
        """The HTTP handler: probes, else the access log around :meth:`_handle`."""
        path = request.path
        if path in _PROBES:
            if not self.config.protect_metrics or self._authorized(request):
                await self._probe(request, responder, path)
            else:
                await _unauthorized(responder)
            return
        exchange = _Exchange(time.perf_counter(), time.time())
        token = _EXCHANGE.set(exchange)
        live = self._live
        live.add(exchange)
        try:
            if not self.config.api_keys or self._authorized(request):
                await self._handle(request, responder, path)
            else:
                await _unauthorized(responder)
        finally:
            live.discard(exchange)
            _EXCHANGE.reset(token)
            self._finish(exchange, request, responder, path)

    def _authorized(self, request: Request) -> bool:
        """Does the request carry one of the configured keys? (constant time per key)"""
        presented = request.header("authorization")
        if presented is not None:
            scheme, _, presented = presented.strip().partition(" ")
            if scheme.lower() != "bearer":
                presented = None
        if presented is None:
            presented = request.header("x-api-key")
        if not presented:
            return False
        digest = hashlib.sha256(presented.strip().encode("utf-8", "surrogateescape")).digest()
        matched = False
        for known in self.config.api_keys:  # no early exit: every key is compared
            matched |= hmac.compare_digest(known, digest)
        return matched

    def _finish(
        self, exchange: _Exchange, request: Request, responder: Responder, path: str
    ) -> None:
        """The request is over: count it and write its access log line."""
        seconds = time.perf_counter() - exchange.started
        status = responder.status if responder.started else request.error_status
        decision = exchange.decision
        outcome: str | None = None
        node: str | None = None
        if decision is not None:
            outcome, node = _final_tags(responder.headers, decision)
        metrics = self.metrics
        if metrics is not None and path in _INFERENCE:
            if status is not None:
                metrics.on_request(
                    metrics.model_label(decision), status, outcome or NO_OUTCOME, seconds
                )
            if node is not None and outcome is not None and not exchange.outcomes:
                # No outcome event told of the attempts: count the one the client saw.
                metrics.on_attempt(node, _ATTEMPT_RESULT.get(outcome, "ok"))
        log = self.access_log
        if log is not None:
            peer = request.peer
            log.write(
                exchange.wall,
                exchange.request_id,
                None if peer is None else peer[0],
                request.method,
                path,
                None if decision is None else decision.requested,
                None if decision is None else decision.model,
                outcome,
                node,
                status,
                exchange.decisions,
                seconds,
                responder.bytes_sent,
            )

    async def _probe(self, request: Request, responder: Responder, path: str) -> None:
        if request.method not in ("GET", "HEAD"):
            await _reply(
                responder,
                405,
                _envelope(f"Use GET for {path}", "invalid_request_error", "method_not_allowed"),
                [("allow", "GET, HEAD")],
            )
        elif path == "/healthz":
            await _reply(responder, 200, b'{"status": "ok"}')
        elif path == "/readyz":
            routable = [n for n, state in self.engine.states().items() if state.routable]
            ready = bool(routable) and not self.draining
            body = {
                "status": "ready" if ready else "not ready",
                "routable": routable,
                "draining": self.draining,
            }
            await _reply(responder, 200 if ready else 503, json.dumps(body).encode())
        elif self.metrics is not None:
            with contextlib.suppress(HTTPError):
                await responder.respond(
                    200, [("content-type", CONTENT_TYPE)], self.metrics.render()
                )
        else:
            message = "metrics are off ([gateway] metrics = false)"
            await _reply(responder, 404, _envelope(message, "invalid_request_error", "not_found"))

    async def _handle(self, request: Request, responder: Responder, path: str) -> None:
        method = _ROUTES.get(path)
        if method is None:
            await _reply(
                responder,
                404,
                _envelope(
                    f"Unknown path {request.method} {path}", "invalid_request_error", "not_found"
                ),
            )
        elif request.method != method and not (method == "GET" and request.method == "HEAD"):
            await _reply(
                responder,
                405,
                _envelope(
                    f"Use {method} for {path}", "invalid_request_error", "method_not_allowed"
                ),
                [("allow", "GET, HEAD" if method == "GET" else method)],
            )
        elif path in _INFERENCE:
            await self._inference(request, responder, path)
        elif path == "/v1/models":
            await _reply(responder, 200, json.dumps(self.models_listing()).encode())
        else:
            await _reply(responder, 200, json.dumps(self.health_report()).encode())

    async def _inference(self, request: Request, responder: Responder, path: str) -> None:
        try:
            with anyio.fail_after(self.config.client_timeout):
                raw = await request.body()
        except TimeoutError:
            body = _envelope(
                "request body not received in time", "invalid_request_error", "request_timeout"
            )
            await _reply(responder, 408, body, [("connection", "close")])
            return
        hops = _hops(request.header(_HOP_HEADER))
        if self._hop in hops or len(hops) >= _MAX_HOPS:
            message = (
                "loop detected: this request has already passed through this gateway"
                if self._hop in hops
                else f"loop detected: this request has passed through {len(hops)} gateways"
            )
            _log.warning(json.dumps({"event": "loop_detected", "hops": len(hops)}))
            await _reply(responder, 508, _envelope(message, "api_error", "loop_detected"))
            return
        try:
            payload: Any = load_json(raw)
        except ValueError as exc:
            payload = None
            problem = f"the request body is not valid JSON ({exc})"
        else:
            problem = "the request body must be a JSON object"
        if isinstance(payload, dict):
            requested = payload.get("model")
            if isinstance(requested, str) and len(requested) > _MAX_MODEL_NAME:
                # The engine keeps a decision per name asked for: bound what one costs.
                problem = f"'model' is longer than {_MAX_MODEL_NAME} characters"
            elif isinstance(requested, str) and requested:
                await self._route(
                    request,
                    responder,
                    path=path,
                    raw=raw,
                    payload=payload,
                    requested=requested,
                    hops=",".join([*hops, self._hop]),
                )
                return
            else:
                problem = "the request body must name a model: 'model' is missing or not a string"
        await _reply(responder, 400, _envelope(problem, "invalid_request_error", "invalid_request"))

    async def _route(
        self,
        request: Request,
        responder: Responder,
        *,
        path: str,
        raw: bytes,
        payload: dict[str, Any],
        requested: str,
        hops: str,
    ) -> None:
        """Carry out one client request in up to ``max_attempts`` attempts (docs/semantics.md §7).

        Each attempt is a decision -- made synchronously, so it is recorded as
        it is made -- then, when it routes, the calls that carry it out. An
        attempt that fails with ``upstream_unavailable`` before any byte of its
        answer reached the client is followed by another decision that excludes
        every node this request failed on, while attempts remain; anything else
        (a reject, a success, a 4xx passed through, a 404 of the I/O table, a
        failure once the answer has begun) is the client's answer. Every
        attempt ends with exactly one recorded outcome (:meth:`_settle`).

        ``hops``: the ``x-cortex-hop`` value to forward (this gateway's token added).
        """
        failed: list[str] = []
        request_id: str | None = None
        number = 0
        while True:
            number += 1
            request_id, decision = self.journal.request(
                requested,
                exclude=failed,
                attempt=None if number == 1 else number,
                request_id=request_id,
            )
            attempt = _Attempt(request_id=request_id, number=number, decision=decision)
            try:
                if not decision.routed:
                    await self._answer_reject(responder, attempt)
                    return
                failure = await self._carry_out(
                    request, responder, attempt, path=path, raw=raw, payload=payload, hops=hops
                )
            except Exception:
                # A bug: the server answers 500. End the attempt's in-flight count
                # all the same (no health event: no error is named).
                self._settle(attempt, status=500, retry_after=None, source="gateway", error=None)
                raise
            if failure is None:
                return
            policy = self.engine.policy
            outcome = classify_io_failure(failure.phase, failure.cause, io_errors=policy.io_errors)
            if outcome is None:  # only a forwarded 4xx passes through; never a _Failed
                outcome = Outcome.UPSTREAM_UNAVAILABLE
            retry = outcome is Outcome.UPSTREAM_UNAVAILABLE and number < policy.max_attempts
            self._log_failure(attempt, failure, outcome, retry=retry)
            if not retry:
                await self._answer_failure(responder, attempt, failure, outcome)
                return
            # The answer this attempt would have had is its outcome; nobody saw it.
            self._settle(
                attempt,
                status=outcome.status,
                retry_after=policy.retry_after(outcome),
                source="gateway",
                error=failure.error,
            )
            assert decision.node is not None
            failed.append(decision.node)

    async def _carry_out(
        self,
        request: Request,
        responder: Responder,
        attempt: _Attempt,
        *,
        path: str,
        raw: bytes,
        payload: dict[str, Any],
        hops: str,
    ) -> _Failed | None:
        """Load if asked, resolve the endpoint, forward. Returns the failure when
        nothing was sent to the client yet; otherwise the attempt is answered
        and settled here."""
        decision = attempt.decision
        node = decision.node
        assert node is not None
        model = decision.model
        upstream = self._upstreams[node]
        try:
            if decision.load is not None:
                await self._cold_load(node, upstream, decision)
            base = await self._base_url(upstream, model)
        except _Failed as failure:
            return failure
        if model != decision.requested:
            payload["model"] = model
            raw = json.dumps(payload).encode()
        target = base + path
        if request.query:
            target += "?" + request.query
        headers = [_JSON_TYPE, (_HOP_HEADER, hops)]
        for name in _FORWARDED_REQUEST_HEADERS:
            value = request.header(name)
            if value is not None:
                headers.append((name, value))
        return await self._forward(
            responder,
            attempt,
            target=target,
            headers=upstream.with_headers(headers),
            body=raw,
            tls=upstream.tls,
        )

    def _settle(
        self,
        attempt: _Attempt,
        *,
        status: int,
        retry_after: int | None,
        source: str,
        error: str | None,
    ) -> None:
        """Record what ``attempt`` got (once): this ends its local in-flight count
        and is passive health for its node (docs/semantics.md §6, §8).

        It is recorded before the client's answer is complete, so a client
        that has its answer finds the engine already knowing how it went.
        """
        if attempt.settled:
            return
        attempt.settled = True
        self.journal.outcome(
            attempt.request_id,
            attempt.number,
            node=attempt.decision.node,
            status=status,
            retry_after=retry_after,
            source=source,
            error=error,
        )

    async def _answer_reject(self, responder: Responder, attempt: _Attempt) -> None:
        decision = attempt.decision
        status, headers, body = error_envelope(
            decision.outcome,
            model=decision.model,
            node=decision.subject,
            retry_after=decision.retry_after,
        )
        headers += _tags(attempt, decision.outcome)
        self._settle(
            attempt,
            status=status,
            retry_after=_retry_after(headers),
            source="gateway",
            error=None,
        )
        with contextlib.suppress(HTTPError):
            await responder.respond(status, headers, body)

    async def _cold_load(self, node: str, upstream: Upstream, decision: Decision) -> None:
        """``POST /models/load`` once per (node, model) at a time; the outcome is observed."""
        assert decision.load is not None and self._neurons is not None
        key = (node, decision.model)
        pending = self._loads.get(key)
        if pending is None:
            pending = self._loads[key] = _PendingLoad()
            try:
                pending.error = await self._load_evicting(node, upstream, decision)
                if self.engine.has_node(node):  # (a reload may have removed it meanwhile)
                    self.journal.load(node, decision.model, ok=pending.error is None)
                pending.finished = True
            finally:
                del self._loads[key]
                pending.done.set()
        else:
            await pending.done.wait()
        if not pending.finished:
            raise _Failed(
                IOPhase.LOAD, IOCause.TRANSPORT, "the load was interrupted", "interrupted"
            )
        if pending.error is not None:
            raise _neuron_failure(IOPhase.LOAD, pending.error)

    async def _load_once(self, upstream: Upstream, spec: LoadSpec) -> NeuronError | None:
        assert self._neurons is not None
        try:
            with anyio.fail_after(self.config.load_timeout):
                await self._neurons.load(upstream, spec)
        except TimeoutError:
            return NeuronError(IOCause.TRANSPORT, "timeout")
        except NeuronError as exc:
            return exc
        return None

    async def _load_evicting(
        self, node: str, upstream: Upstream, decision: Decision
    ) -> NeuronError | None:
        """Load; if the neuron is out of memory, evict (LRU, docs/semantics.md §5) and load again.

        The victim is the engine's :meth:`~cortex_fsm.engine.Engine.eviction_candidate`
        (loaded, not pinned on ``node``, accessed longest ago); its unload is
        recorded. With no candidate, or a failed unload, the first refusal stands.
        """
        assert decision.load is not None and self._neurons is not None
        error = await self._load_once(upstream, decision.load)
        if error is None or not _out_of_memory(error):
            return error
        victim = self.engine.eviction_candidate(node)
        event: dict[str, object] = {
            "event": "eviction",
            "node": node,
            "model": decision.model,
            "victim": victim,
        }
        if victim is None:
            _log.warning(json.dumps(event | {"result": "no_candidate", "reason": error.detail}))
            return error
        try:
            with anyio.fail_after(self.config.load_timeout):
                await self._neurons.unload(upstream, victim)
        except (TimeoutError, NeuronError) as exc:
            reason = str(exc) or "timeout"
            if self.engine.has_node(node):
                self.journal.unload(node, victim, ok=False)
            if self.metrics is not None:
                self.metrics.on_eviction(node, ok=False)
            _log.warning(json.dumps(event | {"result": "unload_failed", "reason": reason}))
            return error
        if not self.engine.has_node(node):
            return error  # removed by a reload meanwhile
        self.journal.unload(node, victim, ok=True)
        if self.metrics is not None:
            self.metrics.on_eviction(node, ok=True)
        cycles = self.cycles[node] = self.cycles.get(node, 0) + 1
        _log.info(json.dumps(event | {"result": "evicted", "cycles": cycles}))
        limit = self.config.defrag_after_cycles
        if 0 < limit < cycles:
            _log.warning(
                json.dumps(
                    {"event": "defrag_wanted", "node": node, "cycles": cycles, "limit": limit}
                )
            )
        return await self._load_once(upstream, decision.load)

    async def _base_url(self, node: Upstream, model: str) -> str:
        """Where requests for ``model`` go on ``node`` (``{base}/v1/...``).

        A neuron is asked (``GET /models/{id}/endpoint``, cached); any other
        kind serves ``/v1`` itself, at its endpoint (docs/semantics.md §11).
        """
        if not BACKENDS[node.kind].daemon:
            return node.endpoint
        return await self._resolve(node, model)

    async def _resolve(self, upstream: Upstream, model: str) -> str:
        """The model's inference base URL on a neuron (cached while its model map is unchanged)."""
        assert self._neurons is not None
        node = upstream.name
        key = (node, model)
        # A node removed from the fleet while a request to it is under way has no
        # generation any more: its answers are used, not cached.
        generation = self.journal.generation(node) if self.engine.has_node(node) else None
        cached = self._endpoint_cache.get(key)
        if cached is not None and cached[0] == generation:
            return cached[1]
        try:
            with anyio.fail_after(self.config.endpoint_timeout):
                url = await self._neurons.resolve_endpoint(upstream, model)
        except TimeoutError:
            raise _Failed(IOPhase.ENDPOINT, IOCause.TRANSPORT, "timeout", "timeout") from None
        except NeuronError as exc:
            raise _neuron_failure(IOPhase.ENDPOINT, exc) from None
        if self.config.endpoint_cache and generation is not None:
            self._endpoint_cache[key] = (generation, url)
        return url

    async def _forward(
        self,
        responder: Responder,
        attempt: _Attempt,
        *,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        tls: ssl.SSLContext | None = None,
    ) -> _Failed | None:
        """Send the request to the neuron; answer with what comes back.

        Nothing is sent to the client before the first byte of the answer's
        body has arrived: a small answer with a ``content-length`` (a plain
        completion) is read whole, anything else (event streams) up to its
        first chunk, which is then relayed with the rest as it arrives. So a
        failure up to that point is returned (to be answered, or retried on
        another node), not half-sent.
        """
        assert self._http is not None
        decision = attempt.decision
        node = decision.node
        assert node is not None
        io_errors = self.engine.policy.io_errors
        timeout = self.config.request_timeout
        async with contextlib.AsyncExitStack() as stack:
            upstream: StreamingResponse | None = None
            answer: bytes | None = None
            first: bytes | None = None
            chunks: AsyncIterator[bytes] | None = None
            failure: _Failed | None = None
            with anyio.move_on_after(timeout) as scope:
                try:
                    upstream = await stack.enter_async_context(
                        self._http.stream("POST", target, headers=headers, body=body, tls=tls)
                    )
                    status = upstream.status
                    if status >= 400:
                        cause = status_cause(status)
                        verdict = classify_io_failure(IOPhase.FORWARD, cause, io_errors=io_errors)
                        if verdict is not None:  # else (a 4xx) the answer is passed through
                            failure = _Failed(
                                IOPhase.FORWARD, cause, f"answered {status}", f"status:{status}"
                            )
                    if failure is None:
                        scope.deadline = anyio.current_time() + timeout
                        if _small(upstream.header("content-length")):
                            answer = await upstream.read()
                        else:
                            chunks = upstream.iter_bytes()
                            first = await anext(chunks, None)
                except HTTPError as exc:
                    failure = _Failed(
                        IOPhase.FORWARD, IOCause.TRANSPORT, _describe(exc), transport_reason(exc)
                    )
            if scope.cancelled_caught:
                failure = _Failed(IOPhase.FORWARD, IOCause.TRANSPORT, "timeout", "timeout")
            if failure is not None:
                self._endpoint_cache.pop((node, decision.model), None)
                return failure
            assert upstream is not None
            relayed = [(k, v) for k, v in upstream.headers if k not in _NOT_RELAYED]
            relayed += _tags(attempt, decision.outcome, node)
            if chunks is None:
                assert answer is not None
                self._settle(
                    attempt,
                    status=upstream.status,
                    retry_after=_retry_after(relayed),
                    source="upstream",
                    error=None,
                )
                with contextlib.suppress(HTTPError):
                    await responder.respond(upstream.status, relayed, answer)
                return None
            await self._relay(responder, attempt, upstream, relayed, first=first, chunks=chunks)
            return None

    async def _relay(
        self,
        responder: Responder,
        attempt: _Attempt,
        upstream: StreamingResponse,
        headers: list[tuple[str, str]],
        *,
        first: bytes | None,
        chunks: AsyncIterator[bytes],
    ) -> None:
        """Pass the neuron's answer through, chunk by chunk, as it arrives.

        ``first`` is the body's first chunk, already read (None: the body is empty).
        """
        decision = attempt.decision
        node = decision.node
        assert node is not None
        status = upstream.status
        settle = partial(
            self._settle,
            attempt,
            status=status,
            retry_after=_retry_after(headers),
            source="upstream",
        )
        event_stream = (upstream.header("content-type") or "").startswith("text/event-stream")
        framed = upstream.header("content-length") is not None
        try:
            await responder.start(status, headers)
        except HTTPError:
            settle(error=_CLIENT_CLOSED)
            return  # the client went away
        timeout = self.config.request_timeout
        failed: BaseException | None = None
        sending = False
        tail = b"\n\n"  # the end of what was relayed (is an event stream between events?)
        chunk = first
        with anyio.CancelScope() as scope:
            while chunk is not None:
                # A client that stops reading gets as long as the neuron would.
                scope.deadline = anyio.current_time() + timeout
                sending = True
                try:
                    await responder.send(chunk)
                except HTTPError:
                    settle(error=_CLIENT_CLOSED)
                    return  # leaving closes the upstream connection
                sending = False
                tail = (tail + chunk)[-4:]
                scope.deadline = anyio.current_time() + timeout
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    chunk = None
                except HTTPError as exc:
                    failed = exc
                    chunk = None
        if scope.cancelled_caught:
            if sending:  # the client stopped reading: drop it (and the upstream with it)
                _log.warning(
                    json.dumps(
                        {"event": "client_stalled", "request": attempt.request_id, "node": node}
                    )
                )
                settle(error=_CLIENT_STALLED)
                await responder.abort()
                return
            failed = TimeoutError()
        if failed is None:
            settle(error=None)
            with contextlib.suppress(HTTPError):
                await responder.end()
            return
        # After the first byte the status cannot change (docs/semantics.md §4): end an event
        # stream with an error event; break anything else visibly. The answer came
        # from the node, below 500: request_ok; its next poll tells the truth (§6).
        self._endpoint_cache.pop((node, decision.model), None)
        reason = _describe(failed)
        settle(error=transport_reason(failed))
        _log.warning(
            json.dumps(
                {
                    "event": "upstream_failed_mid_response",
                    "request": attempt.request_id,
                    "attempt": attempt.number,
                    "node": node,
                    "model": decision.model,
                    "reason": reason,
                }
            )
        )
        if event_stream and not framed:
            message = f"Neuron '{node}' failed while streaming '{decision.model}': {reason}"
            cls = REJECTS[Outcome.UPSTREAM_UNAVAILABLE]
            event = {"error": {"message": message, "type": cls.type, "code": cls.code}}
            # End an event the neuron left half-sent, so the error is an event of its own.
            between = tail.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))
            data = b"data: " + json.dumps(event).encode() + b"\n\n"
            with contextlib.suppress(HTTPError):
                await responder.send(data if between else b"\n\n" + data)
                await responder.end()
                return
        await responder.abort()

    def _log_failure(
        self, attempt: _Attempt, failure: _Failed, outcome: Outcome, *, retry: bool
    ) -> None:
        decision = attempt.decision
        _log.warning(
            json.dumps(
                {
                    "event": "upstream_failed",
                    "request": attempt.request_id,
                    "attempt": attempt.number,
                    "node": decision.node,
                    "model": decision.model,
                    "phase": failure.phase.value,
                    "cause": failure.cause.value,
                    "detail": failure.detail,
                    "outcome": outcome.value,
                    "next": "failover" if retry else "answer",
                }
            )
        )

    async def _answer_failure(
        self, responder: Responder, attempt: _Attempt, failure: _Failed, outcome: Outcome
    ) -> None:
        decision = attempt.decision
        node = decision.node
        template = REJECTS[outcome].message.format(model=decision.model, node=node or "?")
        status, headers, body = error_envelope(
            outcome,
            model=decision.model,
            node=node,
            message=f"{template} ({failure.detail})",
            retry_after=self.engine.policy.retry_after(outcome),
        )
        headers += _tags(attempt, outcome, node)
        self._settle(
            attempt,
            status=status,
            retry_after=_retry_after(headers),
            source="gateway",
            error=failure.error,
        )
        with contextlib.suppress(HTTPError):
            await responder.respond(status, headers, body)

    # -- reports --------------------------------------------------------------------------

    def models_listing(self) -> dict[str, object]:
        """``GET /v1/models``: the OpenAI list shape, plus where each model is and can be."""
        snapshot = self.engine.snapshot()
        catalogue = self.engine.catalogue
        ids = set(catalogue.profiles)
        for node in snapshot.nodes:
            ids.update(m for m, e in node.models.items() if e.status in _SERVING)
        aliases: dict[str, list[str]] = {}
        for alias, target in sorted(catalogue.aliases.items()):
            aliases.setdefault(target, []).append(alias)
        data: list[dict[str, object]] = []
        for model in sorted(ids):
            profile = catalogue.profile(model)
            holders = [n for n in snapshot.nodes if model in n.models]
            data.append(
                {
                    "id": model,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "cortex-fsm",
                    "loaded": any(
                        n.routable and n.models[model].status in _SERVING for n in holders
                    ),
                    "feasible_on": []
                    if profile is None
                    else [n.name for n in snapshot.nodes if feasible(profile, n.name, n.discovery)],
                    "locations": [
                        {"node": n.name, "status": n.models[model].status.value} for n in holders
                    ],
                    "aliases": aliases.get(model, []),
                }
            )
        # Each alias is a model a client can ask for: an entry of its own, naming its target.
        by_id = {entry["id"]: entry for entry in data}
        for alias, target in catalogue.aliases.items():
            if alias in by_id:
                continue  # already listed under that name
            entry = {
                "id": alias,
                "object": "model",
                "created": self.created,
                "owned_by": "cortex-fsm",
                "alias_of": target,
            }
            target_entry = by_id.get(target)
            for key in ("loaded", "feasible_on", "locations"):
                entry[key] = target_entry[key] if target_entry is not None else _EMPTY[key]
            data.append(entry)
        data.sort(key=lambda entry: str(entry["id"]))
        return {"object": "list", "data": data}

    def health_report(self) -> dict[str, object]:
        """``GET /health``: every node's state, and ``ok`` only when all are healthy."""
        now = self.journal.now()
        nodes = []
        all_healthy = True
        for name in self.engine.node_names:
            status = self.engine.status(name)
            all_healthy = all_healthy and status.state.label == "healthy"
            nodes.append(
                {
                    "name": name,
                    "endpoint": status.endpoint,
                    "state": status.state.label,
                    "routable": status.state.routable,
                    "consecutive_failures": status.consecutive_failures,
                    "last_ok": status.last_ok,
                    "last_ok_age_secs": None
                    if status.last_ok is None
                    else round(now - status.last_ok, 3),
                    "last_failure": status.last_failure,
                    "models": {m: e.status.value for m, e in status.models.items()},
                }
            )
        return {
            "status": "ok" if all_healthy else "degraded",
            "uptime_secs": round(now, 3),
            "policy": self.engine.policy.to_json(),
            "nodes": nodes,
        }


#: The upstream attempt result of a request's final outcome (routing outcomes: "ok").
_ATTEMPT_RESULT: Final = {
    Outcome.UPSTREAM_UNAVAILABLE.value: "failed",
    Outcome.COLD_LOAD_FAILED.value: "error",
    Outcome.ENDPOINT_RESOLVE_FAILED.value: "error",
}


def _final_tags(
    headers: Sequence[tuple[str, str]], decision: Decision
) -> tuple[str | None, str | None]:
    """``(outcome, node)`` as the client was told (``x-cortex-*``), else the decision's."""
    outcome: str | None = None
    node: str | None = None
    for name, value in reversed(headers):  # our tags are the last headers
        if name == "x-cortex-outcome":
            outcome = value
        elif name == "x-cortex-node":
            node = value
        elif name == "x-cortex-request":
            return outcome, node
    return decision.outcome.value, decision.node


async def _unauthorized(responder: Responder) -> None:
    body = _envelope(
        "Invalid or missing API key: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
        "invalid_request_error",
        "invalid_api_key",
    )
    await _reply(responder, 401, body, [("www-authenticate", 'Bearer realm="cortex-fsm"')])


_EMPTY: Final[Mapping[str, object]] = {"loaded": False, "feasible_on": [], "locations": []}


_OUT_OF_MEMORY: Final = "out of memory"


def _out_of_memory(error: NeuronError) -> bool:
    """Was a load refused for lack of memory (HTTP 507, or an answer saying so)?"""
    if error.status is None:
        return False
    if error.status == 507:
        return True
    _, _, answer = error.detail.partition(f"answered {error.status}: ")
    return _OUT_OF_MEMORY in answer.lower()


def _hops(value: str | None) -> list[str]:
    """The gateway tokens in an ``x-cortex-hop`` header."""
    if not value:
        return []
    return [token for token in (part.strip() for part in value.split(",")) if token]


def _tags(attempt: _Attempt, outcome: Outcome, node: str | None = None) -> list[tuple[str, str]]:
    tags = [("x-cortex-request", attempt.request_id), ("x-cortex-outcome", outcome.value)]
    if node is not None:
        tags.append(("x-cortex-node", node))
    if attempt.number > 1:
        tags.append((_ATTEMPT_HEADER, str(attempt.number)))
    return tags


def _retry_after(headers: Sequence[tuple[str, str]]) -> int | None:
    """The ``Retry-After`` seconds among ``headers`` (None: absent, or not in seconds)."""
    for name, value in headers:
        if name.lower() == "retry-after":
            seconds = value.strip()
            return (
                int(seconds)
                if seconds.isascii() and seconds.isdigit() and len(seconds) <= 9
                else None
            )
    return None


def _small(content_length: str | None) -> bool:
    """Is a framed answer small enough to read whole before answering?"""
    return (
        content_length is not None
        and content_length.isdigit()
        and (int(content_length) <= _BUFFER_LIMIT)
    )


def _describe(exc: BaseException) -> str:
    reason = transport_reason(exc)
    text = str(exc)
    return f"{reason}: {text}" if text and reason != "timeout" else reason


async def _reply(
    responder: Responder, status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()
) -> None:
    with contextlib.suppress(HTTPError):
        await responder.respond(status, [_JSON_TYPE, *headers], body)


# --------------------------------------------------------------------------
# Command line (wired into ``cortex-fsm serve``)

_PROG = "cortex-fsm"


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Log lines (transitions, upstream failures, ...) go to stderr, one per line, with a ``ts``."""
    _configure_logging(level, fmt)


_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


async def run_gateway(
    gateway: Gateway,
    *,
    on_started: Callable[[Gateway], None] | None = None,
    on_reload: Callable[[Gateway], None] | None = None,
) -> None:
    """Run ``gateway`` until SIGINT or SIGTERM, draining; SIGHUP calls ``on_reload``.

    The first SIGINT/SIGTERM drains (:meth:`Gateway.drain`) for up to the
    configuration's ``drain_timeout``; a second one, or the timeout, stops at
    once. Either way this returns normally, with the recording complete.
    """
    with anyio.open_signal_receiver(*_STOP_SIGNALS, signal.SIGHUP) as signals:
        async with anyio.create_task_group() as tg:
            stopped = anyio.Event()

            async def run(*, task_status: anyio.abc.TaskStatus[tuple[str, int]]) -> None:
                try:
                    await gateway.run(task_status=task_status)
                finally:
                    stopped.set()

            async def deadline() -> None:
                await anyio.sleep(gateway.config.drain_timeout)
                _log.warning(
                    json.dumps(
                        {
                            "event": "drain_timeout",
                            "timeout_s": gateway.config.drain_timeout,
                            "cut": gateway.server.active,
                        }
                    )
                )
                tg.cancel_scope.cancel()

            async def watch() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum == signal.SIGHUP:
                        if on_reload is not None:
                            try:
                                on_reload(gateway)
                            except Exception:  # a reload must never stop the gateway
                                _log.exception(json.dumps({"event": "reload_failed"}))
                    elif not gateway.draining:
                        _log.info(json.dumps({"event": "signal", "signal": name}))
                        gateway.drain()
                        tg.start_soon(deadline, name="drain deadline")
                    else:
                        _log.warning(
                            json.dumps(
                                {"event": "stop_now", "signal": name, "cut": gateway.server.active}
                            )
                        )
                        tg.cancel_scope.cancel()

            await tg.start(run)
            if on_started is not None:
                on_started(gateway)
            tg.start_soon(watch, name="signals")
            await stopped.wait()
            tg.cancel_scope.cancel()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser``."""
    parser.add_argument(
        "--config",
        default="cortex.toml",
        metavar="PATH",
        help="the gateway configuration (default: %(default)s); SIGHUP reads it again",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="override [gateway] listen (port 0 picks a free port)",
    )
    parser.add_argument(
        "--record",
        metavar="TRACE",
        help="record every observation, request and outcome as a trace (.jsonl or .jsonl.gz)",
    )
    parser.add_argument(
        "--allow-config-errors",
        action="store_true",
        help="start even when 'cortex-fsm check' finds errors in the configuration "
        "(default: refuse, naming them, exit status 2)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log level for stderr (default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        default="json",
        choices=LOG_FORMATS,
        help="log lines as JSON objects or as text (default: %(default)s); "
        "the access log is JSON either way",
    )


def _fail(message: str, status: int = 2) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return status


def _read_config(args: argparse.Namespace, env_keys: frozenset[bytes]) -> GatewayConfig:
    """``--config`` with ``--listen`` and the environment's keys applied (ConfigError if bad)."""
    config = load_config(args.config)
    if args.listen is not None:
        host, port = parse_listen(args.listen, where="--listen")
        config = attrs.evolve(config, listen_host=host, listen_port=port)
    if env_keys:
        config = attrs.evolve(config, api_keys=config.api_keys | env_keys)
    return config


def serve_main(args: argparse.Namespace) -> int:
    """``cortex-fsm serve``: run the gateway until SIGINT/SIGTERM; return the exit status."""
    try:
        env_keys = keys_from_env(os.environ)
        config = _read_config(args, env_keys)
    except ConfigError as exc:
        return _fail(str(exc))
    for key in config.ignored:
        print(f"{_PROG}: warning: {key}: not a catalogue key, ignored", file=sys.stderr)
    if not getattr(args, "allow_config_errors", False):
        from ..ci.check import refusal

        refused = refusal(args.config)
        if refused is not None:
            return _fail(refused)
    if args.record is not None:
        problem = output_problem(args.record)
        if problem is not None:
            return _fail(f"--record: {problem}")
    if config.access_log not in (None, "-"):
        problem = output_problem(config.access_log)
        if problem is not None:
            return _fail(f"{config.source}: [gateway] access_log: {problem}")
    configure_logging(args.log_level, getattr(args, "log_format", "json"))
    gateway = Gateway(config, record=args.record)

    def started(gw: Gateway) -> None:
        print(f"{_PROG} gateway listening on {gw.url}", flush=True)
        _log.info(
            json.dumps(
                {
                    "event": "started",
                    "url": gw.url,
                    "neurons": {n.name: n.endpoint for n in config.neurons},
                    "policy": config.policy.describe(),
                    "recording": args.record,
                    "api_keys": len(config.api_keys),
                    "pid": os.getpid(),
                }
            )
        )

    def reload(gw: Gateway) -> None:
        try:
            new = _read_config(args, env_keys)
            if not getattr(args, "allow_config_errors", False):
                from ..ci.check import refusal

                refused = refusal(args.config)
                if refused is not None:  # what serve would refuse to start on
                    raise ConfigError(refused.replace("refusing to start", "refusing to reload", 1))
            if new.access_log not in (None, "-", gw.config.access_log):
                problem = output_problem(new.access_log)
                if problem is not None:
                    raise ConfigError(f"{new.source}: [gateway] access_log: {problem}")
        except ConfigError as exc:
            if gw.metrics is not None:
                gw.metrics.on_reload(applied=False)
            _log.error(
                json.dumps({"event": "reload_rejected", "config": args.config, "error": str(exc)})
            )
            return
        gw.reload(new)

    try:
        anyio.run(partial(run_gateway, gateway, on_started=started, on_reload=reload))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        problem = expected_failure(exc)
        if problem is None:
            raise
        return _fail(problem, 1)  # e.g. the address is in use
    finally:
        gateway.close_recording()
    _log.info(json.dumps({"event": "stopped", "requests": gateway.journal.requests}))
    return 0


def expected_failure(exc: BaseException) -> str | None:
    """The message of an operational failure (possibly inside exception groups), else None.

    Cannot listen, cannot write, a neuron error escaping: one line for the
    user. Anything else is a bug and keeps its traceback.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, HTTPError | CortexError | OSError):
        return str(exc)
    return None
