"""The gateway's Prometheus metrics, in a registry of their own.

Fed by the gateway: the journal's transition and decision listeners, every
``/models`` poll, every upstream attempt and every finished client request.
Node gauges (health, consecutive failures, requests in flight) are read from
the engine when ``/metrics`` is scraped, so they are never stale.

Every label value is bounded: ``node`` is a configured neuron, ``state``,
``from`` and ``to`` are the four health phases (``suspect(n)`` is
``suspect``), ``outcome`` an engine or gateway outcome, ``status`` an HTTP
status, and ``model`` the resolved model only when the engine knows it (a
catalogue profile or a node's model map), else ``other``: a client cannot
grow the registry by asking for made-up names.

The registry is not the library's global one, so several gateways in one
process (tests) never share counters.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from ..engine import Engine, Transition
from ..errors import Outcome
from ..health import Phase
from ..routing import Decision

__all__ = ["CONTENT_TYPE", "OTHER_MODEL", "GatewayMetrics", "PHASES"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
"""The ``content-type`` of the ``/metrics`` answer."""
OTHER_MODEL: Final = "other"
"""The ``model`` label of a request for a model the engine does not know."""
PHASES: Final = tuple(phase.label for phase in Phase)
"""The values of the ``state`` label: ``unknown``, ``healthy``, ``suspect``, ``unhealthy``."""
NO_OUTCOME: Final = "none"
"""The ``outcome`` label of a request answered before any decision (a 400, say)."""
#: Seconds. LLM requests run from milliseconds (a reject) to minutes (a long stream).
DURATION_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
#: Outcomes whose decision proves the engine knows the model (a node holds it,
#: or the catalogue describes it); any other outcome is checked explicitly.
_KNOWN: Final = frozenset(
    {
        Outcome.ROUTE_LOADED,
        Outcome.ROUTE_UNLOADED,
        Outcome.COLD_LOAD,
        Outcome.MODEL_RECOVERING,
        Outcome.NO_FEASIBLE_NEURON,
    }
)


class _NodeGauges(Collector):
    """Per-node gauges, read from the engine at scrape time."""

    def __init__(self, engine: Callable[[], Engine], in_flight: Callable[[], Mapping[str, int]]):
        self._engine = engine
        self._in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        engine = self._engine()
        health = GaugeMetricFamily(
            "cortex_node_health",
            "1 for the node's current health state, 0 for the others",
            labels=["node", "state"],
        )
        failures = GaugeMetricFamily(
            "cortex_node_consecutive_failures",
            "Consecutive failed polls or requests of the node (0 after a good poll)",
            labels=["node"],
        )
        in_flight = GaugeMetricFamily(
            "cortex_in_flight",
            "Client requests this gateway is serving through the node right now",
            labels=["node"],
        )
        busy = self._in_flight()
        for name in engine.node_names:
            status = engine.status(name)
            current = status.state.phase.label
            for state in PHASES:
                health.add_metric([name, state], 1.0 if state == current else 0.0)
            failures.add_metric([name], float(status.consecutive_failures))
            in_flight.add_metric([name], float(busy.get(name, 0)))
        yield health
        yield failures
        yield in_flight

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _RequestCounters(Collector):
    """The per-request series, kept as plain numbers and exposed at scrape time.

    Every client request touches these, so updating them is a dict operation
    (no lock, no label lookup); the event loop is the only writer.
    """

    def __init__(self) -> None:
        self.decisions: dict[str, int] = {outcome.value: 0 for outcome in Outcome}
        self.requests: dict[tuple[str, int], int] = {}
        self.attempts: dict[tuple[str, str], int] = {}
        # outcome -> [count per bucket (the last one is +Inf)..., sum]
        self.durations: dict[str, list[float]] = {}

    def collect(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "cortex_decisions",
            "Routing decisions of the engine, by outcome (one per attempt)",
            labels=["outcome"],
        )
        for outcome, n in self.decisions.items():
            decisions.add_metric([outcome], n)
        yield decisions
        requests = CounterMetricFamily(
            "cortex_requests",
            "Inference requests answered, by model (the resolved id, or 'other') and status",
            labels=["model", "status"],
        )
        for (model, status), n in sorted(self.requests.items()):
            requests.add_metric([model, str(status)], n)
        yield requests
        attempts = CounterMetricFamily(
            "cortex_upstream_attempts",
            "Attempts to serve a request through a node, by result: ok (the node "
            "answered), failed (no answer, a timeout or a 5xx before the first byte), "
            "error (the node refused a load or an endpoint lookup)",
            labels=["node", "result"],
        )
        for (node, result), n in sorted(self.attempts.items()):
            attempts.add_metric([node, result], n)
        yield attempts
        durations = HistogramMetricFamily(
            "cortex_request_duration_seconds",
            "Time from an inference request's head to the end of its answer, by final outcome",
            labels=["outcome"],
        )
        for outcome, counts in sorted(self.durations.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*DURATION_BUCKETS, "+Inf"), counts, strict=False):
                cumulative += count
                buckets.append((str(bound), cumulative))
            durations.add_metric([outcome], buckets, sum_value=counts[-1])
        yield durations

    def describe(self) -> Iterator[Metric]:
        return iter(())


class GatewayMetrics:
    """The counters, the histogram and the node gauges of one gateway."""

    def __init__(
        self, engine: Callable[[], Engine], in_flight: Callable[[], Mapping[str, int]]
    ) -> None:
        self._engine = engine
        registry = self.registry = CollectorRegistry(auto_describe=False)
        self.polls = Counter(
            "cortex_polls_total",
            "Liveness polls (GET /models) by result: ok, or failed (no answer, "
            "an error status or an invalid body)",
            ["node", "result"],
            registry=registry,
        )
        self.transitions = Counter(
            "cortex_health_transitions_total",
            "Health state changes, by health phase",
            ["node", "from", "to"],
            registry=registry,
        )
        self.evictions = Counter(
            "cortex_evictions_total",
            "Models unloaded to make room for a cold load (docs/semantics.md §5), by result",
            ["node", "result"],
            registry=registry,
        )
        self.reloads = Counter(
            "cortex_config_reloads_total",
            "Configuration reloads (SIGHUP), by result: applied or rejected",
            ["result"],
            registry=registry,
        )
        self._counts = _RequestCounters()
        registry.register(self._counts)
        registry.register(_NodeGauges(engine, in_flight))
        for result in ("applied", "rejected"):
            self.reloads.labels(result)
        for name in engine().node_names:
            self.add_node(name)

    def add_node(self, name: str) -> None:
        """Start the node's counters at 0 (so rates exist before the first event)."""
        for result in ("ok", "failed"):
            self.polls.labels(name, result)
        attempts = self._counts.attempts
        for result in ("ok", "failed", "error"):
            attempts.setdefault((name, result), 0)

    def render(self) -> bytes:
        """The exposition text for ``GET /metrics``."""
        return generate_latest(self.registry)

    # -- feeds ----------------------------------------------------------------------------

    def on_poll(self, node: str, ok: bool) -> None:
        self.polls.labels(node, "ok" if ok else "failed").inc()

    def on_transition(self, transition: Transition) -> None:
        self.transitions.labels(
            transition.node, transition.from_.phase.label, transition.to.phase.label
        ).inc()

    def on_decision(self, decision: Decision) -> None:
        self._counts.decisions[decision.outcome.value] += 1

    def on_attempt(self, node: str, result: str) -> None:
        """``result``: ``ok``, ``failed`` or ``error``."""
        attempts = self._counts.attempts
        key = (node, result)
        attempts[key] = attempts.get(key, 0) + 1

    def on_request(self, model: str, status: int, outcome: str, seconds: float) -> None:
        """A finished inference request (``model`` already a label: see :meth:`model_label`)."""
        counts = self._counts
        key = (model, status)
        counts.requests[key] = counts.requests.get(key, 0) + 1
        histogram = counts.durations.get(outcome)
        if histogram is None:
            histogram = counts.durations[outcome] = [0.0] * (len(DURATION_BUCKETS) + 2)
        histogram[bisect_left(DURATION_BUCKETS, seconds)] += 1
        histogram[-1] += seconds

    def on_eviction(self, node: str, ok: bool) -> None:
        self.evictions.labels(node, "ok" if ok else "failed").inc()

    def on_reload(self, applied: bool) -> None:
        self.reloads.labels("applied" if applied else "rejected").inc()

    def model_label(self, decision: Decision | None) -> str:
        """The ``model`` label for a request: the resolved model if the engine knows it."""
        if decision is None:
            return OTHER_MODEL
        if decision.outcome in _KNOWN:
            return decision.model
        if decision.outcome is Outcome.MODEL_NOT_FOUND:
            return OTHER_MODEL
        model = decision.model
        engine = self._engine()
        if model in engine.catalogue.profiles or any(True for _ in engine.holders(model)):
            return model
        return OTHER_MODEL
