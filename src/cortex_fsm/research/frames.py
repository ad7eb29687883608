"""Replay and score from Python, for notebooks.

Every function takes a trace path and policy overrides as a plain dict
(``{"failure_threshold": 1}``) and returns plain values: lists of rows with
the same keys in every row (``pandas.DataFrame(rows)`` and
``polars.DataFrame(rows)`` take them as they are), or a JSON object.

    >>> import polars as pl
    >>> from cortex_fsm.research import frames
    >>> pl.DataFrame(frames.decisions("trace.jsonl", {"failure_threshold": 1}))
    >>> pl.DataFrame(frames.score("sim.jsonl"))
    >>> pl.DataFrame(frames.summary("trace.jsonl")["nodes"])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..engine import Engine
from ..errors import TraceError
from ..policy import Policy
from ..replay import Replayer, Summary, apply_record
from ..routing import Decision
from ..trace import TraceHeader, TraceReader
from .score import MODEL_KEYS, SCORE_KEYS, Judge

__all__ = [
    "DECISION_COLUMNS",
    "decisions",
    "score",
    "score_json",
    "score_rows",
    "summary",
    "summary_json",
]

Overrides = Mapping[str, object] | Sequence[str] | None

#: The keys of every decision row.
DECISION_COLUMNS = (
    "id",
    "attempt",
    "t",
    "model",
    "resolved",
    "outcome",
    "node",
    "cold_start",
    "status",
    "retry_after",
)


def _adjuster(overrides: Overrides, where: str) -> Callable[[Policy], Policy]:
    """The overrides as a function of a policy (the header's, or one a recorded
    reconfiguration sets: overrides hold throughout, as in replay --set)."""
    if not overrides:
        return lambda policy: policy
    if isinstance(overrides, Mapping):
        values = dict(overrides)
        return lambda policy: policy.with_values(values, where=where)
    assignments = [overrides] if isinstance(overrides, str) else list(overrides)
    return lambda policy: policy.with_assignments(assignments, where=where)


class _Replay:
    """An engine fed validated records, with the overrides applied throughout."""

    def __init__(self, header: TraceHeader, overrides: Overrides, where: str) -> None:
        self.adjust = _adjuster(overrides, where)
        self.policy = self.adjust(header.policy)
        self.engine = Engine(header.neurons, header.catalogue, self.policy)

    def apply(self, kind: str, fields: Mapping[str, Any]) -> object:
        if kind == "reconfigured" and "policy" in fields:
            fields = {**fields, "policy": self.adjust(fields["policy"])}
        return apply_record(self.engine, kind, fields)


def decisions(trace: str | os.PathLike[str], overrides: Overrides = None) -> list[dict[str, Any]]:
    """One row per request of ``trace``: what it is told under the header's
    policy changed by ``overrides``."""
    rows: list[dict[str, Any]] = []
    with TraceReader(trace) as reader:
        apply = _Replay(reader.header, overrides, "overrides").apply
        for kind, f in reader.records():
            result = apply(kind, f)
            if kind == "request":
                d: Decision = result  # type: ignore[assignment]
                rows.append(
                    {
                        "id": f["id"],
                        "attempt": f.get("attempt"),
                        "t": f["t"],
                        "model": d.requested,
                        "resolved": d.model,
                        "outcome": d.outcome.value,
                        "node": d.node,
                        "cold_start": d.cold_start,
                        "status": d.status,
                        "retry_after": d.retry_after,
                    }
                )
    return rows


def summary_json(s: Summary) -> dict[str, Any]:
    """A replay summary as JSON (``replay --summary --json``)."""
    return {
        "policy": s.policy.to_json(),
        "events": s.events,
        "requests": s.requests,
        "t_start": s.t_start,
        "t_end": s.t_end,
        "outcomes": dict(s.outcomes),
        "statuses": {str(k): v for k, v in s.statuses.items()},
        "nodes": [
            {
                "name": n.name,
                "transitions": n.transitions,
                "final": n.final,
                "time_in": dict(n.time_in),
            }
            for n in s.nodes
        ],
    }


def summary(trace: str | os.PathLike[str], overrides: Overrides = None) -> dict[str, Any]:
    """The replay summary as JSON; ``summary(...)["nodes"]`` is one row per node."""
    with TraceReader(trace) as reader:
        adjust = _adjuster(overrides, "overrides")
        replayer = Replayer(reader.header, adjust(reader.header.policy), adjust)
        replayer.run_trace(reader, None)  # as replay() reads it (msgspec when installed)
        return summary_json(replayer.summary(events=reader.events, t_end=reader.last_t))


def score_json(trace: str | os.PathLike[str], overrides: Overrides = None) -> dict[str, Any]:
    """The score of a trace with ground truth (``score --json``)."""
    path = os.fspath(trace)
    with TraceReader(path) as reader:
        header = reader.header
        replay = _Replay(header, overrides, "--set")
        judge = Judge([n.name for n in header.neurons], header.catalogue, replay.policy)
        truths = 0
        feed = judge.feed
        apply = replay.apply
        for kind, f in reader.records():
            if kind == "truth":
                truths += 1
            feed(kind, f, apply(kind, f))
    if truths == 0:
        raise TraceError(
            path, None, "no truth events: score needs a trace with ground truth (from simulate)"
        )
    return judge.result()


def score_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A score as rows: ``model`` None for the whole trace, then one per model
    (node-level keys are None there)."""
    rows = [{"model": None, **{k: result[k] for k in SCORE_KEYS}}]
    for model, values in result["per_model"].items():
        row: dict[str, Any] = {"model": model}
        for k in SCORE_KEYS:
            row[k] = values[k] if k in MODEL_KEYS else None
        rows.append(row)
    return rows


def score(trace: str | os.PathLike[str], overrides: Overrides = None) -> list[dict[str, Any]]:
    """The score of ``trace`` as rows (see :func:`score_rows`)."""
    return score_rows(score_json(trace, overrides))
