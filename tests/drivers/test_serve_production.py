"""``cortex-fsm serve`` run as an operator runs it: metrics, access log, API keys, the
whole API surface, and the §5 eviction -- real processes on real loopback sockets."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
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

from cortex_fsm.drivers.logs import ACCESS_KEYS

KEY = "sk-test-operator-1"
OTHER_KEY = "sk-test-from-env"
AUTH = {"authorization": f"Bearer {KEY}"}
MODEL = "org/M-8B"

METRICS = (
    "cortex_node_health",
    "cortex_node_consecutive_failures",
    "cortex_polls_total",
    "cortex_health_transitions_total",
    "cortex_decisions_total",
    "cortex_requests_total",
    "cortex_upstream_attempts_total",
    "cortex_request_duration_seconds",
    "cortex_in_flight",
)


class Fleet:
    def __init__(self, gateway: Proc, neuron: Proc, access_log: Path) -> None:
        self.gateway = gateway
        self.neuron = neuron
        self.url = gateway.url
        self.access_log = access_log

    def access(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.access_log.read_text().splitlines()]

    def metrics(self) -> dict[str, float]:
        status, headers, body = request("GET", self.url + "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        values = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("serve")
    neuron = start_neuron(tmp, "n1", "--model", MODEL, "--token-latency", "0")
    keys = tmp / "keys.txt"
    keys.write_text(f"# the operators' keys\n{KEY}\n")
    access_log = tmp / "access.jsonl"
    config = tmp / "cortex.toml"
    config.write_text(
        f'[gateway]\nlisten = "127.0.0.1:0"\naccess_log = "{access_log}"\n'
        '[auth]\nkeys_file = "keys.txt"\n'
        "[policy]\npoll_interval = 0.1\n"
        f'[[models]]\nid = "{MODEL}"\n[aliases]\n"tier/m" = "{MODEL}"\n' + neurons_toml(neuron)
    )
    gateway = start_gateway(tmp, config, env={"CORTEX_API_KEYS": OTHER_KEY})
    try:
        wait_for(lambda: ready(gateway.url), what="the gateway to be ready")
        yield Fleet(gateway, neuron, access_log)
    finally:
        gateway.stop()
        neuron.stop()


def test_api_keys_gate_everything_but_the_probes(fleet: Fleet) -> None:
    url = fleet.url
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {KEY}"}):
        status, resp_headers, body = request(
            "POST", url + "/v1/chat/completions", chat(MODEL), headers=headers
        )
        assert status == 401
        assert json.loads(body) == {
            "error": {
                "message": "Invalid or missing API key: send it as "
                "'Authorization: Bearer KEY' or 'x-api-key: KEY'",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
        assert resp_headers["www-authenticate"].startswith("Bearer")
    assert request("GET", url + "/v1/models")[0] == 401
    assert request("GET", url + "/health")[0] == 401
    ok = request("POST", url + "/v1/chat/completions", chat(MODEL), headers=AUTH)
    assert ok[0] == 200
    assert request("GET", url + "/v1/models", headers={"x-api-key": KEY})[0] == 200
    # a key from CORTEX_API_KEYS works too
    env_key = {"authorization": f"Bearer {OTHER_KEY}"}
    assert request("POST", url + "/v1/chat/completions", chat(MODEL), headers=env_key)[0] == 200
    # the probes stay open (protect_metrics = false)
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert request("GET", url + probe)[0] == 200


def test_metrics_count_what_happened(fleet: Fleet) -> None:
    url = fleet.url
    before = fleet.metrics()
    for name in METRICS:
        assert any(key.startswith(name) for key in before), name
    assert before['cortex_node_health{node="n1",state="healthy"}'] == 1.0
    assert before['cortex_node_health{node="n1",state="unhealthy"}'] == 0.0
    assert before['cortex_node_consecutive_failures{node="n1"}'] == 0.0
    assert before['cortex_in_flight{node="n1"}'] == 0.0
    assert before['cortex_polls_total{node="n1",result="ok"}'] >= 1
    assert before['cortex_health_transitions_total{from="unknown",node="n1",to="healthy"}'] == 1

    def count(values: dict[str, float], key: str) -> float:
        return values.get(key, 0.0)

    assert request("POST", url + "/v1/chat/completions", chat("tier/m"), headers=AUTH)[0] == 200
    for made_up in ("no/such-model-1", "no/such-model-2"):
        assert request("POST", url + "/v1/chat/completions", chat(made_up), headers=AUTH)[0] == 404
    assert request("POST", url + "/v1/chat/completions", {"x": 1}, headers=AUTH)[0] == 400
    after = fleet.metrics()
    ok = f'cortex_requests_total{{model="{MODEL}",status="200"}}'
    assert count(after, ok) - count(before, ok) == 1
    other = 'cortex_requests_total{model="other",status="404"}'
    assert count(after, other) - count(before, other) == 2  # made-up names never become labels
    bad = 'cortex_requests_total{model="other",status="400"}'
    assert count(after, bad) - count(before, bad) == 1
    assert not any("no/such-model" in key for key in after)
    routed = 'cortex_decisions_total{outcome="route_loaded"}'
    assert count(after, routed) - count(before, routed) == 1
    missing = 'cortex_decisions_total{outcome="model_not_found"}'
    assert count(after, missing) - count(before, missing) == 2
    attempts = 'cortex_upstream_attempts_total{node="n1",result="ok"}'
    assert count(after, attempts) - count(before, attempts) == 1
    histogram = 'cortex_request_duration_seconds_count{outcome="route_loaded"}'
    assert count(after, histogram) - count(before, histogram) == 1
    assert after['cortex_request_duration_seconds_bucket{le="+Inf",outcome="route_loaded"}'] >= 1


def test_access_log_has_one_line_per_request_and_none_for_probes(fleet: Fleet) -> None:
    url = fleet.url
    time.sleep(0.5)  # lines are written every 0.1 s: let earlier tests' lines land
    before = len(fleet.access())
    request("GET", url + "/healthz")
    request("GET", url + "/readyz")
    request("GET", url + "/metrics")
    status, headers, body = request(
        "POST", url + "/v1/chat/completions", chat("tier/m"), headers=AUTH
    )
    assert status == 200
    request("POST", url + "/v1/chat/completions", chat(MODEL), headers={})
    wait_for(lambda: len(fleet.access()) >= before + 2, what="two access log lines")
    lines = fleet.access()[before:]
    assert len(lines) == 2
    for line in lines:
        assert tuple(line) == ACCESS_KEYS
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
        assert line["client"] == "127.0.0.1"
        assert line["duration_s"] >= 0
    routed, refused = lines
    assert routed == routed | {
        "id": headers["x-cortex-request"],
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": "tier/m",
        "resolved": MODEL,
        "outcome": "route_loaded",
        "node": "n1",
        "status": 200,
        "attempts": 1,
        "bytes": len(body),
    }
    assert refused == refused | {
        "id": None,
        "model": None,
        "resolved": None,
        "outcome": None,
        "node": None,
        "status": 401,
        "attempts": 0,
    }
    # every other log line carries a wall-clock ts as well
    for line in fleet.gateway.log_lines():
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])


def test_the_whole_api_surface(fleet: Fleet) -> None:
    import openai

    url = fleet.url
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=10)
    embedding = client.embeddings.create(model="tier/m", input=["one", "two"])
    assert [d.index for d in embedding.data] == [0, 1]
    assert len(embedding.data[0].embedding) == 8
    response = client.responses.create(model="tier/m", input="hello", max_output_tokens=3)
    assert response.output_text
    assert response.model == MODEL
    events = [e.type for e in client.responses.create(model=MODEL, input="hi", stream=True)]
    assert events[0] == "response.created"
    assert events[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in events
    # Anthropic's Messages API, forwarded as is
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    body = {"model": "tier/m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    status, resp_headers, raw = request("POST", url + "/v1/messages", body, headers=headers)
    assert status == 200
    message = json.loads(raw)
    assert message["type"] == "message"
    assert message["content"][0]["type"] == "text"
    assert resp_headers["x-cortex-node"] == "n1"
    status, resp_headers, raw = request(
        "POST", url + "/v1/messages", body | {"stream": True}, headers=headers
    )
    assert status == 200
    assert resp_headers["content-type"].startswith("text/event-stream")
    names = re.findall(r"^event: (\S+)$", raw.decode(), re.MULTILINE)
    assert names[0] == "message_start"
    assert names[-1] == "message_stop"
    # the aliases are listed, as entries of their own
    models = client.models.list()
    assert {m.id for m in models.data} == {MODEL, "tier/m"}
    # probes
    status, _, raw = request("GET", url + "/healthz")
    assert (status, json.loads(raw)) == (200, {"status": "ok"})
    status, _, raw = request("GET", url + "/readyz")
    assert status == 200
    assert json.loads(raw)["routable"] == ["n1"]


@pytest.mark.parametrize(
    ("data", "status_line"),
    [
        (b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n"),
        (b"GET /nowhere HTTP/1.1\r\nhost: x\r\n\r\n", b"HTTP/1.1 401 Unauthorized\r\n"),
        (
            post_bytes("/v1/chat/completions", b"{}", extra=f"x-api-key: {KEY}\r\n"),
            b"HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            post_bytes(
                "/v1/chat/completions",
                json.dumps(chat("no/such")).encode(),
                extra=f"x-api-key: {KEY}\r\n",
            ),
            b"HTTP/1.1 404 Not Found\r\n",
        ),
        (b"BROKEN\r\n\r\n", b"HTTP/1.1 400 Bad Request\r\n"),
    ],
)
def test_status_lines_carry_reason_phrases(fleet: Fleet, data: bytes, status_line: bytes) -> None:
    answer = _first_response(raw_request(fleet.gateway.port, data))
    assert answer.startswith(status_line), answer[:80]


def _first_response(sock: Any) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    return data


# --------------------------------------------------------------------------
# §5 eviction, wired into the cold load


def test_a_cold_load_refused_for_memory_evicts_by_lru_but_never_a_pinned_model(
    tmp_path: Path,
) -> None:
    # n1 holds a pinned model and has room for one; n2 holds an unpinned one, room for one.
    n1, n2 = start_neurons(
        tmp_path,
        ("n1", "--max-resident", "1", "--model", "org/Pinned"),
        ("n2", "--max-resident", "1", "--model", "org/Old"),
    )
    record = tmp_path / "trace.jsonl"
    config = tmp_path / "cortex.toml"
    config.write_text(
        '[gateway]\nlisten = "127.0.0.1:0"\naccess_log = false\n'
        "[policy]\npoll_interval = 0.1\n"
        '[[models]]\nid = "org/Pinned"\npinned_on = ["n1"]\n'
        '[[models]]\nid = "org/Old"\n'
        '[[models]]\nid = "org/New-on-1"\npinned_on = ["n1"]\n'
        '[[models]]\nid = "org/New-on-2"\npinned_on = ["n2"]\n' + neurons_toml(n1, n2)
    )
    gateway = start_gateway(tmp_path, config, "--record", str(record))
    try:
        wait_for(lambda: ready(gateway.url))
        wait_for(lambda: _healthy(gateway.url, 2), what="both nodes healthy")
        # n2: out of memory -> the LRU unpinned model goes, the load is retried once
        status, headers, _ = request(
            "POST", gateway.url + "/v1/chat/completions", chat("org/New-on-2")
        )
        assert status == 200, gateway.stderr()
        assert headers["x-cortex-outcome"] == "cold_load"
        n2_models = _neuron_models(n2)
        assert n2_models["org/Old"] == "unloaded"
        assert n2_models["org/New-on-2"] == "loaded"
        # n1: out of memory, but its only model is pinned there: never evicted
        status, headers, _ = request(
            "POST", gateway.url + "/v1/chat/completions", chat("org/New-on-1")
        )
        assert status == 503
        # the refusal stands (a 5xx: upstream_unavailable), so a second attempt is
        # decided without n1 (docs/semantics.md §7): no other node may hold the pinned model
        assert headers["x-cortex-outcome"] == "feasible_node_unhealthy"
        assert headers["x-cortex-attempt"] == "2"
        failed = gateway.events("upstream_failed")
        assert [(e["node"], e["outcome"], e["next"]) for e in failed] == [
            ("n1", "upstream_unavailable", "failover")
        ]
        assert "out of memory" in failed[0]["detail"]
        assert _neuron_models(n1)["org/Pinned"] == "loaded"
        evictions = gateway.events("eviction")
        assert [(e["node"], e["victim"], e["result"]) for e in evictions] == [
            ("n2", "org/Old", "evicted"),
            ("n1", None, "no_candidate"),
        ]
        metrics = request("GET", gateway.url + "/metrics")[2].decode()
        assert 'cortex_evictions_total{node="n2",result="ok"} 1.0' in metrics
        gateway.signal(15)
        assert gateway.wait(20) == 0
        kinds = [json.loads(x) for x in record.read_text().splitlines()[1:]]
        unloads = [(e["node"], e["model"], e["ok"]) for e in kinds if e["kind"] == "unload"]
        assert unloads == [("n2", "org/Old", True)]
    finally:
        gateway.stop()
        n1.stop()
        n2.stop()


def _healthy(url: str, count: int) -> bool:
    status, _, body = request("GET", url + "/health")
    return (
        status == 200 and sum(n["state"] == "healthy" for n in json.loads(body)["nodes"]) == count
    )


def _neuron_models(neuron: Proc) -> dict[str, str]:
    status, _, body = request("GET", neuron.url + "/_control")
    assert status == 200
    return {m: v["status"] for m, v in json.loads(body)["models"].items()}


def test_sha256_keys_need_no_plaintext_on_disk(tmp_path: Path) -> None:
    neuron = start_neuron(tmp_path, "n1", "--model", MODEL)
    (tmp_path / "keys.txt").write_text(f"sha256:{hashlib.sha256(KEY.encode()).hexdigest()}\n")
    config = tmp_path / "cortex.toml"
    config.write_text(
        '[gateway]\nlisten = "127.0.0.1:0"\naccess_log = false\n'
        '[auth]\nkeys_file = "keys.txt"\nprotect_metrics = true\n' + neurons_toml(neuron)
    )
    gateway = start_gateway(tmp_path, config)
    try:
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert request("GET", gateway.url + probe)[0] == 401
        assert request("GET", gateway.url + "/healthz", headers=AUTH)[0] == 200
        assert request("GET", gateway.url + "/metrics", headers={"x-api-key": KEY})[0] == 200
        assert request("GET", gateway.url + "/v1/models", headers=AUTH)[0] == 200
        assert (
            request("GET", gateway.url + "/v1/models", headers={"x-api-key": "sha256:"})[0] == 401
        )
    finally:
        gateway.stop()
        neuron.stop()
