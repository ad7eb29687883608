"""What every backend adapter reads and writes: answers in, observations out.

An :class:`Answer` is one HTTP answer from a backend (status and raw body),
or the reason there is none (``timeout``, ``connect``, ``tls``...). Adapters
turn answers into the observations the engine already takes
(docs/semantics.md §1 and §11):

* a models poll: :class:`~cortex_fsm.fleet.ModelsReport` (a successful poll)
  or :class:`~cortex_fsm.fleet.PollFailure` (with its reason);
* a load reading: ``{model: Load}`` or :class:`~cortex_fsm.wire.Invalid`
  (which changes nothing).

Both have a neuron-shaped JSON form (:func:`models_body`, :func:`health_body`):
that is what a gateway records in its trace, so a recording of any backend
replays through the very parser a neuron's answers go through.

Nothing here does I/O or raises on bad input: every malformed answer is a
value with a reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from prometheus_client.parser import text_string_to_metric_families

from ..fleet import ModelsReport, ModelStatus, PollFailure
from ..wire import Invalid, describe_json, load_json

__all__ = [
    "Answer",
    "Load",
    "Verdict",
    "decode_json",
    "health_body",
    "metrics_load",
    "models_body",
    "openai_model_ids",
    "passes",
    "report",
]

_PREVIEW = 80


@attrs.frozen(slots=True, kw_only=True)
class Answer:
    """One answer to ``GET {endpoint}{path}``: ``status`` and ``body``, or ``error``.

    ``status`` is ``None`` when no answer arrived; ``error`` then says why
    in the short, stable words traces use (``timeout``, ``connect``, ``tls``,
    ``closed``, ``protocol``, ``too large``).
    """

    path: str
    status: int | None = None
    body: bytes = b""
    error: str = ""

    @classmethod
    def failed(cls, path: str, error: str) -> Answer:
        return cls(path=path, error=error or "unspecified")

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def problem(self) -> str:
        """Why this is not a 2xx answer (``status:404``, ``timeout``), or ``""``."""
        if self.status is None:
            return self.error or "unspecified"
        return "" if self.ok else f"status:{self.status}"


@attrs.frozen(slots=True, kw_only=True)
class Load:
    """One model's load on one node: requests being served and requests waiting."""

    in_flight: int
    queue_depth: int

    @property
    def busy(self) -> int:
        """What routing compares (docs/semantics.md §3 rule 2)."""
        return self.in_flight + self.queue_depth


Verdict = ModelsReport | PollFailure
"""The outcome of one models poll."""


def passes(answer: Answer) -> PollFailure | None:
    """The usual liveness rule: a 2xx answer passes; anything else fails the poll."""
    return None if answer.ok else PollFailure(reason=answer.problem)


def decode_json(answer: Answer) -> tuple[Any, str]:
    """``(value, "")`` for a 2xx JSON answer, else ``(None, reason)``.

    The reason names the path: ``/v1/models: status:500``, ``/v1/models:
    invalid json``. A body that is not UTF-8 is invalid JSON.
    """
    if not answer.ok:
        return None, f"{answer.path}: {answer.problem}"
    try:
        return load_json(answer.body), ""
    except ValueError:
        return None, f"{answer.path}: invalid json ({_preview(answer.body)})"


def openai_model_ids(answer: Answer) -> list[str] | PollFailure:
    """The ids of an OpenAI ``GET /v1/models`` answer: ``{"data": [{"id": ...}, ...]}``.

    Anything else is a poll failure with the reason: a body that is not an
    object, ``data`` that is not a list, an entry without a string ``id``.
    """
    value, problem = decode_json(answer)
    if problem:
        return PollFailure(reason=problem)
    where = f"invalid {answer.path} body"
    if type(value) is not dict:
        return PollFailure(reason=f"{where}: expected an object, got {describe_json(value)}")
    data = value.get("data")
    if type(data) is not list:
        return PollFailure(reason=f"{where}: data is {describe_json(data)}, not a list")
    ids: list[str] = []
    for i, item in enumerate(data):
        model_id = item.get("id") if type(item) is dict else None
        if type(model_id) is not str or not model_id:
            return PollFailure(reason=f"{where}: data[{i}] has no string id")
        ids.append(model_id)
    return ids


