"""serve --record: the recording replays to exactly the decisions the gateway made."""

from __future__ import annotations

import io
from pathlib import Path

import anyio
import pytest
from gateway_support import BIG, SMALL, DecisionLines, neuron, running_fleet

from cortex_fsm import Catalogue, Policy, Profile, TraceReader, replay
from cortex_fsm.health import Phase
from cortex_fsm.trace import LoadEvent, ModelsEvent, OutcomeEvent, RequestEvent

pytestmark = pytest.mark.anyio

COLD = "org/Cold-13B"
CATALOGUE = Catalogue(
    profiles={
        BIG: Profile(id=BIG, harness="candle", min_devices=2, min_device_vram_mb=40000),
        SMALL: Profile(id=SMALL, harness="candle"),
        COLD: Profile(id=COLD, harness="candle", min_devices=2, source="hf"),
    },
    aliases={"tier/large": BIG},
)


@pytest.mark.parametrize("name", ["trace.jsonl.gz", "trace.jsonl"])
async def test_replaying_the_recording_gives_the_gateway_decisions(
    anyio_backend: str, tmp_path: Path, name: str
) -> None:
    record = tmp_path / name
    async with running_fleet(
        neuron("big", BIG, gpus=2, vram_mb=81920),
        neuron("small", SMALL),
        catalogue=CATALOGUE,
        policy=Policy(failure_threshold=2, poll_interval=0.05),
        record=str(record),
        poll_timeout=0.2,
        endpoint_timeout=0.2,
        request_timeout=0.3,
    ) as f:
        made = DecisionLines(f.gateway).lines
        statuses = []
        for model in (BIG, "tier/large", SMALL, "unknown/model", COLD, COLD):
            statuses.append((await f.chat(model)).status)
        assert statuses == [200, 200, 200, 404, 200, 200]
        f.neurons["big"].stall(30)
        while f.phase("big") is not Phase.UNHEALTHY:
            statuses.append((await f.chat("tier/large")).status)
            statuses.append((await f.chat(SMALL)).status)
        assert (await f.chat(BIG)).status == 503
        f.neurons["big"].resume()
        await f.wait_phase("big", Phase.HEALTHY)
        assert (await f.chat(BIG)).status == 200
        await anyio.sleep(0.1)  # a few more polls in the recording
        assert 404 not in statuses[6:]
    # one decision per attempt: a request that failed on 'big' before it was
    # unhealthy had a second attempt, which excluded it
    assert len(made) >= f.gateway.journal.requests >= 9

    out = io.StringIO()
    summary = replay(str(record), out=out)
    assert out.getvalue().splitlines(keepends=True) == made
    assert summary.requests == len(made)

    with TraceReader(record) as trace:
        assert trace.header.policy.failure_threshold == 2
        assert [n.name for n in trace.header.neurons] == ["big", "small"]
        events = list(trace)
    loads = [e for e in events if isinstance(e, LoadEvent)]
    assert [(e.node, e.model, e.ok) for e in loads] == [("big", COLD, True)]
    failures = [e for e in events if isinstance(e, ModelsEvent) and not e.ok]
    assert failures and all(e.node == "big" and e.error == "timeout" for e in failures)
    requests = [e for e in events if isinstance(e, RequestEvent)]
    assert len(requests) == len(made)
    firsts = [e.id for e in requests if e.attempt is None]
    assert firsts == [f"r{i}" for i in range(1, f.gateway.journal.requests + 1)]
    retried = [e for e in requests if e.attempt is not None]
    assert retried  # the first request after the stall failed on 'big' while it was healthy
    assert all(e.attempt == 2 and e.exclude == ("big",) for e in retried)
    # every attempt has exactly one outcome
    outcomes = [(e.id, e.attempt) for e in events if isinstance(e, OutcomeEvent)]
    assert sorted(outcomes) == sorted((e.id, e.attempt or 1) for e in requests)
    times = [e.t for e in events]
    assert times == sorted(times)
