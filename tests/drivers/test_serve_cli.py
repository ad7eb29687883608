"""``cortex-fsm serve`` as a process: config, real traffic, recording, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cortex_fsm import TraceReader
from cortex_fsm.trace import RequestEvent


def _start(*argv: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cortex_fsm.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        raise AssertionError(f"did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, line.rsplit(" ", 1)[1].strip()


def _post(url: str, payload: object) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_serve_records_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    neuron, neuron_url = _start("fake-neuron", "--name", "n1", "--model", "org/M")
    try:
        (tmp_path / "models.toml").write_text('[[models]]\nid = "org/M"\nharness = "candle"\n')
        config = tmp_path / "cortex.toml"
        config.write_text(
            'models_config = "models.toml"\n'
            '[gateway]\nlisten = "127.0.0.1:0"\n'
            "[policy]\npoll_interval = 0.1\n"
            f'[[neurons]]\nname = "n1"\nendpoint = "{neuron_url}"\n'
        )
        record = tmp_path / "trace.jsonl.gz"
        gateway, url = _start("serve", "--config", str(config), "--record", str(record))
        try:
            deadline = 50
            while deadline:
                with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                    if json.load(resp)["status"] == "ok":
                        break
                deadline -= 1
                time.sleep(0.05)
            chat = {"model": "org/M", "messages": [{"role": "user", "content": "hi"}]}
            status, _, body = _post(url + "/v1/chat/completions", chat)
            assert status == 200
            assert json.loads(body)["object"] == "chat.completion"
            status, _, body = _post(url + "/v1/chat/completions", {**chat, "model": "x/y"})
            assert status == 404
            assert json.loads(body)["error"]["code"] == "model_not_found"
        finally:
            gateway.send_signal(signal.SIGINT)
            _, err = gateway.communicate(timeout=10)
        assert gateway.returncode == 0, err
        assert "Traceback" not in err
        lines = [json.loads(x) for x in err.splitlines()]  # every stderr line is JSON
        assert all(line["ts"].endswith("Z") for line in lines)
        transitions = [x for x in lines if x.get("event") == "health_transition"]
        assert (transitions[0]["from"], transitions[0]["to"]) == ("unknown", "healthy")
        access = [x for x in lines if "event" not in x]
        assert [(x["path"], x["status"]) for x in access][-2:] == [
            ("/v1/chat/completions", 200),
            ("/v1/chat/completions", 404),
        ]
        assert lines[-1]["event"] == "stopped"
        with TraceReader(record) as trace:
            requests = [e for e in trace if isinstance(e, RequestEvent)]
        assert [r.model for r in requests] == ["org/M", "x/y"]
    finally:
        neuron.send_signal(signal.SIGINT)
        neuron.communicate(timeout=10)


def test_serve_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "cortex.toml"
    config.write_text('[gateway]\nlisten = "nowhere"\n')
    result = subprocess.run(
        [sys.executable, "-m", "cortex_fsm.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"cortex-fsm: error: {config}: [gateway] listen must be")
