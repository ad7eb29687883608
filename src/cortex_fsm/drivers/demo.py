"""``cortex-fsm demo``: the two-GPU incident, live, over real sockets on loopback.

Three simulated neurons -- ``big`` (2 GPUs) and ``small-a``/``small-b`` (1 GPU
each) -- and the gateway start on free loopback ports. Two clients send
requests through the gateway the whole time: one for the big model, which
needs two GPUs (so only ``big`` can host it), one for the small model, which
has a replica on each small host. Then the incident of the seed commit plays
out:

1. steady state: big requests go to ``big``, small requests to the least
   busy small replica;
2. ``big`` stalls: its polls and the requests sent to it time out, it turns
   ``suspect(1)``, ``suspect(2)``, then ``unhealthy``. Big requests get 503
   with ``Retry-After: 3`` (``feasible_node_unhealthy``: the one host able
   to serve them is down) -- never a 404. Small requests keep routing,
   following the least busy replica;
3. ``big`` recovers: one good poll makes it ``healthy`` and big traffic
   returns.

A fourth node, ``vllm-1``, is not a neuron but a (simulated) vLLM server,
configured with ``kind = "vllm"``: the gateway polls it at ``/health``,
``/v1/models`` and ``/metrics`` and sends its model's requests straight to
its ``/v1`` API; one such request is part of the steady state.

Then a second act (docs/semantics.md Part II): ``small-a``, one of the two
replicas of the small model, dies right after a poll. Requests that draw it
fail over to ``small-b`` within the same client request (§7), so clients see
no error; its request failures make it ``unhealthy`` (§6) before its next
poll; when it comes back, small requests spread over both replicas again
(§8: equal loads go to the replica chosen least recently).

Everything is recorded to a trace; at the end the trace is replayed and the
replay's decisions are compared with the gateway's, one by one (a failover
attempt is a decision of its own).

Timings are compressed so the incident takes seconds: polls every 0.5 s with
a 0.4 s ``/models`` timeout (production defaults: 10 s and 5 s).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable
from typing import IO

import anyio
import anyio.abc
import attrs

from ..catalogue import Catalogue, Profile
from ..engine import Transition
from ..fleet import Neuron
from ..health import Phase
from ..policy import Policy
from ..replay import replay
from ..routing import Decision
from ..trace import decision_line, output_problem
from .config import GatewayConfig
from .fake_neuron import FakeNeuron, FakeNeuronConfig
from .gateway import Gateway, expected_failure
from .http import HTTPClient, HTTPError

__all__ = [
    "BIG_MODEL",
    "SMALL_MODEL",
    "DemoResult",
    "add_demo_arguments",
    "demo_config",
    "demo_main",
    "run_demo",
]

BIG_MODEL = "org/Big-70B"
SMALL_MODEL = "org/Small-8B"
VLLM_MODEL = "Qwen/Qwen3-8B"
_REQUEST_GAP = 0.2  # seconds between two requests of one client
_PHASE = 1.5  # seconds of traffic in each calm phase
_WAIT_LIMIT = 15.0  # seconds to wait for a state change before giving up


_SMALL_HOSTS = ("small-a", "small-b")
_DIES = "small-a"  # the replica that dies in the second act


@attrs.frozen(kw_only=True)
class _Outcome:
    t: float
    model: str
    status: int
    retry_after: str | None
    node: str | None
    outcome: str
    big_state: str
    attempt: int = 1


@attrs.define
class DemoResult:
    """What happened, for the checks (and for tests)."""

    outcomes: list[_Outcome] = attrs.field(factory=list)
    transitions: list[Transition] = attrs.field(factory=list)
    decisions: list[str] = attrs.field(factory=list)
    replayed: list[str] = attrs.field(factory=list)
    checks: list[tuple[str, bool]] = attrs.field(factory=list)
    marks: dict[str, float] = attrs.field(factory=dict)
    """When the second act's moments happened (journal time): ``spread``, ``died``."""

    @property
    def ok(self) -> bool:
        return all(passed for _, passed in self.checks)


