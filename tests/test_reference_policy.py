"""Every Part II key at its reference value reproduces Part I exactly
(docs/semantics.md Part II), on the scenario traces and the example."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cortex_fsm import TraceReader, replay
from cortex_fsm.policy import PART2_KEYS, REFERENCE_VALUES, Policy

ROOT = Path(__file__).resolve().parent.parent
TRACES = [
    *sorted((ROOT / "tests" / "scenarios").glob("*.decisions.jsonl")),
    ROOT / "examples" / "two-gpu-blip.decisions.jsonl",
]


def _trace_of(expected: Path) -> Path:
    return expected.with_name(expected.name.replace(".decisions.jsonl", ".jsonl"))


def _as_v2(trace: Path, tmp_path: Path, policy: dict[str, object]) -> Path:
    """The same trace with a version 2 header whose policy adds ``policy``."""
    lines = trace.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    assert header["version"] == 1
    header["version"] = 2
    header["policy"] = {**header.get("policy", {}), **policy}
    out = tmp_path / trace.name
    out.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    return out


def _run(path: Path, *overrides: str) -> str:
    out = io.StringIO()
    replay(str(path), overrides=overrides, out=out)
    return out.getvalue()


def test_the_reference_values_are_the_part_one_policy() -> None:
    assert set(REFERENCE_VALUES) == set(PART2_KEYS)
    assert Policy.reference() == Policy(**REFERENCE_VALUES)  # type: ignore[arg-type]
    assert Policy.reference().max_attempts == 1
    assert not Policy.reference().passive_health


@pytest.mark.parametrize("expected", TRACES, ids=lambda p: p.name.split(".")[0])
def test_reference_values_reproduce_the_recorded_decisions(expected: Path, tmp_path: Path) -> None:
    trace = _trace_of(expected)
    want = expected.read_text()
    # a v1 trace: the reference values apply unless told otherwise
    assert _run(trace) == want
    # a v2 trace naming every Part II key at its reference value
    assert _run(_as_v2(trace, tmp_path, dict(REFERENCE_VALUES))) == want
    # ... or a v1 trace with each of them set explicitly on the command line
    sets = [
        f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in REFERENCE_VALUES.items()
    ]
    assert _run(trace, *sets) == want


def test_the_rewritten_headers_are_read_as_written(tmp_path: Path) -> None:
    """The check above can fail: the v2 header's policy is the one replayed
    (with no Part II key named, a v2 trace gets the Part II defaults)."""
    trace = _trace_of(TRACES[0])
    with TraceReader(trace) as original:
        base = original.header.policy
    with TraceReader(_as_v2(trace, tmp_path, dict(REFERENCE_VALUES))) as reference:
        assert (
            reference.header.policy
            == base
            == Policy.reference().with_values({"failure_threshold": base.failure_threshold})
        )
    with TraceReader(_as_v2(trace, tmp_path, {})) as defaults:
        assert defaults.header.policy == Policy(failure_threshold=base.failure_threshold)
        assert defaults.header.policy != base
