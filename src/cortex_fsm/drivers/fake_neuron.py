"""A simulated neuron (GPU host) for demos and tests.

It answers the neuron daemon's HTTP API (docs/semantics.md §1 and §3) over
a real socket, so the poller and the gateway can be exercised end to end
without GPUs:

``GET /discovery``
    topology: ``hostname`` (the neuron's name), ``os``, ``kernel``,
    ``cuda_version``, ``driver_version``, ``devices`` (``gpus`` identical
    devices of ``vram_mb`` each), ``harnesses``, ``max_prompt_tokens``.
``GET /models``
    JSON array of ``{"id", "harness", "status", "devices", "vram_used_mb"}``.
``GET /health``
    ``{"uptime_secs", "devices", "models": [{"id", "in_flight", "queue_depth"}]}``;
    ``in_flight`` counts the inference requests being served right now,
    ``queue_depth`` is whatever was last set through the control API (0).
``POST /models/load``
    ``{"model_id", "harness"?, "quant"?, "tensor_parallel"?, "devices"?}`` ->
    200 ``{"status": "loaded", ...}`` after ``load_delay`` seconds (the model
    reads ``loading`` meanwhile); a model already ``loaded`` answers 200 with
    ``"message": "model already loaded"``; a malformed spec, or device
    indices this neuron does not have, 400. With ``max_resident`` N, a load
    that would make more than N models resident (``loaded``, ``reloading``
    or ``loading``) is refused: 507 ``{"error": "out of memory"}``.
``POST /models/unload``
    ``{"model_id"}`` -> 200, the model becomes ``unloaded``; unknown -> 404.
``GET /models/{id}/endpoint``
    (``id`` percent-encoded, e.g. ``org%2FBig-70B``) -> ``{"url":
    "http://127.0.0.1:{port}"}``: deliberately a loopback URL, which the
    gateway must rewrite to the neuron's host. Unknown model -> 404.
``POST /v1/chat/completions``, ``POST /v1/completions``
    OpenAI-shaped answers, plain or streamed (``"stream": true`` gives
    ``text/event-stream`` chunks, one per token, then ``data: [DONE]``). The
    tokens are fake but deterministic: words picked by hashing the neuron
    name, the model and the prompt, at most ``max_tokens`` (default 16) of
    them, ``token_latency`` seconds apiece. Only a model that is ``loaded``
    or ``reloading`` here is served; an ``unloaded`` one is reloaded on the
    spot (it reads ``reloading`` for ``load_delay`` seconds, then
    ``loaded``); anything else is a 404 OpenAI error envelope. A prompt longer
    than ``max_prompt_tokens`` words is a 400 ``context_length_exceeded``.
``POST /v1/embeddings``
    ``{"model", "input"}`` (a string, an array of strings or of token ids) ->
    the OpenAI list of deterministic 8-dimensional unit vectors.
``POST /v1/responses``
    OpenAI's Responses API: ``{"model", "input", "instructions"?,
    "max_output_tokens"?, "stream"?}`` -> a ``response`` object whose
    ``output`` is one assistant message; streamed as typed events
    (``response.created``, ``response.output_text.delta`` per token,
    ``response.output_text.done``, ``response.completed``).
``POST /v1/messages``
    Anthropic's Messages API: ``{"model", "messages", "system"?,
    "max_tokens"?, "stream"?}`` -> a ``message`` with one text block;
    streamed as ``message_start``, ``content_block_start``,
    ``content_block_delta`` per token, ``content_block_stop``,
    ``message_delta``, ``message_stop``.
    The same fake tokens, model states and reloads as chat.

Every response carries ``x-neuron: {name}``.

**Flavours.** ``flavor`` (``--flavor``) makes it answer as another kind of
server instead -- ``openai``, ``vllm``, ``sglang``, ``llamacpp`` or ``ollama``
-- with that server's endpoints (see :mod:`cortex_fsm.drivers.fake_flavours`);
the inference endpoints and the fault injection are the same. ``tls`` (an
``ssl.SSLContext`` with a certificate; ``--tls-cert``/``--tls-key``) serves
``https://``; ``api_key`` (``--api-key``) answers 401 to any request (but
``/_control``) without ``Authorization: Bearer {api_key}``.

**Model ids and sources.** The gateway posts ``{source}:{id}`` to
``/models/load`` when the catalogue profile names a source, and then refers
to the model by its bare ``id``. So a requested id that is not already known
here and contains ``:`` with no ``/`` before the first ``:`` (``hf:org/M``,
``hf:M``) is registered as the part after that ``:`` (``org/M``, ``M``); any
other id (``org/M:Q4``, or an id this neuron already knows) is taken as is.
The same rule resolves ids given to unload, the endpoint lookup and inference.

**Fault injection**, over HTTP (``POST /_control`` with a JSON action; ``GET
/_control`` shows the state) or in process (methods of :class:`FakeNeuron`
of the same names). Faults never apply to ``/_control`` itself:

* ``{"action": "stall", "seconds": N}``: every request waits ``N`` seconds
  (or until ``resume``) before being handled;
* ``{"action": "fail"}``: every request is answered HTTP 500;
* ``{"action": "drop"}``: every request gets its connection closed without
  an answer (takes precedence over ``fail``; ``stall`` still delays first);
* ``{"action": "resume"}``: clears stall, fail and drop (releasing stalled
  requests at once);
* ``{"action": "set_status", "model": ID, "status": S}``: sets (or creates)
  a model entry's status;
* ``{"action": "set_queue", "model": ID, "queue_depth": N}``: sets the queue
  depth ``/health`` (a flavour: its ``/metrics``) reports for a known model;
* ``{"action": "set_loading", "loading": true|false}``: the ``llamacpp``
  flavour only: while true, ``/health`` -- and everything but the model
  lists -- answers 503 ``Loading model`` as llama-server does while it loads.

Run it in process::

    neuron = FakeNeuron(FakeNeuronConfig(name="n1", models=(("m", "loaded"),)))
    port = await task_group.start(neuron.run)
    neuron.fail()           # ... and neuron.resume()

or from the command line: ``cortex-fsm fake-neuron --name n1 --model m``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import ssl
import sys
import time
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Final
from urllib.parse import unquote

import anyio
import anyio.abc
import attrs

from ..wire import load_json
from .fake_flavours import FLAVOURS, Flavour, flavour_routes
from .http import (
    HTTPError,
    Request,
    Responder,
    default_error_response,
    serve,
)

__all__ = [
    "MODEL_STATUSES",
    "FakeNeuron",
    "FakeNeuronConfig",
    "add_fake_neuron_arguments",
    "fake_neuron_main",
    "run_fake_neuron",
]

MODEL_STATUSES: Final = ("loaded", "unloaded", "reloading", "loading", "recovering")
"""Model statuses a neuron reports (docs/semantics.md §1)."""

_SERVING: Final = ("loaded", "reloading")
_HARNESS: Final = "candle"
#: A host with more GPUs than this is not a host (and its /discovery would be huge).
MAX_GPUS: Final = 64
_DEFAULT_MAX_TOKENS: Final = 16
_REQUEST_LOG_SIZE: Final = 1000

_WORDS: Final = (
    "amber", "basalt", "cinder", "delta", "ember", "fjord", "granite", "harbor",
    "indigo", "juniper", "kelp", "lumen", "meadow", "nimbus", "onyx", "prairie",
    "quartz", "river", "sierra", "tundra", "umber", "valley", "willow", "xenon",
    "yarrow", "zephyr", "atlas", "beacon", "cobalt", "dune", "echo", "flint",
    "glacier", "heron", "island", "jasper", "kestrel", "lagoon", "maple", "nectar",
    "orbit", "pebble", "quill", "reef", "summit", "thistle", "upland", "vortex",
    "wander", "yonder", "zenith", "aurora", "bramble", "canyon", "drift", "estuary",
    "fern", "grove", "horizon", "inlet", "jetty", "knoll", "lantern", "mesa",
)  # fmt: skip


# --------------------------------------------------------------------------
# Configuration


def _models_converter(value: Iterable[tuple[str, str] | str]) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for item in value:
        if isinstance(item, str):
            out.append((item, "loaded"))
        else:
            model_id, status = item
            out.append((model_id, status))
    return tuple(out)


def _check_models(
    instance: object, attribute: attrs.Attribute[Any], value: tuple[tuple[str, str], ...]
) -> None:
    for model_id, status in value:
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model id must be a non-empty string, got {model_id!r}")
        if status not in MODEL_STATUSES:
            raise ValueError(
                f"model {model_id!r}: status {status!r} is not one of {', '.join(MODEL_STATUSES)}"
            )


@attrs.frozen(kw_only=True)
class FakeNeuronConfig:
    """What the simulated neuron looks like."""

    name: str = attrs.field(default="neuron-1", validator=attrs.validators.min_len(1))
    host: str = "127.0.0.1"
    port: int = attrs.field(
        default=0, validator=[attrs.validators.ge(0), attrs.validators.le(65535)]
    )
    """0 picks a free port."""
    gpus: int = attrs.field(
        default=1, validator=[attrs.validators.ge(0), attrs.validators.le(MAX_GPUS)]
    )
    vram_mb: int = attrs.field(default=24576, validator=attrs.validators.ge(0))
    """VRAM of each GPU."""
    models: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_models_converter, validator=_check_models
    )
    """Initial ``(id, status)`` pairs (a bare id means ``loaded``)."""
    max_prompt_tokens: int = attrs.field(default=32768, validator=attrs.validators.ge(0))
    token_latency: float = attrs.field(default=0.005, validator=attrs.validators.ge(0))
    """Seconds per generated token."""
    load_delay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    """Seconds a load (or a lazy reload) takes."""
    max_resident: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1))
    )
    """At most this many models ``loaded`` at once: a ``POST /models/load`` that
    would make more is refused with 507 ``{"error": "out of memory"}`` (None: no limit)."""
    flavor: str = attrs.field(default="neuron", validator=attrs.validators.in_(FLAVOURS))
    """Which kind of server to be (docs/semantics.md §11)."""
    tls: ssl.SSLContext | None = attrs.field(default=None, eq=False)
    """A server-side context with a certificate: serve ``https://``."""
    api_key: str | None = None
    """When set, every request (but ``/_control``) needs ``Authorization: Bearer {api_key}``."""


