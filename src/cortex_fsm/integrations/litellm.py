"""cortex_fsm as the routing and node-health policy of a LiteLLM ``Router`` (docs/litellm.md).

::

    from cortex_fsm.integrations.litellm import install

    installed = install(router)   # cortex_fsm picks the deployment of every request
    ...
    installed.close()             # LiteLLM's own routing again

It needs the ``litellm`` extra (``pip install 'cortex-fsm[litellm]'``), which
pins the LiteLLM versions this module is tested with
(:data:`SUPPORTED_LITELLM`). Nothing else in cortex_fsm imports LiteLLM.

Theory of operation
-------------------
*Where it plugs in.* ``Router.register_plugin(strategy)`` is the entry point
the pinned LiteLLM versions give for a custom routing strategy (the older
``set_custom_routing_strategy`` is a deprecated alias of it): the strategy's
``get_available_deployment`` / ``async_get_available_deployment`` picks the
deployment of every attempt, sync and async, retries included, and what it
raises is what LiteLLM's retry logic sees. Routing plugins
(``Router(plugins=...)``) can only narrow the candidate *models*, and
pre-call checks only filter, after which LiteLLM's own strategy still picks
and "nothing left" is its 429; neither can choose one deployment or answer a
typed 503 or 404.

*The fleet.* The engine runs with ``lifecycle = "static"`` (docs/semantics.md
§12): every deployment (``model_info.id``) is one node, and its model group
(``model_name``) is the one model it serves. The router's registry is read at
install and again whenever its version changes (checked on every pick and
every probe round), so deployments added or removed later become
``add_neuron`` / ``remove_neuron``.

*What the engine knows at the start.* The configuration says which group a
deployment serves, but not whether it is up. A deployment that will be
probed (``probe=True`` and it has an ``api_base``) enters the engine
``unknown`` with its group in its last-known model map, which is exactly
what is known; ``install`` then waits for the first probe round (at most
:data:`PROBE_TIMEOUT` seconds), so a freshly installed router routes by what
its deployments answered, and a deployment that never answered is a 503
with ``Retry-After`` for its group (§13), never a 404. A deployment that is
never probed has only the configuration to go by: it enters with the
configuration as its first models report (a successful poll), as LiteLLM
itself assumes every deployment up; passive health takes it out after
``failure_threshold`` failed requests, and -- with nothing to observe its
recovery -- the same declared report lets it in again ``poll_interval``
seconds later (LiteLLM's cooldown, in the engine's terms).

*Health.* Passive (§6): LiteLLM's per-attempt callbacks (the deployment
success/failure hooks on the async path, the success/failure events on both)
end each attempt; its exception is read as an outcome event and classified
by :func:`cortex_fsm.errors.attempt_result` (:func:`attempt_of`). Active,
with ``probe=True``: every ``poll_interval`` seconds each deployment's
``api_base`` is polled in the protocol of its ``model_info.kind``
(``openai`` by default) through the backend adapters, and the answer becomes
a models report for its group (listed under the backend's own name for the
model, ``litellm_params.model`` without its provider prefix) plus, where the
backend reports one, a load reading. A probe may take :data:`PROBE_TIMEOUT`
seconds, or the router's ``timeout`` when that is shorter. A request that
finds no live deployment left in its group, while one of them is down and
probed, does not get its 503 at once: a probe round starts (at most one per
:data:`PROBE_ON_DEMAND_GAP` seconds), the request waits up to
:data:`ON_DEMAND_WAIT` seconds for it, and is decided again -- a deployment
taken out by failed requests that has since recovered is back at the first
request that needs it, not at the next round.

*Failover* (§7). LiteLLM records in the request's metadata every deployment
an attempt of this request failed on (``previous_models``); every retry is
decided with those deployments excluded.

*Rejects.* A 503 decision raises LiteLLM's ``ServiceUnavailableError`` whose
response carries the OpenAI error envelope and ``Retry-After``: LiteLLM's
retry logic retries it while the request has retries left (its own backoff
says when; it waits out ``Retry-After`` when it knows no other healthy
deployment). A 404 decision raises ``NotFoundError``, which it never
retries. A request whose model is a deployment's id, not a group, goes to
that deployment, as LiteLLM's own routing does.

*Threads.* LiteLLM calls the strategy on the event loop of an async request
and on the caller's thread of a sync one, and the callbacks there or on its
logging threads; the probes run on an event loop of their own, in a thread
this module starts (an anyio blocking portal). Every engine call, from any
of them, is made under one lock (:attr:`Installed.lock`), held only for pure
in-memory work, never across I/O or an ``await``. ``close()`` stops the
probe thread, removes the callbacks and gives the router back LiteLLM's own
routing strategy.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Final

import anyio
import anyio.from_thread
import attrs
import httpx
import litellm
import openai
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.router import CustomRoutingStrategyBase

from ..backends import BACKENDS, Answer, Load
from ..drivers.http import HTTPClient
from ..drivers.neuron_client import NeuronClient, Upstream
from ..engine import Engine
from ..errors import ConfigError, Outcome, attempt_result, error_envelope
from ..fleet import ModelsReport, ModelStatus, Neuron, PollFailure
from ..policy import Policy
from ..routing import Decision
from ..wire import Invalid

__all__ = [
    "DEFAULT_KIND",
    "ON_DEMAND_WAIT",
    "PROBE_KINDS",
    "PROBE_ON_DEMAND_GAP",
    "PROBE_TIMEOUT",
    "STALE_ATTEMPT",
    "SUPPORTED_LITELLM",
    "Deployment",
    "Installed",
    "attempt_of",
    "failed_deployments",
    "group_report",
    "install",
    "read_deployment",
    "served_name",
]

_log = logging.getLogger("cortex_fsm.litellm")

#: The LiteLLM versions this module is tested with (the ``litellm`` extra pins the same).
SUPPORTED_LITELLM: Final = ">=1.110.0,<1.111"
#: The backend kinds a deployment's ``model_info.kind`` may name (docs/semantics.md §11).
PROBE_KINDS: Final = ("openai", "vllm", "sglang", "llamacpp", "ollama")
DEFAULT_KIND: Final = "openai"
#: Seconds one probe of a deployment may take (the poll timeout of docs/semantics.md §1),
#: or the router's own ``timeout`` when that is shorter.
PROBE_TIMEOUT: Final = 5.0
#: Seconds between two rounds asked for because a model group had no live deployment left.
PROBE_ON_DEMAND_GAP: Final = 1.0
#: Seconds a request that found no live deployment in its group waits for such a round
#: before it is decided again (and, if still nothing is live, answered 503).
ON_DEMAND_WAIT: Final = 0.25
#: Seconds after which an attempt whose outcome never arrived (a stream nobody
#: read to its end, a cancelled request) stops counting as in flight (§8).
STALE_ATTEMPT: Final = 600.0
_SEEN_LIMIT: Final = 4096
_NO_URL: Final = "http://cortex-fsm.invalid/v1/chat/completions"
#: What a reject says, in LiteLLM's words (deployments and model groups).
_MESSAGES: Final[Mapping[Outcome, str]] = {
    Outcome.NO_HEALTHY_NODES: "No deployment of this router is healthy right now; retry later",
    Outcome.MODEL_RECOVERING: (
        "Model group '{model}' is loading on deployment '{node}'; retry shortly"
    ),
    Outcome.FEASIBLE_NODE_UNHEALTHY: (
        "Every deployment of model group '{model}' is down right now; retry later"
    ),
    Outcome.MODEL_NOT_FOUND: "No deployment serves model group '{model}'",
}


# --------------------------------------------------------------------------
# Deployments


@attrs.frozen(slots=True, kw_only=True)
class Deployment:
    """One LiteLLM deployment as the engine sees it: a node serving one model group.

    ``served`` is the backend's own name for the model (what its model list
    says), ``endpoint`` the base URL its probes go to (``api_base`` without a
    trailing ``/v1``), or ``None`` when it has no ``api_base``. ``headers``
    (sent with every probe) may hold its API key: never shown.
    """

    id: str
    group: str
    served: str
    kind: str = DEFAULT_KIND
    endpoint: str | None = None
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)


def _mapping(value: object) -> Mapping[str, Any]:
    """A deployment entry, or a part of one, as a mapping (LiteLLM hands out dicts or models)."""
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    return {}


def _providers() -> frozenset[str]:
    return frozenset(str(getattr(p, "value", p)) for p in litellm.provider_list)


def served_name(params: Mapping[str, Any]) -> str:
    """``litellm_params.model`` as the backend names the model: without a provider prefix
    (``hosted_vllm/org/M`` -> ``org/M``), unless ``custom_llm_provider`` is given."""
    model = str(params.get("model", ""))
    if params.get("custom_llm_provider"):
        return model
    prefix, slash, rest = model.partition("/")
    if slash and rest and prefix in _providers():
        return rest
    return model


def _probe_endpoint(api_base: str) -> str:
    base = api_base.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def read_deployment(entry: object) -> Deployment:
    """A deployment of the router's model list, read; ``ConfigError`` (one line, naming
    the deployment and the key) when it cannot be routed by cortex_fsm."""
    data = _mapping(entry)
    info = _mapping(data.get("model_info"))
    params = _mapping(data.get("litellm_params"))
    ident = info.get("id")
    group = data.get("model_name")
    if not isinstance(ident, str) or not ident:
        raise ConfigError(
            f"LiteLLM deployment of {group!r}: model_info.id must be a non-empty string"
        )
    where = f"LiteLLM deployment {ident!r}"
    if not isinstance(group, str) or not group:
        raise ConfigError(f"{where}: model_name must be a non-empty string, not {group!r}")
    kind = info.get("kind", DEFAULT_KIND)
    if kind not in PROBE_KINDS:
        kinds = ", ".join(repr(k) for k in PROBE_KINDS)
        raise ConfigError(f"{where}: model_info.kind = {kind!r} is not one of {kinds}")
    model = params.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{where}: litellm_params.model must be a non-empty string")
    api_base = params.get("api_base")
    endpoint: str | None = None
    if api_base is not None:
        if not isinstance(api_base, str) or not api_base.startswith(("http://", "https://")):
            raise ConfigError(
                f"{where}: litellm_params.api_base {api_base!r} is not an http(s) URL"
            )
        endpoint = _probe_endpoint(api_base)
    key = params.get("api_key")
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(key, str) and key and not key.startswith("os.environ/"):
        headers = (("authorization", f"Bearer {key}"),)
    return Deployment(
        id=ident,
        group=group,
        served=served_name(params),
        kind=str(kind),
        endpoint=endpoint,
        headers=headers,
    )


# --------------------------------------------------------------------------
# Outcomes


def attempt_of(error: BaseException | None) -> tuple[str, int, str | None]:
    """How one attempt ended, as an outcome event's ``(source, status, error)``.

    ``None`` (an answer) is an upstream 200; a timeout or a connection that
    failed is the gateway's ``timeout`` / ``connect``; an error with an HTTP
    status is the upstream's answer with that status; anything else (LiteLLM
    could not use the answer) is a ``bad_answer``. Feed the result to
    :func:`cortex_fsm.errors.attempt_result`.
    """
    if error is None:
        return "upstream", 200, None
    if isinstance(error, openai.APITimeoutError):
        return "gateway", 503, "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "gateway", 503, "connect"
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return "upstream", status, f"status:{status}"
    return "gateway", 502, f"bad_answer: {type(error).__name__}"


def _deployment_id(data: Mapping[str, Any]) -> str | None:
    """The deployment an attempt went to, from a callback's kwargs (several shapes)."""
    params = _mapping(data.get("litellm_params"))
    for holder in (data, params, _mapping(params.get("metadata")), _mapping(data.get("metadata"))):
        ident = _mapping(holder.get("model_info")).get("id")
        if isinstance(ident, str) and ident:
            return ident
    return None


