"""``cortex-fsm serve`` in front of ``cortex-fsm fake-neuron --flavor ...``, all real processes.

docs/semantics.md §10 and §11 end to end, as an operator runs them: one
process of each backend flavour, configured by ``kind`` in ``cortex.toml``;
each one's model is routed to it, and when they are all gone each model is
answered 503 + Retry-After, never 404. Then a gateway restarted while the
only host able to run a model is down still answers 503, knowing the host's
topology from ``[gateway] state_dir`` alone, or from ``gpus``/``vram_mb``
declared in its ``[[neurons]]`` entry.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve_support import Proc, chat, ready, request, start_gateway, start_neurons, wait_for

from cortex_fsm.drivers.topology import STATE_FILE

# One model per flavour, so each answer names the node it must come from.
FLAVOURS = {
    "neuron": "org/N-8B",
    "openai": "org/O-8B",
    "vllm": "org/V-8B",
    "sglang": "org/S-8B",
    "llamacpp": "l.gguf",
    "ollama": "qwen3:8b",
}
BIG = "org/Big-70B"
WAIT = 60.0  # seconds: generous, the machine may be busy
BIG_MODEL_TOML = f'[[models]]\nid = "{BIG}"\nmin_devices = 2\nmin_device_vram_mb = 40000\n'


def wait(predicate: Callable[[], bool], what: str) -> None:
    wait_for(predicate, timeout=WAIT, what=what)


def neuron_entry(proc: Proc, kind: str = "neuron", extra: str = "") -> str:
    return f'[[neurons]]\nname = "{proc.name}"\nendpoint = "{proc.url}"\nkind = "{kind}"\n{extra}'


def nodes(gateway: Proc) -> dict[str, dict[str, Any]]:
    status, _, body = request("GET", gateway.url + "/health")
    assert status == 200
    return {n["name"]: n for n in json.loads(body)["nodes"]}


def post_chat(gateway: Proc, model: str) -> tuple[int, dict[str, str], bytes]:
    return request("POST", gateway.url + "/v1/chat/completions", chat(model))


def all_in(gateway: Proc, state: str) -> bool:
    return all(n["state"] == state for n in nodes(gateway).values())


def stop_all(*procs: Proc) -> None:
    for proc in procs:
        proc.stop()


def test_serve_in_front_of_a_process_of_each_flavour(tmp_path: Path) -> None:
    *backends, keeper, unset = start_neurons(
        tmp_path,
        *[(f"n-{kind}", "--flavor", kind, "--model", model) for kind, model in FLAVOURS.items()],
        ("keeper", "--model", "org/Kept-8B"),
        ("unset", "--flavor", "vllm", "--model", "org/U-8B"),
    )
    config = tmp_path / "cortex.toml"
    config.write_text(
        '[gateway]\nlisten = "127.0.0.1:0"\naccess_log = false\n'
        "[policy]\npoll_interval = 0.2\n"
        + "".join(neuron_entry(p, kind) for p, kind in zip(backends, FLAVOURS, strict=True))
        + neuron_entry(keeper)
        + f'[[neurons]]\nname = "unset"\nendpoint = "{unset.url}"\n'
    )
    gateway = start_gateway(tmp_path, config)
    try:
        wait(lambda: ready(gateway.url), what="the gateway to be ready")
        wait(
            lambda: all(nodes(gateway)[p.name]["state"] == "healthy" for p in [*backends, keeper]),
            what="every backend to be healthy",
        )
        # The vLLM server configured as a neuron: one log line says what to set.
        wait(lambda: bool(gateway.events("wrong_kind")), what="the wrong_kind line")
        (line,) = gateway.events("wrong_kind")
        assert line["message"] == (
            "node 'unset' (kind = \"neuron\") answered GET /models with status:404, but it "
            "looks like vLLM (its /metrics has vllm: series): "
            'set kind = "vllm" in its [[neurons]] entry'
        )
        for kind, model in FLAVOURS.items():
            status, headers, body = post_chat(gateway, model)
            assert status == 200, (kind, body)
            assert headers["x-cortex-node"] == f"n-{kind}"
            assert json.loads(body)["object"] == "chat.completion"
        # Every backend is gone (the keeper stays): each model is one a down
        # node is known to hold, so it is 503 + Retry-After, never a 404.
        stop_all(*backends)
        wait(
            lambda: all(nodes(gateway)[p.name]["state"] == "unhealthy" for p in backends),
            what="every backend to be unhealthy",
        )
        for kind, model in FLAVOURS.items():
            status, headers, body = post_chat(gateway, model)
            assert status == 503, (kind, body)
            assert headers["x-cortex-outcome"] == "feasible_node_unhealthy"
            assert headers["retry-after"] == "3"
        assert post_chat(gateway, "org/Kept-8B")[0] == 200
        assert len(gateway.events("wrong_kind")) == 1  # said once, not at every poll
        assert gateway.alive()
    finally:
        gateway.stop()
        stop_all(*backends, keeper, unset)


def restart_during_an_outage(tmp_path: Path, *, state_dir: bool, declared: bool) -> None:
    """Big (2 GPUs) is up for a first gateway run (if ``state_dir``), then down for the second."""
    big, small = start_neurons(
        tmp_path,
        ("big", "--gpus", "2", "--vram", "81920", "--model", f"{BIG}:unloaded"),
        ("small", "--model", "org/Small-8B"),
    )
    gateway_toml = '[gateway]\nlisten = "127.0.0.1:0"\naccess_log = false\n'
    if state_dir:
        gateway_toml += 'state_dir = "state"\n'
    big_extra = "gpus = 2\nvram_mb = 81920\n" if declared else ""
    config = tmp_path / "cortex.toml"
    config.write_text(
        gateway_toml
        + "[policy]\npoll_interval = 0.2\n"
        + BIG_MODEL_TOML
        + neuron_entry(big, extra=big_extra)
        + neuron_entry(small)
    )
    try:
        if state_dir:
            first = start_gateway(tmp_path, config)
            try:
                wait(lambda: all_in(first, "healthy"), what="both hosts to be healthy")
                wait((tmp_path / "state" / STATE_FILE).exists, what="the state file")
                status, _, body = post_chat(first, BIG)
                assert status == 200, body
                first.signal(signal.SIGTERM)
                assert first.wait(timeout=WAIT) == 0
            finally:
                first.stop()
        big.stop()
        second = start_gateway(tmp_path, config)
        try:
            wait(lambda: nodes(second)["small"]["state"] == "healthy", what="small")
            status, headers, body = post_chat(second, BIG)
            assert status == 503, body
            assert headers["x-cortex-outcome"] == "feasible_node_unhealthy"
            assert headers["retry-after"] == "3"
        finally:
            second.stop()
    finally:
        stop_all(big, small)


def test_a_restart_during_an_outage_with_only_a_state_dir_answers_503(tmp_path: Path) -> None:
    restart_during_an_outage(tmp_path, state_dir=True, declared=False)


def test_a_restart_during_an_outage_with_a_declared_topology_answers_503(tmp_path: Path) -> None:
    restart_during_an_outage(tmp_path, state_dir=False, declared=True)


def test_without_either_the_same_restart_is_a_404(tmp_path: Path) -> None:
    """The control: what the two tests above prevent."""
    big, small = start_neurons(
        tmp_path, ("big", "--gpus", "2", "--vram", "81920"), ("small", "--model", "org/Small-8B")
    )
    big.stop()
    config = tmp_path / "cortex.toml"
    config.write_text(
        '[gateway]\nlisten = "127.0.0.1:0"\naccess_log = false\n[policy]\npoll_interval = 0.2\n'
        + BIG_MODEL_TOML
        + neuron_entry(big)
        + neuron_entry(small)
    )
    gateway = start_gateway(tmp_path, config)
    try:
        wait(lambda: nodes(gateway)["small"]["state"] == "healthy", what="small")
        status, headers, _ = post_chat(gateway, BIG)
        assert (status, headers["x-cortex-outcome"]) == (404, "no_feasible_neuron")
    finally:
        gateway.stop()
        stop_all(big, small)
