"""cortex-fsm audit on hand-written traces: what it accepts, what it reports and
where (file and line, blank lines and gzip included), exit codes and formats.
The audit of real recordings is in tests/drivers/test_audit_recordings.py."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cortex_fsm import Catalogue, Neuron, Policy, Profile
from cortex_fsm.ci.audit import AUDITED, audit, render
from cortex_fsm.errors import TraceError
from cortex_fsm.trace import TraceHeader

ROOT = Path(__file__).resolve().parent.parent
MODEL = "m"
HEADER = TraceHeader(
    neurons=(
        Neuron(name="a", endpoint="http://a.lan:13131"),
        Neuron(name="b", endpoint="http://b.lan:13131"),
    ),
    catalogue=Catalogue(profiles={MODEL: Profile(id=MODEL, harness="candle")}),
    policy=Policy(failure_threshold=3),
).to_json()
LOADED = [{"id": MODEL, "status": "loaded"}]
DISCOVERY = {"devices": [{"index": 0, "vram_total_mb": 24000}], "max_prompt_tokens": 4096}


def ev(kind: str, t: float, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "t": t, **fields}


def outcome(
    t: float, rid: str, attempt: int, node: str | None, status: int, **kw: Any
) -> dict[str, Any]:
    fields = {"retry_after": None, "source": "upstream", "error": None, **kw}
    return ev("outcome", t, id=rid, attempt=attempt, node=node, status=status, **fields)


#: Both nodes answer; a fails a request, which goes to b; then both fail their
#: polls, and a request for the model gets no_healthy_nodes.
EVENTS: list[dict[str, Any]] = [
    ev("discovery", 0.0, node="a", ok=True, body=DISCOVERY),
    ev("discovery", 0.0, node="b", ok=True, body=DISCOVERY),
    ev("models", 1.0, node="a", ok=True, body=LOADED),
    ev("models", 1.0, node="b", ok=True, body=LOADED),
    ev("request", 2.0, id="r1", model=MODEL),
    outcome(2.1, "r1", 1, "a", 503, retry_after=3, source="gateway", error="connect"),
    ev("request", 2.1, id="r1", model=MODEL, attempt=2, exclude=["a"]),
    outcome(2.2, "r1", 2, "b", 200),
    *(ev("models", 3.0 + i, node=n, ok=False, error="timeout") for i in range(3) for n in "ab"),
    ev("request", 7.0, id="r2", model=MODEL),
    outcome(7.0, "r2", 1, None, 503, retry_after=5, source="gateway"),
]


def write(path: Path, events: list[dict[str, Any]], *, blanks: bool = False) -> list[int]:
    """Write the trace; the line number of each event."""
    lines = [json.dumps(HEADER)]
    numbers = []
    for e in events:
        if blanks:
            lines.append("")
        lines.append(json.dumps(e))
        numbers.append(len(lines))
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return numbers


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex_fsm.cli", "audit", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_clean_trace_and_the_example_pass(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write(path, EVENTS)
    assert audit(path) == []
    result = cli(str(path), str(ROOT / "examples" / "two-gpu-blip.jsonl"))  # v1 too
    assert (result.returncode, result.stdout) == (0, "no violations found\n")


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_violations_name_the_file_and_the_line(tmp_path: Path, name: str) -> None:
    events = [dict(e) for e in EVENTS]
    events[-1]["retry_after"] = None  # a 503 without Retry-After: R2
    path = tmp_path / name
    lines = write(path, events, blanks=True)
    found = audit(path)
    assert ("R2", lines[-1]) in {(v.invariant, v.line) for v in found}
    assert all(v.file == str(path) for v in found)
    result = cli(str(path))
    assert result.returncode == 1
    assert f"{path}:{lines[-1]}: R2: request 'r2' for 'm' was told status 503, no Retry-After" in (
        result.stdout
    )
    data = json.loads(cli(str(path), "--format", "json").stdout)
    assert {"file": str(path), "line": lines[-1], "invariant": "R2"}.items() <= data[-1].items()
    github = cli(str(path), "--format", "github").stdout
    assert f"::error file={path},line={lines[-1]},title=cortex-fsm audit R2::" in github


def test_an_attempt_on_a_node_it_excluded_breaks_r9_and_the_replay(tmp_path: Path) -> None:
    events = [dict(e) for e in EVENTS]
    i = next(i for i, e in enumerate(events) if e.get("attempt") == 2 and e["kind"] == "outcome")
    events[i] = outcome(2.2, "r1", 2, "a", 503, retry_after=3, source="gateway", error="connect")
    lines = write(tmp_path / "t.jsonl", events)
    found = {(v.invariant, v.line) for v in audit(tmp_path / "t.jsonl")}
    assert {("R9", lines[i]), ("REPLAY", lines[i])} <= found


def test_a_failover_that_forgets_a_failed_node_breaks_r10(tmp_path: Path) -> None:
    events = [dict(e) for e in EVENTS]
    i = next(i for i, e in enumerate(events) if e.get("attempt") == 2 and e["kind"] == "request")
    events[i] = {k: v for k, v in events[i].items() if k != "exclude"}
    events[i + 1] = outcome(2.2, "r1", 2, "a", 200)
    lines = write(tmp_path / "t.jsonl", events)
    found = audit(tmp_path / "t.jsonl")
    assert ("R10", lines[i]) in {(v.invariant, v.line) for v in found}
    assert "does not exclude a, which this request already failed on" in str(found)


def test_a_lower_threshold_on_reload_is_followed(tmp_path: Path) -> None:
    """suspect(2) under T = 3 becomes unhealthy when T drops to 2 (§12): the
    audit's view of health follows, so a reload is no violation."""
    events = [
        *EVENTS[:4],
        ev("models", 2.0, node="a", ok=False, error="timeout"),
        ev("models", 3.0, node="a", ok=False, error="timeout"),
        ev("reconfigured", 4.0, policy=Policy(failure_threshold=2).to_json()),
        ev("models", 5.0, node="a", ok=True, body=LOADED),
        ev("models", 6.0, node="a", ok=False, error="timeout"),
        ev("models", 7.0, node="a", ok=False, error="timeout"),
        ev("request", 8.0, id="r1", model=MODEL),
        outcome(8.1, "r1", 1, "b", 200),
    ]
    write(tmp_path / "t.jsonl", events)
    assert audit(tmp_path / "t.jsonl") == []


def test_limits_and_malformed_traces(tmp_path: Path) -> None:
    events = [dict(e) for e in EVENTS]
    for e in events:
        if e["kind"] == "outcome" and e["status"] == 503:
            e["retry_after"] = 7
    path = tmp_path / "t.jsonl"
    write(path, events)
    assert len(audit(path)) > 1
    assert len(audit(path, limit=1)) == 1
    assert "stopped after the first 1 violations" in cli(str(path), "--max", "1").stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(HEADER) + "\n" + '{"kind": "request", "t": 1}\n', encoding="utf-8")
    with pytest.raises(TraceError):
        audit(bad)
    result = cli(str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"cortex-fsm audit: error: {bad}:2: ")
    assert len(result.stderr.splitlines()) == 1
    assert cli(str(tmp_path / "missing.jsonl")).returncode == 2


def test_every_audited_name_is_rendered() -> None:
    assert set(AUDITED) >= {"REPLAY", "R1", "R2", "R8", "R9", "R10", "H1", "H6", "HSPEC"}
    assert render([], "text") == "no violations found\n"
