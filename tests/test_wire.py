"""Validation of neuron JSON (docs/semantics.md §1)."""

from __future__ import annotations

import pytest

from cortex_fsm import ModelsReport, ModelStatus, PollFailure
from cortex_fsm.wire import Invalid, parse_discovery, parse_health, parse_models


def test_models_array_becomes_a_report() -> None:
    report = parse_models(
        [
            {"id": "a", "status": "loaded", "harness": "candle", "devices": [0]},
            {"id": "b", "status": "unloaded"},
            {"id": "c", "status": "recovering"},
            {"id": "d", "status": "reloading"},
            {"id": "e", "status": "loading"},
            {"id": "f", "status": "something-new"},
        ]
    )
    assert isinstance(report, ModelsReport)
    assert dict(report.models) == {
        "a": ModelStatus.LOADED,
        "b": ModelStatus.UNLOADED,
        "c": ModelStatus.RECOVERING,
        "d": ModelStatus.RELOADING,
        "e": ModelStatus.LOADING,
        "f": ModelStatus.LOADED,  # reference: unknown strings read as loaded
    }


def test_a_repeated_id_keeps_the_later_entry() -> None:
    report = parse_models([{"id": "a", "status": "loaded"}, {"id": "a", "status": "unloaded"}])
    assert isinstance(report, ModelsReport)
    assert dict(report.models) == {"a": ModelStatus.UNLOADED}


def test_an_empty_array_is_a_successful_poll() -> None:
    assert parse_models([]) == ModelsReport(models={})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"models": []}, "expected an array, got an object"),
        (None, "expected an array, got null"),
        ("[]", "expected an array, got a string"),
        ([1], r"\[0\] is a number, not an object"),
        ([{"id": "a", "status": "loaded"}, []], r"\[1\] is an array, not an object"),
        ([{"status": "loaded"}], r"\[0\].id is not a string"),
        ([{"id": 7, "status": "loaded"}], r"\[0\].id is not a string"),
        ([{"id": "a"}], r"\[0\].status is not a string"),
        ([{"id": "a", "status": None}], r"\[0\].status is not a string"),
    ],
)
def test_invalid_models_bodies_are_poll_failures_with_reason(body: object, reason: str) -> None:
    result = parse_models(body)
    assert isinstance(result, PollFailure)
    assert result.reason.startswith("invalid /models body")
    import re

    assert re.search(reason, result.reason), result.reason


def test_discovery() -> None:
    d = parse_discovery(
        {
            "hostname": "h",
            "devices": [
                {"index": 0, "vram_total_mb": 24000, "name": "RTX"},
                {"index": 1, "vram_total_mb": 8000},
            ],
            "max_prompt_tokens": 4096,
        }
    )
    assert not isinstance(d, Invalid)
    assert [(x.index, x.vram_total_mb) for x in d.devices] == [(0, 24000), (1, 8000)]
    assert d.complete and d.hostname == "h"


@pytest.mark.parametrize("mpt", [None, 0, -5, "4096", 1.5, True])
def test_discovery_without_positive_max_prompt_tokens_is_incomplete(mpt: object) -> None:
    body: dict[str, object] = {"devices": []}
    if mpt is not None:
        body["max_prompt_tokens"] = mpt
    d = parse_discovery(body)
    assert not isinstance(d, Invalid)
    assert not d.complete


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"hostname": "h"},
        {"devices": {}},
        {"devices": [1]},
        {"devices": [{"index": 0}]},
        {"devices": [{"index": "0", "vram_total_mb": 1}]},
        {"devices": [{"index": 0, "vram_total_mb": 1.0}]},
        {"devices": [{"index": True, "vram_total_mb": 1}]},
    ],
)
def test_invalid_discovery(body: object) -> None:
    assert isinstance(parse_discovery(body), Invalid)


def test_health_loads() -> None:
    body = {
        "uptime_secs": 1,
        "models": [
            {"id": "a", "in_flight": 2, "queue_depth": 3},
            {"id": "b", "in_flight": 0, "queue_depth": 0},
        ],
    }
    assert parse_health(body) == {"a": 5, "b": 0}
    assert parse_health({"uptime_secs": 1}) == {}  # no models list: no readings


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"models": {}},
        {"models": [1]},
        {"models": [{"in_flight": 1, "queue_depth": 1}]},
        {"models": [{"id": "a", "in_flight": -1, "queue_depth": 0}]},
        {"models": [{"id": "a", "in_flight": 1, "queue_depth": 0.5}]},
        {"models": [{"id": "a", "in_flight": True, "queue_depth": 0}]},
        {"models": [{"id": "a", "in_flight": 1}]},
    ],
)
def test_invalid_health(body: object) -> None:
    assert isinstance(parse_health(body), Invalid)
