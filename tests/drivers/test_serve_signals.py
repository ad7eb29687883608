"""Signals sent by PID to a ``cortex-fsm serve`` process: drain, forced stop, reload."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from serve_support import (
    Proc,
    chat,
    neurons_toml,
    post_bytes,
    raw_request,
    ready,
    request,
    start_gateway,
    start_neuron,
    start_neurons,
    wait_for,
)

from cortex_fsm import TraceReader
from cortex_fsm.trace import RequestEvent

MODEL = "org/M-8B"


def _config(tmp: Path, neuron: Proc, extra: str = "") -> Path:
    config = tmp / "cortex.toml"
    config.write_text(
        f'[gateway]\nlisten = "127.0.0.1:0"\naccess_log = false\n{extra}'
        f'[policy]\npoll_interval = 0.1\n[[models]]\nid = "{MODEL}"\n' + neurons_toml(neuron)
    )
    return config


class _Stream:
    def __init__(self, sock: socket.socket, head: bytes) -> None:
        self.sock = sock
        self.head = head


def _start_stream(port: int, max_tokens: int, extra: str = "") -> _Stream:
    """A streamed chat request; returns once its first event has arrived."""
    body = json.dumps(chat(MODEL, stream=True, max_tokens=max_tokens)).encode()
    sock = raw_request(port, post_bytes("/v1/chat/completions", body, extra=extra))
    sock.settimeout(20)
    head = b""
    while b"data: " not in head:
        chunk = sock.recv(65536)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    return _Stream(sock, head)


def _rest(stream: _Stream) -> bytes:
    data, sock = stream.head, stream.sock
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    sock.close()
    return data


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_sigterm_drains_streams_in_flight_then_exits_0(tmp_path: Path) -> None:
    neuron = start_neuron(tmp_path, "n1", "--model", MODEL, "--token-latency", "0.25")
    record = tmp_path / "trace.jsonl.gz"
    gateway = start_gateway(tmp_path, _config(tmp_path, neuron), "--record", str(record))
    try:
        wait_for(lambda: ready(gateway.url))
        idle = raw_request(gateway.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        idle.settimeout(10)
        assert idle.recv(65536).startswith(b"HTTP/1.1 200 OK")  # kept alive, now idle
        stream = _start_stream(gateway.port, max_tokens=8)  # about 2 s of tokens
        started = time.monotonic()
        gateway.signal(signal.SIGTERM)
        # the idle keep-alive connection is closed at once; new ones are refused
        assert idle.recv(65536) == b""
        idle.close()
        wait_for(lambda: _refused(gateway.port), timeout=5, what="the listener to close")
        # ... while the stream in flight runs to its end
        rest = _rest(stream)
        assert b"data: [DONE]" in rest
        assert rest.endswith(b"0\r\n\r\n")
        assert gateway.wait(20) == 0
        assert time.monotonic() - started >= 1.0  # it waited for the stream
        events = [x["event"] for x in gateway.log_lines() if "event" in x]
        assert events[-3:] == ["signal", "draining", "stopped"]
        assert gateway.events("draining")[0]["in_flight"] == 1
        with TraceReader(record) as trace:  # complete: the gzip stream is closed
            requests = [e for e in trace if isinstance(e, RequestEvent)]
        assert [r.model for r in requests] == [MODEL]
    finally:
        gateway.stop()
        neuron.stop()


def test_a_second_signal_or_the_drain_timeout_stops_at_once(tmp_path: Path) -> None:
    neuron = start_neuron(tmp_path, "n1", "--model", MODEL, "--token-latency", "1")
    config = _config(tmp_path, neuron, "drain_timeout = 1.5\n")
    for second_signal in (True, False):
        gateway = start_gateway(tmp_path, config)
        try:
            wait_for(lambda gw=gateway: ready(gw.url))  # type: ignore[misc]
            stream = _start_stream(gateway.port, max_tokens=30)  # 30 s of tokens
            started = time.monotonic()
            gateway.signal(signal.SIGTERM)
            wait_for(lambda gw=gateway: bool(gw.events("draining")))  # type: ignore[misc]
            if second_signal:
                gateway.signal(signal.SIGINT)
            assert gateway.wait(15) == 0
            elapsed = time.monotonic() - started
            assert b"[DONE]" not in _rest(stream)  # cut
            if second_signal:
                assert gateway.events("stop_now")[0]["cut"] == 1
                assert elapsed < 1.5 + 5  # did not wait for the drain timeout... much
            else:
                assert gateway.events("drain_timeout")[0]["cut"] == 1
                assert elapsed >= 1.5
            assert gateway.events("stopped")
        finally:
            gateway.stop()
    neuron.stop()


def test_sighup_reloads_keys_and_settings_and_never_exits(tmp_path: Path) -> None:
    neuron = start_neuron(tmp_path, "n1", "--model", MODEL, "--token-latency", "0.2")
    keys = tmp_path / "keys.txt"
    keys.write_text("key-one\n")
    first_log = tmp_path / "access-1.jsonl"
    auth = '[auth]\nkeys_file = "keys.txt"\n'
    config = tmp_path / "cortex.toml"
    good = (
        f'[gateway]\nlisten = "127.0.0.1:0"\naccess_log = "{first_log}"\n{auth}'
        f'[policy]\npoll_interval = 0.1\n[[models]]\nid = "{MODEL}"\n' + neurons_toml(neuron)
    )
    config.write_text(good)
    gateway = start_gateway(tmp_path, config)
    one = {"authorization": "Bearer key-one"}
    two = {"x-api-key": "key-two"}
    try:
        wait_for(lambda: ready(gateway.url))
        assert request("GET", gateway.url + "/v1/models", headers=one)[0] == 200
        assert request("GET", gateway.url + "/v1/models", headers=two)[0] == 401
        # an invalid configuration: one line says why, the old one keeps serving
        config.write_text(good.replace("poll_interval = 0.1", "poll_interval = -1"))
        gateway.signal(signal.SIGHUP)
        wait_for(lambda: bool(gateway.events("reload_rejected")))
        rejected = gateway.events("reload_rejected")
        assert len(rejected) == 1
        assert "[policy] poll_interval" in rejected[0]["error"]
        assert rejected[0]["level"] == "error"
        assert request("GET", gateway.url + "/v1/models", headers=one)[0] == 200
        # one that `cortex-fsm check` finds errors in is refused the same way
        config.write_text(good + '[aliases]\n"tier/x" = "org/Nothing"\n')
        gateway.signal(signal.SIGHUP)
        wait_for(lambda: len(gateway.events("reload_rejected")) == 2)
        assert "refusing to reload" in gateway.events("reload_rejected")[1]["error"]
        assert "dangling_alias" in gateway.events("reload_rejected")[1]["error"]
        # a valid one, while a stream is in flight: applied, and the stream goes on
        stream = _start_stream(gateway.port, 6, "authorization: Bearer key-one\r\n")
        keys.write_text("key-two\n")
        second_log = tmp_path / "access-2.jsonl"
        config.write_text(good.replace(str(first_log), str(second_log)))
        gateway.signal(signal.SIGHUP)
        wait_for(lambda: bool(gateway.events("reloaded")))
        reloaded = gateway.events("reloaded")[0]
        assert set(reloaded["changed"]) == {"access_log", "api_keys"}
        assert b"data: [DONE]" in _rest(stream)
        assert request("GET", gateway.url + "/v1/models", headers=two)[0] == 200
        assert request("GET", gateway.url + "/v1/models", headers=one)[0] == 401
        assert gateway.alive()
        wait_for(lambda: len(second_log.read_text().splitlines()) == 3)
        lines = [json.loads(x) for x in second_log.read_text().splitlines()]
        assert [(x["path"], x["status"]) for x in lines] == [
            ("/v1/chat/completions", 200),  # the stream, which ended after the reload
            ("/v1/models", 200),
            ("/v1/models", 401),
        ]
        for count in (2, 3, 4):  # (signals sent at once would be merged into one)
            gateway.signal(signal.SIGHUP)
            wait_for(lambda n=count: len(gateway.events("reloaded")) == n)  # type: ignore[misc]
        assert gateway.alive()
        metrics = request("GET", gateway.url + "/metrics")[2].decode()
        assert 'cortex_config_reloads_total{result="applied"} 4.0' in metrics
        assert 'cortex_config_reloads_total{result="rejected"} 2.0' in metrics
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(20) == 0
    finally:
        gateway.stop()
        neuron.stop()


def test_after_kill_9_the_recording_replays_up_to_the_last_second(tmp_path: Path) -> None:
    neuron = start_neuron(tmp_path, "n1", "--model", MODEL, "--token-latency", "0")
    record = tmp_path / "trace.jsonl.gz"
    gateway = start_gateway(tmp_path, _config(tmp_path, neuron), "--record", str(record))
    answered: list[tuple[str, float]] = []
    try:
        wait_for(lambda: ready(gateway.url))
        until = time.monotonic() + 2.5
        while time.monotonic() < until:
            status, headers, _ = request("POST", gateway.url + "/v1/chat/completions", chat(MODEL))
            assert status == 200
            answered.append((headers["x-cortex-request"], time.monotonic()))
        gateway.signal(signal.SIGKILL)
        killed = time.monotonic()
        assert gateway.wait(10) == -signal.SIGKILL
    finally:
        gateway.stop()
        neuron.stop()
    replayed = subprocess.run(
        [sys.executable, "-m", "cortex_fsm.cli", "replay", str(record), "--summary"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replayed.returncode == 0, replayed.stderr
    assert len(replayed.stderr.splitlines()) <= 1  # at most the one cut-off warning
    with TraceReader(record) as trace:
        recorded = {e.id for e in trace if isinstance(e, RequestEvent)}
    due = [rid for rid, at in answered if at < killed - 1.0]
    assert len(due) > 10
    assert set(due) <= recorded
    # a last member cut off mid-way (as a crash during its write would leave it):
    # replay keeps everything before it and says so, once
    data = record.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[:-7])  # the trailer of the last member is gone
    replayed = subprocess.run(
        [sys.executable, "-m", "cortex_fsm.cli", "replay", str(cut), "--summary"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replayed.returncode == 0, replayed.stderr
    (warning,) = replayed.stderr.splitlines()
    assert warning.startswith(f"cortex-fsm: warning: {cut}:")
    assert "cut off" in warning


def test_sighup_changes_the_fleet_the_catalogue_and_the_policy(tmp_path: Path) -> None:
    n1, n2 = start_neurons(
        tmp_path,
        ("n1", "--model", MODEL, "--token-latency", "0.2"),
        ("n2", "--model", "org/N-1B", "--token-latency", "0"),
    )
    record = tmp_path / "trace.jsonl.gz"
    config = tmp_path / "cortex.toml"

    def write(neuron: Proc, target: str, threshold: int) -> None:
        config.write_text(
            '[gateway]\nlisten = "127.0.0.1:0"\naccess_log = false\n'
            f"[policy]\npoll_interval = 0.1\nfailure_threshold = {threshold}\n"
            f'[[models]]\nid = "{MODEL}"\n[[models]]\nid = "org/N-1B"\n'
            f'[aliases]\n"tier/a" = "{target}"\n' + neurons_toml(neuron)
        )

    write(n1, MODEL, 3)
    gateway = start_gateway(tmp_path, config, "--record", str(record))
    try:
        wait_for(lambda: ready(gateway.url))
        status, headers, _ = request("POST", gateway.url + "/v1/chat/completions", chat("tier/a"))
        assert (status, headers["x-cortex-node"]) == (200, "n1")
        stream = _start_stream(gateway.port, max_tokens=8)  # in flight to n1
        write(n2, "org/N-1B", 2)  # n1 leaves, n2 joins, the alias moves, T becomes 2
        gateway.signal(signal.SIGHUP)
        wait_for(lambda: bool(gateway.events("reloaded")))
        reloaded = gateway.events("reloaded")[0]
        assert (reloaded["neurons_removed"], reloaded["neurons_added"]) == (["n1"], ["n2"])
        assert reloaded["not_applied"] == []
        # the request in flight to the removed node finishes normally
        assert b"data: [DONE]" in _rest(stream)
        wait_for(lambda: ready(gateway.url))
        status, headers, body = request(
            "POST", gateway.url + "/v1/chat/completions", chat("tier/a")
        )
        assert (status, headers["x-cortex-node"]) == (200, "n2"), body
        health = json.loads(request("GET", gateway.url + "/health")[2])
        assert [n["name"] for n in health["nodes"]] == ["n2"]
        assert health["policy"]["failure_threshold"] == 2
        models = json.loads(request("GET", gateway.url + "/v1/models")[2])
        alias = next(m for m in models["data"] if m["id"] == "tier/a")
        assert alias["alias_of"] == "org/N-1B"
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(20) == 0
    finally:
        gateway.stop()
        n1.stop()
        n2.stop()
    # the recording has the change, and replays to the decisions the gateway made
    with TraceReader(record) as trace:
        kinds = [type(e).__name__ for e in trace]
    assert "NeuronRemovedEvent" in kinds
    assert kinds.index("NeuronRemovedEvent") < kinds.index("ReconfiguredEvent")
    assert kinds.index("ReconfiguredEvent") < kinds.index("NeuronAddedEvent")
    decisions = tmp_path / "decisions.jsonl"
    replayed = subprocess.run(
        [
            sys.executable,
            "-m",
            "cortex_fsm.cli",
            "replay",
            str(record),
            "--decisions",
            str(decisions),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replayed.returncode == 0, replayed.stderr
    lines = [json.loads(x) for x in decisions.read_text().splitlines()]
    assert [(x["model"], x["node"]) for x in lines] == [
        ("tier/a", "n1"),
        (MODEL, "n1"),
        ("tier/a", "n2"),
    ]
