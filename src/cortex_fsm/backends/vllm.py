"""vLLM's OpenAI-compatible server (docs/semantics.md §11, kind ``vllm``).

Liveness is ``GET /health`` (200 with an empty body while the engine is
up); the model list is ``GET /v1/models`` (every served name and LoRA
adapter, ``loaded``); the load is ``vllm:num_requests_running`` +
``vllm:num_requests_waiting`` from ``GET /metrics``, per ``model_name``
label (one series per engine when data-parallel; they are added up).
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

KIND = "vllm"
LIVENESS = "/health"
MODEL_CALLS = ("/v1/models",)
METRICS = "/metrics"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"

live = passes


def models(answers: Mapping[str, Answer], known: Sequence[str] = ()) -> Verdict:
    ids = openai_model_ids(answers["/v1/models"])
    return ids if isinstance(ids, PollFailure) else report(ids)


def load(answer: Answer, models: Sequence[str]) -> dict[str, Load] | Invalid:
    return metrics_load(answer, running=RUNNING, waiting=WAITING, models=models)
