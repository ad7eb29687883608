"""The pytest plugin in a fresh project: a directory with nothing but a gateway
config, its catalogue, recordings and a test of its own, run by a real
``pytest`` process that finds the plugin through its ``pytest11`` entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """models_config = "models.toml"

[[neurons]]
name = "a"
endpoint = "http://a.lan:13131"
gpus = 2
vram_mb = 81920

[[neurons]]
name = "b"
endpoint = "http://b.lan:13131"
gpus = 2
vram_mb = 81920
"""
MODELS = """[[models]]
id = "big"
min_devices = 2

[aliases]
"tier/big" = "big"
"""
USER_TEST = """from cortex_fsm.invariants import audit, check_config

def test_my_config():
    assert [p for p in check_config("cortex.toml") if p.severity == "error"] == []

def test_my_recordings():
    assert audit("recordings/good.jsonl") == []
"""


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "recordings").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "cortex.toml").write_text(CONFIG)
    (project / "models.toml").write_text(MODELS)
    (project / "tests" / "test_mine.py").write_text(USER_TEST)
    shutil.copy(ROOT / "examples" / "two-gpu-blip.jsonl", project / "recordings" / "good.jsonl")
    return project


def _pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_plugin_checks_a_config_and_audits_recordings(tmp_path: Path) -> None:
    project = _project(tmp_path)
    result = _pytest(project, "--cortex-config", "cortex.toml", "--cortex-trace", "recordings")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED cortex.toml::cortex-fsm check" in result.stdout
    assert "PASSED cortex.toml::cortex-fsm verify" in result.stdout
    assert "PASSED recordings/good.jsonl::cortex-fsm audit" in result.stdout
    assert "PASSED tests/test_mine.py::test_my_config" in result.stdout
    assert "5 passed" in result.stdout
    # without its options the plugin adds nothing
    plain = _pytest(project)
    assert plain.returncode == 0 and "2 passed" in plain.stdout, plain.stdout


def test_the_plugin_fails_with_the_commands_reports(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "models.toml").write_text(MODELS + '"tier/chain" = "tier/big"\n')
    # a gateway that told a client 503 without Retry-After (R2)
    header = {"kind": "header", "format": "cortex-fsm-trace", "version": 2}
    header["neurons"] = [{"name": "a", "endpoint": "http://a.lan:13131"}]
    request = {"kind": "request", "t": 1.0, "id": "r1", "model": "big"}
    outcome = {"kind": "outcome", "t": 1.0, "id": "r1", "attempt": 1, "node": None}
    outcome.update(status=503, retry_after=None, source="gateway", error=None)
    (project / "recordings" / "edited.jsonl").write_text(
        "\n".join(json.dumps(x) for x in (header, request, outcome)) + "\n"
    )
    (project / "recordings" / "cut.jsonl").write_text('{"kind": "request"}\n')
    result = _pytest(project, "--cortex-config", "cortex.toml", "--cortex-trace", "recordings")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "FAILED cortex.toml::cortex-fsm check" in out
    assert "FAILED cortex.toml::cortex-fsm verify" in out
    assert "a request for 'tier/chain' gets model_not_found (404), with every node up" in out
    assert 'models.toml:7: error: alias_chain: aliases."tier/chain": ' in out
    assert "FAILED recordings/edited.jsonl::cortex-fsm audit" in out
    assert "recordings/edited.jsonl:3: R2: request 'r1' for 'big' was told status 503" in out
    assert "FAILED recordings/cut.jsonl::cortex-fsm audit" in out
    assert "cortex-fsm audit: error: recordings/cut.jsonl:1: " in out
    assert "PASSED recordings/good.jsonl::cortex-fsm audit" in out
    assert "Traceback" not in out
