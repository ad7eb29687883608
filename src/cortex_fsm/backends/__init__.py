"""Backend adapters: each kind of inference server's answers -> the engine's observations.

docs/semantics.md §11. A node's ``kind`` (``[[neurons]] kind`` in
``cortex.toml``) says which protocol it speaks; the engine never learns it.
One small module per kind, each pure (no I/O): :mod:`.neuron`, :mod:`.openai`,
:mod:`.vllm`, :mod:`.sglang`, :mod:`.llamacpp`, :mod:`.ollama`. The table
:data:`BACKENDS` is what the poller reads:

======== =============== ================== ==========================================
kind     liveness        models (status)    load reading
======== =============== ================== ==========================================
neuron   GET /models     /models            GET /health ``in_flight`` + ``queue_depth``
openai   GET /v1/models  data[].id (loaded) none
vllm     GET /health     GET /v1/models     /metrics num_requests_running + _waiting
sglang   GET /health     GET /v1/models     /metrics num_running_reqs + num_queue_reqs
llamacpp GET /health *   GET /v1/models     /metrics requests_processing + _deferred
ollama   GET /api/tags   tags (unloaded),   none
                         /api/ps (loaded)
======== =============== ================== ==========================================

(*) a 503 ``Loading model`` is not a failure: every model reads ``recovering``.

A poll is: the liveness call (its failure is the poll's failure, and
nothing else is asked), then the other model calls, then -- when the poll
succeeded and the kind has one -- the load reading. Only a ``neuron`` has a
``/discovery``, can load and unload models and is asked where a model is
served; every other kind is sent requests at ``{endpoint}/v1/...``.

A node configured with the wrong kind fails its polls with a 404; the
poller then asks the node a few more questions once (:data:`SNIFF_CALLS`)
and :func:`guess_kind` says which kind it looks like, so the log can name
the setting to use (:func:`wrong_kind_message`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Final

import attrs

from ..fleet import ModelsReport, PollFailure
from ..wire import Invalid, load_json, parse_models
from . import llamacpp, neuron, ollama, openai, sglang, vllm
from .answers import Answer, Load, Verdict, health_body, models_body

__all__ = [
    "BACKENDS",
    "KINDS",
    "SNIFF_CALLS",
    "Answer",
    "Backend",
    "Load",
    "Verdict",
    "backend",
    "guess_kind",
    "health_body",
    "models_body",
    "wrong_kind_symptom",
    "wrong_kind_message",
]


@attrs.frozen(slots=True, kw_only=True)
class Backend:
    """How to poll one kind of server, and how to read its answers."""

    kind: str
    label: str
    """What the kind is called in messages (``vLLM``)."""
    liveness: str
    """The path of the liveness call (``GET``)."""
    model_calls: tuple[str, ...]
    """Further ``GET`` paths of a models poll, asked once the liveness call passed."""
    metrics: str | None
    """The path of the load reading, or ``None`` when the kind reports no load."""
    live: Callable[[Answer], PollFailure | None]
    """The liveness call's verdict: ``None`` when it passed."""
    models: Callable[[Mapping[str, Answer], Sequence[str]], Verdict]
    """``(answers by path, the ids last reported) -> the poll's verdict``."""
    load: Callable[[Answer, Sequence[str]], Mapping[str, Load] | Invalid] | None
    """``(the metrics answer, the ids served) -> a load reading``."""
    daemon: bool
    """The neuron daemon API: ``/discovery``, load, unload, endpoint lookup."""


def _backend(module: ModuleType, label: str) -> Backend:
    return Backend(
        kind=module.KIND,
        label=label,
        liveness=module.LIVENESS,
        model_calls=module.MODEL_CALLS,
        metrics=module.METRICS,
        live=module.live,
        models=module.models,
        load=module.load,
        daemon=module is neuron,
    )


BACKENDS: Final[Mapping[str, Backend]] = {
    b.kind: b
    for b in (
        _backend(neuron, "the neuron daemon"),
        _backend(openai, "an OpenAI-compatible server"),
        _backend(vllm, "vLLM"),
        _backend(sglang, "SGLang"),
        _backend(llamacpp, "llama.cpp"),
        _backend(ollama, "Ollama"),
    )
}
KINDS: Final = tuple(BACKENDS)
"""Every kind, ``neuron`` (the default) first."""


