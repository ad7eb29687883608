"""cortex_fsm installed on a real LiteLLM Router, in front of real fake-neuron processes.

Every test talks to LiteLLM through its public endpoints (``acompletion``,
``completion``) and to the backends over loopback; nothing of LiteLLM is
mocked. The policy's probe interval is long, so after ``install`` (which
waits for the first round) a test only sees the probes it asks for with
``probe_now``: what moves health in between is passive (LiteLLM's callbacks).
"""

from __future__ import annotations

import asyncio
import collections
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from litellm_support import (
    MESSAGES,
    SRC,
    FakeServer,
    dead_url,
    deployment,
    require_litellm,
    served_by,
    start,
    wait_for,
)

require_litellm()

import litellm  # noqa: E402
from litellm import Router  # noqa: E402
from litellm.integrations.custom_logger import CustomLogger  # noqa: E402
from litellm.router_api import ChangeSet  # noqa: E402
from litellm.types.router import Deployment as LiteLLMDeployment  # noqa: E402

from cortex_fsm.errors import ConfigError, attempt_result  # noqa: E402
from cortex_fsm.integrations.litellm import (  # noqa: E402
    Installed,
    attempt_of,
    install,
    read_deployment,
    served_name,
)
from cortex_fsm.policy import Policy  # noqa: E402

pytestmark = [
    # LiteLLM's own models trip pydantic's warning about ReadOnly TypedDict items.
    pytest.mark.filterwarnings("ignore:Items? .* using the `ReadOnly` qualifier:UserWarning"),
]

#: Probes only at install and when asked; retryable rejects say "retry in 1 s".
POLICY = Policy(
    poll_interval=3600.0,
    retry_after_unhealthy=1,
    retry_after_no_healthy_nodes=1,
)
T = POLICY.failure_threshold


class Attempts(CustomLogger):  # type: ignore[misc]
    """Every attempt LiteLLM made, by deployment: ``ok`` and ``failed`` counters."""

    def __init__(self) -> None:
        super().__init__()
        self.name = f"attempts-{id(self):x}"
        self.ok: collections.Counter[str] = collections.Counter()
        self.failed: collections.Counter[str] = collections.Counter()
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def _count(self, data: Any, ok: bool) -> None:
        call = str(data.get("litellm_call_id"))
        info = data.get("model_info") or (data.get("litellm_params") or {}).get("model_info") or {}
        with self._lock:
            if call in self._seen:
                return
            self._seen.add(call)
            (self.ok if ok else self.failed)[str(info.get("id"))] += 1

    async def async_post_call_success_deployment_hook(
        self, request_data: Any, response: Any, call_type: Any
    ) -> None:
        self._count(request_data, True)

    async def async_post_call_failure_deployment_hook(
        self, request_data: Any, exception: Any, call_type: Any, fallback_depth: Any = None
    ) -> None:
        self._count(request_data, False)

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._count(kwargs, True)

    def log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._count(kwargs, False)


@pytest.fixture
def attempts() -> Iterator[Attempts]:
    log = Attempts()
    litellm.logging_callback_manager.add_litellm_callback(log)
    yield log
    litellm.logging_callback_manager.remove_callback_from_all_lists(log)


@pytest.fixture(scope="module")
def pair() -> Iterator[list[FakeServer]]:
    """Two long-lived OpenAI-compatible servers; tests that break one mend it."""
    servers = start("p-a", "p-b")
    yield servers
    for server in servers:
        server.kill()


def states(installed: Installed) -> dict[str, str]:
    with installed.lock:
        return {name: state.label for name, state in installed.engine.states().items()}


def decisions(installed: Installed) -> dict[str, int]:
    with installed.lock:
        return dict(installed.engine.statistics().decisions)


async def _complete(router: Router, n: int, group: str = "g") -> list[Any]:
    return [
        await router.acompletion(model=group, messages=MESSAGES, max_tokens=2) for _ in range(n)
    ]


# --------------------------------------------------------------------------
# The behaviour the integration exists for