class _Timeline:
    def __init__(self, out: IO[str], clock: Callable[[], float]) -> None:
        self.out = out
        self.clock = clock

    def line(self, text: str, t: float | None = None) -> None:
        when = self.clock() if t is None else t
        self.out.write(f"{when:6.2f}s  {text}\n")
        self.out.flush()

    def banner(self, text: str) -> None:
        self.out.write(f"        --- {text} ---\n")
        self.out.flush()


def _neuron_configs() -> list[FakeNeuronConfig]:
    def host(name: str, gpus: int, vram_mb: int, model: str) -> FakeNeuronConfig:
        return FakeNeuronConfig(
            name=name,
            host="127.0.0.1",
            port=0,
            gpus=gpus,
            vram_mb=vram_mb,
            models=[(model, "loaded")],
            token_latency=0.002,
        )

    return [
        host("big", 2, 49152, BIG_MODEL),
        host("small-a", 1, 24576, SMALL_MODEL),
        host("small-b", 1, 24576, SMALL_MODEL),
        attrs.evolve(host("vllm-1", 1, 24576, VLLM_MODEL), flavor="vllm"),
    ]


def demo_config(
    neurons: dict[str, FakeNeuron], poll_interval: float, access_log: str | None = None
) -> GatewayConfig:
    """The gateway configuration the demo runs (compressed timings)."""
    catalogue = Catalogue(
        profiles={
            BIG_MODEL: Profile(
                id=BIG_MODEL, harness="candle", min_devices=2, min_device_vram_mb=40000
            ),
            SMALL_MODEL: Profile(id=SMALL_MODEL, harness="candle"),
        },
        aliases={"tier/large": BIG_MODEL, "tier/small": SMALL_MODEL},
    )
    return GatewayConfig(
        neurons=tuple(
            Neuron(name=name, endpoint=n.url, kind=n.config.flavor) for name, n in neurons.items()
        ),
        catalogue=catalogue,
        policy=Policy(failure_threshold=3, poll_interval=poll_interval),
        listen_host="127.0.0.1",
        listen_port=0,
        poll_timeout=poll_interval * 0.8,
        endpoint_timeout=0.5,
        load_timeout=5.0,
        request_timeout=1.0,
        client_timeout=5.0,
        access_log=access_log,
        source="demo",
    )


async def _wait_until(predicate: Callable[[], bool], limit: float = _WAIT_LIMIT) -> bool:
    with anyio.move_on_after(limit):
        while not predicate():
            await anyio.sleep(0.02)
        return True
    return False


