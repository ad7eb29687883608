"""A plain OpenAI-compatible server (docs/semantics.md §11, kind ``openai``).

``GET /v1/models`` is both the liveness call and the model list: every
``data[].id`` is served (``loaded``). Such a server says nothing about its
load, so there is no load reading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..fleet import PollFailure
from .answers import Answer, Verdict, openai_model_ids, passes, report

__all__ = ["KIND", "LIVENESS", "METRICS", "MODEL_CALLS", "live", "load", "models"]

KIND = "openai"
LIVENESS = "/v1/models"
MODEL_CALLS: tuple[str, ...] = ()
METRICS = None
load = None

live = passes


def models(answers: Mapping[str, Answer], known: Sequence[str] = ()) -> Verdict:
    ids = openai_model_ids(answers[LIVENESS])
    return ids if isinstance(ids, PollFailure) else report(ids)
