"""Validation of neuron JSON (docs/semantics.md §1) into typed values.

Nothing here raises on bad input. A ``/models`` answer becomes either a
:class:`~cortex_fsm.fleet.ModelsReport` (a successful poll) or a
:class:`~cortex_fsm.fleet.PollFailure` carrying the reason; ``/discovery``
and ``/health`` answers become a value or :class:`Invalid` (which the engine
ignores: a bad discovery or health answer never changes health).

The checks are exactly the spec's and no more, because every extra check
would turn a neuron the reference accepts into a failed poll:

* ``/models``: an array of objects, each with a string ``id`` and a string
  ``status``; unknown status strings read as ``loaded``; a repeated id: the
  later entry wins.
* ``/discovery``: an object whose ``devices`` is a list of objects, each with
  integer ``index`` and ``vram_total_mb``. ``max_prompt_tokens`` that is not a
  non-negative integer reads as absent (so discovery is fetched again).
* ``/health``: an object whose ``models``, if present, is a list of objects
  with a string ``id`` and non-negative integer ``in_flight`` and
  ``queue_depth``.

JSON integers only: ``true`` is not 1 and ``1.0`` is not 1.
"""

from __future__ import annotations

import json
from typing import Any, TypeGuard

import attrs

from .fleet import STATUS_BY_TEXT, Device, Discovery, ModelsReport, ModelStatus, PollFailure

__all__ = [
    "Invalid",
    "describe_json",
    "load_json",
    "parse_discovery",
    "parse_health",
    "parse_models",
]


@attrs.frozen(slots=True, kw_only=True)
class Invalid:
    """A ``/discovery`` or ``/health`` answer that failed validation."""

    reason: str


# Unknown status strings read as loaded (reference behaviour).
_status_get = STATUS_BY_TEXT.get
_LOADED = ModelStatus.LOADED


def load_json(data: bytes | str) -> Any:
    """``json.loads`` for JSON from outside: every way it can be bad is a ``ValueError``.

    Besides invalid JSON and invalid UTF-8 (already ``ValueError``), that
    includes nesting deep enough to exhaust the parser's recursion limit,
    which ``json`` reports as ``RecursionError``.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def describe_json(value: object) -> str:
    """``a string``, ``an array``... for error messages about JSON values."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_int(value: object) -> TypeGuard[int]:
    return type(value) is int


def parse_models(body: object) -> ModelsReport | PollFailure:
    """A ``/models`` body: a successful poll, or a poll failure with the reason."""
    if type(body) is not list:
        return PollFailure(
            reason=f"invalid /models body: expected an array, got {describe_json(body)}"
        )
    seen: dict[str, ModelStatus] = {}
    for i, item in enumerate(body):
        if type(item) is not dict:
            return PollFailure(
                reason=f"invalid /models body: [{i}] is {describe_json(item)}, not an object"
            )
        model_id = item.get("id")
        status = item.get("status")
        if type(model_id) is not str:
            return PollFailure(reason=f"invalid /models body: [{i}].id is not a string")
        if type(status) is not str:
            return PollFailure(reason=f"invalid /models body: [{i}].status is not a string")
        seen[model_id] = _status_get(status, _LOADED)
    return ModelsReport(models=seen)


def parse_discovery(body: object) -> Discovery | Invalid:
    """A ``/discovery`` body: the topology to cache, or :class:`Invalid`."""
    if type(body) is not dict:
        return Invalid(
            reason=f"invalid /discovery body: expected an object, got {describe_json(body)}"
        )
    raw_devices = body.get("devices")
    if type(raw_devices) is not list:
        return Invalid(reason="invalid /discovery body: devices is not a list")
    devices = []
    for i, d in enumerate(raw_devices):
        if type(d) is not dict:
            return Invalid(reason=f"invalid /discovery body: devices[{i}] is not an object")
        index = d.get("index")
        vram = d.get("vram_total_mb")
        if not _is_int(index) or not _is_int(vram):
            return Invalid(
                reason=f"invalid /discovery body: devices[{i}] needs integer index and "
                "vram_total_mb"
            )
        name = d.get("name")
        devices.append(
            Device(index=index, vram_total_mb=vram, name=name if isinstance(name, str) else "")
        )
    mpt = body.get("max_prompt_tokens")
    hostname = body.get("hostname")
    return Discovery(
        devices=tuple(devices),
        max_prompt_tokens=mpt if _is_int(mpt) and mpt > 0 else 0,
        hostname=hostname if isinstance(hostname, str) else "",
    )


def _health_problem(models: list[object]) -> str:
    """Why a ``/health`` models list is invalid (the slow path, for the message)."""
    for i, m in enumerate(models):
        if type(m) is not dict:
            return f"invalid /health body: models[{i}] is not an object"
        if type(m.get("id")) is not str:
            return f"invalid /health body: models[{i}].id is not a string"
        in_flight, queue = m.get("in_flight"), m.get("queue_depth")
        if not (_is_int(in_flight) and _is_int(queue) and in_flight >= 0 and queue >= 0):
            return (
                f"invalid /health body: models[{i}] needs non-negative integer "
                "in_flight and queue_depth"
            )
    return "invalid /health body"  # pragma: no cover - only called for an invalid list


def parse_health(body: object) -> dict[str, int] | Invalid:
    """A ``/health`` body: ``in_flight + queue_depth`` per model, or :class:`Invalid`."""
    if type(body) is not dict:
        return Invalid(
            reason=f"invalid /health body: expected an object, got {describe_json(body)}"
        )
    models = body.get("models")
    if models is None:
        return {}
    if type(models) is not list:
        return Invalid(reason="invalid /health body: models is not a list")
    busy: dict[str, int] = {}
    for m in models:
        if type(m) is dict:
            model_id = m.get("id")
            in_flight = m.get("in_flight")
            queue = m.get("queue_depth")
            # type() is int, not isinstance: JSON true/false must not count as 1/0
            if (
                type(model_id) is str
                and type(in_flight) is int
                and type(queue) is int
                and in_flight >= 0
                and queue >= 0
            ):
                busy[model_id] = in_flight + queue
                continue
        return Invalid(reason=_health_problem(models))
    return busy