def test_killing_one_of_two_loses_no_request_and_the_dead_one_gets_t_attempts(
    attempts: Attempts,
) -> None:
    a, b = start("k-a", "k-b")
    try:
        router = Router(
            model_list=[deployment("k-a", "g", a.url), deployment("k-b", "g", b.url)],
            num_retries=1,
        )
        with install(router, policy=POLICY) as installed:
            before = asyncio.run(_complete(router, 6))
            a.kill()
            after = asyncio.run(_complete(router, 12))  # raises if any request is lost
            assert states(installed)["k-a"] == "unhealthy"
    finally:
        a.kill()
        b.kill()
    # sequential requests spread over both (least recently chosen first, §8)
    assert served_by(before) == {"k-a": 3, "k-b": 3}
    assert served_by(after) == {"k-b": 12}
    # the dead deployment got exactly its threshold of attempts, each retried on the other
    assert attempts.failed == {"k-a": T}


def test_the_sync_path_spreads_and_fails_over(pair: list[FakeServer], attempts: Attempts) -> None:
    a, b = pair
    router = Router(
        model_list=[deployment("s-a", "g", a.url), deployment("s-b", "g", b.url)], num_retries=1
    )
    with install(router, policy=POLICY) as installed:
        spread = [router.completion(model="g", messages=MESSAGES, max_tokens=2) for _ in range(4)]
        a.control(action="fail")  # every answer a 500
        try:
            failing = [
                router.completion(model="g", messages=MESSAGES, max_tokens=2) for _ in range(6)
            ]
            assert states(installed)["s-a"] == "unhealthy"
        finally:
            a.control(action="resume")
        installed.probe_now()  # the next poll sees it answer again
        assert states(installed)["s-a"] == "healthy"
        again = [router.completion(model="g", messages=MESSAGES, max_tokens=2) for _ in range(2)]
    assert served_by(spread) == {"s-a": 2, "s-b": 2}
    assert served_by(failing) == {"s-b": 6}
    assert attempts.failed == {"s-a": T}
    assert served_by(again) == {"s-a": 1, "s-b": 1}


def test_sync_and_async_requests_at_once_leave_nothing_in_flight(pair: list[FakeServer]) -> None:
    a, b = pair
    router = Router(
        model_list=[deployment("m-a", "g", a.url), deployment("m-b", "g", b.url)], num_retries=1
    )

    async def many() -> list[Any]:
        return list(
            await asyncio.gather(
                *(router.acompletion(model="g", messages=MESSAGES, max_tokens=2) for _ in range(24))
            )
        )

    def in_flight(installed: Installed) -> dict[str, dict[str, int]]:
        with installed.lock:
            return {n.name: dict(n.local) for n in installed.engine.snapshot().nodes if n.local}

    with install(router, policy=POLICY) as installed:
        sync_served: list[Any] = []

        def sync_side() -> None:
            for _ in range(8):
                sync_served.append(router.completion(model="g", messages=MESSAGES, max_tokens=2))

        worker = threading.Thread(target=sync_side)
        worker.start()
        async_served = asyncio.run(many())
        worker.join()
        wait_for(lambda: not in_flight(installed))
    counts = served_by(async_served + sync_served)
    assert sum(counts.values()) == 32
    assert min(counts.values()) >= 8  # both deployments took a share


def test_a_group_whose_deployments_are_all_down_is_a_retried_503_with_retry_after(
    pair: list[FakeServer],
) -> None:
    a, _ = pair
    model_list = [
        deployment("down-1", "g", dead_url()),
        deployment("down-2", "g", dead_url()),
        deployment("up", "other", a.url),
    ]
    router = Router(model_list=model_list, num_retries=1)
    with install(router, policy=POLICY) as installed:
        # never answered, yet known to serve "g": unhealthy with its declared model map
        assert states(installed) == {"down-1": "unhealthy", "down-2": "unhealthy", "up": "healthy"}
        with pytest.raises(litellm.ServiceUnavailableError) as caught:
            asyncio.run(_complete(router, 1))
        counted = decisions(installed)
    error = caught.value
    assert error.status_code == 503
    assert not isinstance(error, litellm.RateLimitError)
    assert error.response.headers["retry-after"] == "1"
    assert "Every deployment of model group 'g' is down" in str(error)
    assert error.num_retries == 1  # LiteLLM's retry logic retried it
    assert set(counted) == {"feasible_node_unhealthy"}


