"""Hostile input to the installed command: one error line, the right exit status,
no traceback, and nothing the user already had is lost."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "two-gpu-blip.jsonl"
EXPECTED = ROOT / "examples" / "two-gpu-blip.decisions.jsonl"


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "cortex_fsm.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    return done


def one_error(done: subprocess.CompletedProcess[str], status: int, *parts: str) -> str:
    assert done.returncode == status, (done.returncode, done.stderr[-500:])
    err = done.stderr
    assert err.startswith("cortex-fsm") and "error: " in err, err[:500]
    assert err.count("\n") == 1, err[:500]
    for part in parts:
        assert part in err, err[:500]
    return err


def _trace_with(tmp_path: Path, line: str, *, at: int = 8) -> Path:
    lines = EXAMPLE.read_text().splitlines()
    lines.insert(at, line)
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_json_nested_too_deeply(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    header = tmp_path / "h.jsonl"
    header.write_text(deep + "\n")
    one_error(cli("replay", str(header), cwd=tmp_path), 2, "h.jsonl:1:", "nested too deeply")
    event = '{"kind": "models", "t": 20, "node": "gpu-a", "ok": true, "body": ' + deep + "}"
    trace = _trace_with(tmp_path, event)
    one_error(cli("replay", str(trace), "--summary", cwd=tmp_path), 2, "t.jsonl:9:", "nested")


def test_a_huge_failure_threshold_is_refused_at_once(tmp_path: Path) -> None:
    for setting in ("failure_threshold=100000000000000000000", "failure_threshold=10001"):
        done = cli("replay", str(EXAMPLE), "--set", setting, cwd=tmp_path, timeout=20)
        one_error(done, 2, "failure_threshold must be an integer in 1..10000")
    text = EXAMPLE.read_text().replace('"failure_threshold": 3', '"failure_threshold": 10000000')
    assert "10000000" in text
    trace = tmp_path / "big.jsonl"
    trace.write_text(text)
    one_error(cli("replay", str(trace), cwd=tmp_path, timeout=20), 2, "big.jsonl:1:")


@pytest.mark.parametrize("target", ["outdir", ""])
def test_decisions_to_a_directory_or_nowhere(tmp_path: Path, target: str) -> None:
    (tmp_path / "outdir").mkdir()
    done = cli("replay", str(EXAMPLE), "--decisions", target, cwd=tmp_path)
    one_error(done, 2, "--decisions: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outdir"]  # no temporary file left
    assert not any((tmp_path / "outdir").iterdir())


def test_decisions_never_overwrite_the_trace(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(EXAMPLE.read_bytes())
    done = cli("replay", str(trace), "--decisions", "./t.jsonl", cwd=tmp_path)
    one_error(done, 2, "is the trace being replayed")
    assert trace.read_bytes() == EXAMPLE.read_bytes()


def test_decisions_keep_the_mode_of_the_file_they_replace_and_follow_links(
    tmp_path: Path,
) -> None:
    out = tmp_path / "d.jsonl"
    out.write_text("old\n")
    out.chmod(0o640)
    link = tmp_path / "link.jsonl"
    link.symlink_to(out)
    done = cli("replay", str(EXAMPLE), "--decisions", str(link), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink()
    assert out.read_text() == EXPECTED.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    fresh = tmp_path / "fresh.jsonl"
    assert cli("replay", str(EXAMPLE), "--decisions", str(fresh), cwd=tmp_path).returncode == 0
    assert stat.S_IMODE(fresh.stat().st_mode) != 0o600  # not mkstemp's private mode


def test_export_output_is_checked_and_atomic(tmp_path: Path) -> None:
    (tmp_path / "expdir").mkdir()
    for target in ("expdir", ""):
        one_error(cli("export", "promela", "--nodes", "1", "-o", target, cwd=tmp_path), 2, "-o: ")
    mine = tmp_path / "model.pml.tmp"
    mine.write_text("user data\n")
    done = cli("export", "promela", "--nodes", "1", "-o", "model.pml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert mine.read_text() == "user data\n"
    assert (tmp_path / "model.pml").read_text().startswith("/*")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expdir", "model.pml", "model.pml.tmp"]


def test_verify_checks_the_counterexample_path_before_searching(tmp_path: Path) -> None:
    (tmp_path / "cx").mkdir()
    done = cli("verify", "--counterexample", "cx", cwd=tmp_path, timeout=20)
    assert done.returncode == 2
    assert "--counterexample: cx is a directory" in done.stderr


def test_demo_checks_the_record_path_first(tmp_path: Path) -> None:
    (tmp_path / "demodir").mkdir()
    one_error(cli("demo", "--record", "demodir", cwd=tmp_path, timeout=20), 2, "--record: ")


def _config(tmp_path: Path, extra: str = "", listen: str = "127.0.0.1:0") -> Path:
    path = tmp_path / "cortex.toml"
    path.write_text(
        f'{extra}[gateway]\nlisten = "{listen}"\n'
        '[[neurons]]\nname = "a"\nendpoint = "http://127.0.0.1:1"\n'
    )
    return path


def test_serve_that_cannot_listen_keeps_an_earlier_recording(tmp_path: Path) -> None:
    old = tmp_path / "old.jsonl"
    old.write_bytes(EXAMPLE.read_bytes())
    config = _config(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli(
            "serve",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
            "--record",
            str(old),
            cwd=tmp_path,
            timeout=30,
        )
    assert done.returncode == 1
    assert "cannot listen" in done.stderr
    assert old.read_bytes() == EXAMPLE.read_bytes()


@pytest.mark.parametrize("listen", ["127.0.0.1:\u00b2", "127.0.0.1:\u0663"])
def test_serve_listen_ports_are_ascii_digits(tmp_path: Path, listen: str) -> None:
    config = _config(tmp_path)
    one_error(cli("serve", "--config", str(config), "--listen", listen, cwd=tmp_path), 2, "listen")
    one_error(cli("serve", "--config", str(_config(tmp_path, listen=listen)), cwd=tmp_path), 2)


def test_serve_config_nested_too_deeply_or_with_an_unusable_endpoint(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 50_000 + "]" * 50_000 + "\n")
    config = _config(tmp_path, extra='models_config = "deep.toml"\n')
    one_error(cli("serve", "--config", str(config), cwd=tmp_path), 2, "deep.toml", "nested")
    spaced = tmp_path / "spaced.toml"
    spaced.write_text('[[neurons]]\nname = "a"\nendpoint = "http://x y:80"\n')
    one_error(cli("serve", "--config", str(spaced), cwd=tmp_path), 2, "not a usable URL")


def test_lone_surrogates_are_printed_escaped(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace('"id": "r2"', '"id": "r2\\ud800"')
    assert "\\ud800" in text
    trace = tmp_path / "s.jsonl"
    trace.write_text(text)
    for extra in (["--summary"], ["--compare", "failure_threshold=1"]):
        done = cli("replay", str(trace), *extra, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert "r2\\ud800" in done.stdout
    decisions = cli("replay", str(trace), cwd=tmp_path).stdout.splitlines()
    assert json.loads(decisions[1])["id"] == "r2\ud800"


def test_a_huge_offending_value_is_not_echoed_whole(tmp_path: Path) -> None:
    trace = _trace_with(tmp_path, json.dumps({"kind": "x" * 2_000_000, "t": 20}))
    err = one_error(cli("replay", str(trace), cwd=tmp_path), 2, "t.jsonl:9:")
    assert len(err) < 1200
    assert "characters]" in err


def test_existing_decisions_survive_every_failure(tmp_path: Path) -> None:
    out = tmp_path / "d.jsonl"
    out.write_text("previous complete result\n")
    deep = _trace_with(tmp_path, "[" * 100_000)
    for args in (
        [str(deep)],
        [str(EXAMPLE), "--set", "failure_threshold=99999999"],
        [str(tmp_path / "missing.jsonl")],
    ):
        assert cli("replay", *args, "--decisions", str(out), cwd=tmp_path).returncode == 2
        assert out.read_text() == "previous complete result\n"
    assert sorted(os.listdir(tmp_path)) == ["d.jsonl", "t.jsonl"]


@pytest.mark.parametrize("value", ["1_0", "\u0663", "nan", "inf"])
def test_set_takes_plain_decimal_numbers_only(tmp_path: Path, value: str) -> None:
    for key in ("failure_threshold", "poll_interval"):
        done = cli("replay", str(EXAMPLE), "--set", f"{key}={value}", cwd=tmp_path)
        one_error(done, 2, key)