class _Hosts:
    """The simulated neurons, each in a scope of its own so it can die and return."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self.neurons: dict[str, FakeNeuron] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}

    async def start(self, config: FakeNeuronConfig) -> None:
        neuron = FakeNeuron(config)
        scope = anyio.CancelScope()

        async def run(*, task_status: anyio.abc.TaskStatus[int]) -> None:
            with scope:
                await neuron.run(task_status=task_status)

        await self._tg.start(run)
        self.neurons[config.name] = neuron
        self._scopes[config.name] = scope

    def kill(self, name: str) -> None:
        """The process is gone: its listener and connections close at once."""
        self._scopes.pop(name).cancel()

    async def restart(self, name: str) -> None:
        """Start ``name`` again, fresh, on the port it had."""
        old = self.neurons[name]
        assert old.port is not None
        await self.start(attrs.evolve(old.config, port=old.port))


async def run_demo(out: IO[str], *, record: str, poll_interval: float = 0.5) -> DemoResult:
    """Play the incident; write the timeline to ``out``; return what happened."""
    result = DemoResult()
    async with anyio.create_task_group() as tg:
        hosts = _Hosts(tg)
        for neuron_config in _neuron_configs():
            await hosts.start(neuron_config)
        neurons = hosts.neurons
        fd, access_log = tempfile.mkstemp(prefix="cortex-demo-access-", suffix=".jsonl")
        os.close(fd)
        config = demo_config(neurons, poll_interval, access_log)
        gateway = Gateway(config, record=record)
        journal = gateway.journal
        timeline = _Timeline(out, journal.now)
        engine = gateway.engine

        def on_transition(tr: Transition) -> None:
            result.transitions.append(tr)
            timeline.line(
                f"node {tr.node:<8} {tr.from_.label} -> {tr.to.label}   ({tr.cause})", tr.t
            )

        attempts: dict[str, int] = {}

        def on_decision(request_id: str, t: float, decision: Decision) -> None:
            # A failover attempt reuses its request's id: the n-th decision is attempt n.
            n = attempts[request_id] = attempts.get(request_id, 0) + 1
            result.decisions.append(decision_line(decision, request_id, t, None if n == 1 else n))

        journal.transition_listeners.append(on_transition)
        journal.decision_listeners.append(on_decision)

        _intro(out, neurons, config)
        await tg.start(gateway.run)
        out.write(f"gateway  {gateway.url}  (recording to {record})\n\n")
        out.write("  time  event\n")
        out.flush()

        states = engine.states
        all_healthy = await _wait_until(
            lambda: all(s.phase is Phase.HEALTHY for s in states().values())
        )
        if not all_healthy:
            timeline.line("not every neuron turned healthy; giving up")
        async with HTTPClient() as client, anyio.create_task_group() as traffic:

            async def client_loop(model: str) -> None:
                while True:
                    await _one_request(client, gateway, model, timeline, result)
                    await anyio.sleep(_REQUEST_GAP)

            timeline.banner("steady state: both models routing")
            neurons["small-a"].set_queue(SMALL_MODEL, 3)
            timeline.line(
                "small-a reports queue_depth 3 for org/Small-8B: after the next /health poll "
                "small-b is the least busy replica"
            )
            traffic.start_soon(client_loop, BIG_MODEL)
            traffic.start_soon(client_loop, SMALL_MODEL)
            await _one_request(client, gateway, VLLM_MODEL, timeline, result)
            await anyio.sleep(_PHASE)

            timeline.banner("incident: 'big' (the only 2-GPU host) stops answering")
            out.write(
                "          while suspect, 'big' is still routable: a request tries it, times\n"
                "          out, and its second attempt, excluding 'big', finds no other host:\n"
                "          503 feasible_node_unhealthy with Retry-After: 3 (the reference\n"
                "          gateway answered 404 here). Timed-out requests count as failures\n"
                "          of 'big' as well as failed polls.\n"
            )
            neurons["big"].stall(600)
            await _wait_until(lambda: engine.state("big").phase is Phase.UNHEALTHY)
            neurons["small-b"].set_queue(SMALL_MODEL, 5)
            neurons["small-a"].set_queue(SMALL_MODEL, 0)
            timeline.line(
                "small-b now reports queue_depth 5, small-a 0: small traffic moves to small-a"
            )
            await anyio.sleep(_PHASE)

            timeline.banner("recovery: 'big' answers again")
            neurons["big"].resume()
            await _wait_until(lambda: engine.state("big").phase is Phase.HEALTHY)
            await anyio.sleep(_PHASE)

            await _second_act(client, gateway, hosts, timeline, result)
            traffic.cancel_scope.cancel()
        await _show_operator_view(out, gateway, access_log)
        tg.cancel_scope.cancel()
    os.unlink(access_log)
    # The gateway has stopped: the recording is complete. Replay it.
    buffer = io.StringIO()
    replay(record, out=buffer)
    result.replayed = buffer.getvalue().splitlines(keepends=True)
    _check(result)
    _report(out, result, record)
    return result


async def _second_act(
    client: HTTPClient, gateway: Gateway, hosts: _Hosts, timeline: _Timeline, result: DemoResult
) -> None:
    """One of two small replicas dies: failover, passive health, spreading again."""
    engine = gateway.engine
    journal = gateway.journal
    out = timeline.out
    timeline.banner(f"second act: '{_DIES}', one of two replicas of the small model, dies")
    hosts.neurons["small-b"].set_queue(SMALL_MODEL, 0)
    await _wait_until(
        lambda: all(
            engine.snapshot().node(name).busy.get(SMALL_MODEL, 0) == 0 for name in _SMALL_HOSTS
        )
    )
    result.marks["spread"] = journal.now()
    timeline.line(
        "both small replicas report queue_depth 0: with equal loads, small requests take\n"
        "          turns (the replica chosen least recently goes first)"
    )
    await anyio.sleep(_PHASE)
    # Right after a poll of it, so that what follows happens before its next one.
    last_ok = engine.status(_DIES).last_ok
    await _wait_until(lambda: engine.status(_DIES).last_ok != last_ok)
    hosts.kill(_DIES)
    result.marks["died"] = journal.now()
    timeline.line(f"{_DIES} dies (its process is gone: connections are refused)")
    out.write(
        f"          a request that draws '{_DIES}' fails before its first byte and makes a\n"
        f"          second attempt that excludes it: 'small-b' answers, the client sees 200.\n"
        f"          Each such failure also counts against '{_DIES}' (passive health), so it\n"
        "          turns unhealthy before its next poll. A few clients at once:\n"
    )
    out.flush()
    limit = journal.now() + _WAIT_LIMIT
    while engine.state(_DIES).routable and journal.now() < limit:
        async with anyio.create_task_group() as burst:
            for _ in range(4):
                burst.start_soon(_one_request, client, gateway, SMALL_MODEL, timeline, result)
    await anyio.sleep(_PHASE)
    timeline.banner(f"'{_DIES}' returns")
    await hosts.restart(_DIES)
    await _wait_until(lambda: engine.state(_DIES).phase is Phase.HEALTHY)
    await anyio.sleep(_PHASE)


_SHOWN_METRICS = (
    "cortex_node_health{",
    "cortex_health_transitions_total{",
    "cortex_requests_total{",
)


async def _show_operator_view(out: IO[str], gateway: Gateway, access_log: str) -> None:
    """A glimpse of what an operator sees: some ``/metrics`` lines, the access log's tail."""
    try:
        with anyio.fail_after(5):
            async with HTTPClient() as client:
                resp = await client.request("GET", gateway.url + "/metrics")
    except (HTTPError, TimeoutError) as exc:
        out.write(f"GET /metrics failed: {exc!r}\n")
        return
    lines = [
        line
        for line in resp.body.decode().splitlines()
        if line.startswith(_SHOWN_METRICS)
        and not line.endswith(" 0.0")
        and 'from="unknown"' not in line
    ]
    out.write(f"\nGET {gateway.url}/metrics (Prometheus; some of its non-zero series)\n")
    for line in lines:
        out.write(f"  {line}\n")
    if gateway.access_log is not None:
        gateway.access_log.flush()
    with open(access_log, encoding="utf-8") as fh:
        tail = fh.read().splitlines()[-2:]
    out.write("access log (one JSON line per request; the last two)\n")
    for line in tail:
        out.write(f"  {line}\n")
    out.flush()


