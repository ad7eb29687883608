"""Replay: exact decisions, determinism, summaries and policy comparison."""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

import pytest

from cortex_fsm import ConfigError, compare, replay
from cortex_fsm.replay import render_comparison, render_summary

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "two-gpu-blip.jsonl"
SCENARIOS = sorted((ROOT / "tests" / "scenarios").glob("*.decisions.jsonl"))


def run(path: Path, *overrides: str) -> str:
    out = io.StringIO()
    replay(str(path), overrides=overrides, out=out)
    return out.getvalue()


def test_example_replays_to_exactly_the_given_decisions() -> None:
    expected = (ROOT / "examples" / "two-gpu-blip.decisions.jsonl").read_text()
    assert run(EXAMPLE) == expected


@pytest.mark.parametrize("expected", SCENARIOS, ids=lambda p: p.name.split(".")[0])
def test_scenarios(expected: Path) -> None:
    trace = expected.with_name(expected.name.replace(".decisions.jsonl", ".jsonl"))
    assert run(trace) == expected.read_text()


def test_gzip_trace_gives_the_same_bytes(tmp_path: Path) -> None:
    gz = tmp_path / "blip.jsonl.gz"
    with EXAMPLE.open("rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert run(gz) == run(EXAMPLE)


def test_replay_is_byte_identical_across_runs() -> None:
    first = run(EXAMPLE)
    for _ in range(3):
        assert run(EXAMPLE) == first


def test_set_overrides_the_header_policy() -> None:
    lines = run(EXAMPLE, "failure_threshold=1").splitlines()
    assert '"id": "r2"' in lines[1] and '"feasible_node_unhealthy"' in lines[1]
    with pytest.raises(ConfigError, match="unknown policy key 'failure_threshhold'"):
        run(EXAMPLE, "failure_threshhold=1")
    with pytest.raises(
        ConfigError, match=r"failure_threshold must be an integer in 1\.\.10000, got 0"
    ):
        run(EXAMPLE, "failure_threshold=0")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        run(EXAMPLE, "failure_threshold")


def test_summary_counts_and_time_in_state() -> None:
    s = replay(str(EXAMPLE))
    assert s.requests == 7 and s.events == 16
    assert s.outcomes == {
        "cold_load": 1,
        "feasible_node_unhealthy": 1,
        "model_not_found": 1,
        "route_loaded": 4,
    }
    assert s.statuses == {200: 5, 404: 1, 503: 1}
    a = next(n for n in s.nodes if n.name == "gpu-a")
    # healthy 0-10, suspect(1) 10-20, suspect(2) 20-30, unhealthy 30-40, healthy 40-45
    assert a.time_in == {
        "unknown": 0.0,
        "healthy": 15.0,
        "suspect(1)": 10.0,
        "suspect(2)": 10.0,
        "unhealthy": 10.0,
    }
    assert (a.transitions, a.final) == (5, "healthy")
    text = render_summary(s, source="blip")
    assert "status 503" in text and "in suspect(2)" in text


def test_compare_lists_the_requests_whose_outcome_differs() -> None:
    c = compare(str(EXAMPLE), ["failure_threshold=1"])
    assert c.differing == 1
    (d,) = c.differences
    assert (d.id, d.base.outcome.value, d.other.outcome.value) == (
        "r2",
        "route_loaded",
        "feasible_node_unhealthy",
    )
    assert c.base.policy.failure_threshold == 3 and c.other.policy.failure_threshold == 1
    b_node = next(n for n in c.other.nodes if n.name == "gpu-a")
    assert b_node.time_in == {"unknown": 0.0, "healthy": 15.0, "unhealthy": 30.0}
    text = render_comparison(c, source="blip")
    assert "1 of 7 requests differ" in text
    assert "route_loaded -> gpu-a" in text and "feasible_node_unhealthy (503, retry 3s)" in text


def test_compare_with_identical_policies_finds_nothing() -> None:
    c = compare(str(EXAMPLE), ["failure_threshold=3"])
    assert c.differing == 0 and c.differences == ()


def test_comparison_rows_of_nodes_whose_names_contain_slashes(tmp_path: Path) -> None:
    """Row keys must not collide: node 'a' in state 'unknown' vs node 'a/unknown'."""
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        '{"kind": "header", "format": "cortex-fsm-trace", "version": 1, "neurons": '
        '[{"name": "a", "endpoint": "http://a"}, {"name": "a/unknown", "endpoint": "http://b"}]}\n'
        '{"kind": "models", "t": 0, "node": "a", "ok": true, "body": []}\n'
        '{"kind": "models", "t": 5, "node": "a/unknown", "ok": false, "error": "x"}\n'
        '{"kind": "models", "t": 10, "node": "a", "ok": false, "error": "x"}\n'
    )
    text = render_comparison(compare(str(trace), ["failure_threshold=1"]))
    rows = [line.split()[:2] for line in text.splitlines() if line.startswith("  node ")]
    assert rows == [["node", "a"], ["node", "a/unknown"]]
    assert text.count("in unknown") == 2  # one per node


def test_merging_many_summary_rows_is_linear() -> None:
    from cortex_fsm.replay import _merge_keys

    a = [f"k{i}" for i in range(0, 200_000, 2)]
    b = [f"k{i}" for i in range(200_000)]
    merged = _merge_keys(a, b)
    assert len(merged) == 200_000 and merged[:3] == ["k0", "k1", "k2"]
    assert _merge_keys(["x", "z"], ["y", "x", "w", "z"]) == ["x", "w", "z", "y"]
