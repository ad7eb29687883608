"""Operator-facing parts of the gateway in process (both anyio backends): keys never
forwarded, bounded metric labels, the log formats."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import pytest
from gateway_support import BIG, ScriptedNeuron, chat_body, neuron, running_fleet, wait_until

from cortex_fsm import Catalogue, Policy, Profile
from cortex_fsm.drivers.logs import ACCESS_KEYS, AccessLog, configure_logging, wall_clock
from cortex_fsm.health import Phase

KEY = "sk-local-1"


@pytest.mark.anyio
async def test_the_client_key_is_never_forwarded(anyio_backend: str, tmp_path: Path) -> None:
    scripted = ScriptedNeuron("big", models=[(BIG, "loaded")])
    async with running_fleet(
        scripted=[scripted],
        api_keys=frozenset({hashlib.sha256(KEY.encode()).digest()}),
        access_log=str(tmp_path / "access.jsonl"),
    ) as f:
        for headers in (
            [("authorization", f"Bearer {KEY}")],
            [("x-api-key", KEY), ("anthropic-version", "2023-06-01")],
        ):
            resp = await f.client.request(
                "POST",
                f.gateway.url + "/v1/messages",
                headers=[("content-type", "application/json"), *headers],
                body=chat_body(BIG),
            )
            assert resp.status == 200
        forwarded = [
            dict(h)
            for (_, target, _), h in zip(scripted.calls, scripted.headers, strict=True)
            if target == "/v1/messages"
        ]
        assert len(forwarded) == 2
        for headers_seen in forwarded:
            assert "authorization" not in headers_seen
            assert "x-api-key" not in headers_seen
        assert forwarded[1]["anthropic-version"] == "2023-06-01"
        await wait_until(lambda: len((tmp_path / "access.jsonl").read_text().splitlines()) == 2)


@pytest.mark.anyio
async def test_metric_labels_never_take_a_made_up_model_name(anyio_backend: str) -> None:
    broken = ScriptedNeuron("big", models=[(BIG, "loaded")])
    broken.polls["/models"] = b"not json"
    async with running_fleet(scripted=[broken], policy=Policy(poll_interval=0.05), wait=False) as f:
        await f.wait_phase("big", Phase.UNHEALTHY)
        for model in ("made/up-1", "made/up-2", BIG):
            assert (await f.chat(model)).status == 503  # no_healthy_nodes, known or not
        text = (await f.get("/metrics")).body.decode()
        assert 'cortex_requests_total{model="other",status="503"} 2.0' in text
        assert f'cortex_requests_total{{model="{BIG}",status="503"}} 1.0' in text
        assert "made/up" not in text
        assert 'cortex_polls_total{node="big",result="failed"}' in text
        assert 'cortex_node_health{node="big",state="unhealthy"} 1.0' in text
        ready = await f.get("/readyz")
        assert ready.status == 503
        assert ready.json() == {"status": "not ready", "routable": [], "draining": False}
        assert (await f.get("/healthz")).status == 200


def test_wall_clock_is_iso_8601_utc_with_milliseconds() -> None:
    assert wall_clock(0.0) == "1970-01-01T00:00:00.000Z"
    assert wall_clock(1767225600.25) == "2026-01-01T00:00:00.250Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", wall_clock())


def test_log_formats(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("cortex_fsm.gateway")
    try:
        configure_logging("info", "json")
        log.warning(json.dumps({"event": "upstream_failed", "node": "a b", "n": 2}))
        log.info("plain words")
        configure_logging("info", "text")
        log.warning(json.dumps({"event": "upstream_failed", "node": "a b", "n": 2}))
        err = capsys.readouterr().err.splitlines()
    finally:
        logging.getLogger("cortex_fsm").handlers.clear()
    first, second = (json.loads(x) for x in err[:2])
    assert list(first)[:3] == ["ts", "level", "logger"]
    assert first | {"ts": None} == {
        "ts": None,
        "level": "warning",
        "logger": "cortex_fsm.gateway",
        "event": "upstream_failed",
        "node": "a b",
        "n": 2,
    }
    assert second["message"] == "plain words"
    assert re.fullmatch(
        r"\S+Z WARNING cortex_fsm.gateway: upstream_failed node=\"a b\" n=2", err[2]
    ), err[2]
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")


def test_access_log_lines_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    log = AccessLog(path)
    fields = {
        "ts": 1767225600.0,
        "request_id": "r1",
        "client": "10.0.0.1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": 'we"ird\n',
        "resolved": None,
        "outcome": "model_not_found",
        "node": None,
        "status": 404,
        "attempts": 1,
        "duration_s": 0.0001234567,
        "bytes_sent": 120,
    }
    log.write(**fields)  # type: ignore[arg-type]
    path.rename(tmp_path / "access.jsonl.1")  # a log rotation
    log.reopen()
    log.write(**fields | {"request_id": "r2", "status": None})  # type: ignore[arg-type]
    log.close()
    (line,) = [json.loads(x) for x in (tmp_path / "access.jsonl.1").read_text().splitlines()]
    assert tuple(line) == ACCESS_KEYS
    assert line == {
        "ts": "2026-01-01T00:00:00.000Z",
        "id": "r1",
        "client": "10.0.0.1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": 'we"ird\n',
        "resolved": None,
        "outcome": "model_not_found",
        "node": None,
        "status": 404,
        "attempts": 1,
        "duration_s": 0.000123,
        "bytes": 120,
    }
    (after,) = [json.loads(x) for x in path.read_text().splitlines()]
    assert (after["id"], after["status"]) == ("r2", None)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("{"):
            self.events.append(json.loads(message))


@pytest.mark.anyio
async def test_evictions_count_lifecycle_cycles_and_warn_past_the_limit(
    anyio_backend: str,
) -> None:
    catalogue = Catalogue(
        profiles={m: Profile(id=m) for m in ("org/X", "org/A", "org/B")}, aliases={}
    )
    logger = logging.getLogger("cortex_fsm.gateway")
    collect = _Collect()
    level = logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    try:
        async with running_fleet(
            neuron("n1", "org/X", max_resident=1),
            catalogue=catalogue,
            defrag_after_cycles=1,
        ) as f:
            for model in ("org/A", "org/B"):
                resp = await f.chat(model)
                assert (resp.status, resp.header("x-cortex-outcome")) == (200, "cold_load")
            assert f.neurons["n1"].models() == {
                "org/X": "unloaded",
                "org/A": "unloaded",
                "org/B": "loaded",
            }
            assert f.gateway.cycles == {"n1": 2}
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    events = collect.events
    evicted = [(e["victim"], e["cycles"]) for e in events if e.get("event") == "eviction"]
    assert evicted == [("org/X", 1), ("org/A", 2)]
    wanted = [e for e in events if e.get("event") == "defrag_wanted"]
    assert wanted == [{"event": "defrag_wanted", "node": "n1", "cycles": 2, "limit": 1}]


def test_upstream_attempts_come_from_outcome_events_when_there_are_some() -> None:
    """Each attempt's outcome event is counted once; the answer's tags only when none."""
    import time

    from cortex_fsm import Neuron
    from cortex_fsm.drivers.config import GatewayConfig
    from cortex_fsm.drivers.gateway import _EXCHANGE, Gateway, _Exchange

    gateway = Gateway(
        GatewayConfig(
            neurons=(
                Neuron(name="a", endpoint="http://a:1"),
                Neuron(name="b", endpoint="http://b:1"),
            ),
            catalogue=Catalogue(profiles={BIG: Profile(id=BIG)}),
            access_log=None,
        )
    )
    for node in ("a", "b"):
        gateway.journal.models(node, ok=True, body=[{"id": BIG, "status": "loaded"}])

    class Request:
        method = "POST"
        peer = ("127.0.0.1", 1)
        error_status = None

    class Responder:
        started = True
        status = 200
        bytes_sent = 10
        headers = (
            ("x-cortex-request", "r1"),
            ("x-cortex-outcome", "route_loaded"),
            ("x-cortex-node", "b"),
        )

    exchange = _Exchange(time.perf_counter(), time.time())
    token = _EXCHANGE.set(exchange)
    try:
        rid, first = gateway.journal.request(BIG, attempt=1)
        gateway.journal.outcome(
            rid, 1, node=first.node, status=503, retry_after=3, source="gateway", error="connect"
        )
        _, second = gateway.journal.request(BIG, attempt=2, request_id=rid, exclude=[first.node])
        gateway.journal.outcome(
            rid, 2, node=second.node, status=200, retry_after=None, source="upstream", error=None
        )
    finally:
        _EXCHANGE.reset(token)
    gateway._finish(exchange, Request(), Responder(), "/v1/chat/completions")  # type: ignore[arg-type]
    assert exchange.decisions == 2
    assert exchange.outcomes == 2
    text = gateway.metrics.render().decode() if gateway.metrics else ""
    assert f'cortex_upstream_attempts_total{{node="{first.node}",result="failed"}} 1.0' in text
    assert f'cortex_upstream_attempts_total{{node="{second.node}",result="ok"}} 1.0' in text
    assert 'cortex_decisions_total{outcome="route_loaded"} 2.0' in text
