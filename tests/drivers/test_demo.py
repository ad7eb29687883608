"""``cortex-fsm demo`` plays the incident, checks it, and exits 0."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cortex_fsm import TraceReader
from cortex_fsm.cli import main


def test_demo_plays_the_incident(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = tmp_path / "demo.jsonl.gz"
    start = time.monotonic()
    assert main(["demo", "--record", str(record)]) == 0
    elapsed = time.monotonic() - start
    out = capsys.readouterr().out
    assert elapsed < 60
    assert "poll every 0.5 s, /models timeout 0.4 s" in out
    assert "node big      healthy -> suspect(1)" in out
    assert "suspect(2) -> unhealthy" in out
    assert "503 Retry-After: 3     feasible_node_unhealthy" in out
    assert "unhealthy -> healthy" in out
    # the second act: a small replica dies, requests fail over, it comes back
    assert "node small-a  suspect(2) -> unhealthy   (request_failed: connect)" in out
    assert "200 from small-b       route_loaded  (attempt 2)" in out
    assert "node small-a  unhealthy -> healthy   (poll_ok)" in out
    checks = [line for line in out.splitlines() if line.startswith("  [")]
    assert len(checks) == 11
    assert all(line.startswith("  [ok]") for line in checks), checks
    assert "replaying the recorded trace gives the same" in out
    # a glimpse of the operator's view: /metrics and the access log
    assert 'cortex_health_transitions_total{from="healthy",node="big",to="suspect"} 1.0' in out
    assert 'cortex_requests_total{model="org/Big-70B",status="503"}' in out
    access = out.split("access log (one JSON line per request; the last two)\n")[1]
    lines = [json.loads(line) for line in access.splitlines()[:2]]
    assert [line["path"] for line in lines] == ["/v1/chat/completions"] * 2
    assert "request Qwen/Qwen3-8B -> 200 from vllm-1" in out
    with TraceReader(record) as trace:
        assert [n.name for n in trace.header.neurons] == ["big", "small-a", "small-b", "vllm-1"]
        assert sum(1 for _ in trace) > 50


def test_demo_rejects_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--record", str(tmp_path / "no" / "t.jsonl.gz")]) == 2
    assert capsys.readouterr().err.startswith("cortex-fsm: error: --record: directory")
    with pytest.raises(SystemExit) as info:
        main(["demo", "--poll-interval", "30"])
    assert info.value.code == 2
