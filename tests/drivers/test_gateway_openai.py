"""End to end with the official ``openai`` SDK as the client.

On asyncio only: the SDK's streams leave async generators for the garbage
collector to finalize, which trio reports as a ResourceWarning (and warnings
are errors here). The gateway itself runs every raw-HTTP test on both.
"""

from __future__ import annotations

import anyio
import openai
import pytest
from gateway_support import BIG, SMALL, Fleet, neuron, running_fleet

from cortex_fsm import Policy
from cortex_fsm.health import Phase
from cortex_fsm.routing import Decision

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


MESSAGES = [{"role": "user", "content": "tell me about rivers"}]


def sdk(fleet: Fleet, *, max_retries: int = 0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=fleet.gateway.url + "/v1",
        api_key="not-needed",
        max_retries=max_retries,
        timeout=20.0,
    )


async def test_chat_completions_and_streaming(anyio_backend: str) -> None:
    async with (
        running_fleet(neuron("small", SMALL), neuron("big", BIG, gpus=2, vram_mb=81920)) as f,
        sdk(f) as client,
    ):
        answer = await client.chat.completions.create(
            model=SMALL,
            messages=MESSAGES,
            max_tokens=8,  # type: ignore[arg-type]
        )
        text = answer.choices[0].message.content
        assert text
        assert answer.model == SMALL
        stream = await client.chat.completions.create(
            model=SMALL,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=8,
            stream=True,
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        assert len(pieces) >= 3
        assert "".join(pieces) == text  # same neuron, same prompt: the same tokens
        completion = await client.completions.create(model="tier/large", prompt="hi", max_tokens=4)
        assert completion.choices[0].text
        models = await client.models.list()
        assert {m.id for m in models.data} == {BIG, SMALL, "tier/large", "tier/small"}


async def test_outage_gives_503_with_retry_after_and_the_sdk_retry_succeeds(
    anyio_backend: str,
) -> None:
    async with running_fleet(
        neuron("small", SMALL),
        neuron("big", BIG, gpus=2, vram_mb=81920),
        policy=Policy(failure_threshold=1, poll_interval=0.05),
    ) as f:
        outcomes: list[str] = []

        def keep(request_id: str, t: float, decision: Decision) -> None:
            outcomes.append(decision.outcome.value)

        f.gateway.journal.decision_listeners.append(keep)
        f.neurons["big"].drop()
        await f.wait_phase("big", Phase.UNHEALTHY)

        async with sdk(f) as client:
            with pytest.raises(openai.APIStatusError) as info:
                await client.chat.completions.create(model=BIG, messages=MESSAGES)  # type: ignore[arg-type]
            assert info.value.status_code == 503
            assert info.value.response.headers["retry-after"] == "3"
            assert isinstance(info.value.body, dict)
            assert info.value.body["code"] == "service_unavailable"
            # the small model is unaffected
            assert (await client.chat.completions.create(model=SMALL, messages=MESSAGES)).choices  # type: ignore[arg-type]

        async def recover() -> None:
            await anyio.sleep(0.3)
            f.neurons["big"].resume()

        outcomes.clear()
        async with sdk(f, max_retries=2) as client, anyio.create_task_group() as tg:
            tg.start_soon(recover)
            start = anyio.current_time()
            answer = await client.chat.completions.create(model=BIG, messages=MESSAGES)  # type: ignore[arg-type]
            waited = anyio.current_time() - start
        assert answer.choices[0].message.content
        assert outcomes == ["feasible_node_unhealthy", "route_loaded"]
        assert waited >= 2.5  # the SDK honoured Retry-After: 3


async def test_sdk_sees_a_clean_error_when_the_neuron_dies_mid_stream(anyio_backend: str) -> None:
    async with (
        running_fleet(neuron("small", SMALL, token_latency=0.05), neuron("other", BIG)) as f,
        sdk(f) as client,
    ):
        stream = await client.chat.completions.create(
            model=SMALL,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=20,
            stream=True,
        )
        received = 0
        with pytest.raises(openai.APIError, match="failed while streaming"):
            async for _ in stream:
                received += 1
                f.kill("small")
        assert received >= 1
        assert (await f.get("/health")).status == 200
