"""Ollama (docs/semantics.md §11, kind ``ollama``).

Liveness is ``GET /api/tags``, whose ``models[].name`` are the models this
server has (``unloaded``); those also in ``GET /api/ps`` -- the models in
memory -- read ``loaded``. An ``unloaded`` model is routed to as a cold
start (rule 4): Ollama loads a model on its first request. Both calls must
succeed for the poll to succeed. Ollama says nothing about its load, so
there is no load reading. Requests go to its OpenAI-compatible ``/v1``
endpoints, which take the names ``/api/tags`` lists (``llama3.2:latest``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..fleet import ModelsReport, ModelStatus, PollFailure
from ..wire import describe_json
from .answers import Answer, Verdict, decode_json, passes

__all__ = ["KIND", "LIVENESS", "METRICS", "MODEL_CALLS", "live", "load", "models", "names"]

KIND = "ollama"
LIVENESS = "/api/tags"
MODEL_CALLS = ("/api/ps",)
METRICS = None
load = None

live = passes


def names(answer: Answer) -> list[str] | PollFailure:
    """The model names of an ``/api/tags`` or ``/api/ps`` answer: ``{"models": [{"name"}]}``."""
    value, problem = decode_json(answer)
    if problem:
        return PollFailure(reason=problem)
    where = f"invalid {answer.path} body"
    if type(value) is not dict:
        return PollFailure(reason=f"{where}: expected an object, got {describe_json(value)}")
    entries = value.get("models")
    if type(entries) is not list:
        return PollFailure(reason=f"{where}: models is {describe_json(entries)}, not a list")
    found: list[str] = []
    for i, entry in enumerate(entries):
        name = None
        if type(entry) is dict:
            name = entry.get("name", entry.get("model"))
        if type(name) is not str or not name:
            return PollFailure(reason=f"{where}: models[{i}] has no string name")
        found.append(name)
    return found


def models(answers: Mapping[str, Answer], known: Sequence[str] = ()) -> Verdict:
    tags = names(answers[LIVENESS])
    if isinstance(tags, PollFailure):
        return tags
    running = names(answers["/api/ps"])
    if isinstance(running, PollFailure):
        return running
    in_memory = set(running)
    statuses = {
        name: ModelStatus.LOADED if name in in_memory else ModelStatus.UNLOADED for name in tags
    }
    # A model in memory is served even if the tag list raced with a pull/delete.
    for name in running:
        statuses.setdefault(name, ModelStatus.LOADED)
    return ModelsReport(models=statuses)
