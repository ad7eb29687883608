"""The resilient request path over real sockets: failover (docs/semantics.md §7),
passive health (§6), load spreading (§8), the outcomes the gateway records,
and a fleet that changes under a request (§12)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest
from gateway_support import (
    BIG,
    CATALOGUE,
    SMALL,
    DecisionLines,
    ScriptedNeuron,
    chat_body,
    envelope,
    neuron,
    running_fleet,
    wait_until,
)

from cortex_fsm import Catalogue, Policy, Profile, TraceReader
from cortex_fsm.engine import Transition
from cortex_fsm.health import Phase
from cortex_fsm.trace import Event, OutcomeEvent, RequestEvent

pytestmark = pytest.mark.anyio

#: The Part II defaults, with no poll during a test after the first one: what
#: happens to a node there happens through the requests it fails.
NO_POLLS = Policy(poll_interval=60.0)


def _events(path: Path) -> list[Event]:
    with TraceReader(path) as trace:
        return list(trace)


COLD = "org/Cold-13B"


async def test_a_killed_replica_costs_clients_nothing(anyio_backend: str) -> None:
    """R10 with the defaults: every request is answered by the live replica, and
    the dead one goes unhealthy from request failures, long before its next poll."""
    async with running_fleet(neuron("a", SMALL), neuron("b", SMALL), policy=NO_POLLS) as f:
        moved: list[Transition] = []
        f.gateway.journal.transition_listeners.append(moved.append)
        assert {(await f.chat(SMALL)).header("x-cortex-node") for _ in range(4)} == {"a", "b"}
        f.kill("a")
        answers = [await f.chat(SMALL) for _ in range(8)]
        assert [r.status for r in answers] == [200] * 8
        assert {r.header("x-cortex-node") for r in answers} == {"b"}
        retried = [r for r in answers if r.header("x-cortex-attempt") == "2"]
        # a stays routable (suspect) for T - 1 = 2 failures, then a third evicts it
        assert len(retried) == 3
        assert f.phase("a") is Phase.UNHEALTHY
        assert [(t.to.label, t.cause) for t in moved if t.node == "a"] == [
            ("suspect(1)", "request_failed: connect"),
            ("suspect(2)", "request_failed: connect"),
            ("unhealthy", "request_failed: connect"),
        ]
        stats = f.engine.statistics()
        assert stats.polls_failed == 0  # not one poll since the kill
        assert f.engine.status("a").last_failure == "request: connect"
        # b's answers were request_ok: it never moved
        assert f.phase("b") is Phase.HEALTHY
        # concurrent requests after the kill: no client error either
        async with anyio.create_task_group() as tg:
            statuses: list[int] = []

            async def one() -> None:
                statuses.append((await f.chat(SMALL)).status)

            for _ in range(20):
                tg.start_soon(one)
        assert statuses == [200] * 20


async def test_concurrent_requests_to_a_freshly_killed_replica_fail_over(
    anyio_backend: str,
) -> None:
    async with running_fleet(
        neuron("a", SMALL, token_latency=0.01), neuron("b", SMALL), policy=NO_POLLS
    ) as f:
        f.kill("a")
        statuses: list[int] = []

        async def one() -> None:
            resp = await f.chat(SMALL, max_tokens=4)
            statuses.append(resp.status)
            assert resp.header("x-cortex-node") == "b"

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(one)
        assert statuses == [200] * 30
        assert f.phase("a") is Phase.UNHEALTHY


async def test_one_attempt_is_the_reference_503(anyio_backend: str) -> None:
    """max_attempts = 1 (with the other Part II keys at their reference values):
    the request that drew the dead replica gets 503 upstream_unavailable, as
    before, and the node stays routable until its polls fail."""
    async with running_fleet(
        neuron("a", SMALL),
        neuron("b", SMALL),
        policy=Policy.reference().with_values({"poll_interval": 60.0}),
    ) as f:
        f.kill("a")
        for _ in range(4):
            resp = await f.chat(SMALL)
            assert resp.status == 503
            assert resp.header("retry-after") == "3"
            assert resp.header("x-cortex-outcome") == "upstream_unavailable"
            assert resp.header("x-cortex-node") == "a"  # ties by name: always a
            assert resp.header("x-cortex-attempt") is None
            assert "Neuron 'a' is unavailable" in envelope(resp.body)["message"]
        assert f.phase("a") is Phase.HEALTHY  # no passive health
        # only max_attempts differs: failover, while 'a' stays routable
        f.gateway.engine.reconfigure(0.0, policy=f.engine.policy.with_values({"max_attempts": 2}))
        resp = await f.chat(SMALL)
        assert (resp.status, resp.header("x-cortex-node")) == (200, "b")
        assert resp.header("x-cortex-attempt") == "2"


async def test_a_reject_on_the_last_attempt_is_the_answer(anyio_backend: str) -> None:
    """With the only replica failed, the next attempt excludes it: its reject
    (a 503 with the policy's Retry-After) is what the client gets."""
    script = ScriptedNeuron("s", gpus=1, models=[(SMALL, "loaded")])
    policy = Policy(poll_interval=60.0, retry_after_no_healthy_nodes=7, max_attempts=3)
    async with running_fleet(scripted=[script], policy=policy) as f:
        script.behaviour["forward"] = ("status", 502, b"{}")
        resp = await f.chat(SMALL)
        assert resp.status == 503
        assert resp.header("x-cortex-outcome") == "no_healthy_nodes"
        assert resp.header("retry-after") == "7"
        assert resp.header("x-cortex-attempt") == "2"  # no third: a reject is final
        assert resp.header("x-cortex-node") is None
        forwarded = [c for c in script.calls if c[1] == "/v1/chat/completions"]
        assert len(forwarded) == 1


@pytest.mark.parametrize(
    ("key", "action", "error"),
    [
        ("endpoint", "drop", "closed"),
        ("endpoint", ("status", 500, b"{}"), "status:500"),
        ("forward", ("status", 503, b"{}"), "status:503"),
        ("forward", "stall", "timeout"),
        ("forward", "short", "closed"),
        ("load", ("status", 507, b"{}"), "status:507"),
    ],
)
async def test_every_upstream_failure_before_the_first_byte_fails_over(
    anyio_backend: str, tmp_path: Path, key: str, action: object, error: str
) -> None:
    """Each cause of upstream_unavailable, on each call, moves the request to the
    other node; the failed attempt is recorded with its canonical error."""
    record = tmp_path / "trace.jsonl"
    bad = ScriptedNeuron("a", gpus=2, models=[(BIG, "loaded")] if key != "load" else [])
    good = ScriptedNeuron("b", gpus=2, models=[(BIG, "loaded")] if key != "load" else [])
    async with running_fleet(
        scripted=[bad, good],
        policy=NO_POLLS,
        record=str(record),
        endpoint_timeout=1.0,
        request_timeout=1.0,
    ) as f:
        bad.behaviour[key] = action
        resp = await f.chat(BIG)
        assert resp.status == 200, resp.body
        assert resp.header("x-cortex-node") == "b"
        assert resp.header("x-cortex-attempt") == "2"
        f.gateway.close_recording()
    outcomes = [e for e in _events(record) if isinstance(e, OutcomeEvent)]
    assert [(o.attempt, o.node, o.status, o.retry_after, o.source, o.error) for o in outcomes] == [
        (1, "a", 503, 3, "gateway", error),
        (2, "b", 200, None, "upstream", None),
    ]


async def test_rejecting_answers_are_final_and_not_failures(anyio_backend: str) -> None:
    """A 4xx (passed through, or cold_load_failed / endpoint_resolve_failed) is
    not retried elsewhere and says nothing about the node's health."""
    bad = ScriptedNeuron("a", gpus=2, models=[(BIG, "loaded")])
    good = ScriptedNeuron("b", gpus=2, models=[(BIG, "loaded")])
    async with running_fleet(scripted=[bad, good], policy=NO_POLLS, endpoint_cache=False) as f:
        for key, action, status in [
            ("forward", ("status", 429, b'{"error": "slow down"}'), 429),
            ("endpoint", ("status", 404, b"{}"), 404),
            ("endpoint", ("status", 200, b'{"nope": 1}'), 404),
        ]:
            bad.behaviour = {key: action}
            good.behaviour = {key: action}
            resp = await f.chat(BIG)
            assert resp.status == status
            assert resp.header("x-cortex-attempt") is None
        assert f.phase("a") is Phase.HEALTHY and f.phase("b") is Phase.HEALTHY


async def test_sequential_requests_spread_round_robin(anyio_backend: str) -> None:
    """§8: equal reported loads, one request at a time: a, b, c, a, b, c, ..."""
    async with running_fleet(
        neuron("a", SMALL), neuron("b", SMALL), neuron("c", SMALL), policy=NO_POLLS
    ) as f:
        nodes = [(await f.chat(SMALL)).header("x-cortex-node") for _ in range(9)]
        assert nodes == ["a", "b", "c"] * 3
        # the reference (load = "reported"): every request to the first name
        f.gateway.engine.reconfigure(0.0, policy=f.engine.policy.with_values({"load": "reported"}))
        nodes = [(await f.chat(SMALL)).header("x-cortex-node") for _ in range(4)]
        assert nodes == ["a"] * 4


async def test_concurrent_requests_spread_by_in_flight(anyio_backend: str) -> None:
    async with running_fleet(
        neuron("a", SMALL, token_latency=0.02),
        neuron("b", SMALL, token_latency=0.02),
        neuron("c", SMALL, token_latency=0.02),
        policy=NO_POLLS,
    ) as f:
        nodes: list[str | None] = []

        async def one() -> None:
            nodes.append((await f.chat(SMALL, max_tokens=8)).header("x-cortex-node"))

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(one)
        # In flight together they go round-robin (10 each); on a busy machine some
        # finish before others are decided, and a replica that is done sooner gets
        # the next one: never far from even, never all on one.
        counts = Counter(nodes)
        assert set(counts) == {"a", "b", "c"} and all(5 <= n <= 15 for n in counts.values())
        # every count ended with its outcome
        assert all(not n.local for n in f.engine.snapshot().nodes)
        # the reference (load = "reported", no reading in flight): all to the first name
        f.gateway.engine.reconfigure(0.0, policy=f.engine.policy.with_values({"load": "reported"}))
        nodes.clear()
        async with anyio.create_task_group() as tg:
            for _ in range(9):
                tg.start_soon(one)
        assert Counter(nodes) == {"a": 9}


async def test_a_stream_counts_until_its_end(anyio_backend: str) -> None:
    """A relayed stream's outcome -- and the end of its in-flight count -- comes
    when the stream has ended, before the client sees its end."""
    async with running_fleet(
        neuron("a", SMALL, token_latency=0.05), neuron("b", SMALL), policy=NO_POLLS
    ) as f:
        body = chat_body(SMALL, stream=True, max_tokens=6)
        async with f.client.stream("POST", f.gateway.url + "/v1/chat/completions", body=body) as r:
            assert r.header("x-cortex-node") == "a"
            assert f.engine.snapshot().node("a").local == {SMALL: 1}
            assert (await f.chat(SMALL)).header("x-cortex-node") == "b"  # a is busier
            await r.read()
        assert f.engine.snapshot().node("a").local == {}


async def test_a_stream_cut_after_its_first_byte_is_relayed_not_retried(
    anyio_backend: str, tmp_path: Path
) -> None:
    record = tmp_path / "trace.jsonl"
    bad = ScriptedNeuron("a", gpus=1, models=[(SMALL, "loaded")])
    good = ScriptedNeuron("b", gpus=1, models=[(SMALL, "loaded")])
    async with running_fleet(scripted=[bad, good], policy=NO_POLLS, record=str(record)) as f:
        bad.behaviour["forward"] = "sse-break"
        body = chat_body(SMALL, stream=True)
        async with f.client.stream("POST", f.gateway.url + "/v1/chat/completions", body=body) as r:
            assert (r.status, r.header("x-cortex-node")) == (200, "a")
            text = (await r.read()).decode()
        assert '"code": "service_unavailable"' in text
        assert f.phase("a") is Phase.HEALTHY  # the answer had begun: request_ok (§6)
        f.gateway.close_recording()
    (outcome,) = [e for e in _events(record) if isinstance(e, OutcomeEvent)]
    assert (outcome.node, outcome.status, outcome.source, outcome.error) == (
        "a",
        200,
        "upstream",
        "closed",
    )


async def test_a_recording_with_failovers_replays_to_the_gateway_decisions(
    anyio_backend: str, tmp_path: Path
) -> None:
    record = tmp_path / "failover.jsonl.gz"
    async with running_fleet(
        neuron("a", SMALL),
        neuron("b", SMALL),
        neuron("big", BIG, gpus=2, vram_mb=81920),
        policy=Policy(poll_interval=0.2),
        record=str(record),
    ) as f:
        made = DecisionLines(f.gateway)
        for _ in range(3):
            await f.chat(SMALL)
        f.kill("a")
        f.kill("big")
        answers = [await f.chat(model) for _ in range(4) for model in (SMALL, BIG)]
        await wait_until(lambda: f.phase("big") is Phase.UNHEALTHY)
        answers.append(await f.chat(BIG))
        await anyio.sleep(0.3)  # a poll or two more in the recording
    assert [r.status for r in answers[0:8:2]] == [200] * 4
    assert {r.status for r in answers[1::2]} == {503}  # big's only replica is gone
    assert {r.header("x-cortex-attempt") for r in answers} >= {"2"}
    # the recorded decisions are the gateway's, attempt by attempt, byte for byte
    result = subprocess.run(
        [sys.executable, "-m", "cortex_fsm.cli", "replay", str(record)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines(keepends=True) == made.lines
    tagged = [
        (r.header("x-cortex-request"), int(r.header("x-cortex-attempt") or 1)) for r in answers
    ]
    replayed = {(d["id"], d.get("attempt", 1)): d for d in map(json.loads, made.lines)}
    for resp, key in zip(answers, tagged, strict=True):
        assert replayed[key]["outcome"] == resp.header("x-cortex-outcome") or (
            replayed[key]["outcome"] == "route_loaded"  # decided, then failed upstream
            and resp.header("x-cortex-outcome") == "upstream_unavailable"
        )
    events = _events(record)
    requests = [(e.id, e.attempt or 1) for e in events if isinstance(e, RequestEvent)]
    outcomes = [(e.id, e.attempt) for e in events if isinstance(e, OutcomeEvent)]
    assert sorted(outcomes) == sorted(requests)  # exactly one outcome per attempt


async def test_nodes_removed_under_requests_let_them_finish(
    anyio_backend: str, tmp_path: Path
) -> None:
    """§12: a request in flight to a node that leaves the fleet finishes normally --
    a stream being relayed, and a cold load under way; their outcomes then
    change nothing, and the recording still replays."""
    record = tmp_path / "trace.jsonl"
    catalogue = Catalogue(
        profiles={**CATALOGUE.profiles, COLD: Profile(id=COLD, harness="candle", min_devices=2)}
    )
    async with running_fleet(
        neuron("a", SMALL, token_latency=0.05),
        neuron("b", SMALL),
        neuron("c", gpus=2, load_delay=0.3),
        catalogue=catalogue,
        policy=NO_POLLS,
        record=str(record),
    ) as f:
        made = DecisionLines(f.gateway)
        body = chat_body(SMALL, stream=True, max_tokens=5)
        async with f.client.stream("POST", f.gateway.url + "/v1/chat/completions", body=body) as r:
            assert r.header("x-cortex-node") == "a"
            f.gateway.journal.neuron_removed("a")
            text = (await r.read()).decode()
        assert text.rstrip().endswith("data: [DONE]")
        assert (await f.chat(SMALL)).header("x-cortex-node") == "b"
        statuses: list[int] = []

        async def cold_request() -> None:
            resp = await f.chat(COLD)
            statuses.append(resp.status)
            assert resp.header("x-cortex-node") == "c"

        async with anyio.create_task_group() as tg:
            tg.start_soon(cold_request)
            await wait_until(lambda: ("POST", "/models/load") in f.neurons["c"].requests)
            f.gateway.journal.neuron_removed("c")
        assert statuses == [200]
        assert f.engine.node_names == ("b",)
        f.gateway.close_recording()
    out = subprocess.run(
        [sys.executable, "-m", "cortex_fsm.cli", "replay", str(record)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines(keepends=True) == made.lines
    outcomes = [e for e in _events(record) if isinstance(e, OutcomeEvent)]
    assert [(o.node, o.status) for o in outcomes] == [("a", 200), ("b", 200), ("c", 200)]