def _intro(out: IO[str], neurons: dict[str, FakeNeuron], config: GatewayConfig) -> None:
    out.write("cortex-fsm demo: the two-GPU incident, live on 127.0.0.1\n\n")
    for name, neuron in neurons.items():
        c = neuron.config
        models = ", ".join(m for m, _ in c.models)
        if c.flavor != "neuron":
            out.write(
                f"{c.flavor:<8} {name:<8} {neuron.url}  a {c.flavor} server (kind = "
                f'"{c.flavor}": /health, /v1/models, /metrics), serving {models}\n'
            )
            continue
        out.write(
            f"neuron   {name:<8} {neuron.url}  {c.gpus} GPU x {c.vram_mb // 1024} GiB, "
            f"serving {models}\n"
        )
    out.write(
        f"model    {BIG_MODEL} needs 2 GPUs of >= 40000 MB: only 'big' can host it\n"
        f"model    {SMALL_MODEL} needs 1 GPU: a replica on small-a and small-b\n"
        f"policy   failure_threshold {config.policy.failure_threshold}, "
        f"poll every {config.policy.poll_interval:g} s, "
        f"/models timeout {config.poll_timeout:g} s\n"
        "         (compressed so the incident plays out in seconds; "
        "the production defaults are 10 s and 5 s)\n"
    )
    out.flush()