def report(ids: Iterable[str], status: ModelStatus = ModelStatus.LOADED) -> ModelsReport:
    """A successful poll reporting every id in ``ids`` with ``status``."""
    return ModelsReport(models=dict.fromkeys(ids, status))


def _preview(body: bytes) -> str:
    text = body[:_PREVIEW].decode("utf-8", "replace").strip()
    return repr(text) if text else "empty body"


# --------------------------------------------------------------------------
# Prometheus /metrics


def metrics_load(
    answer: Answer, *, running: str, waiting: str, models: Sequence[str]
) -> dict[str, Load] | Invalid:
    """A load reading from Prometheus text: gauges ``running`` + ``waiting``.

    Series carrying a ``model_name`` label count for that model; when a
    model served here has no series of its own (the backend labels none,
    or it is a second name or an adapter of the same engine), it reads the
    sum of every series -- the whole server's load, which is what a request
    for it would wait behind. Several series for one model (one per engine
    or data-parallel rank) are added up. Values are request counts: each
    must be a finite number >= 0 (rounded to an integer).

    The text is parsed with ``prometheus_client``'s parser. A body that is
    not UTF-8, does not parse, or lacks either gauge is :class:`Invalid`.
    """
    where = f"invalid {answer.path} body"
    if not answer.ok:
        return Invalid(reason=f"{answer.path}: {answer.problem}")
    try:
        text = answer.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Invalid(reason=f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})")
    wanted = (running, waiting)
    per_model: dict[str, list[float]] = {running: [], waiting: []}
    by_model: dict[str, dict[str, float]] = {running: {}, waiting: {}}
    seen: set[str] = set()
    try:
        for family in text_string_to_metric_families(_only(text, wanted)):
            if family.name not in per_model:
                continue
            seen.add(family.name)
            for sample in family.samples:
                if sample.name != family.name:
                    continue  # a _created or other helper series
                value = float(sample.value)
                if not math.isfinite(value) or value < 0:
                    return Invalid(reason=f"{where}: {family.name} is {sample.value!r}")
                per_model[family.name].append(value)
                label = sample.labels.get("model_name")
                if label is not None:
                    counts = by_model[family.name]
                    counts[label] = counts.get(label, 0.0) + value
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        return Invalid(reason=f"{where}: not Prometheus text ({_first_line(str(exc))})")
    missing = [name for name in wanted if name not in seen]
    if missing:
        return Invalid(reason=f"{where}: no {' or '.join(missing)} gauge")
    total_running = sum(per_model[running])
    total_waiting = sum(per_model[waiting])
    readings: dict[str, Load] = {}
    for model in models:
        labelled = model in by_model[running] or model in by_model[waiting]
        if labelled:
            r = by_model[running].get(model, 0.0)
            w = by_model[waiting].get(model, 0.0)
        else:
            r, w = total_running, total_waiting
        readings[model] = Load(in_flight=round(r), queue_depth=round(w))
    return readings


def _only(text: str, names: tuple[str, ...]) -> str:
    """The lines of ``text`` about the metrics ``names`` (and nothing else).

    A real server's ``/metrics`` holds hundreds of series (histograms above
    all); the two gauges wanted are a handful of lines. The exposition format
    is line-oriented -- every sample line starts with its metric name, every
    ``# HELP``/``# TYPE`` line names its metric third -- so keeping the lines
    that mention one of ``names`` first hands the parser exactly their
    families, whatever else the server exports.
    """
    kept = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("#"):
            parts = stripped.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and parts[2] in names:
                kept.append(stripped)
        elif stripped.startswith(names):
            kept.append(stripped)
    return "\n".join(kept) + "\n"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unparsable"
    return line[: _PREVIEW * 2]


# --------------------------------------------------------------------------
# The neuron-shaped forms recorded in traces


def models_body(verdict: ModelsReport) -> list[dict[str, str]]:
    """The ``/models`` array a neuron would have answered for ``verdict``."""
    return [{"id": model, "status": status.value} for model, status in verdict.models.items()]


def health_body(readings: Mapping[str, Load]) -> dict[str, Any]:
    """The ``/health`` object a neuron would have answered for ``readings``."""
    return {
        "models": [
            {"id": model, "in_flight": load.in_flight, "queue_depth": load.queue_depth}
            for model, load in readings.items()
        ]
    }