def test_no_live_deployment_at_all_is_a_503_too() -> None:
    router = Router(model_list=[deployment("gone", "g", dead_url())], num_retries=0)
    with install(router, policy=POLICY) as installed:
        with pytest.raises(litellm.ServiceUnavailableError) as caught:
            router.completion(model="g", messages=MESSAGES, max_tokens=2)
        assert set(decisions(installed)) == {"no_healthy_nodes"}
    assert caught.value.response.headers["retry-after"] == str(POLICY.retry_after_no_healthy_nodes)


def test_a_group_that_ran_dry_is_probed_before_its_503(pair: list[FakeServer]) -> None:
    a, _ = pair
    router = Router(model_list=[deployment("only", "g", a.url)], num_retries=0)
    with install(router, policy=POLICY) as installed:
        a.control(action="fail")
        try:
            for _ in range(T):
                with pytest.raises(litellm.InternalServerError):
                    router.completion(model="g", messages=MESSAGES, max_tokens=2)
            assert states(installed) == {"only": "unhealthy"}
        finally:
            a.control(action="resume")
        # no probe is due for an hour, but the group has nothing live: it is asked now
        response = router.completion(model="g", messages=MESSAGES, max_tokens=2)
    assert served_by([response]) == {"only": 1}


def test_without_probes_a_failed_deployment_is_let_in_again_after_poll_interval(
    pair: list[FakeServer],
) -> None:
    a, _ = pair
    router = Router(model_list=[deployment("np", "g", a.url)], num_retries=0)
    policy = Policy(poll_interval=0.5, retry_after_no_healthy_nodes=1)
    with install(router, policy=policy, probe=False) as installed:
        assert states(installed) == {"np": "healthy"}  # trusted as configured
        a.control(action="fail")
        try:
            for _ in range(T):
                with pytest.raises(litellm.InternalServerError):
                    router.completion(model="g", messages=MESSAGES, max_tokens=2)
            with pytest.raises(litellm.ServiceUnavailableError):
                router.completion(model="g", messages=MESSAGES, max_tokens=2)
        finally:
            a.control(action="resume")
        time.sleep(policy.poll_interval)
        response = router.completion(model="g", messages=MESSAGES, max_tokens=2)
    assert served_by([response]) == {"np": 1}


def test_a_model_nobody_serves_is_a_404_litellm_does_not_retry(pair: list[FakeServer]) -> None:
    a, b = pair
    model_list = [deployment("n-a", "g", a.url), deployment("n-b", "g", b.url)]
    router = Router(model_list=model_list, num_retries=3)
    with install(router, policy=POLICY) as installed:
        with pytest.raises(litellm.NotFoundError) as caught:
            asyncio.run(_complete(router, 1, group="no-such-group"))
        assert decisions(installed) == {"model_not_found": 1}
    assert caught.value.status_code == 404
    assert not caught.value.num_retries  # LiteLLM's retry logic did not retry it
    assert "retry-after" not in caught.value.response.headers


def test_a_backend_that_does_not_serve_the_model_is_not_routed_to(pair: list[FakeServer]) -> None:
    a, b = pair
    wrong = deployment("wrong", "g", b.url)
    wrong["litellm_params"]["model"] = "openai/not-served-there"
    router = Router(model_list=[deployment("right", "g", a.url), wrong], num_retries=0)
    with install(router, policy=POLICY) as installed:
        responses = asyncio.run(_complete(router, 4))
        with installed.lock:
            assert installed.engine.status("wrong").models == {}
    assert served_by(responses) == {"right": 4}


def test_deployments_added_and_removed_later_are_picked_up(pair: list[FakeServer]) -> None:
    a, b = pair
    router = Router(model_list=[deployment("first", "g", a.url)], num_retries=1)
    with install(router, policy=POLICY) as installed:
        alone = asyncio.run(_complete(router, 2))
        added = deployment("second", "g", b.url)
        router.apply(ChangeSet(upsert=[LiteLLMDeployment(**added)]))
        installed.probe_now()
        both = asyncio.run(_complete(router, 4))
        router.apply(ChangeSet(delete=["first"]))
        rest = asyncio.run(_complete(router, 3))
        with installed.lock:
            assert not installed.engine.has_node("first")
            assert installed.engine.has_node("second")
    assert served_by(alone) == {"first": 2}
    assert served_by(both) == {"first": 2, "second": 2}
    assert served_by(rest) == {"second": 3}