async def _one_request(
    client: HTTPClient, gateway: Gateway, model: str, timeline: _Timeline, result: DemoResult
) -> None:
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    ).encode()
    try:
        with anyio.fail_after(10):
            resp = await client.request(
                "POST",
                gateway.url + "/v1/chat/completions",
                headers=[("content-type", "application/json")],
                body=body,
            )
    except (HTTPError, TimeoutError) as exc:
        timeline.line(f"request {model:<13} -> client error {exc!r}")
        return
    t = gateway.journal.now()
    node = resp.header("x-cortex-node")
    retry = resp.header("retry-after")
    outcome = resp.header("x-cortex-outcome") or "?"
    attempt = resp.header("x-cortex-attempt")
    big = gateway.engine.state("big").label
    result.outcomes.append(
        _Outcome(
            t=t,
            model=model,
            status=resp.status,
            retry_after=retry,
            node=node,
            outcome=outcome,
            big_state=big,
            attempt=int(attempt) if attempt is not None and attempt.isdigit() else 1,
        )
    )
    if resp.status == 200:
        where = f"from {node}"
    else:
        where = f"Retry-After: {retry}" if retry else "(no Retry-After)"
    again = f"  (attempt {attempt})" if attempt is not None else ""
    timeline.line(f"request {model:<13} -> {resp.status} {where:<18} {outcome}{again}", t)
    if model == VLLM_MODEL:
        timeline.line(f"         ({node} is a vLLM server: the request went to its /v1 API)", t)


def _check(result: DemoResult) -> None:
    big = [o for o in result.outcomes if o.model == BIG_MODEL]
    small = [o for o in result.outcomes if o.model == SMALL_MODEL]
    served_by_vllm = [o for o in result.outcomes if o.model == VLLM_MODEL]
    labels = [tr.to.label for tr in result.transitions if tr.node == "big"]
    first_unhealthy = next((i for i, o in enumerate(big) if o.big_state == "unhealthy"), None)
    after = big[first_unhealthy:] if first_unhealthy is not None else []
    recovered_at = next(
        (tr.t for tr in result.transitions if tr.node == "big" and tr.from_.label == "unhealthy"),
        math.inf,
    )
    died = result.marks.get("died", math.inf)
    spread = result.marks.get("spread", math.inf)
    dies = [tr for tr in result.transitions if tr.node == _DIES and tr.t >= died]
    returned = next((tr.t for tr in dies if tr.cause == "poll_ok"), math.inf)
    before = {o.node for o in small if spread <= o.t < died}
    again = {o.node for o in small if o.t > returned}
    result.checks = [
        (
            "'big' went healthy -> suspect(1) -> suspect(2) -> unhealthy -> healthy",
            labels[-4:] == ["suspect(1)", "suspect(2)", "unhealthy", "healthy"],
        ),
        (
            "while 'big' was unhealthy, big-model requests got 503 + Retry-After 3",
            any(
                o.status == 503 and o.retry_after == "3" and o.outcome == "feasible_node_unhealthy"
                for o in after
            ),
        ),
        ("no big-model request was ever answered 404", all(o.status != 404 for o in big)),
        (
            "every 503 carried Retry-After",
            all(o.retry_after is not None for o in result.outcomes if o.status == 503),
        ),
        (
            "every small-model request was answered 200, by the least busy replica",
            bool(small) and all(o.status == 200 for o in small),
        ),
        (
            "big-model traffic returned to 'big' after it recovered",
            any(o.status == 200 and o.node == "big" and o.t > recovered_at for o in big),
        ),
        (
            f"when '{_DIES}' died, no client saw an error: its requests failed over to small-b",
            any(o.attempt == 2 and o.node == "small-b" and o.t >= died for o in small)
            and all(o.status == 200 for o in small if o.t >= died),
        ),
        (
            f"'{_DIES}' went unhealthy from request failures, before its next poll",
            [(tr.to.label, tr.cause.split(":")[0]) for tr in dies[:3]]
            == [
                ("suspect(1)", "request_failed"),
                ("suspect(2)", "request_failed"),
                ("unhealthy", "request_failed"),
            ],
        ),
        (
            f"with equal loads small requests went to both replicas, before '{_DIES}' died "
            "and again after it returned",
            before == again == set(_SMALL_HOSTS),
        ),
        (
            'the vLLM server\'s model was routed to it (kind = "vllm")',
            bool(served_by_vllm)
            and all(o.status == 200 and o.node == "vllm-1" for o in served_by_vllm),
        ),
        (
            f"replaying the recorded trace gives the same {len(result.decisions)} decisions",
            bool(result.decisions) and result.replayed == result.decisions,
        ),
    ]