def _request_metadata(request: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not request:
        return {}
    for name in ("litellm_metadata", "metadata"):
        found = _mapping(request.get(name))
        if found.get("previous_models") is not None:
            return found
    return _mapping(request.get("metadata"))


def failed_deployments(request: Mapping[str, Any] | None) -> frozenset[str]:
    """The deployments earlier attempts of this request failed on (LiteLLM's
    ``previous_models``, which it starts afresh for every request)."""
    previous = _request_metadata(request).get("previous_models")
    if not isinstance(previous, Iterable) or isinstance(previous, str | bytes | Mapping):
        return frozenset()
    out = set()
    for item in previous:
        ident = _mapping(item).get("deployment_id")
        if isinstance(ident, str) and ident:
            out.add(ident)
    return frozenset(out)


def _reject(decision: Decision, requested: str) -> Exception:
    """The LiteLLM exception a reject raises: 503 (with ``Retry-After``) or 404."""
    template = _MESSAGES.get(decision.outcome)
    text = None
    if template is not None:
        text = template.format(model=decision.model, node=decision.subject)
    status, headers, body = error_envelope(
        decision.outcome,
        model=decision.model,
        node=decision.subject,
        message=text,
        retry_after=decision.retry_after,
    )
    response = httpx.Response(
        status,
        headers=headers,
        content=body,
        request=httpx.Request("POST", _NO_URL),
    )
    message = f"cortex_fsm {decision.outcome.value} (rule {decision.rule}): " + str(
        json.loads(body)["error"]["message"]
    )
    if status == 503:
        error: Exception = litellm.ServiceUnavailableError(
            message=message, llm_provider="cortex_fsm", model=requested, response=response
        )
    else:
        error = litellm.NotFoundError(
            message=message, model=requested, llm_provider="cortex_fsm", response=response
        )
    return error


# --------------------------------------------------------------------------
# The LiteLLM side: a routing strategy and a logger


@attrs.frozen(slots=True, kw_only=True)
class _Dry:
    """A 503 decision that a probe round under way may still change."""

    decision: Decision
    round: concurrent.futures.Future[None] = attrs.field(eq=False)


class _Strategy(CustomRoutingStrategyBase):  # type: ignore[misc]
    """The custom routing strategy: every pick is an engine decision."""

    def __init__(self, installed: Installed) -> None:
        self._installed = installed

    async def async_get_available_deployment(
        self,
        model: str,
        messages: object = None,
        input: object = None,
        specific_deployment: bool | None = False,
        request_kwargs: Mapping[str, Any] | None = None,
    ) -> Mapping[str, Any]:
        installed = self._installed
        picked = installed._pick(model, request_kwargs, probe=True)
        if isinstance(picked, _Dry):
            waited = asyncio.wrap_future(picked.round)
            await asyncio.wait({waited}, timeout=ON_DEMAND_WAIT)
            picked = installed._pick(model, request_kwargs, probe=False)
        if isinstance(picked, _Dry):
            raise _reject(picked.decision, model)
        return picked

    def get_available_deployment(
        self,
        model: str,
        messages: object = None,
        input: object = None,
        specific_deployment: bool | None = False,
        request_kwargs: Mapping[str, Any] | None = None,
    ) -> Mapping[str, Any]:
        installed = self._installed
        picked = installed._pick(model, request_kwargs, probe=True)
        if isinstance(picked, _Dry):
            concurrent.futures.wait([picked.round], timeout=ON_DEMAND_WAIT)
            picked = installed._pick(model, request_kwargs, probe=False)
        if isinstance(picked, _Dry):
            raise _reject(picked.decision, model)
        return picked


class _Outcomes(CustomLogger):  # type: ignore[misc]
    """LiteLLM's per-attempt callbacks, each ending one attempt (deduplicated by call id)."""

    def __init__(self, installed: Installed, name: str) -> None:
        super().__init__()
        self.name = name  # makes LiteLLM's duplicate check tell two installs apart
        self._installed = installed

    # the async path: per attempt, as soon as the deployment answered or failed
    async def async_post_call_success_deployment_hook(
        self, request_data: Mapping[str, Any], response: object, call_type: object
    ) -> None:
        self._installed._outcome(request_data, None)

    async def async_post_call_failure_deployment_hook(
        self,
        request_data: Mapping[str, Any],
        exception: BaseException,
        call_type: object,
        fallback_depth: int | None = None,
    ) -> None:
        self._installed._outcome(request_data, exception)

    # the events: the async path's (streams end here), and the sync path's
    async def async_log_success_event(
        self, kwargs: Mapping[str, Any], response_obj: object, start_time: object, end_time: object
    ) -> None:
        self._installed._outcome(kwargs, None)

    async def async_log_failure_event(
        self, kwargs: Mapping[str, Any], response_obj: object, start_time: object, end_time: object
    ) -> None:
        self._installed._outcome(kwargs, _exception(kwargs))

    def log_success_event(
        self, kwargs: Mapping[str, Any], response_obj: object, start_time: object, end_time: object
    ) -> None:
        self._installed._outcome(kwargs, None)

    def log_failure_event(
        self, kwargs: Mapping[str, Any], response_obj: object, start_time: object, end_time: object
    ) -> None:
        self._installed._outcome(kwargs, _exception(kwargs))


def _exception(kwargs: Mapping[str, Any]) -> BaseException:
    error = kwargs.get("exception")
    return error if isinstance(error, BaseException) else RuntimeError("unknown failure")


# --------------------------------------------------------------------------
# Active probes


@attrs.frozen(slots=True, kw_only=True)
class _Target:
    """One server to probe: several deployments may share it (one probe serves them all)."""

    endpoint: str
    kind: str
    headers: tuple[tuple[str, str], ...] = attrs.field(repr=False)


@attrs.frozen(slots=True, kw_only=True)
class _Probed:
    """What one probe of a target said: its models poll's verdict and its load reading."""

    verdict: ModelsReport | PollFailure
    load: Mapping[str, Load] | None = None


def group_report(deployment: Deployment, verdict: ModelsReport) -> ModelsReport:
    """A backend's models report as the deployment's: its group, with the status the
    backend gives the model it serves under its own name -- or nothing, when the
    backend does not serve it. (An Ollama model on disk is served: Ollama loads it on
    its first request, and under the static lifecycle nothing else would.)"""
    status = verdict.models.get(deployment.served)
    if status is None and deployment.kind == "ollama" and ":" not in deployment.served:
        status = verdict.models.get(deployment.served + ":latest")
    if status is None:
        return ModelsReport(models={})
    if status is ModelStatus.UNLOADED and deployment.kind == "ollama":
        status = ModelStatus.LOADED
    return ModelsReport(models={deployment.group: status})


class _Prober:
    """Polls every probed deployment's server each ``poll_interval`` seconds, on an
    event loop of its own (an anyio blocking portal: a thread this class starts)."""

    def __init__(self, installed: Installed) -> None:
        self._installed = installed
        self._known: dict[_Target, tuple[str, ...]] = {}
        self._unserved: set[str] = set()
        self._portal_cm = anyio.from_thread.start_blocking_portal(name="cortex-fsm-litellm-probe")
        self._portal = self._portal_cm.__enter__()
        self._client: NeuronClient | None = None
        self._http: HTTPClient | None = None
        self._wake: anyio.Event | None = None
        self._round_lock: anyio.Lock | None = None
        self._loop_future: concurrent.futures.Future[None] | None = None
        self._timeout = PROBE_TIMEOUT
        self._demand_lock = threading.Lock()
        self._pending: concurrent.futures.Future[None] | None = None
        self._demanded = -PROBE_ON_DEMAND_GAP
        self._stopped = False
        try:
            self._portal.call(self._open)
            self._portal.call(self.round)  # the first round, before install() returns
            self._loop_future = self._portal.start_task_soon(self._loop)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    async def _open(self) -> None:
        self._http = HTTPClient()
        self._client = NeuronClient(self._http)
        self._wake = anyio.Event()
        self._round_lock = anyio.Lock()

    async def _loop(self) -> None:
        interval = self._installed.policy.poll_interval
        while True:
            assert self._wake is not None
            with anyio.move_on_after(interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            await self.round()

    async def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def wake(self) -> None:
        """Probe now, without waiting for the round (from any thread but the probes')."""
        with self._demand_lock:
            if not self._stopped:
                self._portal.start_task_soon(self._set_wake)

    def on_demand(self) -> concurrent.futures.Future[None] | None:
        """A round now, for a request whose group has no live deployment left: the round
        under way (or just started) to wait for; ``None`` when the last one started less
        than :data:`PROBE_ON_DEMAND_GAP` seconds ago and is over (its answers stand)."""
        with self._demand_lock:
            if self._stopped:
                return None
            pending = self._pending
            if pending is not None and not pending.done():
                return pending
            now = time.monotonic()
            if now - self._demanded < PROBE_ON_DEMAND_GAP:
                return None
            self._demanded = now
            self._pending = self._portal.start_task_soon(self._quiet_round)
            return self._pending

    async def _quiet_round(self) -> None:
        """A round whose failure is logged, never left in a future nobody reads."""
        try:
            await self.round()
        except Exception as exc:  # pragma: no cover - a bug; the next round tries again
            _log.error(json.dumps({"event": "probe_round_failed", "error": repr(exc)}))

    def probe_now(self) -> None:
        """One round, now; returns when it is applied (from any thread but the probes')."""
        if not self._stopped:
            self._portal.call(self.round)

    def stop(self) -> None:
        with self._demand_lock:
            self._stopped = True
        if self._loop_future is not None:
            self._loop_future.cancel()
        try:
            self._portal.call(self._aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)

    async def _aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def round(self) -> None:
        """Probe every probed deployment's server once, all at the same time."""
        assert self._round_lock is not None
        async with self._round_lock:
            installed = self._installed
            installed.sync(wake=False)
            self._timeout = installed.probe_timeout()
            with installed.lock:
                members: dict[_Target, list[Deployment]] = {}
                for deployment in installed.deployments.values():
                    if installed._probed(deployment):
                        assert deployment.endpoint is not None
                        target = _Target(
                            endpoint=deployment.endpoint,
                            kind=deployment.kind,
                            headers=deployment.headers,
                        )
                        members.setdefault(target, []).append(deployment)

            async def one(target: _Target) -> None:
                self._apply(members[target], await self._probe(target))

            async with anyio.create_task_group() as tg:
                for target in members:
                    tg.start_soon(one, target)

    async def _get(self, upstream: Upstream, path: str) -> Answer:
        assert self._client is not None
        try:
            with anyio.fail_after(self._timeout):
                return await self._client.get(upstream, path)
        except TimeoutError:
            return Answer.failed(path, "timeout")

    async def _probe(self, target: _Target) -> _Probed:
        """One poll of ``target`` in the protocol of its kind (docs/semantics.md §11)."""
        backend = BACKENDS[target.kind]
        upstream = Upstream(
            name=target.endpoint,
            endpoint=target.endpoint,
            kind=target.kind,
            headers=target.headers,
        )
        first = await self._get(upstream, backend.liveness)
        failure = backend.live(first)
        if failure is not None:
            return _Probed(verdict=failure)
        answers = {backend.liveness: first}
        for path in backend.model_calls:
            answers[path] = await self._get(upstream, path)
        verdict = backend.models(answers, self._known.get(target, ()))
        if isinstance(verdict, PollFailure):
            return _Probed(verdict=verdict)
        self._known[target] = tuple(verdict.models)
        if backend.metrics is None or backend.load is None:
            return _Probed(verdict=verdict)
        reading = backend.load(await self._get(upstream, backend.metrics), tuple(verdict.models))
        return _Probed(verdict=verdict, load=None if isinstance(reading, Invalid) else reading)

    def _apply(self, deployments: list[Deployment], probed: _Probed) -> None:
        """One server's answers, for each deployment on it (as soon as they arrive)."""
        installed = self._installed
        engine = installed.engine
        with installed.lock:
            t = time.monotonic()
            for deployment in deployments:
                if installed.deployments.get(deployment.id) != deployment:
                    continue  # removed or replaced meanwhile
                if isinstance(probed.verdict, PollFailure):
                    engine.observe_models(deployment.id, t, probed.verdict)
                    continue
                report = group_report(deployment, probed.verdict)
                self._note_unserved(deployment, probed.verdict, report)
                engine.observe_models(deployment.id, t, report)
                if probed.load is not None:
                    load = probed.load.get(deployment.served)
                    busy = {} if load is None else {deployment.group: load.busy}
                    engine.observe_health(deployment.id, t, busy)

    def _note_unserved(
        self, deployment: Deployment, verdict: ModelsReport, report: ModelsReport
    ) -> None:
        """Log once when a live backend does not list the model its deployment names."""
        if report.models:
            self._unserved.discard(deployment.id)
            return
        if deployment.id in self._unserved:
            return
        self._unserved.add(deployment.id)
        fields = {
            "event": "model_not_served",
            "deployment": deployment.id,
            "group": deployment.group,
            "model": deployment.served,
            "served": sorted(verdict.models),
        }
        _log.warning(json.dumps(fields))


# --------------------------------------------------------------------------
# The installation


class Installed:
    """cortex_fsm installed on one LiteLLM ``Router`` (see :func:`install`).

    ``engine`` is the policy engine; read it under ``lock`` (LiteLLM calls
    into it from several threads). ``deployments`` is the fleet as last read
    from the router. ``close()`` (or leaving a ``with`` block) undoes
    everything ``install`` did.
    """

    def __init__(self, router: Any, policy: Policy, *, probe: bool) -> None:
        self.router = router
        self.policy = policy
        self.probe = probe
        self.engine = Engine([], policy=policy)
        self.lock = threading.Lock()
        self.deployments: dict[str, Deployment] = {}
        self._entries: dict[str, Mapping[str, Any]] = {}
        self._version: object = None
        self._open: dict[str, collections.deque[tuple[float, str]]] = {}
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._readmit: dict[str, float] = {}  # unprobed node -> when it went unhealthy
        self._closed = False
        self._prober: _Prober | None = None
        self._logger = _Outcomes(self, f"cortex_fsm-{id(self):x}")
        self._strategy = _Strategy(self)
        self._groups: frozenset[str] = frozenset()
        self._previous_strategy = "simple-shuffle"
        self._previous_args: dict[str, Any] = {}

    # -- the fleet --------------------------------------------------------------------------

    def _probed(self, deployment: Deployment) -> bool:
        return self.probe and deployment.endpoint is not None

    def sync(self, *, strict: bool = False, wake: bool = True) -> bool:
        """Read the router's deployments again if its registry changed; return whether
        the fleet changed. ``strict``: a deployment that cannot be read raises
        ``ConfigError`` (at install); otherwise it is logged and left out. ``wake``:
        a new deployment is probed at once rather than at the next round."""
        registry = self.router.registry()
        version = registry.version
        if version == self._version:
            return False
        wanted: dict[str, tuple[Deployment, Mapping[str, Any]]] = {}
        for entry in list(registry.all()):
            try:
                deployment = read_deployment(entry)
            except ConfigError as exc:
                if strict:
                    raise
                _log.warning(json.dumps({"event": "deployment_ignored", "reason": str(exc)}))
                continue
            if deployment.id in wanted:
                problem = f"LiteLLM deployment {deployment.id!r}: model_info.id is used twice"
                if strict:
                    raise ConfigError(problem)
                _log.warning(json.dumps({"event": "deployment_ignored", "reason": problem}))
                continue
            wanted[deployment.id] = (deployment, _mapping(entry))
        changed = False
        with self.lock:
            t = time.monotonic()
            for ident in list(self.deployments):
                if ident not in wanted or wanted[ident][0] != self.deployments[ident]:
                    self.engine.remove_neuron(ident, t)
                    del self.deployments[ident]
                    self._open.pop(ident, None)
                    self._readmit.pop(ident, None)
                    changed = True
            for ident, (deployment, entry) in wanted.items():
                self._entries[ident] = entry
                if ident in self.deployments:
                    continue
                self._add(deployment, t)
                changed = True
            for ident in list(self._entries):
                if ident not in wanted:
                    del self._entries[ident]
            self._groups = frozenset(d.group for d in self.deployments.values())
            self._version = version
        if changed and wake and self._prober is not None:
            self._prober.wake()
        return changed

    def _add(self, deployment: Deployment, t: float) -> None:
        """A deployment joins the engine (under the lock)."""
        engine = self.engine
        neuron = Neuron(
            name=deployment.id,
            endpoint=deployment.endpoint or "",
            kind=deployment.kind,
        )
        engine.add_neuron(neuron, t)
        if self._probed(deployment):
            # Known to serve its group, not known to be up: health stays unknown
            # until its first probe answers.
            engine.observe_load(deployment.id, t, deployment.group, ok=True)
        else:
            engine.observe_models(deployment.id, t, self._declared(deployment))
        self.deployments[deployment.id] = deployment

    @staticmethod
    def _declared(deployment: Deployment) -> ModelsReport:
        return ModelsReport(models={deployment.group: ModelStatus.LOADED})

    # -- routing ------------------------------------------------------------------------------

    def _pick(
        self, model: str, request: Mapping[str, Any] | None, *, probe: bool
    ) -> Mapping[str, Any] | _Dry:
        """The deployment for one attempt; else the reject, raised -- or, when ``probe``
        and a probe round may change it, that round to wait for first (:class:`_Dry`)."""
        self.sync()
        failed = failed_deployments(request)
        with self.lock:
            t = time.monotonic()
            self._sweep(t)
            if model not in self._groups:
                direct = self._direct(model)
                if direct is not None:
                    return direct
            exclude = frozenset(failed & self.deployments.keys())
            decision = self.engine.route(model, t, exclude)
            node = decision.node
            if node is not None:
                self._open.setdefault(node, collections.deque()).append((t, decision.model))
                return self._entries[node]
            ask = probe and decision.status == 503 and self._may_recover(model, exclude)
        if ask and self._prober is not None:
            pending = self._prober.on_demand()
            if pending is not None:
                return _Dry(decision=decision, round=pending)
        raise _reject(decision, model)

    def _may_recover(self, group: str, exclude: frozenset[str]) -> bool:
        """Does ``group`` have a probed deployment that is down (and not excluded), which
        a probe now could find up again? (Under the lock.)"""
        engine = self.engine
        return any(
            d.group == group
            and d.id not in exclude
            and self._probed(d)
            and not engine.state(d.id).routable
            for d in self.deployments.values()
        )

    def _direct(self, model: str) -> Mapping[str, Any] | None:
        """A request naming one deployment by its id, as LiteLLM allows (under the lock)."""
        entry = self._entries.get(model)
        return entry if entry is not None and model in self.deployments else None

    def _sweep(self, t: float) -> None:
        """Attempts with no outcome for too long stop counting; unprobed deployments
        taken out ``poll_interval`` seconds ago get their declared report again."""
        engine = self.engine
        for node, opened in self._open.items():
            while opened and t - opened[0][0] > STALE_ATTEMPT:
                engine.finish(node, opened.popleft()[1])
        if self._readmit:
            interval = self.policy.poll_interval
            for node, since in list(self._readmit.items()):
                if t - since >= interval:
                    del self._readmit[node]
                    engine.observe_models(node, t, self._declared(self.deployments[node]))

    # -- outcomes -------------------------------------------------------------------------------

    def _outcome(self, data: Mapping[str, Any], error: BaseException | None) -> None:
        """One attempt ended (a callback): its in-flight count ends, and its result
        is passive health for its deployment."""
        call = data.get("litellm_call_id")
        node = _deployment_id(data)
        if node is None:
            return
        source, status, reason = attempt_of(error)
        ok = attempt_result(node=node, source=source, status=status, error=reason)
        with self.lock:
            if isinstance(call, str) and call:
                if call in self._seen:
                    return
                self._seen[call] = None
                if len(self._seen) > _SEEN_LIMIT:
                    self._seen.popitem(last=False)
            if node not in self.deployments:
                return
            t = time.monotonic()
            opened = self._open.get(node)
            if opened:
                self.engine.finish(node, opened.popleft()[1])
            if ok is None:
                return
            moved = self.engine.observe_request(node, t, ok, "" if ok else str(reason))
            if (
                moved is not None
                and not moved.to.routable
                and not self._probed(self.deployments[node])
            ):
                self._readmit.setdefault(node, t)

    # -- lifecycle ------------------------------------------------------------------------------

    def probe_now(self) -> None:
        """Probe every deployment now and apply the answers before returning (blocks the
        calling thread up to :data:`PROBE_TIMEOUT` seconds). Nothing without probes."""
        if self._prober is not None:
            self._prober.probe_now()

    def _settings(self) -> Mapping[str, Any]:
        return _mapping(self.router.settings().as_dict())

    def probe_timeout(self) -> float:
        """Seconds a probe may take: :data:`PROBE_TIMEOUT`, or the router's ``timeout``
        when that is shorter (a backend slower to answer than a request may take is not
        serving)."""
        timeout = self._settings().get("timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
            return min(PROBE_TIMEOUT, float(timeout))
        return PROBE_TIMEOUT

    def _start(self) -> None:
        settings = self._settings()
        self._previous_strategy = str(settings.get("routing_strategy") or "simple-shuffle")
        self._previous_args = dict(_mapping(settings.get("routing_strategy_args")))
        self.sync(strict=True)
        if self.probe:
            self._prober = _Prober(self)
        litellm.logging_callback_manager.add_litellm_callback(self._logger)
        self.router.register_plugin(self._strategy)

    def close(self) -> None:
        """Stop the probes, remove the callbacks, and give the router LiteLLM's own routing
        back. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.router.routing_strategy_init(self._previous_strategy, self._previous_args)
        litellm.logging_callback_manager.remove_callback_from_all_lists(self._logger)
        if self._prober is not None:
            self._prober.stop()

    def __enter__(self) -> Installed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_INSTALLS: weakref.WeakValueDictionary[int, Installed] = weakref.WeakValueDictionary()
_INSTALLS_LOCK = threading.Lock()


def install(router: Any, *, policy: Policy | None = None, probe: bool = True) -> Installed:
    """Make cortex_fsm pick the deployment of every request ``router`` serves.

    ``policy`` (default: :class:`~cortex_fsm.policy.Policy`'s defaults) always
    runs with ``lifecycle = "static"``: a LiteLLM deployment serves a fixed
    model. ``probe``: poll every deployment's ``api_base`` each
    ``poll_interval`` seconds (its ``model_info.kind`` says how); without it
    health is passive only. Raises ``ConfigError`` for a deployment cortex_fsm
    cannot route (no ``model_info.id``, an unknown ``kind``...), and
    ``TypeError`` for a router without the entry points of the supported
    LiteLLM versions.
    """
    for member in ("register_plugin", "registry", "settings", "routing_strategy_init"):
        if not callable(getattr(router, member, None)):
            raise TypeError(
                f"install() needs a litellm.Router of a version {SUPPORTED_LITELLM} "
                f"(it has no {member}()); got {type(router).__name__}"
            )
    chosen = policy if policy is not None else Policy()
    if not isinstance(chosen, Policy):
        raise TypeError(
            f"install(): policy must be a cortex_fsm Policy, not {type(chosen).__name__}"
        )
    if chosen.lifecycle != "static":
        chosen = chosen.with_values({"lifecycle": "static"}, where="install()")
    with _INSTALLS_LOCK:
        earlier = _INSTALLS.get(id(router))
        if earlier is not None and earlier.router is router and not earlier._closed:
            raise ConfigError("cortex_fsm is already installed on this router: close() that first")
        installed = Installed(router, chosen, probe=probe)
        installed._start()
        _INSTALLS[id(router)] = installed
    return installed
