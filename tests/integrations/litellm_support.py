"""Fake neurons as real processes on loopback, and LiteLLM deployments pointing at them."""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")
MESSAGES = [{"role": "user", "content": "hello"}]


def require_litellm() -> None:
    """Skip the calling test module loudly without the ``litellm`` extra; in CI, fail."""
    try:
        import litellm  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip(
            "the litellm extra is not installed (pip install -e '.[dev,litellm]'); CI runs these",
            allow_module_level=True,
        )


class FakeServer:
    """``cortex-fsm fake-neuron --flavor ...`` in a process of its own."""

    def __init__(self, name: str, *, flavor: str = "openai", models: tuple[str, ...] = ("m",)):
        self.name = name
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
        args = [sys.executable, "-m", "cortex_fsm.cli", "fake-neuron", "--name", name]
        args += ["--flavor", flavor, "--token-latency", "0.001"]
        for model in models:
            args += ["--model", model]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.url = ""

    def wait_listening(self, timeout: float = 60.0) -> FakeServer:
        """Block until the server says where it listens."""
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                self.kill()
                pytest.fail(f"fake neuron {self.name} did not start within {timeout} s")
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            pytest.fail(f"fake neuron {self.name} did not start: {line!r} {err}")
        self.url = line.rsplit(" ", 1)[1].strip()
        return self

    def control(self, **action: object) -> None:
        """``POST /_control`` (fault injection)."""
        body = json.dumps(action).encode()
        request = urllib.request.Request(
            self.url + "/_control", data=body, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


def start(*names: str, flavor: str = "openai") -> list[FakeServer]:
    """Start several fake neurons at once (their start-up overlaps)."""
    servers = [FakeServer(name, flavor=flavor) for name in names]
    return [s.wait_listening() for s in servers]


def dead_url() -> str:
    """A loopback URL nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def deployment(ident: str, group: str, url: str, *, kind: str = "openai") -> dict[str, Any]:
    """A LiteLLM model-list entry: an OpenAI-compatible backend at ``url`` serving ``m``."""
    return {
        "model_name": group,
        "litellm_params": {"model": "openai/m", "api_base": url + "/v1", "api_key": "unused"},
        "model_info": {"id": ident, "kind": kind},
    }


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout} s: {predicate}")
        time.sleep(0.02)


def served_by(responses: list[Any]) -> Counter[str]:
    """How many of ``responses`` each deployment answered."""
    return Counter(str(r._hidden_params["model_id"]) for r in responses)
