"""Failures after a node was chosen: docs/semantics.md §4, the required extension and R8."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gateway_support import BIG, ScriptedNeuron, running_fleet

from cortex_fsm import Catalogue, Policy, Profile
from cortex_fsm.errors import IO_FAILURES, IOCause, IOPhase, Outcome

pytestmark = pytest.mark.anyio

COLD = "org/Cold-13B"
CATALOGUE = Catalogue(
    profiles={
        BIG: Profile(id=BIG, harness="candle", min_devices=2),
        COLD: Profile(id=COLD, harness="candle", min_devices=2),
    }
)

_500 = ("status", 500, b'{"error": "boom"}')
_400 = ("status", 400, b'{"error": "bad spec"}')
_404 = ("status", 404, b'{"error": "no such model"}')
_NO_URL = ("status", 200, b'{"address": "somewhere"}')

# (which call misbehaves, how, the model asked for) -> (phase, cause) of the table
CASES: list[tuple[str, Any, str, IOPhase, IOCause]] = [
    ("load", "drop", COLD, IOPhase.LOAD, IOCause.TRANSPORT),
    ("load", "stall", COLD, IOPhase.LOAD, IOCause.TRANSPORT),
    ("load", _500, COLD, IOPhase.LOAD, IOCause.STATUS_5XX),
    ("load", _400, COLD, IOPhase.LOAD, IOCause.STATUS_4XX),
    ("endpoint", "drop", BIG, IOPhase.ENDPOINT, IOCause.TRANSPORT),
    ("endpoint", "stall", BIG, IOPhase.ENDPOINT, IOCause.TRANSPORT),
    ("endpoint", _500, BIG, IOPhase.ENDPOINT, IOCause.STATUS_5XX),
    ("endpoint", _404, BIG, IOPhase.ENDPOINT, IOCause.STATUS_4XX),
    ("endpoint", _NO_URL, BIG, IOPhase.ENDPOINT, IOCause.BAD_BODY),
    ("forward", "drop", BIG, IOPhase.FORWARD, IOCause.TRANSPORT),
    ("forward", "stall", BIG, IOPhase.FORWARD, IOCause.TRANSPORT),
    ("forward", _500, BIG, IOPhase.FORWARD, IOCause.STATUS_5XX),
]

EXPECTED = {
    # extension (the default)
    ("extension", IOPhase.LOAD, IOCause.TRANSPORT): Outcome.UPSTREAM_UNAVAILABLE,
    ("extension", IOPhase.LOAD, IOCause.STATUS_5XX): Outcome.UPSTREAM_UNAVAILABLE,
    ("extension", IOPhase.LOAD, IOCause.STATUS_4XX): Outcome.COLD_LOAD_FAILED,
    ("extension", IOPhase.ENDPOINT, IOCause.TRANSPORT): Outcome.UPSTREAM_UNAVAILABLE,
    ("extension", IOPhase.ENDPOINT, IOCause.STATUS_5XX): Outcome.UPSTREAM_UNAVAILABLE,
    ("extension", IOPhase.ENDPOINT, IOCause.STATUS_4XX): Outcome.ENDPOINT_RESOLVE_FAILED,
    ("extension", IOPhase.ENDPOINT, IOCause.BAD_BODY): Outcome.ENDPOINT_RESOLVE_FAILED,
    ("extension", IOPhase.FORWARD, IOCause.TRANSPORT): Outcome.UPSTREAM_UNAVAILABLE,
    ("extension", IOPhase.FORWARD, IOCause.STATUS_5XX): Outcome.UPSTREAM_UNAVAILABLE,
    # the reference: every load or endpoint failure is a 404
    ("reference", IOPhase.LOAD, IOCause.TRANSPORT): Outcome.COLD_LOAD_FAILED,
    ("reference", IOPhase.LOAD, IOCause.STATUS_5XX): Outcome.COLD_LOAD_FAILED,
    ("reference", IOPhase.LOAD, IOCause.STATUS_4XX): Outcome.COLD_LOAD_FAILED,
    ("reference", IOPhase.ENDPOINT, IOCause.TRANSPORT): Outcome.ENDPOINT_RESOLVE_FAILED,
    ("reference", IOPhase.ENDPOINT, IOCause.STATUS_5XX): Outcome.ENDPOINT_RESOLVE_FAILED,
    ("reference", IOPhase.ENDPOINT, IOCause.STATUS_4XX): Outcome.ENDPOINT_RESOLVE_FAILED,
    ("reference", IOPhase.ENDPOINT, IOCause.BAD_BODY): Outcome.ENDPOINT_RESOLVE_FAILED,
    ("reference", IOPhase.FORWARD, IOCause.TRANSPORT): Outcome.UPSTREAM_UNAVAILABLE,
    ("reference", IOPhase.FORWARD, IOCause.STATUS_5XX): Outcome.UPSTREAM_UNAVAILABLE,
}


def test_expected_table_matches_the_core() -> None:
    for (mode, phase, cause), outcome in EXPECTED.items():
        if mode == "extension":
            assert IO_FAILURES[(phase, cause)] is outcome


@pytest.mark.parametrize("mode", ["extension", "reference"])
async def test_failures_after_the_decision_are_classified_by_cause(
    anyio_backend: str, mode: str
) -> None:
    script = ScriptedNeuron("gpu", gpus=2, models=[(BIG, "loaded")])
    async with running_fleet(
        scripted=[script],
        catalogue=CATALOGUE,
        # One attempt per request, and no passive health: each request shows how
        # one failure is classified (failover and passive health: test_failover.py).
        policy=Policy(poll_interval=0.2, io_errors=mode, max_attempts=1, passive_health=False),
        endpoint_timeout=0.3,
        load_timeout=0.3,
        request_timeout=0.3,
        endpoint_cache=False,
    ) as f:
        for key, action, model, phase, cause in CASES:
            script.behaviour = {key: action}
            resp = await f.chat(model)
            expected = EXPECTED[(mode, phase, cause)]
            label = f"{mode} {key} {action}"
            assert resp.header("x-cortex-outcome") == expected.value, label
            assert resp.status == expected.status, label
            retry = expected.retry_after
            assert resp.header("retry-after") == (None if retry is None else str(retry)), label
            error = json.loads(resp.body)["error"]
            assert error["type"] == "api_error"
            assert error["code"] == "service_unavailable"
            assert resp.header("x-cortex-node") == "gpu"
            if mode == "extension" and cause in (IOCause.TRANSPORT, IOCause.STATUS_5XX):
                assert resp.status == 503, f"R8 violated: {label}"  # never a 404
        # a 4xx to the forwarded request is the neuron's verdict: passed through as is
        script.behaviour = {"forward": ("status", 422, b'{"error": {"message": "bad temp"}}')}
        resp = await f.chat(BIG)
        assert resp.status == 422
        assert resp.body == b'{"error": {"message": "bad temp"}}'
        # and with nothing misbehaving, the same requests succeed
        script.behaviour = {}
        assert (await f.chat(BIG)).status == 200


async def test_failed_load_is_observed_and_success_marks_loaded(anyio_backend: str) -> None:
    script = ScriptedNeuron("gpu", gpus=2, models=[(BIG, "loaded")])
    async with running_fleet(
        scripted=[script], catalogue=CATALOGUE, policy=Policy(poll_interval=5.0)
    ) as f:
        script.behaviour = {"load": ("status", 409, b'{"error": "model already loaded"}')}
        resp = await f.chat(COLD)
        # "already loaded" in the answer counts as success
        assert resp.status == 200
        assert resp.header("x-cortex-outcome") == "cold_load"
        assert f.engine.status("gpu").models[COLD].status.value == "loaded"
        loads = [json.loads(body) for _, target, body in script.calls if target == "/models/load"]
        assert loads == [
            {"model_id": COLD, "harness": "candle", "tensor_parallel": 2, "devices": [0, 1]}
        ]


async def test_endpoint_is_resolved_with_the_id_encoded_and_cached(anyio_backend: str) -> None:
    script = ScriptedNeuron("gpu", gpus=2, models=[(BIG, "loaded")])
    async with running_fleet(
        scripted=[script], catalogue=CATALOGUE, policy=Policy(poll_interval=0.1, max_attempts=1)
    ) as f:
        for _ in range(3):
            assert (await f.chat(BIG)).status == 200
        lookups = [t for _, t, _ in script.calls if t.endswith("/endpoint")]
        assert lookups == ["/models/org%2FBig-70B/endpoint"]
        # the neuron answered http://localhost:PORT/: rewritten to the endpoint's host
        forwarded = [t for _, t, _ in script.calls if t.startswith("/v1/")]
        assert forwarded == ["/v1/chat/completions"] * 3
        # a forward failure forgets the cached endpoint
        script.behaviour = {"forward": "drop"}
        assert (await f.chat(BIG)).status == 503
        script.behaviour = {}
        assert (await f.chat(BIG)).status == 200
        lookups = [t for _, t, _ in script.calls if t.endswith("/endpoint")]
        assert len(lookups) == 2