def test_the_load_a_vllm_backend_reports_steers_requests() -> None:
    a, b = start("v-a", "v-b", flavor="vllm")
    try:
        model_list = [
            deployment("v-a", "g", a.url, kind="vllm"),
            deployment("v-b", "g", b.url, kind="vllm"),
        ]
        router = Router(model_list=model_list, num_retries=0)
        with install(router, policy=POLICY) as installed:
            a.control(action="set_queue", model="m", queue_depth=5)
            installed.probe_now()
            responses = asyncio.run(_complete(router, 4))
    finally:
        a.kill()
        b.kill()
    assert served_by(responses) == {"v-b": 4}


def test_close_gives_the_router_back_to_litellm(pair: list[FakeServer]) -> None:
    a, b = pair
    router = Router(
        model_list=[deployment("c-a", "g", a.url), deployment("c-b", "g", b.url)], num_retries=0
    )
    installed = install(router, policy=POLICY)
    assert any(t.name == "cortex-fsm-litellm-probe" for t in threading.enumerate())
    asyncio.run(_complete(router, 2))
    installed.close()
    installed.close()  # idempotent
    after = asyncio.run(_complete(router, 3))  # LiteLLM's own strategy picks again
    assert sum(decisions(installed).values()) == 2
    assert installed._logger not in litellm.logging_callback_manager.get_all_callbacks()
    assert not any(t.name == "cortex-fsm-litellm-probe" for t in threading.enumerate())
    assert sum(served_by(after).values()) == 3


# --------------------------------------------------------------------------
# The pieces


def test_install_refuses_what_it_cannot_route() -> None:
    bad = deployment("x", "g", "http://127.0.0.1:9")
    bad["model_info"]["kind"] = "neuron"
    router = Router(model_list=[bad])
    with pytest.raises(ConfigError, match=r"deployment 'x': model_info.kind = 'neuron' is not one"):
        install(router, probe=False)
    with pytest.raises(TypeError, match=r"needs a litellm\.Router"):
        install(object())


def test_one_installation_per_router() -> None:
    router = Router(model_list=[deployment("once", "g", dead_url())])
    first = install(router, probe=False)
    with pytest.raises(ConfigError, match="already installed on this router"):
        install(router, probe=False)
    first.close()
    install(router, probe=False).close()


def test_deployments_read() -> None:
    entry = deployment("d", "g", "http://10.0.0.1:8000")
    entry["litellm_params"]["model"] = "hosted_vllm/org/M-8B"
    read = read_deployment(entry)
    assert (read.id, read.group, read.served, read.kind) == ("d", "g", "org/M-8B", "openai")
    assert read.endpoint == "http://10.0.0.1:8000"
    assert read.headers == (("authorization", "Bearer unused"),)
    assert "unused" not in repr(read)
    assert served_name({"model": "served", "custom_llm_provider": "openai"}) == "served"
    assert served_name({"model": "org/M"}) == "org/M"  # "org" is no provider
    with pytest.raises(ConfigError, match=r"deployment 'd': litellm_params.api_base 'ftp://x'"):
        entry["litellm_params"]["api_base"] = "ftp://x"
        read_deployment(entry)


@pytest.mark.parametrize(
    ("error", "result"),
    [
        (None, True),
        (litellm.Timeout(message="slow", model="m", llm_provider="openai"), False),
        (litellm.APIConnectionError(message="refused", llm_provider="openai", model="m"), False),
        (litellm.InternalServerError(message="boom", llm_provider="openai", model="m"), False),
        (litellm.ServiceUnavailableError(message="busy", llm_provider="openai", model="m"), False),
        (litellm.RateLimitError(message="slow down", llm_provider="openai", model="m"), True),
        (litellm.NotFoundError(message="no", model="m", llm_provider="openai"), True),
        (ValueError("could not parse the answer"), None),
    ],
)
def test_attempts_are_classified_like_outcome_events(
    error: BaseException | None, result: bool | None
) -> None:
    source, status, reason = attempt_of(error)
    assert attempt_result(node="d", source=source, status=status, error=reason) is result


def test_the_core_never_imports_litellm() -> None:
    script = (
        "import sys\n"
        "import cortex_fsm, cortex_fsm.cli, cortex_fsm.integrations\n"
        "import cortex_fsm.drivers.gateway, cortex_fsm.drivers.poller\n"
        "print('litellm' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": SRC},
    )
    assert done.stdout.strip() == "False"
