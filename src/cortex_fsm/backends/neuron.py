"""The neuron daemon (docs/semantics.md §1): the default kind, Part I's protocol.

``GET /models`` is the liveness call and the model list (a JSON array of
``{"id", "status", ...}``); ``GET /health`` carries the load per model;
``GET /discovery`` the topology (fetched by the poller while the engine
needs it). The gateway records a neuron's answers exactly as received, so
these functions are the same validation the engine applies, reached
through an :class:`~cortex_fsm.backends.answers.Answer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..fleet import PollFailure
from ..wire import Invalid, parse_health, parse_models
from .answers import Answer, Load, Verdict, decode_json, passes

__all__ = ["KIND", "LIVENESS", "METRICS", "MODEL_CALLS", "live", "load", "models"]

KIND = "neuron"
LIVENESS = "/models"
MODEL_CALLS: tuple[str, ...] = ()
METRICS = "/health"

live = passes


def models(answers: Mapping[str, Answer], known: Sequence[str] = ()) -> Verdict:
    """``/models``: a JSON array of objects with a string ``id`` and ``status``."""
    value, problem = decode_json(answers[LIVENESS])
    if problem:
        return PollFailure(reason=problem.removeprefix(f"{LIVENESS}: "))
    return parse_models(value)


def load(answer: Answer, models: Sequence[str] = ()) -> dict[str, Load] | Invalid:
    """``/health``: ``models[]`` with ``in_flight`` and ``queue_depth`` per model."""
    value, problem = decode_json(answer)
    if problem:
        return Invalid(reason=problem)
    parsed = parse_health(value)
    if isinstance(parsed, Invalid):
        return parsed
    # parse_health sums the two numbers; keep them apart for the record.
    readings: dict[str, Load] = {}
    for item in value.get("models") or ():
        readings[item["id"]] = Load(in_flight=item["in_flight"], queue_depth=item["queue_depth"])
    return readings
