"""The fake neuron's other flavours: vLLM, SGLang, llama.cpp, Ollama and a plain OpenAI server.

``cortex-fsm fake-neuron --flavor KIND`` answers the endpoints a real server
of that kind answers, in the shapes its public documentation gives, so the
gateway's backend adapters (:mod:`cortex_fsm.backends`) are tested end to
end. Every flavour serves the OpenAI endpoints ``POST /v1/chat/completions``,
``/v1/completions`` and ``/v1/embeddings`` (the fake neuron's deterministic
answers), and the same ``/_control`` fault injection. What differs:

``openai``
    ``GET /v1/models``: ``{"object": "list", "data": [{"id", "object":
    "model", "created", "owned_by"}]}``. Nothing else.
``vllm``
    ``GET /health``: 200, empty body. ``GET /v1/models`` (``owned_by``
    ``vllm``, with ``root``, ``parent`` and ``max_model_len``). ``GET
    /metrics``: Prometheus text with ``vllm:num_requests_running`` and
    ``vllm:num_requests_waiting`` (labels ``engine``, ``model_name``), plus
    token counters and ``vllm:kv_cache_usage_perc``. ``GET /version``.
``sglang``
    ``GET /health``: 200, empty body. ``GET /v1/models`` (``owned_by``
    ``sglang``). ``GET /metrics``: ``sglang:num_running_reqs`` and
    ``sglang:num_queue_reqs`` (labels ``model_name``, ``engine_type``,
    ``tp_rank``, ``pp_rank``), plus token counters and ``sglang:token_usage``.
    ``GET /get_model_info``.
``llamacpp``
    ``GET /health``: 200 ``{"status": "ok"}``, or -- while "loading"
    (``set_loading``) -- 503 ``{"error": {"code": 503, "message": "Loading
    model", "type": "unavailable_error"}}``, which every other endpoint
    answers too except the model lists. ``GET /v1/models`` (also ``/models``
    and ``/api/tags``): ``{"models": [...], "object": "list", "data":
    [{"id", "object", "created", "owned_by": "llamacpp", "meta"}]}``. ``GET
    /metrics``: ``llamacpp:requests_processing`` and
    ``llamacpp:requests_deferred`` (no labels: the whole server), plus
    token counters.
``ollama``
    ``GET /``: ``Ollama is running``. ``GET /api/tags``: every model here
    (``{"models": [{"name", "model", "modified_at", "size", "digest",
    "details"}]}``); ``GET /api/ps``: those in memory (status ``loaded``),
    with ``expires_at`` and ``size_vram``; ``GET /api/version``; ``GET
    /v1/models`` (``owned_by`` ``library``). A request for a model that is
    not in memory loads it (it then appears in ``/api/ps``). A name without
    a tag means ``:latest``.

A model's status (``set_status``) decides whether it is served: the
flavours other than ``ollama`` list and serve only ``loaded`` (and
``reloading``) models; ``queue_depth`` (``set_queue``) is what the
``waiting``/``queue``/``deferred`` gauge reports, ``in_flight`` the
requests being answered right now (the ``running``/``processing`` gauge).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from ..backends import KINDS
from .http import Request, Responder

if TYPE_CHECKING:
    from .fake_neuron import FakeNeuron, _Model

__all__ = ["FLAVOURS", "METRICS_CONTENT_TYPE", "flavour_routes"]

FLAVOURS: Final = KINDS
"""The flavours a fake neuron speaks (``neuron`` is the daemon of docs/semantics.md §1)."""

METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_SERVING: Final = ("loaded", "reloading")
_LOADING: Final = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
#: What llama-server answers while loading (model lists excepted).
LLAMACPP_OPEN_WHILE_LOADING: Final = frozenset({"/models", "/v1/models", "/api/tags"})

Handler = Callable[[Request, Responder], Awaitable[None]]
Routes = dict[str, tuple[str, Handler]]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _Collector:
    """One scrape's metric families (a prometheus_client custom collector)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(families: list[Metric]) -> bytes:
    """Prometheus text exposition of ``families`` (written by prometheus_client)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(families))
    return generate_latest(registry)


class Flavour:
    """The endpoints of one kind of server, over a :class:`FakeNeuron`'s state."""

    def __init__(self, neuron: FakeNeuron, kind: str) -> None:
        self.neuron = neuron
        self.kind = kind
        self.created = int(time.time())

    # -- what is served -------------------------------------------------------------------

    def listed(self) -> list[_Model]:
        models = self.neuron._models.values()
        if self.kind == "ollama":
            return list(models)
        return [m for m in models if m.status in _SERVING]

    def in_memory(self) -> list[_Model]:
        return [m for m in self.neuron._models.values() if m.status in _SERVING]

    def resolve(self, requested: str) -> str:
        """The id ``requested`` means here (Ollama: ``name`` is ``name:latest``)."""
        models = self.neuron._models
        if self.kind == "ollama" and requested not in models and ":" not in requested:
            return f"{requested}:latest"
        return requested

    def not_found(self, method: str, path: str) -> tuple[str, bytes]:
        """The server's own 404: FastAPI's for vLLM and SGLang, Go's for Ollama."""
        if self.kind in ("vllm", "sglang"):
            return "application/json", b'{"detail":"Not Found"}'
        if self.kind == "ollama":
            return "text/plain", b"404 page not found"
        message = f"File Not Found: {method} {path}"
        error = {"error": {"code": 404, "message": message, "type": "not_found_error"}}
        return "application/json", json.dumps(error).encode()

    def lazy(self) -> bool:
        """Does a request for a model not in memory load it (instead of a 404)?"""
        return self.kind in ("neuron", "ollama")

    def refuses(self, path: str) -> dict[str, Any] | None:
        """The answer every request gets right now, before routing (llama.cpp loading)."""
        loading = self.kind == "llamacpp" and self.neuron.loading
        return _LOADING if loading and path not in LLAMACPP_OPEN_WHILE_LOADING else None

    # -- routes ------------------------------------------------------------------------------

    def routes(self) -> Routes:
        get_models = ("GET", self._v1_models)
        table: dict[str, Routes] = {
            "openai": {"/v1/models": get_models},
            "vllm": {
                "/health": ("GET", self._empty_ok),
                "/v1/models": get_models,
                "/metrics": ("GET", self._metrics),
                "/version": ("GET", self._version),
            },
            "sglang": {
                "/health": ("GET", self._empty_ok),
                "/v1/models": get_models,
                "/metrics": ("GET", self._metrics),
                "/get_model_info": ("GET", self._model_info),
            },
            "llamacpp": {
                "/health": ("GET", self._llamacpp_health),
                "/v1/health": ("GET", self._llamacpp_health),
                "/v1/models": get_models,
                "/models": get_models,
                "/api/tags": get_models,
                "/metrics": ("GET", self._metrics),
            },
            "ollama": {
                "/": ("GET", self._ollama_root),
                "/api/tags": ("GET", self._tags),
                "/api/ps": ("GET", self._ps),
                "/api/version": ("GET", self._version),
                "/v1/models": get_models,
            },
        }
        return table[self.kind]

    async def _empty_ok(self, request: Request, responder: Responder) -> None:
        await responder.respond(200, self.neuron._headers("application/json"), b"")

    async def _version(self, request: Request, responder: Responder) -> None:
        await self.neuron._json(responder, 200, {"version": "0.0.0-fake"})

    async def _llamacpp_health(self, request: Request, responder: Responder) -> None:
        if self.neuron.loading:
            await self.neuron._json(responder, 503, _LOADING)
        else:
            await self.neuron._json(responder, 200, {"status": "ok"})

    async def _ollama_root(self, request: Request, responder: Responder) -> None:
        await responder.respond(
            200, self.neuron._headers("text/plain; charset=utf-8"), b"Ollama is running"
        )

    async def _model_info(self, request: Request, responder: Responder) -> None:
        served = self.listed()
        path = served[0].id if served else ""
        await self.neuron._json(
            responder, 200, {"model_path": path, "tokenizer_path": path, "is_generation": True}
        )

    def _owner(self) -> str:
        return {"ollama": "library", "openai": "system"}.get(self.kind, self.kind)

    async def _v1_models(self, request: Request, responder: Responder) -> None:
        data: list[dict[str, Any]] = []
        for model in self.listed():
            entry: dict[str, Any] = {
                "id": model.id,
                "object": "model",
                "created": self.created,
                "owned_by": self._owner(),
            }
            if self.kind in ("vllm", "sglang"):
                entry |= {"root": model.id, "parent": None, "max_model_len": 32768}
            if self.kind == "llamacpp":
                entry["meta"] = {"vocab_type": 2, "n_vocab": 151936, "n_ctx_train": 32768}
            data.append(entry)
        body: dict[str, Any] = {"object": "list", "data": data}
        if self.kind == "llamacpp":
            # llama-server answers Ollama's shape too, in the same object.
            body = {"models": [self._tag(m) for m in self.listed()], **body}
        await self.neuron._json(responder, 200, body)

    def _tag(self, model: _Model) -> dict[str, Any]:
        size = self.neuron._size_bytes(model)
        return {
            "name": model.id,
            "model": model.id,
            "modified_at": "2025-01-01T00:00:00Z",
            "size": size,
            "digest": _digest(model.id),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "fake",
                "families": ["fake"],
                "parameter_size": "8B",
                "quantization_level": "Q4_K_M",
            },
        }

    async def _tags(self, request: Request, responder: Responder) -> None:
        await self.neuron._json(
            responder, 200, {"models": [self._tag(m) for m in self.neuron._models.values()]}
        )

    async def _ps(self, request: Request, responder: Responder) -> None:
        running = []
        for model in self.in_memory():
            tag = self._tag(model)
            del tag["modified_at"]
            running.append({**tag, "expires_at": "2099-01-01T00:00:00Z", "size_vram": tag["size"]})
        await self.neuron._json(responder, 200, {"models": running})

    # -- metrics ----------------------------------------------------------------------------

    async def _metrics(self, request: Request, responder: Responder) -> None:
        text = render(self.families())
        await responder.respond(200, self.neuron._headers(METRICS_CONTENT_TYPE), text)

    def families(self) -> list[Metric]:
        """This flavour's ``/metrics``, from the fake's in-flight and queue counts."""
        served = self.in_memory()
        tokens = self.neuron.tokens
        if self.kind == "llamacpp":
            return [
                _gauge(
                    "llamacpp:requests_processing",
                    "Number of requests processing.",
                    {(): sum(m.in_flight for m in served)},
                ),
                _gauge(
                    "llamacpp:requests_deferred",
                    "Number of requests deferred.",
                    {(): sum(m.queue_depth for m in served)},
                ),
                _counter(
                    "llamacpp:prompt_tokens",
                    "Number of prompt tokens processed.",
                    {(): sum(tokens.get(m.id, (0, 0))[0] for m in served)},
                ),
                _counter(
                    "llamacpp:tokens_predicted",
                    "Number of generation tokens processed.",
                    {(): sum(tokens.get(m.id, (0, 0))[1] for m in served)},
                ),
            ]
        names: tuple[str, ...]
        if self.kind == "vllm":
            names = ("engine", "model_name")

            def key(m: _Model) -> tuple[str, ...]:
                return ("0", m.id)

            running = (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
            )
            waiting = ("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
            usage = ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
            prompt = ("vllm:prompt_tokens", "Number of prefill tokens processed.")
            generated = ("vllm:generation_tokens", "Number of generation tokens processed.")
        else:
            names = ("model_name", "engine_type", "tp_rank", "pp_rank")

            def key(m: _Model) -> tuple[str, ...]:
                return (m.id, "unified", "0", "0")

            running = ("sglang:num_running_reqs", "The number of running requests.")
            waiting = ("sglang:num_queue_reqs", "The number of requests in the waiting queue.")
            usage = ("sglang:token_usage", "The token usage.")
            prompt = ("sglang:prompt_tokens", "Number of prefill tokens processed.")
            generated = ("sglang:generation_tokens", "Number of generation tokens processed.")
        return [
            _gauge(*running, {key(m): m.in_flight for m in served}, names),
            _gauge(*waiting, {key(m): m.queue_depth for m in served}, names),
            _gauge(*usage, {key(m): min(1.0, m.in_flight / 64) for m in served}, names),
            _counter(*prompt, {key(m): tokens.get(m.id, (0, 0))[0] for m in served}, names),
            _counter(*generated, {key(m): tokens.get(m.id, (0, 0))[1] for m in served}, names),
        ]


def _gauge(
    name: str,
    doc: str,
    values: Mapping[tuple[str, ...], float],
    labels: tuple[str, ...] = (),
) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


def _counter(
    name: str,
    doc: str,
    values: Mapping[tuple[str, ...], float],
    labels: tuple[str, ...] = (),
) -> Metric:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


def flavour_routes(neuron: FakeNeuron, kind: str) -> Flavour:
    """The :class:`Flavour` of ``kind`` over ``neuron``'s state."""
    if kind not in FLAVOURS or kind == "neuron":
        raise ValueError(f"no flavour {kind!r}: one of {', '.join(FLAVOURS[1:])}")
    return Flavour(neuron, kind)