def backend(kind: str) -> Backend:
    """The adapter of ``kind``; ``KeyError`` for a kind that does not exist."""
    return BACKENDS[kind]


# --------------------------------------------------------------------------
# A node that speaks another protocol than its kind says

SNIFF_CALLS: Final = ("/metrics", "/models", "/api/tags", "/v1/models")
"""What the poller asks, once, a node that looks configured with the wrong kind."""

_METRIC_PREFIXES: Final = (("vllm:", "vllm"), ("sglang:", "sglang"), ("llamacpp:", "llamacpp"))
_OWNERS: Final = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp"}


def wrong_kind_symptom(kind: str, answers: Iterable[Answer]) -> Answer | None:
    """The answer of a poll that suggests the node is not a ``kind`` server, if any.

    A 404 or 405 on a path the kind must answer; or, from a ``neuron``, a
    ``/models`` that is a JSON object (an OpenAI-style list, as llama.cpp
    answers there) instead of an array.
    """
    for answer in answers:
        if answer.status in (404, 405):
            return answer
        if kind == "neuron" and answer.path == "/models" and answer.ok:
            try:
                value = load_json(answer.body)
            except ValueError:
                continue
            if type(value) is dict:
                return answer
    return None


def _json(answer: Answer | None) -> object:
    if answer is None or not answer.ok:
        return None
    try:
        return load_json(answer.body)
    except ValueError:
        return None


def _metric_lines(answer: Answer | None) -> Iterable[str]:
    if answer is None or not answer.ok:
        return ()
    return answer.body.decode("utf-8", "replace").splitlines()


def guess_kind(answers: Mapping[str, Answer]) -> tuple[str, str] | None:
    """Which kind a node looks like from its answers to :data:`SNIFF_CALLS`.

    Returns ``(kind, evidence)``, the evidence in words for the log, or
    ``None`` when nothing is recognisable. The most specific sign wins: a
    backend's own metric names, a neuron's model array, an OpenAI list's
    ``owned_by``, Ollama's tag list, and last any OpenAI model list.
    """
    for line in _metric_lines(answers.get("/metrics")):
        for prefix, kind in _METRIC_PREFIXES:
            if line.startswith(prefix):
                return kind, f"its /metrics has {prefix} series"
    models = _json(answers.get("/models"))
    if type(models) is list and isinstance(parse_models(models), ModelsReport):
        return "neuron", "GET /models answers a neuron's model array"
    listing = _json(answers.get("/v1/models"))
    data = listing.get("data") if type(listing) is dict else None
    if type(data) is list:
        for item in data:
            owner = item.get("owned_by") if type(item) is dict else None
            if isinstance(owner, str) and owner in _OWNERS:
                return _OWNERS[owner], f'its /v1/models says owned_by "{owner}"'
    tags = _json(answers.get("/api/tags"))
    if type(tags) is dict and type(tags.get("models")) is list and "data" not in tags:
        return "ollama", "GET /api/tags answers Ollama's model list"
    if type(data) is list:
        return "openai", "GET /v1/models answers an OpenAI model list"
    return None


def wrong_kind_message(node: str, kind: str, symptom: Answer, guess: tuple[str, str] | None) -> str:
    """One line for the log: what went wrong, and the ``kind`` setting to use."""
    what = f"answered GET {symptom.path} with {symptom.problem or 'a JSON object'}"
    head = f'node {node!r} (kind = "{kind}") {what}'
    if guess is None:
        choices = ", ".join(f'"{k}"' for k in KINDS)
        return (
            f"{head}, and does not look like any kind this gateway knows: check its "
            f"endpoint, or set kind in its [[neurons]] entry to one of {choices}"
        )
    other, evidence = guess
    return (
        f"{head}, but it looks like {BACKENDS[other].label} ({evidence}): "
        f'set kind = "{other}" in its [[neurons]] entry'
    )
