"""SGLang's server (docs/semantics.md §11, kind ``sglang``).

Liveness is ``GET /health`` (200 while the scheduler answers); the model
list is ``GET /v1/models`` (``loaded``); the load is
``sglang:num_running_reqs`` + ``sglang:num_queue_reqs`` from ``GET
/metrics`` (served only with ``--enable-metrics``), per ``model_name``
label; one series per data-parallel rank is added up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..fleet import PollFailure
from ..wire import Invalid
from .answers import Answer, Load, Verdict, metrics_load, openai_model_ids, passes, report

__all__ = [
    "KIND",
    "LIVENESS",
    "METRICS",
    "MODEL_CALLS",
    "RUNNING",
    "WAITING",
    "live",
    "load",
    "models",
]

KIND = "sglang"
LIVENESS = "/health"
MODEL_CALLS = ("/v1/models",)
METRICS = "/metrics"
RUNNING = "sglang:num_running_reqs"
WAITING = "sglang:num_queue_reqs"

live = passes


def models(answers: Mapping[str, Answer], known: Sequence[str] = ()) -> Verdict:
    ids = openai_model_ids(answers["/v1/models"])
    return ids if isinstance(ids, PollFailure) else report(ids)


def load(answer: Answer, models: Sequence[str]) -> dict[str, Load] | Invalid:
    return metrics_load(answer, running=RUNNING, waiting=WAITING, models=models)
