"""``cortex-fsm serve`` and ``fake-neuron`` as real processes, and plain clients for them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

START_TIMEOUT = 30.0


class Proc:
    """A ``cortex-fsm`` subcommand running as a child process.

    Its first stdout line must say ``listening on URL``; stderr goes to a
    file (``err_path``), so a chatty process never blocks on a full pipe.
    """

    def __init__(
        self, argv: list[str], err_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.err_path = err_path
        self._err: TextIO = open(err_path, "w")  # noqa: SIM115 - closed in stop()
        full_env = dict(os.environ)
        full_env.pop("CORTEX_API_KEYS", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cortex_fsm.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env=full_env,
        )
        self.url = ""
        self.port = 0
        self.name = ""

    def started(self) -> Proc:
        """Wait for the ``listening on URL`` line."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            err = self.stderr()
            self.stop()
            raise AssertionError(f"did not start: {line!r}\n{err}")
        self.url = line.rsplit(" ", 1)[1].strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text()

    def log_lines(self) -> list[dict[str, Any]]:
        """Every stderr line, parsed (each one must be a JSON object)."""
        return [json.loads(line) for line in self.stderr().splitlines() if line.strip()]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [x for x in self.log_lines() if x.get("event") == name]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._err.close()


def start_neurons(tmp: Path, *specs: tuple[str, ...]) -> list[Proc]:
    """Fake neurons (``(name, *options)`` each), started side by side."""
    procs = []
    for name, *args in specs:
        proc = Proc(["fake-neuron", "--name", name, *args], tmp / f"neuron-{name}.err")
        proc.name = name
        procs.append(proc)
    return [proc.started() for proc in procs]


def start_neuron(tmp: Path, name: str, *args: str) -> Proc:
    return start_neurons(tmp, (name, *args))[0]


def start_gateway(
    tmp: Path, config: Path, *args: str, env: Mapping[str, str] | None = None
) -> Proc:
    return Proc(["serve", "--config", str(config), *args], tmp / "gateway.err", env=env).started()


def neurons_toml(*neurons: Proc) -> str:
    return "".join(f'[[neurons]]\nname = "{p.name}"\nendpoint = "{p.url}"\n' for p in neurons)


def request(
    method: str,
    url: str,
    payload: object = None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers with lower-case names, body)``; never raises for an HTTP status."""
    data = None if payload is None else json.dumps(payload).encode()
    all_headers = {"content-type": "application/json"} if data is not None else {}
    all_headers.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ready(url: str) -> bool:
    try:
        return request("GET", url + "/readyz", timeout=2)[0] == 200
    except OSError:
        return False


def raw_request(port: int, data: bytes) -> socket.socket:
    """Send raw bytes on a fresh connection; return the socket to read from."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    return sock


def read_all(sock: socket.socket, timeout: float = 15.0) -> bytes:
    sock.settimeout(timeout)
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    sock.close()
    return b"".join(parts)


def post_bytes(path: str, body: bytes, host: str = "127.0.0.1", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body