def _report(out: IO[str], result: DemoResult, record: str) -> None:
    answers: dict[str, dict[tuple[int, str], int]] = {}
    for o in result.outcomes:
        per = answers.setdefault(o.model, {})
        per[(o.status, o.outcome)] = per.get((o.status, o.outcome), 0) + 1
    out.write("\nsummary (what the clients were told)\n")
    for model, per in sorted(answers.items()):
        counts = ", ".join(
            f"{n} x {status} {outcome}" for (status, outcome), n in sorted(per.items())
        )
        out.write(f"  {model:<13} {counts}\n")
    out.write("checks\n")
    for text, passed in result.checks:
        out.write(f"  [{'ok' if passed else 'FAILED'}] {text}\n")
    out.write(f"trace    {record}\n")
    out.write(f"         replay it: cortex-fsm replay {record} --summary\n")
    out.flush()


# --------------------------------------------------------------------------
# Command line (wired into ``cortex-fsm demo``)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` options to ``parser``."""
    parser.add_argument(
        "--record",
        metavar="TRACE",
        default=os.path.join(tempfile.gettempdir(), "cortex-demo-trace.jsonl.gz"),
        help="where to write the recorded trace (default: %(default)s)",
    )
    parser.add_argument(
        "--poll-interval",
        type=_poll_interval,
        default=0.5,
        metavar="SECONDS",
        help="poll interval of the demo gateway, 0.2..2 (default: %(default)s)",
    )


def _poll_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.2 <= value <= 2.0:
        raise argparse.ArgumentTypeError(f"{text} is out of range (0.2..2)")
    return value


def demo_main(args: argparse.Namespace) -> int:
    """``cortex-fsm demo``: 0 when every check passed, 1 if one failed, 2 on bad input."""
    problem = output_problem(args.record)
    if problem is not None:
        print(f"cortex-fsm: error: --record: {problem}", file=sys.stderr)
        return 2
    # The timeline shows what the gateway's log lines would; keep stderr for errors.
    logging.getLogger("cortex_fsm").setLevel(logging.ERROR)
    try:
        result = anyio.run(
            lambda: run_demo(sys.stdout, record=args.record, poll_interval=args.poll_interval)
        )
    except KeyboardInterrupt:
        print("cortex-fsm: demo interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        problem = expected_failure(exc)
        if problem is None:
            raise
        print(f"cortex-fsm: error: {problem}", file=sys.stderr)
        return 1
    return 0 if result.ok else 1
