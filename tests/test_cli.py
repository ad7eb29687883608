"""The cortex-fsm command: exit codes, error lines, atomic output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cortex_fsm.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "two-gpu-blip.jsonl"
EXPECTED = ROOT / "examples" / "two-gpu-blip.decisions.jsonl"


def test_replay_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == EXPECTED.read_text()


def test_replay_to_a_file_and_summary_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d.jsonl"
    assert main(["replay", str(EXAMPLE), "--decisions", str(out), "--summary"]) == 0
    assert out.read_text() == EXPECTED.read_text()
    stdout = capsys.readouterr().out
    assert stdout.startswith("summary of")
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_compare_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(EXAMPLE), "--compare", "failure_threshold=1"]) == 0
    assert "1 of 7 requests differ" in capsys.readouterr().out


def test_malformed_trace_exits_2_with_one_line_and_keeps_nothing_half_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = EXAMPLE.read_text().splitlines()
    lines.insert(8, '{"kind": "models", "t": 20, "node": "gpu-z", "ok": false}')
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "d.jsonl"
    out.write_text("previous complete result\n")
    assert main(["replay", str(bad), "--decisions", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"cortex-fsm: error: {bad}:9: models event: unknown node 'gpu-z' "
        "(not among the header's neurons)\n"
    )
    assert out.read_text() == "previous complete result\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "d.jsonl"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "missing.jsonl"], "missing.jsonl: no such file"),
        (["replay", "EXAMPLE", "--set", "nope=1"], "unknown policy key 'nope'"),
        (["replay", "EXAMPLE", "--compare", "failure_threshold=x"], "failure_threshold must be"),
        (["replay", "EXAMPLE", "--decisions", "/no/such/dir/out.jsonl"], "does not exist"),
    ],
)
def test_errors_are_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(EXAMPLE) if a == "EXAMPLE" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cortex-fsm: error: ") and message in err
    assert err.count("\n") == 1


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["replay"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_installed_command_never_prints_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    result = subprocess.run(
        [sys.executable, "-m", "cortex_fsm.cli", "replay", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"cortex-fsm: error: {bad}:1: unreadable data")


def test_table_prints_both_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table"]) == 0
    out = capsys.readouterr().out
    assert "# Routing decision table" in out and "# Node-health state machine" in out


def test_decisions_are_valid_json_with_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    main(["replay", str(EXAMPLE)])
    for line in capsys.readouterr().out.splitlines():
        keys = list(json.loads(line))
        assert keys[:9] == [
            "id",
            "t",
            "model",
            "resolved",
            "outcome",
            "node",
            "cold_start",
            "status",
            "retry_after",
        ]
