"""The gateway: an OpenAI-compatible HTTP server in front of the neurons.

Thin by design. For every inference request it reads the body, asks the
engine -- synchronously, through the :class:`~cortex_fsm.drivers.journal.Journal`,
so the request is recorded exactly as it was decided -- and then carries the
decision out: answer a reject, or cold-load, resolve the endpoint and forward.
A failure after a node was chosen is classified by
:func:`cortex_fsm.errors.classify_io_failure` (semantics §4 and its extension),
never here.

Endpoints::

    POST /v1/chat/completions, POST /v1/completions   routed to a neuron
    GET  /v1/models                                   catalogue + loaded models
    GET  /health                                      per node health, overall ok/degraded

Every answer to an inference request carries ``x-cortex-request`` (the id in
the recording), ``x-cortex-outcome`` (the engine's outcome, or the I/O
failure's) and, when routed, ``x-cortex-node``.

Run it with :meth:`Gateway.run` in a task group (``port=0`` in the config
picks a free port; ``task_status`` reports the bound address), or from the
command line: ``cortex-fsm serve --config cortex.toml [--record trace.jsonl.gz]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

import anyio
import anyio.abc
import attrs

from ..catalogue import feasible
from ..engine import Engine
from ..errors import (
    REJECTS,
    ConfigError,
    CortexError,
    IOCause,
    IOPhase,
    Outcome,
    classify_io_failure,
    error_envelope,
    status_cause,
)
from ..fleet import ModelStatus
from ..routing import Decision
from ..trace import TraceWriter, output_problem
from ..wire import load_json
from .config import GatewayConfig, load_config, parse_listen
from .http import (
    HTTPClient,
    HTTPError,
    Limits,
    Request,
    Responder,
    StreamingResponse,
    default_error_response,
    serve,
)
from .journal import Journal
from .neuron_client import NeuronClient, NeuronError, transport_reason
from .poller import Poller

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
_INFERENCE: Final = ("/v1/chat/completions", "/v1/completions")
_ROUTES: Final = {
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/models": "GET",
    "/health": "GET",
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
        "x-cortex-node",
        "x-cortex-outcome",
        "x-cortex-request",
    }
)
_FORWARDED_REQUEST_HEADERS: Final = ("accept", "x-request-id")
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


class _Failed(Exception):
    """An I/O failure after the node was chosen (carried to the one place that answers it)."""

    def __init__(self, phase: IOPhase, cause: IOCause, detail: str) -> None:
        super().__init__(detail)
        self.phase = phase
        self.cause = cause
        self.detail = detail


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
        self.journal = Journal(self.engine, clock=clock)
        self.record_path = None if record is None else os.fspath(record)
        self._recorder = recorder
        self._owned: TraceWriter | None = None
        self.address: tuple[str, int] | None = None
        """The bound ``(host, port)`` once running."""
        self.created = int(time.time())
        self._hop = secrets.token_hex(8)
        self._endpoints = {n.name: n.endpoint for n in config.neurons}
        self._endpoint_cache: dict[tuple[str, str], tuple[int, str]] = {}
        self._loads: dict[tuple[str, str], _PendingLoad] = {}
        self._http: HTTPClient | None = None
        self._neurons: NeuronClient | None = None
        self.poller: Poller | None = None
        self.server_limits = Limits(
            max_body_bytes=config.max_body_bytes, header_timeout=config.client_timeout
        )
        self.client_limits = Limits(max_keepalive_per_host=256)

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
        """
        try:
            async with HTTPClient(limits=self.client_limits) as http:
                self._http = http
                self._neurons = NeuronClient(http)
                self.poller = Poller(
                    self.journal,
                    self._neurons,
                    self.config.neurons,
                    interval=self.config.policy.poll_interval,
                    timeout=self.config.poll_timeout,
                )
                async with anyio.create_task_group() as tg:
                    self.address = await tg.start(
                        partial(
                            serve,
                            self.handle,
                            host=self.config.listen_host,
                            port=self.config.listen_port,
                            limits=self.server_limits,
                            error_response=default_error_response,
                        )
                    )
                    # No await between here and the poller's start: nothing is
                    # observed or routed before the recording is open.
                    if self.record_path is not None:
                        self._owned = TraceWriter(self.record_path, self.config.trace_header())
                        self.journal.recorder = self._owned
                    else:
                        self.journal.recorder = self._recorder
                    tg.start_soon(self.poller.run, name="poller")
                    task_status.started(self.address)
        finally:
            self.close_recording()

    def close_recording(self) -> None:
        """Stop recording; complete the ``record`` file (idempotent)."""
        self.journal.recorder = None
        owned, self._owned = self._owned, None
        if owned is not None:
            owned.close()

    # -- HTTP -----------------------------------------------------------------------------

    async def handle(self, request: Request, responder: Responder) -> None:
        """The HTTP handler."""
        path = request.path
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
        """``hops``: the ``x-cortex-hop`` value to forward (this gateway's token added)."""
        # Decide first, synchronously (the decision is recorded as it is made) ...
        request_id, decision = self.journal.request(requested)
        if not decision.routed:
            status, headers, body = error_envelope(
                decision.outcome,
                model=decision.model,
                node=decision.subject,
                retry_after=decision.retry_after,
            )
            headers += _tags(request_id, decision.outcome)
            with contextlib.suppress(HTTPError):
                await responder.respond(status, headers, body)
            return
        # ... then carry it out.
        node = decision.node
        assert node is not None
        model = decision.model
        endpoint = self._endpoints[node]
        try:
            if decision.load is not None:
                await self._cold_load(node, endpoint, decision)
            base = await self._resolve(node, endpoint, model)
        except _Failed as failure:
            await self._answer_failure(responder, request_id, decision, failure)
            return
        if model != requested:
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
        await self._forward(
            responder,
            request_id=request_id,
            decision=decision,
            target=target,
            headers=headers,
            body=raw,
        )

    async def _cold_load(self, node: str, endpoint: str, decision: Decision) -> None:
        """``POST /models/load`` once per (node, model) at a time; the outcome is observed."""
        assert decision.load is not None and self._neurons is not None
        key = (node, decision.model)
        pending = self._loads.get(key)
        if pending is None:
            pending = self._loads[key] = _PendingLoad()
            try:
                try:
                    with anyio.fail_after(self.config.load_timeout):
                        await self._neurons.load(endpoint, decision.load)
                except TimeoutError:
                    pending.error = NeuronError(IOCause.TRANSPORT, "timeout")
                except NeuronError as exc:
                    pending.error = exc
                self.journal.load(node, decision.model, ok=pending.error is None)
                pending.finished = True
            finally:
                del self._loads[key]
                pending.done.set()
        else:
            await pending.done.wait()
        if not pending.finished:
            raise _Failed(IOPhase.LOAD, IOCause.TRANSPORT, "the load was interrupted")
        if pending.error is not None:
            raise _Failed(IOPhase.LOAD, pending.error.cause, pending.error.detail)

    async def _resolve(self, node: str, endpoint: str, model: str) -> str:
        """The model's inference base URL on ``node`` (cached while its model map is unchanged)."""
        assert self._neurons is not None
        key = (node, model)
        generation = self.journal.generation(node)
        cached = self._endpoint_cache.get(key)
        if cached is not None and cached[0] == generation:
            return cached[1]
        try:
            with anyio.fail_after(self.config.endpoint_timeout):
                url = await self._neurons.resolve_endpoint(endpoint, model)
        except TimeoutError:
            raise _Failed(IOPhase.ENDPOINT, IOCause.TRANSPORT, "timeout") from None
        except NeuronError as exc:
            raise _Failed(IOPhase.ENDPOINT, exc.cause, exc.detail) from None
        if self.config.endpoint_cache:
            self._endpoint_cache[key] = (generation, url)
        return url

    async def _forward(
        self,
        responder: Responder,
        *,
        request_id: str,
        decision: Decision,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> None:
        """Send the request to the neuron; answer with what comes back.

        A small answer with a ``content-length`` (a plain completion) is read
        whole before anything is sent, so a failure while reading it can still
        be answered with the right status. Anything else (event streams) is
        relayed chunk by chunk.
        """
        assert self._http is not None and decision.node is not None
        node = decision.node
        io_errors = self.engine.policy.io_errors
        async with contextlib.AsyncExitStack() as stack:
            upstream: StreamingResponse | None = None
            answer: bytes | None = None
            failure: _Failed | None = None
            outcome: Outcome | None = None
            with anyio.move_on_after(self.config.request_timeout) as scope:
                try:
                    upstream = await stack.enter_async_context(
                        self._http.stream("POST", target, headers=headers, body=body)
                    )
                    status = upstream.status
                    if status >= 400:
                        cause = status_cause(status)
                        outcome = classify_io_failure(IOPhase.FORWARD, cause, io_errors=io_errors)
                        if outcome is not None:
                            failure = _Failed(IOPhase.FORWARD, cause, f"answered {status}")
                    if failure is None and _small(upstream.header("content-length")):
                        answer = await upstream.read()
                except HTTPError as exc:
                    failure = _Failed(IOPhase.FORWARD, IOCause.TRANSPORT, _describe(exc))
            if scope.cancelled_caught:
                failure = _Failed(IOPhase.FORWARD, IOCause.TRANSPORT, "timeout")
            if failure is not None:
                if failure.cause is not IOCause.STATUS_4XX:
                    self._endpoint_cache.pop((node, decision.model), None)
                await self._answer_failure(responder, request_id, decision, failure, outcome)
                return
            assert upstream is not None
            relayed = [(k, v) for k, v in upstream.headers if k not in _NOT_RELAYED]
            relayed += _tags(request_id, decision.outcome, node)
            if answer is not None:
                with contextlib.suppress(HTTPError):
                    await responder.respond(upstream.status, relayed, answer)
                return
            await self._relay(responder, request_id, decision, upstream, relayed)

    async def _relay(
        self,
        responder: Responder,
        request_id: str,
        decision: Decision,
        upstream: StreamingResponse,
        headers: list[tuple[str, str]],
    ) -> None:
        """Pass the neuron's answer through, chunk by chunk, as it arrives."""
        node = decision.node
        assert node is not None
        event_stream = (upstream.header("content-type") or "").startswith("text/event-stream")
        framed = upstream.header("content-length") is not None
        try:
            await responder.start(upstream.status, headers)
        except HTTPError:
            return  # the client went away
        chunks = upstream.iter_bytes()
        timeout = self.config.request_timeout
        failed: BaseException | None = None
        sending = False
        tail = b"\n\n"  # the end of what was relayed (is an event stream between events?)
        with anyio.CancelScope() as scope:
            while True:
                scope.deadline = anyio.current_time() + timeout
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except HTTPError as exc:
                    failed = exc
                    break
                # A client that stops reading gets as long as the neuron would.
                scope.deadline = anyio.current_time() + timeout
                sending = True
                try:
                    await responder.send(chunk)
                except HTTPError:
                    return  # the client went away; leaving closes the upstream connection
                sending = False
                if chunk:
                    tail = (tail + chunk)[-4:]
        if scope.cancelled_caught:
            if sending:  # the client stopped reading: drop it (and the upstream with it)
                _log.warning(
                    json.dumps({"event": "client_stalled", "request": request_id, "node": node})
                )
                await responder.abort()
                return
            failed = TimeoutError()
        if failed is None:
            with contextlib.suppress(HTTPError):
                await responder.end()
            return
        # After the first byte the status cannot change (semantics §4): end an event
        # stream with an error event; break anything else visibly.
        self._endpoint_cache.pop((node, decision.model), None)
        reason = _describe(failed)
        _log.warning(
            json.dumps(
                {
                    "event": "upstream_failed_mid_response",
                    "request": request_id,
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

    async def _answer_failure(
        self,
        responder: Responder,
        request_id: str,
        decision: Decision,
        failure: _Failed,
        outcome: Outcome | None = None,
    ) -> None:
        if outcome is None:
            outcome = classify_io_failure(
                failure.phase, failure.cause, io_errors=self.engine.policy.io_errors
            )
        node = decision.node
        if outcome is None:  # only a forwarded 4xx passes through; never here
            outcome = Outcome.UPSTREAM_UNAVAILABLE
        _log.warning(
            json.dumps(
                {
                    "event": "upstream_failed",
                    "request": request_id,
                    "node": node,
                    "model": decision.model,
                    "phase": failure.phase.value,
                    "cause": failure.cause.value,
                    "detail": failure.detail,
                    "outcome": outcome.value,
                }
            )
        )
        template = REJECTS[outcome].message.format(model=decision.model, node=node or "?")
        status, headers, body = error_envelope(
            outcome,
            model=decision.model,
            node=node,
            message=f"{template} ({failure.detail})",
            retry_after=self.engine.policy.retry_after(outcome),
        )
        headers += _tags(request_id, outcome, node)
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
        data = []
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


def _hops(value: str | None) -> list[str]:
    """The gateway tokens in an ``x-cortex-hop`` header."""
    if not value:
        return []
    return [token for token in (part.strip() for part in value.split(",")) if token]


def _tags(request_id: str, outcome: Outcome, node: str | None = None) -> list[tuple[str, str]]:
    tags = [("x-cortex-request", request_id), ("x-cortex-outcome", outcome.value)]
    if node is not None:
        tags.append(("x-cortex-node", node))
    return tags


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


def configure_logging(level: str = "info") -> None:
    """Log lines (health transitions, upstream failures) go to stderr, one per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("cortex_fsm")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


async def run_gateway(
    gateway: Gateway, *, on_started: Callable[[Gateway], None] | None = None
) -> None:
    """Run ``gateway`` until SIGINT or SIGTERM, then shut down cleanly."""
    async with anyio.create_task_group() as tg:
        await tg.start(gateway.run)
        if on_started is not None:
            on_started(gateway)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        tg.cancel_scope.cancel()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser``."""
    parser.add_argument(
        "--config",
        default="cortex.toml",
        metavar="PATH",
        help="the gateway configuration (default: %(default)s)",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="override [gateway] listen (port 0 picks a free port)",
    )
    parser.add_argument(
        "--record",
        metavar="TRACE",
        help="record every observation and request as a v1 trace (.jsonl or .jsonl.gz)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log level for stderr (default: %(default)s)",
    )


def _fail(message: str, status: int = 2) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return status


def serve_main(args: argparse.Namespace) -> int:
    """``cortex-fsm serve``: run the gateway until Ctrl-C; return the exit status."""
    try:
        config = load_config(args.config)
        if args.listen is not None:
            host, port = parse_listen(args.listen, where="--listen")
            config = attrs.evolve(config, listen_host=host, listen_port=port)
    except ConfigError as exc:
        return _fail(str(exc))
    for key in config.ignored:
        print(f"{_PROG}: warning: {key}: not a catalogue key, ignored", file=sys.stderr)
    if args.record is not None:
        problem = output_problem(args.record)
        if problem is not None:
            return _fail(f"--record: {problem}")
    configure_logging(args.log_level)
    gateway = Gateway(config, record=args.record)

    def started(gw: Gateway) -> None:
        names = ", ".join(f"{n.name}={n.endpoint}" for n in config.neurons)
        print(f"{_PROG} gateway listening on {gw.url}", flush=True)
        print(
            f"{_PROG}: neurons: {names}; {config.policy.describe()}"
            + (f"; recording to {args.record}" if args.record else ""),
            file=sys.stderr,
            flush=True,
        )

    try:
        anyio.run(partial(run_gateway, gateway, on_started=started))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        problem = expected_failure(exc)
        if problem is None:
            raise
        return _fail(problem, 1)  # e.g. the address is in use
    finally:
        gateway.close_recording()
    print(f"{_PROG}: gateway stopped", file=sys.stderr, flush=True)
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