# --------------------------------------------------------------------------
# State


@attrs.define
class _Model:
    id: str
    status: str
    devices: list[int]
    harness: str = _HARNESS
    quant: str | None = None
    in_flight: int = 0
    queue_depth: int = 0


class _BadRequest(Exception):
    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _envelope(message: str, *, status: int, code: str) -> bytes:
    kind = "invalid_request_error" if status < 500 else "api_error"
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


def _model_vram_mb(model_id: str, device_count: int, vram_per_gpu: int) -> int:
    wanted = 2048 + (zlib.crc32(model_id.encode()) % 12) * 1024
    return min(wanted, vram_per_gpu * max(1, device_count))


_PROMPT_DEPTH = 32


def _prompt_text(value: object, depth: int = 0) -> str:
    """The text of a prompt or message content (strings, lists of parts, ``text`` parts)."""
    if depth > _PROMPT_DEPTH:
        raise _BadRequest(f"the prompt is nested more than {_PROMPT_DEPTH} levels deep")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_prompt_text(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return _prompt_text(value.get("text", value.get("content", "")), depth + 1)
    return "" if value is None else str(value)


def _fake_tokens(neuron: str, model: str, prompt: str, limit: int) -> tuple[list[str], str]:
    """Deterministic pieces of text (first bare, then space-led) and a finish reason."""
    seed = hashlib.sha256(f"{neuron}\0{model}\0{prompt}".encode()).digest()
    natural = 4 + seed[0] % 29
    count = min(natural, limit)
    pieces = []
    for i in range(count):
        digest = hashlib.blake2s(seed + i.to_bytes(4, "big"), digest_size=4).digest()
        word = _WORDS[int.from_bytes(digest, "big") % len(_WORDS)]
        pieces.append(word if i == 0 else " " + word)
    return pieces, "length" if natural > limit else "stop"


def _limit(body: dict[str, Any], key: str) -> int:
    """The output token limit ``body[key]`` (default 16), or a 400."""
    limit = body.get(key)
    if limit is None:
        return _DEFAULT_MAX_TOKENS
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise _BadRequest(f"{key} must be an integer >= 0")
    return limit


_EMBEDDING_SIZE: Final = 8


def _fake_vector(model: str, text: str) -> list[float]:
    """A deterministic unit vector for ``text``."""
    digest = hashlib.blake2s(f"{model}\0{text}".encode(), digest_size=_EMBEDDING_SIZE).digest()
    raw = [b / 127.5 - 1.0 for b in digest]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


class _StartedRelay(anyio.abc.TaskStatus[tuple[str, int]]):
    """Receives the bound address from ``serve``; reports the port upward."""

    def __init__(self, neuron: FakeNeuron, outer: anyio.abc.TaskStatus[int]) -> None:
        self._neuron = neuron
        self._outer = outer

    def started(self, value: tuple[str, int] | None = None) -> None:
        assert value is not None
        self._neuron._bound(value[1])
        self._outer.started(value[1])


class FakeNeuron:
    """The state of one simulated neuron, its HTTP handler and its fault switches."""

    def __init__(self, config: FakeNeuronConfig | None = None) -> None:
        self.config = config if config is not None else FakeNeuronConfig()
        self.name = self.config.name
        self.port: int | None = None
        """The bound port, once :meth:`run` has started."""
        self.requests: deque[tuple[str, str]] = deque(maxlen=_REQUEST_LOG_SIZE)
        """``(method, target)`` of the latest requests, oldest first."""
        self._models: dict[str, _Model] = {}
        for model_id, status in self.config.models:
            self._models[model_id] = _Model(model_id, status, self._default_devices(1))
        self._stall = 0.0
        self._fail = False
        self._drop = False
        self._resumed: anyio.Event | None = None
        self._started_at: float | None = None
        self._sequence = 0
        self.loading = False
        """The ``llamacpp`` flavour is loading its model (see :meth:`set_loading`)."""
        self.tokens: dict[str, tuple[int, int]] = {}
        """Per model: prompt and generated tokens so far (a flavour's counters)."""
        self._flavour: Flavour | None = (
            None if self.config.flavor == "neuron" else flavour_routes(self, self.config.flavor)
        )

    # -- running ------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port`` of the running neuron."""
        if self.port is None:
            raise RuntimeError("the fake neuron is not running")
        host = self.config.host
        scheme = "http" if self.config.tls is None else "https"
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{self.port}"

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; reports the bound port through ``task_status``."""
        await serve(
            self.handle,
            host=self.config.host,
            port=self.config.port,
            error_response=self._error_response,
            tls=self.config.tls,
            task_status=_StartedRelay(self, task_status),
        )

    def _bound(self, port: int) -> None:
        self.port = port
        self._started_at = anyio.current_time()

    # -- inspection -----------------------------------------------------------

    def models(self) -> dict[str, str]:
        """``{model id: status}`` right now."""
        return {model.id: model.status for model in self._models.values()}

    def model_status(self, model_id: str) -> str | None:
        model = self._models.get(model_id)
        return None if model is None else model.status

    def in_flight(self, model_id: str) -> int:
        model = self._models.get(model_id)
        return 0 if model is None else model.in_flight

    def fault_state(self) -> dict[str, Any]:
        """What ``GET /_control`` answers."""
        return {
            "flavor": self.config.flavor,
            "stall_seconds": self._stall,
            "fail": self._fail,
            "drop": self._drop,
            "loading": self.loading,
            "models": {
                model.id: {
                    "status": model.status,
                    "in_flight": model.in_flight,
                    "queue_depth": model.queue_depth,
                }
                for model in self._models.values()
            },
        }

    # -- fault injection --------------------------------------------------------

    def stall(self, seconds: float) -> None:
        """Delay every later request by ``seconds`` (0 stops stalling)."""
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds < math.inf
        ):
            raise ValueError(f"stall seconds must be a finite number >= 0, got {seconds!r}")
        self._stall = float(seconds)

    def fail(self) -> None:
        """Answer every later request with HTTP 500."""
        self._fail = True

    def drop(self) -> None:
        """Close every later request's connection without answering."""
        self._drop = True

    def resume(self) -> None:
        """Clear stall, fail and drop; release requests that are stalled now."""
        self._stall = 0.0
        self._fail = False
        self._drop = False
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    def set_status(self, model_id: str, status: str) -> None:
        """Set a model's status, creating the entry if needed."""
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model id must be a non-empty string, got {model_id!r}")
        if status not in MODEL_STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(MODEL_STATUSES)}")
        model = self._models.get(model_id)
        if model is None:
            self._models[model_id] = _Model(model_id, status, self._default_devices(1))
        else:
            model.status = status

    def set_loading(self, loading: bool) -> None:
        """``llamacpp`` flavour: answer 503 ``Loading model`` (True) or serve again (False)."""
        if not isinstance(loading, bool):
            raise ValueError(f"loading must be true or false, got {loading!r}")
        if self.config.flavor != "llamacpp":
            raise ValueError(
                f"set_loading is for the llamacpp flavour; this one is {self.config.flavor}"
            )
        self.loading = loading

    def set_queue(self, model_id: str, queue_depth: int) -> None:
        """Set the queue depth ``/health`` (or the flavour's metrics) reports for a known model."""
        if isinstance(queue_depth, bool) or not isinstance(queue_depth, int) or queue_depth < 0:
            raise ValueError(f"queue_depth must be an integer >= 0, got {queue_depth!r}")
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model must be a non-empty string, got {model_id!r}")
        if model_id not in self._models:
            raise KeyError(model_id)
        self._models[model_id].queue_depth = queue_depth

    # -- HTTP -------------------------------------------------------------------

    def _error_response(self, status: int, message: str) -> tuple[Sequence[tuple[str, str]], bytes]:
        headers, body = default_error_response(status, message)
        return [*headers, ("x-neuron", self.name)], body

    def _headers(self, content_type: str = "application/json") -> list[tuple[str, str]]:
        return [("content-type", content_type), ("x-neuron", self.name)]

    async def _json(self, responder: Responder, status: int, value: object) -> None:
        await responder.respond(status, self._headers(), json.dumps(value).encode())

    async def _error(self, responder: Responder, status: int, message: str, code: str) -> None:
        body = _envelope(message, status=status, code=code)
        await responder.respond(status, self._headers(), body)

    async def handle(self, request: Request, responder: Responder) -> None:
        """The HTTP handler (see the module docstring for the routes)."""
        self.requests.append((request.method, request.target))
        path = request.path
        try:
            if path == "/_control":
                await self._control(request, responder)
                return
            if self._stall > 0:
                await self._wait_stall(self._stall)
            if self._drop:
                await responder.abort()
                return
            if self._fail:
                await self._error(responder, 500, "injected failure", "internal_error")
                return
            key = self.config.api_key
            if key is not None and request.header("authorization") != f"Bearer {key}":
                await self._error(responder, 401, "Unauthorized", "invalid_api_key")
                return
            refusal = None if self._flavour is None else self._flavour.refuses(path)
            if refusal is not None:
                await self._json(responder, 503, refusal)
                return
            await self._route(request, responder, path)
        except _BadRequest as exc:
            await self._error(responder, exc.status, str(exc), exc.code)

    async def _wait_stall(self, seconds: float) -> None:
        if self._resumed is None:
            self._resumed = anyio.Event()
        resumed = self._resumed
        with anyio.move_on_after(seconds):
            await resumed.wait()

    async def _route(self, request: Request, responder: Responder, path: str) -> None:
        method = request.method
        inference = {
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/completions": ("POST", self._completions),
            "/v1/embeddings": ("POST", self._embeddings),
            "/v1/responses": ("POST", self._responses),
            "/v1/messages": ("POST", self._messages),
        }
        if self._flavour is not None:
            routes = {**self._flavour.routes(), **inference}
            if path not in routes:
                content_type, body = self._flavour.not_found(method, path)
                await responder.respond(404, self._headers(content_type), body)
                return
        else:
            routes = {
                "/discovery": ("GET", self._discovery),
                "/models": ("GET", self._list_models),
                "/health": ("GET", self._health),
                "/models/load": ("POST", self._load),
                "/models/unload": ("POST", self._unload),
                **inference,
            }
        if path in routes:
            wanted, action = routes[path]
            if method != wanted:
                raise _BadRequest(f"use {wanted} for {path}", status=405, code="method_not_allowed")
            await action(request, responder)
        elif path.startswith("/models/") and path.endswith("/endpoint"):
            if method != "GET":
                raise _BadRequest(f"use GET for {path}", status=405, code="method_not_allowed")
            await self._endpoint(responder, unquote(path[len("/models/") : -len("/endpoint")]))
        else:
            raise _BadRequest(f"no route for {method} {path}", status=404, code="not_found")

    # -- neuron daemon API ------------------------------------------------------------

    def _resident(self) -> int:
        """Models taking memory now (``loaded``, ``reloading``, or on their way: ``loading``)."""
        return sum(
            1 for m in self._models.values() if m.status in ("loaded", "loading", "reloading")
        )

    def _default_devices(self, count: int) -> list[int]:
        return list(range(min(count, self.config.gpus)))

    def _resolve(self, requested: str) -> str:
        """The id a requested model id is (or would be) registered under."""
        if self._flavour is not None:
            return self._flavour.resolve(requested)
        if requested in self._models:
            return requested
        prefix, colon, rest = requested.partition(":")
        if colon and rest and "/" not in prefix:
            return rest
        return requested

    def _device_list(self) -> list[dict[str, Any]]:
        return [
            {
                "index": index,
                "name": "Fake GPU",
                "vram_total_mb": self.config.vram_mb,
                "compute_capability": "8.9",
            }
            for index in range(self.config.gpus)
        ]

    def _size_bytes(self, model: _Model) -> int:
        """What a flavour reports as a model's size (its fake VRAM need, in bytes)."""
        return _model_vram_mb(model.id, max(1, len(model.devices)), self.config.vram_mb) << 20

    def _vram_used(self, model: _Model) -> int:
        if model.status in ("unloaded", "loading"):
            return 0
        return _model_vram_mb(model.id, len(model.devices), self.config.vram_mb)

    async def _discovery(self, request: Request, responder: Responder) -> None:
        await self._json(
            responder,
            200,
            {
                "hostname": self.name,
                "os": "linux",
                "kernel": "6.8.0-fake",
                "cuda_version": "12.4",
                "driver_version": "550.54.15",
                "devices": self._device_list(),
                "harnesses": [_HARNESS],
                "max_prompt_tokens": self.config.max_prompt_tokens,
            },
        )

    async def _list_models(self, request: Request, responder: Responder) -> None:
        await self._json(
            responder,
            200,
            [
                {
                    "id": model.id,
                    "harness": model.harness,
                    "status": model.status,
                    "devices": list(model.devices),
                    "vram_used_mb": self._vram_used(model),
                }
                for model in self._models.values()
            ],
        )

    async def _health(self, request: Request, responder: Responder) -> None:
        used = dict.fromkeys(range(self.config.gpus), 0)
        for model in self._models.values():
            share = self._vram_used(model) // max(1, len(model.devices))
            for index in model.devices:
                used[index] = used.get(index, 0) + share
        devices = [
            {**device, "vram_used_mb": used.get(device["index"], 0)}
            for device in self._device_list()
        ]
        started = self._started_at if self._started_at is not None else anyio.current_time()
        await self._json(
            responder,
            200,
            {
                "uptime_secs": int(anyio.current_time() - started),
                "devices": devices,
                "models": [
                    {"id": m.id, "in_flight": m.in_flight, "queue_depth": m.queue_depth}
                    for m in self._models.values()
                ],
            },
        )

    async def _read_object(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            value = load_json(raw)
        except ValueError:
            raise _BadRequest("request body is not valid JSON") from None
        if not isinstance(value, dict):
            raise _BadRequest("request body must be a JSON object")
        return value

    async def _load(self, request: Request, responder: Responder) -> None:
        spec = await self._read_object(request)
        requested = spec.get("model_id")
        harness = spec.get("harness")
        quant = spec.get("quant")
        tensor_parallel = spec.get("tensor_parallel")
        devices = spec.get("devices")
        if not isinstance(requested, str) or not requested:
            raise _BadRequest("model_id must be a non-empty string")
        if harness is None:
            harness = _HARNESS  # the catalogue's harness is optional: this neuron's own
        if not isinstance(harness, str) or not harness:
            raise _BadRequest("harness must be a non-empty string")
        if quant is not None and not isinstance(quant, str):
            raise _BadRequest("quant must be a string")
        if tensor_parallel is not None and (
            isinstance(tensor_parallel, bool)
            or not isinstance(tensor_parallel, int)
            or not 1 <= tensor_parallel <= max(1, self.config.gpus)
        ):
            raise _BadRequest(f"tensor_parallel must be an integer in 1..{self.config.gpus}")
        if devices is None:
            chosen = self._default_devices(tensor_parallel or 1)
        elif (
            not isinstance(devices, list)
            or not all(type(d) is int and 0 <= d < self.config.gpus for d in devices)
            or len(set(devices)) != len(devices)
        ):
            raise _BadRequest(f"devices must be distinct indices in 0..{self.config.gpus - 1}")
        else:
            chosen = list(devices)

        model_id = self._resolve(requested)
        model = self._models.get(model_id)
        if model is not None and model.status == "loaded":
            await self._json(
                responder,
                200,
                {"status": "loaded", "model_id": model_id, "message": "model already loaded"},
            )
            return
        limit = self.config.max_resident
        if limit is not None and self._resident() >= limit:
            await self._json(responder, 507, {"error": "out of memory"})
            return
        if model is None:
            model = self._models[model_id] = _Model(model_id, "loading", chosen)
        model.status, model.devices, model.harness, model.quant = "loading", chosen, harness, quant
        if self.config.load_delay > 0:
            await anyio.sleep(self.config.load_delay)
        model.status = "loaded"
        await self._json(responder, 200, {"status": "loaded", "model_id": model_id})

    async def _unload(self, request: Request, responder: Responder) -> None:
        spec = await self._read_object(request)
        requested = spec.get("model_id")
        if not isinstance(requested, str) or not requested:
            raise _BadRequest("model_id must be a non-empty string")
        model = self._models.get(self._resolve(requested))
        if model is None:
            raise _BadRequest(
                f"model {requested!r} is not known here", status=404, code="not_found"
            )
        model.status = "unloaded"
        await self._json(responder, 200, {"status": "unloaded", "model_id": model.id})

    async def _endpoint(self, responder: Responder, requested: str) -> None:
        if not requested or self._resolve(requested) not in self._models:
            raise _BadRequest(
                f"model {requested!r} is not known here", status=404, code="not_found"
            )
        await self._json(responder, 200, {"url": f"http://127.0.0.1:{self.port}"})

    # -- inference ----------------------------------------------------------------------

    async def _chat(self, request: Request, responder: Responder) -> None:
        body = await self._read_object(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _BadRequest("messages must be a list of objects")
        prompt = "\n".join(_prompt_text(m.get("content")) for m in messages)
        await self._infer(responder, body, prompt, chat=True)

    async def _completions(self, request: Request, responder: Responder) -> None:
        body = await self._read_object(request)
        if "prompt" not in body:
            raise _BadRequest("prompt is required")
        await self._infer(responder, body, _prompt_text(body["prompt"]), chat=False)

    async def _embeddings(self, request: Request, responder: Responder) -> None:
        body = await self._read_object(request)
        raw = body.get("input")
        if isinstance(raw, str) or (
            isinstance(raw, list) and raw and all(type(t) is int for t in raw)
        ):
            inputs: list[object] = [raw]  # one string, or one array of token ids
        elif isinstance(raw, list) and raw:
            inputs = list(raw)
        else:
            raise _BadRequest("input must be a string or a non-empty array")
        texts = [x if isinstance(x, str) else json.dumps(x) for x in inputs]
        requested, model, tokens = await self._prepare(body, "\n".join(texts))
        data = [
            {"object": "embedding", "index": i, "embedding": _fake_vector(model.id, text)}
            for i, text in enumerate(texts)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        await self._json(
            responder, 200, {"object": "list", "data": data, "model": requested, "usage": usage}
        )

    async def _responses(self, request: Request, responder: Responder) -> None:
        """OpenAI's Responses API: ``input`` (a string or message items) -> ``output``."""
        body = await self._read_object(request)
        if "input" not in body:
            raise _BadRequest("input is required")
        prompt = _prompt_text(body["input"])
        if isinstance(body.get("instructions"), str):
            prompt = body["instructions"] + "\n" + prompt
        limit = _limit(body, "max_output_tokens")
        requested, model, tokens = await self._prepare(body, prompt)
        pieces, finish = _fake_tokens(self.name, model.id, prompt, limit)
        self._sequence += 1
        response_id = f"resp_{self.name}_{self._sequence}"
        item_id = f"msg_{self.name}_{self._sequence}"
        text = "".join(pieces)
        complete = finish == "stop"

        def response(done: bool, output: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": response_id,
                "object": "response",
                "created_at": int(time.time()),
                "status": ("completed" if complete else "incomplete") if done else "in_progress",
                "model": requested,
                "output": output,
                "incomplete_details": None
                if complete or not done
                else {"reason": "max_output_tokens"},
                "usage": {
                    "input_tokens": tokens,
                    "output_tokens": len(pieces),
                    "total_tokens": tokens + len(pieces),
                }
                if done
                else None,
            }

        message = {
            "type": "message",
            "id": item_id,
            "status": "completed" if complete else "incomplete",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        final = response(True, [message])
        model.in_flight += 1
        try:
            if body.get("stream") is not True:
                await self._pause(len(pieces))
                await self._json(responder, 200, final)
                return
            where = {"item_id": item_id, "output_index": 0, "content_index": 0}
            events: list[tuple[str, dict[str, Any]]] = [
                ("response.created", {"response": response(False, [])}),
                *[("response.output_text.delta", {**where, "delta": p}) for p in pieces],
                ("response.output_text.done", {**where, "text": text}),
                ("response.completed" if complete else "response.incomplete", {"response": final}),
            ]
            await self._events(responder, events, paced=len(pieces))
        finally:
            model.in_flight -= 1

    async def _messages(self, request: Request, responder: Responder) -> None:
        """Anthropic's Messages API (``/v1/messages``), plain and streamed."""
        body = await self._read_object(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _BadRequest("messages must be a list of objects")
        prompt = "\n".join(_prompt_text(m.get("content")) for m in messages)
        if "system" in body:
            prompt = _prompt_text(body["system"]) + "\n" + prompt
        limit = _limit(body, "max_tokens")
        requested, model, tokens = await self._prepare(body, prompt)
        pieces, finish = _fake_tokens(self.name, model.id, prompt, limit)
        self._sequence += 1
        stop = "end_turn" if finish == "stop" else "max_tokens"
        message: dict[str, Any] = {
            "id": f"msg_{self.name}_{self._sequence}",
            "type": "message",
            "role": "assistant",
            "model": requested,
            "content": [{"type": "text", "text": "".join(pieces)}],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": tokens, "output_tokens": len(pieces)},
        }
        model.in_flight += 1
        try:
            if body.get("stream") is not True:
                await self._pause(len(pieces))
                await self._json(responder, 200, message)
                return
            start = {
                **message,
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": tokens, "output_tokens": 0},
            }
            block = {"type": "text", "text": ""}
            events: list[tuple[str, dict[str, Any]]] = [
                ("message_start", {"message": start}),
                ("content_block_start", {"index": 0, "content_block": block}),
                *[
                    (
                        "content_block_delta",
                        {"index": 0, "delta": {"type": "text_delta", "text": p}},
                    )
                    for p in pieces
                ],
                ("content_block_stop", {"index": 0}),
                (
                    "message_delta",
                    {
                        "delta": {"stop_reason": stop, "stop_sequence": None},
                        "usage": {"output_tokens": len(pieces)},
                    },
                ),
                ("message_stop", {}),
            ]
            await self._events(responder, events, paced=len(pieces))
        finally:
            model.in_flight -= 1

    async def _pause(self, tokens: int) -> None:
        if self.config.token_latency > 0 and tokens:
            await anyio.sleep(self.config.token_latency * tokens)

    async def _events(
        self, responder: Responder, events: Sequence[tuple[str, dict[str, Any]]], *, paced: int
    ) -> None:
        """A typed event stream: ``event: NAME`` and ``data: {"type": NAME, ...}`` per event.

        Events 2 .. ``paced`` + 1 carry tokens: each comes ``token_latency`` after
        the one before.
        """
        headers = [*self._headers("text/event-stream"), ("cache-control", "no-cache")]
        await responder.start(200, headers)
        for i, (name, payload) in enumerate(events):
            if 2 <= i <= paced + 1 and self.config.token_latency > 0:
                await anyio.sleep(self.config.token_latency)
            data = json.dumps({"type": name, **payload})
            await responder.send(f"event: {name}\ndata: {data}\n\n".encode())
        await responder.end()

    async def _serving(self, requested: str) -> _Model:
        """The model if it serves here (an ``unloaded`` one is reloaded first), else a 404.

        Flavours other than ``ollama`` never load: an ``unloaded`` model is a 404.
        """
        model = self._models.get(self._resolve(requested))
        lazy = self._flavour is None or self._flavour.lazy()
        if model is not None and model.status == "unloaded" and lazy:
            model.status = "reloading"
            if self.config.load_delay > 0:
                await anyio.sleep(self.config.load_delay)
            if model.status == "reloading":
                model.status = "loaded"
        if model is None or model.status not in _SERVING:
            state = "unknown" if model is None else model.status
            raise _BadRequest(
                f"model {requested!r} is not loaded on {self.name} ({state})",
                status=404,
                code="model_not_found",
            )
        return model

    async def _prepare(self, body: dict[str, Any], prompt: str) -> tuple[str, _Model, int]:
        """``(requested id, the serving model, prompt tokens)`` of an inference request."""
        requested = body.get("model")
        if not isinstance(requested, str) or not requested:
            raise _BadRequest("model must be a non-empty string")
        prompt_tokens = len(prompt.split())
        max_prompt = self.config.max_prompt_tokens
        if max_prompt and prompt_tokens > max_prompt:
            raise _BadRequest(
                f"prompt has {prompt_tokens} tokens, more than {max_prompt}",
                code="context_length_exceeded",
            )
        model = await self._serving(requested)
        self._count_tokens(model.id, prompt_tokens, 0)
        return requested, model, prompt_tokens

    def _count_tokens(self, model_id: str, prompt: int, generated: int) -> None:
        before = self.tokens.get(model_id, (0, 0))
        self.tokens[model_id] = (before[0] + prompt, before[1] + generated)

    async def _infer(
        self, responder: Responder, body: dict[str, Any], prompt: str, *, chat: bool
    ) -> None:
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        if limit is None:
            limit = _DEFAULT_MAX_TOKENS
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise _BadRequest("max_tokens must be an integer >= 0")
        requested, model, prompt_tokens = await self._prepare(body, prompt)

        pieces, finish = _fake_tokens(self.name, model.id, prompt, limit)
        self._count_tokens(model.id, 0, len(pieces))
        self._sequence += 1
        prefix = "chatcmpl" if chat else "cmpl"
        meta = {
            "id": f"{prefix}-{self.name}-{self._sequence}",
            "created": int(time.time()),
            "model": requested,
        }
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        model.in_flight += 1
        try:
            if body.get("stream") is True:
                options = body.get("stream_options")
                with_usage = isinstance(options, dict) and options.get("include_usage") is True
                shown_usage = usage if with_usage else None
                await self._stream(responder, meta, pieces, finish, shown_usage, chat=chat)
            else:
                if self.config.token_latency > 0 and pieces:
                    await anyio.sleep(self.config.token_latency * len(pieces))
                text = "".join(pieces)
                choice: dict[str, Any] = (
                    {"index": 0, "message": {"role": "assistant", "content": text}}
                    if chat
                    else {"index": 0, "text": text}
                )
                choice |= {"logprobs": None, "finish_reason": finish}
                obj = "chat.completion" if chat else "text_completion"
                await self._json(
                    responder, 200, {**meta, "object": obj, "choices": [choice], "usage": usage}
                )
        finally:
            model.in_flight -= 1

    async def _stream(
        self,
        responder: Responder,
        meta: dict[str, Any],
        pieces: list[str],
        finish: str,
        usage: dict[str, int] | None,
        *,
        chat: bool,
    ) -> None:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(choice: dict[str, Any] | None, **extra: Any) -> bytes:
            payload = {**meta, "object": obj, "choices": [] if choice is None else [choice]}
            return b"data: " + json.dumps(payload | extra).encode() + b"\n\n"

        def choice(piece: str | None, finish_reason: str | None) -> dict[str, Any]:
            if chat:
                delta = {} if piece is None else {"content": piece}
                return {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            text = "" if piece is None else piece
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

        headers = [*self._headers("text/event-stream"), ("cache-control", "no-cache")]
        await responder.start(200, headers)
        if chat:
            opening = choice("", None)
            opening["delta"] = {"role": "assistant", "content": ""}
            await responder.send(event(opening))
        for piece in pieces:
            if self.config.token_latency > 0:
                await anyio.sleep(self.config.token_latency)
            await responder.send(event(choice(piece, None)))
        await responder.send(event(choice(None, finish)))
        if usage is not None:
            await responder.send(event(None, usage=usage))
        await responder.send(b"data: [DONE]\n\n")
        await responder.end()

    # -- control --------------------------------------------------------------------------

    async def _control(self, request: Request, responder: Responder) -> None:
        if request.method == "GET":
            await self._json(responder, 200, self.fault_state())
            return
        if request.method != "POST":
            raise _BadRequest(
                "use GET or POST for /_control", status=405, code="method_not_allowed"
            )
        spec = await self._read_object(request)
        action = spec.get("action")
        try:
            if action == "stall":
                self.stall(spec.get("seconds"))  # type: ignore[arg-type]  # validated inside
            elif action == "fail":
                self.fail()
            elif action == "drop":
                self.drop()
            elif action == "resume":
                self.resume()
            elif action == "set_status":
                self.set_status(spec.get("model"), spec.get("status"))  # type: ignore[arg-type]
            elif action == "set_queue":
                self.set_queue(spec.get("model"), spec.get("queue_depth"))  # type: ignore[arg-type]
            elif action == "set_loading":
                self.set_loading(spec.get("loading"))  # type: ignore[arg-type]
            else:
                raise _BadRequest(f"unknown action {action!r}")
        except KeyError:
            raise _BadRequest(
                f"model {spec.get('model')!r} is not known here", status=404, code="not_found"
            ) from None
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        await self._json(responder, 200, self.fault_state())


async def run_fake_neuron(
    config: FakeNeuronConfig, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Run a :class:`FakeNeuron` for ``config`` until cancelled; reports the bound port."""
    await FakeNeuron(config).run(task_status=task_status)


# --------------------------------------------------------------------------
# Command line (wired into ``cortex-fsm fake-neuron`` by the CLI)


def _model_spec(text: str) -> tuple[str, str]:
    model_id, colon, status = text.rpartition(":")
    if colon and status in MODEL_STATUSES:
        if not model_id:
            raise argparse.ArgumentTypeError(f"missing model id in {text!r}")
        return model_id, status
    if not text:
        raise argparse.ArgumentTypeError("model id must not be empty")
    return text, "loaded"


def _int_at_least(minimum: int, maximum: int | None = None) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"{value} is out of range ({bound})")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def add_fake_neuron_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fake-neuron`` options to ``parser``."""
    parser.add_argument("--name", default="neuron-1", help="neuron name (default: %(default)s)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=_int_at_least(0, 65535), default=0, help="port to bind (default: a free one)"
    )
    parser.add_argument(
        "--gpus",
        type=_int_at_least(0, MAX_GPUS),
        default=1,
        help=f"number of GPUs, at most {MAX_GPUS} (default: %(default)s)",
    )
    parser.add_argument(
        "--vram",
        type=_int_at_least(0),
        default=24576,
        metavar="MB",
        help="VRAM per GPU in MB (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        dest="models",
        type=_model_spec,
        action="append",
        default=[],
        metavar="ID[:STATUS]",
        help=f"a model present at start; STATUS is one of {', '.join(MODEL_STATUSES)} "
        "(default: loaded). Repeatable.",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=_int_at_least(0),
        default=32768,
        help="reported in /discovery and enforced (default: %(default)s)",
    )
    parser.add_argument(
        "--token-latency",
        type=_seconds,
        default=0.005,
        metavar="SECONDS",
        help="simulated time per generated token (default: %(default)s)",
    )
    parser.add_argument(
        "--max-resident",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="at most N models loaded at once: a load beyond is refused with 507 "
        "out of memory (default: no limit)",
    )
    parser.add_argument(
        "--load-delay",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="simulated model load time (default: %(default)s)",
    )
    parser.add_argument(
        "--flavor",
        choices=FLAVOURS,
        default="neuron",
        help="the kind of server to be: the neuron daemon, or another backend's API "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="serve https:// with this certificate (chain) file; needs --tls-key",
    )
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help="answer 401 to requests without 'Authorization: Bearer KEY' (but /_control)",
    )


class _Announce(anyio.abc.TaskStatus[int]):
    def __init__(self, neuron: FakeNeuron) -> None:
        self._neuron = neuron

    def started(self, value: int | None = None) -> None:
        print(f"fake neuron {self._neuron.name} listening on {self._neuron.url}", flush=True)


def _server_tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use --tls-cert {cert} / --tls-key {key}: {exc}") from None
    return context


def fake_neuron_main(args: argparse.Namespace) -> int:
    """Run a fake neuron from parsed arguments until Ctrl-C; return the exit status."""
    try:
        config = FakeNeuronConfig(
            name=args.name,
            host=args.host,
            port=args.port,
            gpus=args.gpus,
            vram_mb=args.vram,
            models=args.models,
            max_prompt_tokens=args.max_prompt_tokens,
            token_latency=args.token_latency,
            load_delay=args.load_delay,
            max_resident=args.max_resident,
            flavor=getattr(args, "flavor", "neuron"),
            tls=_server_tls(getattr(args, "tls_cert", None), getattr(args, "tls_key", None)),
            api_key=getattr(args, "api_key", None),
        )
    except (TypeError, ValueError) as exc:
        print(f"cortex-fsm fake-neuron: error: {exc}", file=sys.stderr)
        return 2
    neuron = FakeNeuron(config)

    async def main() -> None:
        await neuron.run(task_status=_Announce(neuron))

    try:
        anyio.run(main)
    except KeyboardInterrupt:
        return 0
    except HTTPError as exc:
        print(f"cortex-fsm fake-neuron: error: {exc}", file=sys.stderr)
        return 1
    return 0
