"""simulate, score, sweep and the notebook functions, through real CLI processes
where a user would type the command."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from cortex_fsm.research import frames
from cortex_fsm.research.scenario import load_scenario, with_assignments
from cortex_fsm.research.score import SCORE_KEYS
from cortex_fsm.research.simulate import simulate, simulate_to_file
from cortex_fsm.research.sweep import pareto_front, score_scenario, sweep
from cortex_fsm.trace import TraceReader

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "research"
BLIPS = EXAMPLES / "blips.toml"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex_fsm.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=300,
    )


def _short(tmp_path: Path, seconds: float = 300.0) -> Path:
    """The blip-heavy example, shortened."""
    text = BLIPS.read_text().replace("duration_s = 7200.0", f"duration_s = {seconds}")
    path = tmp_path / "blips.toml"
    path.write_text(text)
    return path


def test_simulate_is_byte_identical_for_a_seed_and_replays_to_its_decisions(
    tmp_path: Path,
) -> None:
    scenario_path = _short(tmp_path)
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    for out, seed in ((a, "5"), (b, "5"), (c, "6")):
        done = cli("simulate", str(scenario_path), "-o", str(out), "--seed", seed)
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()

    # The trace is a valid v2 trace with ground truth, requests, attempts and outcomes.
    with TraceReader(a) as trace:
        assert trace.header.version == 2
        kinds = Counter(kind for kind, _ in trace.records())
    assert {"truth", "models", "health", "discovery", "request", "outcome"} <= set(kinds)
    assert kinds["request"] == kinds["outcome"]  # every attempt has exactly one outcome

    # Replaying it gives the decisions the simulated gateway made.
    scenario = load_scenario(scenario_path).with_seed(5)
    made: list[tuple[str, int, str, str | None]] = []

    def listen(kind: str, record: dict[str, object], result: object) -> None:
        if kind == "request":
            made.append((record["id"], record["attempt"], result.outcome.value, result.node))  # type: ignore[arg-type, attr-defined]

    sim = simulate(scenario, listen=listen)
    rows = frames.decisions(a)
    assert [(r["id"], r["attempt"], r["outcome"], r["node"]) for r in rows] == made
    # What the run reports (and `simulate` prints) counts what it wrote.
    assert sim.events == sum(kinds.values())
    assert sim.attempts == kinds["request"] == len(made)
    assert sim.requests == len({request_id for request_id, _, _, _ in made})
    assert any(attempt > 1 for _, attempt, _, _ in made)  # failover happened
    done = cli("replay", str(a), "--summary")
    assert done.returncode == 0, done.stderr
    assert f"requests         {len(made)}" in done.stdout


def test_score_json_matches_the_score_computed_while_simulating(tmp_path: Path) -> None:
    scenario = load_scenario(_short(tmp_path))
    trace = tmp_path / "t.jsonl.gz"
    simulate_to_file(scenario, trace)
    done = cli("score", str(trace), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert list(result) == [*SCORE_KEYS, "per_model"]
    assert result == json.loads(json.dumps(score_scenario(scenario)))
    assert result["requests"] > 0 and 0.9 < result["availability"] <= 1.0
    assert set(result["per_model"]) == {"helexa/large", "Qwen/Qwen3-8B"}
    assert sum(m["requests"] for m in result["per_model"].values()) == result["requests"]
    # Another policy, judged on the same trace.
    other = cli("score", str(trace), "--json", "--set", "failure_threshold=1")
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout)["false_evictions"] >= result["false_evictions"]
    text = cli("score", str(trace))
    assert text.returncode == 0 and "routed_to_down" in text.stdout


def test_score_needs_ground_truth() -> None:
    done = cli("score", str(ROOT / "examples" / "two-gpu-blip.jsonl"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "no truth events" in done.stderr


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("azure", "azure-sample.csv"),
        ("burstgpt", "burstgpt-sample.csv"),
        ("mooncake", "mooncake-sample.jsonl"),
    ],
)
def test_imported_arrivals_give_one_request_per_row(tmp_path: Path, name: str, rows: str) -> None:
    out = tmp_path / "t.jsonl"
    done = cli("simulate", str(EXAMPLES / f"{name}.toml"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    lines = [x for x in (EXAMPLES / rows).read_text().splitlines() if x.strip()]
    expected = len(lines) - (0 if rows.endswith(".jsonl") else 1)
    with TraceReader(out) as trace:
        firsts = [f for kind, f in trace.records() if kind == "request" and f["attempt"] == 1]
    assert len(firsts) == expected
    assert len({f["id"] for f in firsts}) == expected
    if name == "burstgpt":
        assert {f["model"] for f in firsts} == {"Qwen/Qwen3-8B", "Qwen/Qwen3-32B"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[neurons]]\nname = 1\n", "[[neurons]] #1 name must be a non-empty string"),
        (
            "[run]\nduration_s = 10\n[[neurons]]\nname = 'a'\n[traffic]\nrate_per_s = -1\n",
            "[traffic] rate_per_s",
        ),
        ("[[neurons]\n", "invalid TOML"),
    ],
)
def test_malformed_scenario_is_one_line_exit_2(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "t.jsonl"
    done = cli("simulate", str(path), "-o", str(out))
    assert done.returncode == 2
    assert done.stderr.startswith(f"cortex-fsm: error: {path}")
    assert message in done.stderr
    assert done.stderr.count("\n") == 1
    assert not out.exists()


def test_malformed_arrival_file_is_one_line_exit_2_and_leaves_no_trace(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,1,2\nnot a time,1,2\n"
    )
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[neurons]]\nname = "a"\nloaded = ["m"]\n[traffic]\narrivals = "a.csv"\n')
    out = tmp_path / "t.jsonl"
    out.write_text("an earlier trace\n")
    done = cli("simulate", str(scenario), "-o", str(out))
    assert done.returncode == 2
    assert done.stderr == (
        f"cortex-fsm: error: {tmp_path / 'a.csv'}:3: TIMESTAMP must look like "
        "2023-11-16 18:15:46.6805900, got 'not a time'\n"
    )
    assert out.read_text() == "an earlier trace\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "s.toml", "t.jsonl"]


def test_policy_changes_never_change_the_truth_or_the_arrivals(tmp_path: Path) -> None:
    scenario = load_scenario(_short(tmp_path, 600.0))

    def world(s: object) -> tuple[list[object], list[object]]:
        truth: list[object] = []
        asked: list[object] = []

        def listen(kind: str, record: dict[str, object], result: object) -> None:
            if kind == "truth" and record["t"] <= 600.0:
                truth.append((record["t"], record["node"], record["up"]))
            elif kind == "request" and record["attempt"] == 1:
                asked.append((record["t"], record["model"]))

        simulate(s, listen=listen)  # type: ignore[arg-type]
        return truth, asked

    base = world(scenario)
    assert base[0] and base[1]
    for change in ({"failure_threshold": 1}, {"poll_interval": 2.0}, {"max_attempts": 1}):
        assert world(with_assignments(scenario, change)) == base


def test_the_sweep_answers_the_threshold_question(tmp_path: Path) -> None:
    """T = 1 evicts up nodes more often than T = 3; a large T sends more requests
    to down nodes (the trade-off behind the default)."""
    scenario = load_scenario(_short(tmp_path, 600.0))
    rows = sweep(scenario, [("failure_threshold", [1, 3, 6]), ("poll_interval", [5.0])], workers=1)
    by_t = {r["failure_threshold"]: r for r in rows}
    assert [r["failure_threshold"] for r in rows] == [1, 3, 6]
    assert by_t[1]["false_evictions"] > by_t[3]["false_evictions"]  # type: ignore[operator]
    assert by_t[6]["routed_to_down"] > by_t[3]["routed_to_down"]  # type: ignore[operator]


def test_sweep_cli_csv_parquet_plot_and_dask_local(tmp_path: Path) -> None:
    scenario = _short(tmp_path, 120.0)
    results, png = tmp_path / "r.csv", tmp_path / "r.png"
    grid = ["--grid", "failure_threshold=1,3", "--grid", "poll_interval=5,10"]
    done = cli(
        "sweep",
        str(scenario),
        *grid,
        "--seeds",
        "2",
        "-o",
        str(results),
        "--plot",
        str(png),
        "--workers",
        "2",
    )
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr  # no progress bar when stderr is not a terminal
    assert "Pareto front" in done.stderr
    with results.open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["failure_threshold", "poll_interval", "seed", *SCORE_KEYS]
    assert [(r["failure_threshold"], r["poll_interval"], r["seed"]) for r in table] == [
        (t, p, s) for t in ("1", "3") for p in ("5", "10") for s in ("1", "2")
    ]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    parquet = tmp_path / "r.parquet"
    done = cli(
        "sweep",
        str(scenario),
        *grid,
        "--seeds",
        "2",
        "-o",
        str(parquet),
        "--dask",
        "local",
        "--dask-workers",
        "2",
    )
    assert done.returncode == 0, done.stderr
    import polars

    frame = polars.read_parquet(parquet)
    assert frame.columns == list(table[0])
    # Dask and local processes give the same numbers.
    assert frame.to_dicts() == [{k: _value(v) for k, v in r.items()} for r in table]


def _value(cell: str) -> object:
    if cell == "":
        return None
    try:
        return int(cell)
    except ValueError:
        return float(cell)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "failure_threshold=0,1"], "failure_threshold"),
        (["--grid", "nonsense=1"], "unknown policy key 'nonsense'"),
        (["--grid", "failure_threshold=1", "-o", "r.txt"], "must end in .csv or .parquet"),
        (
            ["--grid", "failure_threshold=1", "--plot", "p.png", "--plot-x", "nope"],
            "not a score key",
        ),
    ],
)
def test_bad_sweep_arguments_are_one_line_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = cli("sweep", str(_short(tmp_path, 60.0)), *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stderr.count("\n") == 1


def test_notebook_functions_return_rows_dataframes_take(tmp_path: Path) -> None:
    import polars

    trace = tmp_path / "t.jsonl"
    simulate_to_file(load_scenario(_short(tmp_path, 120.0)), trace)
    rows = frames.decisions(trace, {"failure_threshold": 1})
    frame = polars.DataFrame(rows)
    assert frame.columns == list(frames.DECISION_COLUMNS)
    assert frame.height == len(rows) > 0
    scores = polars.DataFrame(frames.score(trace, {"failure_threshold": 1}))
    assert scores.columns == ["model", *SCORE_KEYS]
    assert scores["model"].to_list()[0] is None
    summary = frames.summary(trace, {"max_attempts": 1})
    assert summary["policy"]["max_attempts"] == 1
    assert polars.DataFrame(summary["nodes"]).height == 8
    done = cli("replay", str(trace), "--summary", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == frames.summary(trace)


def test_sweep_draws_a_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    import os

    scenario = _short(tmp_path, 30.0)
    master, slave = os.openpty()
    try:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "cortex_fsm.cli", "sweep", str(scenario)),
                *(
                    "--grid",
                    "failure_threshold=1,2",
                    "--workers",
                    "1",
                    "-o",
                    str(tmp_path / "r.csv"),
                ),
            ],
            stderr=slave,
            stdout=subprocess.DEVNULL,
            check=False,
            timeout=120,
        )
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert done.returncode == 0
    assert b"0/2 runs" in seen and b"\r[" in seen and b"2/2 runs" in seen


def test_pareto_front() -> None:
    points = [(1.0, 5.0), (2.0, 2.0), (3.0, 3.0), (0.5, 9.0), (2.0, 1.0), (float("nan"), 0.0)]
    assert pareto_front(points) == [3, 0, 4]
