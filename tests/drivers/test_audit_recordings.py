"""``cortex-fsm audit`` on a real recording: clean as the gateway wrote it, and
caught, at the edited line, once its outcomes are edited to break R1, R2, R8
or R10. (Every other recording a driver test makes is audited by the
``broken_on_purpose`` fixture of conftest.py.)"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from gateway_support import BIG, SMALL, neuron, running_fleet, wait_until

from cortex_fsm import Policy
from cortex_fsm.ci.audit import audit
from cortex_fsm.health import Phase

pytestmark = pytest.mark.anyio

Line = dict[str, Any]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # one recording is enough: the audit reads a file


async def _record(path: Path) -> None:
    """Failovers to a live replica (SMALL), and failovers with nowhere to go (BIG)."""
    async with running_fleet(
        neuron("a", SMALL),
        neuron("b", SMALL),
        neuron("big", BIG, gpus=2, vram_mb=81920),
        policy=Policy(poll_interval=0.2),
        record=str(path),
    ) as f:
        for _ in range(3):
            await f.chat(SMALL)
        f.kill("a")
        f.kill("big")
        for _ in range(3):
            await f.chat(SMALL)
            await f.chat(BIG)
        await wait_until(lambda: f.phase("big") is Phase.UNHEALTHY)
        await f.chat(BIG)
        await anyio.sleep(0.1)


def _edited(
    lines: list[str], which: Callable[[Line], bool], change: Callable[[Line], Line | None]
) -> tuple[list[str], int]:
    """The lines with the first event ``which`` selects changed (None: deleted),
    and its line number."""
    for i, text in enumerate(lines):
        obj = json.loads(text)
        if obj.get("kind") == "outcome" and which(obj):
            new = change(dict(obj))
            out = [*lines[:i], *([] if new is None else [json.dumps(new)]), *lines[i + 1 :]]
            return out, i + 1
    raise AssertionError("no such outcome in the recording")


def _reject_503(o: Line) -> bool:
    return bool(o["node"] is None and o["status"] == 503)


async def test_audit_passes_a_recording_and_fails_its_edited_outcomes(
    tmp_path: Path, broken_on_purpose: list[Path]
) -> None:
    record = tmp_path / "failover.jsonl.gz"
    await _record(record)
    assert audit(record) == []
    with gzip.open(record, "rt", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    # the first request that failed on a (and went on to b, which had SMALL loaded)
    rid = next(
        o["id"]
        for o in map(json.loads, lines)
        if o.get("kind") == "outcome" and o["node"] == "a" and o["error"] == "connect"
    )

    edits: dict[str, tuple[Callable[[Line], bool], Callable[[Line], Line | None]]] = {
        # feasible_node_unhealthy (big is excluded or down and feasible) told as a 404
        "R1": (_reject_503, lambda o: {**o, "status": 404, "retry_after": None}),
        # a 503 without its Retry-After
        "R2": (_reject_503, lambda o: {**o, "retry_after": None}),
        # a 503 with a Retry-After the policy does not give
        "R2-value": (_reject_503, lambda o: {**o, "retry_after": 9}),
        # a refused connection told to the client as a 404
        "R8": (
            lambda o: o["error"] == "connect",
            lambda o: {**o, "status": 404, "retry_after": None},
        ),
    }
    for name, (which, change) in edits.items():
        broken, line = _edited(lines, which, change)
        path = tmp_path / f"{name}.jsonl"
        broken_on_purpose.append(path)
        path.write_text("\n".join(broken) + "\n", encoding="utf-8")
        found = audit(path)
        invariant = name.split("-")[0]
        assert (invariant, line) in {(v.invariant, v.line) for v in found}, (name, found)
        # the CLI says so too, file and line first
        result = subprocess.run(
            [sys.executable, "-m", "cortex_fsm.cli", "audit", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert f"{path}:{line}: {invariant}: " in result.stdout

    # R10: without its second attempt, the client would have had that 503
    out = [
        text
        for text in lines
        if not (json.loads(text).get("id") == rid and json.loads(text).get("attempt") == 2)
    ]
    path = tmp_path / "no-failover.jsonl"
    broken_on_purpose.append(path)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    _same, line = _edited(lines, lambda o: o["id"] == rid and o["attempt"] == 1, lambda o: o)
    found = audit(path)
    assert ("R10", line) in {(v.invariant, v.line) for v in found}, found
