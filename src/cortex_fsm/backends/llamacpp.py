"""llama.cpp's ``llama-server`` (docs/semantics.md §11, kind ``llamacpp``).

Liveness is ``GET /health``: 200 ``{"status": "ok"}`` when ready. While the
server is still loading its model it answers 503 with the error ``Loading
model`` (type ``unavailable_error``): that is not a failure -- the server is
alive and its model is on its way, so every model reads ``recovering`` and
clients get 503 + Retry-After, never a 404. The model list is ``GET
/v1/models`` (``loaded``); during loading, when that list cannot be read,
the ids last seen are the ones recovering. The load is
``llamacpp:requests_processing`` + ``llamacpp:requests_deferred`` from ``GET
/metrics`` (served only with ``--metrics``); those carry no model label, so
they count for every model of the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..fleet import ModelStatus, PollFailure
from ..wire import Invalid, load_json
from .answers import Answer, Load, Verdict, metrics_load, openai_model_ids, report

__all__ = [
    "KIND",
    "LIVENESS",
    "LOADING_MESSAGE",
    "METRICS",
    "MODEL_CALLS",
    "RUNNING",
    "WAITING",
    "live",
    "load",
    "loading",
    "models",
]

KIND = "llamacpp"
LIVENESS = "/health"
MODEL_CALLS = ("/v1/models",)
METRICS = "/metrics"
RUNNING = "llamacpp:requests_processing"
WAITING = "llamacpp:requests_deferred"
LOADING_MESSAGE = "Loading model"


def loading(answer: Answer) -> bool:
    """Is this the 503 ``Loading model`` answer of a server still loading its model?"""
    if answer.status != 503:
        return False
    try:
        value = load_json(answer.body)
    except ValueError:
        return False
    error = value.get("error") if type(value) is dict else None
    return type(error) is dict and error.get("message") == LOADING_MESSAGE


def live(answer: Answer) -> PollFailure | None:
    if answer.ok or loading(answer):
        return None
    return PollFailure(reason=answer.problem)


def models(answers: Mapping[str, Answer], known: Sequence[str] = ()) -> Verdict:
    ids = openai_model_ids(answers["/v1/models"])
    if loading(answers[LIVENESS]):
        return report(known if isinstance(ids, PollFailure) else ids, ModelStatus.RECOVERING)
    return ids if isinstance(ids, PollFailure) else report(ids)


def load(answer: Answer, models: Sequence[str]) -> dict[str, Load] | Invalid:
    return metrics_load(answer, running=RUNNING, waiting=WAITING, models=models)
