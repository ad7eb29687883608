"""The observation monitor: what the fleet *should* look like, from the spec alone.

Theory of operation
-------------------
An invariant judged against the engine's own state can pass vacuously: an
engine that forgets a cached discovery has no feasible down node, so "a
feasible down node never yields a 404" (R1) holds while clients get 404s.
The monitor removes that blind spot. It is fed the same observations as the
engine (trace records: discovery, polls, ``/health``, loads and unloads,
routed requests and their outcomes, fleet changes) and keeps, per node, what
docs/semantics.md says the engine must know:

* its **health** -- computed here with the spec's own rules (§2, §6), plus
  the history the H invariants speak of (ever answered, failures since the
  last success, routable when they began);
* its **discovery cache** (§1: a valid answer is cached; a complete one,
  ``max_prompt_tokens > 0``, is never replaced; a failed or invalid one
  changes nothing);
* its **model map** (§2: a valid poll replaces it; a failed one keeps it;
  a successful load makes the model ``loaded``, an unload ``unloaded``);
* its **load readings** (§1: a valid ``/health`` replaces them; anything
  else keeps them);
* the **requests routed to it and not yet finished**, and the **recency** of
  each replica (§8), from the engine's routed decisions and the outcomes;
* whether it is in the fleet at all (§12).

Every answer body is validated here again, by code written from §1 rather
than by :mod:`cortex_fsm.wire`, so a validation bug cannot hide either.

The monitor's :meth:`Monitor.snapshot` is the fleet the invariants judge:
SPEC compares the engine's decision with the ordered rules applied to it, and
R1, R6, R7 read feasibility, load and recency from it; per-node checks (H1-H6,
F1, D1, L1, L2) compare the engine's state with it.

Values are frozen so a monitor can be shared by every state that reaches it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..fleet import Device, Discovery, FleetSnapshot, ModelEntry, ModelStatus, NodeSnapshot
from ..health import HealthState, Phase
from ..policy import Policy

__all__ = [
    "HealthHistory",
    "Monitor",
    "NodeMonitor",
    "spec_discovery",
    "spec_health",
    "spec_models",
    "spec_next_health",
]

_STATUS = {s.value: s for s in ModelStatus}
_SERVING = (ModelStatus.LOADED, ModelStatus.RELOADING)
_HEALTHY = HealthState(phase=Phase.HEALTHY)
_UNHEALTHY = HealthState(phase=Phase.UNHEALTHY)
_UNKNOWN = HealthState(phase=Phase.UNKNOWN)


# --- §1, answer by answer, from the text ------------------------------------------------------


def _int(value: object) -> bool:
    return type(value) is int


def spec_models(body: object) -> dict[str, ModelStatus] | None:
    """§1: an array of objects each with string ``id`` and ``status``; unknown
    status strings read as ``loaded``; a repeated id: the later entry wins.
    None: the poll failed."""
    if type(body) is not list:
        return None
    out: dict[str, ModelStatus] = {}
    for item in body:
        if type(item) is not dict:
            return None
        model, status = item.get("id"), item.get("status")
        if type(model) is not str or type(status) is not str:
            return None
        out[model] = _STATUS.get(status, ModelStatus.LOADED)
    return out


def spec_discovery(body: object) -> Discovery | None:
    """§1: an object with a ``devices`` list of objects each with integer
    ``index`` and ``vram_total_mb``. None: changes nothing."""
    if type(body) is not dict:
        return None
    devices = body.get("devices")
    if type(devices) is not list:
        return None
    parsed = []
    for d in devices:
        if type(d) is not dict or not _int(d.get("index")) or not _int(d.get("vram_total_mb")):
            return None
        name = d.get("name")
        parsed.append(
            Device(
                index=d["index"],
                vram_total_mb=d["vram_total_mb"],
                name=name if type(name) is str else "",
            )
        )
    mpt = body.get("max_prompt_tokens")
    hostname = body.get("hostname")
    return Discovery(
        devices=tuple(parsed),
        max_prompt_tokens=mpt if type(mpt) is int and mpt > 0 else 0,
        hostname=hostname if type(hostname) is str else "",
    )


def spec_health(body: object) -> dict[str, int] | None:
    """§1: an object whose ``models`` (if present) is a list of objects with a
    string ``id`` and non-negative integer ``in_flight`` and ``queue_depth``;
    the reading per model is their sum. None: changes nothing."""
    if type(body) is not dict:
        return None
    models = body.get("models")
    if models is None:
        return {}
    if type(models) is not list:
        return None
    out: dict[str, int] = {}
    for m in models:
        if type(m) is not dict or type(m.get("id")) is not str:
            return None
        a, b = m.get("in_flight"), m.get("queue_depth")
        if type(a) is not int or type(b) is not int or a < 0 or b < 0:
            return None
        out[m["id"]] = a + b
    return out


# --- §2 and §6, from the text -------------------------------------------------------------


def spec_next_health(
    state: HealthState, event: str, threshold: int, *, passive: bool
) -> HealthState:
    """The health after one event (``poll_ok``, ``poll_failed``, ``request_ok``,
    ``request_failed``), written from the prose of §2 and §6."""
    if event == "poll_ok":
        return _HEALTHY
    routable = state.phase is Phase.HEALTHY or state.phase is Phase.SUSPECT
    if event.startswith("request"):
        if not passive:
            return state
        if event == "request_ok":
            return _HEALTHY if routable else state
        if state.phase is Phase.UNKNOWN:
            return state
    if not routable:
        return _UNHEALTHY
    failures = state.failures if state.phase is Phase.SUSPECT else 0
    if failures + 1 < threshold:
        return HealthState(phase=Phase.SUSPECT, failures=failures + 1)
    return _UNHEALTHY


@attrs.frozen(slots=True, kw_only=True)
class HealthHistory:
    """What a node's health events have been, as far as H1-H6 care.

    ``streak`` counts failures of either kind since the last success -- a
    ``poll_ok``, or a ``request_ok`` that found the node routable (it clears
    the counter, §6) -- capped at the threshold (at 1 for a node that never
    answered a poll: H1 alone decides it). ``mixed``: a request failure is
    among them (H6's case; without one it is H3's). ``armed``: the node was
    routable just before the first failure of the streak (H2's premise).
    ``revive``: the last event was a ``request_ok`` that found the node not
    routable (H5's premise).
    """

    ever_ok: bool = False
    streak: int = 0
    mixed: bool = False
    armed: bool = False
    revive: bool = False

    def after(
        self, event: str, *, routable_before: bool, threshold: int, passive: bool
    ) -> HealthHistory:
        if event == "poll_ok":
            return HealthHistory(ever_ok=True)
        if event == "request_ok":
            if not passive:
                return attrs.evolve(self, revive=False)
            if routable_before:
                return HealthHistory(ever_ok=self.ever_ok)
            return attrs.evolve(self, revive=True)
        if event == "request_failed" and not passive:
            return attrs.evolve(self, revive=False)
        first = self.streak == 0
        armed = routable_before if first else self.armed
        mixed = event == "request_failed" or (not first and self.mixed)
        cap = threshold if self.ever_ok else 1
        return HealthHistory(
            ever_ok=self.ever_ok,
            streak=min(self.streak + 1, cap),
            mixed=mixed,
            armed=armed,
            revive=False,
        )


# --- the monitor --------------------------------------------------------------------------


def _without(mapping: Mapping[str, int], key: str) -> dict[str, int]:
    return {k: v for k, v in mapping.items() if k != key}


@attrs.frozen(slots=True, kw_only=True)
class NodeMonitor:
    """One node as its observations say it must be."""

    name: str
    health: HealthState = _UNKNOWN
    history: HealthHistory = attrs.field(factory=HealthHistory)
    discovery: Discovery | None = None
    models: Mapping[str, ModelStatus] = attrs.field(factory=dict)
    busy: Mapping[str, int] = attrs.field(factory=dict)
    local: Mapping[str, int] = attrs.field(factory=dict)
    chosen: Mapping[str, int] = attrs.field(factory=dict)

    @property
    def routable(self) -> bool:
        return self.health.phase is Phase.HEALTHY or self.health.phase is Phase.SUSPECT

    def key(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.health,
            self.history,
            self.discovery,
            tuple(sorted((m, s.value) for m, s in self.models.items())),
            tuple(sorted(self.busy.items())),
            tuple(sorted(self.local.items())),
        )


@attrs.frozen(slots=True, kw_only=True)
class Monitor:
    """The whole fleet as its observations say it must be.

    ``open`` lists the attempts routed under a key and not yet finished:
    ``(key, node, model)``; ``seq`` counts routed requests (recency).
    """

    policy: Policy
    nodes: tuple[NodeMonitor, ...]
    seq: int = 0
    open: tuple[tuple[tuple[str, int], str, str], ...] = ()
    #: attempts in flight to a node when it left: their outcomes teach nothing
    stale: tuple[tuple[str, int], ...] = ()

    @classmethod
    def start(cls, names: tuple[str, ...], policy: Policy) -> Monitor:
        return cls(policy=policy, nodes=tuple(NodeMonitor(name=n) for n in names))

    def node(self, name: str) -> NodeMonitor | None:
        for n in self.nodes:
            if n.name == name:
                return n
        return None

    def _with(self, node: NodeMonitor) -> Monitor:
        return attrs.evolve(
            self, nodes=tuple(node if n.name == node.name else n for n in self.nodes)
        )

    def _health_event(self, node: NodeMonitor, event: str) -> NodeMonitor:
        policy = self.policy
        return attrs.evolve(
            node,
            health=spec_next_health(
                node.health, event, policy.failure_threshold, passive=policy.passive_health
            ),
            history=node.history.after(
                event,
                routable_before=node.routable,
                threshold=policy.failure_threshold,
                passive=policy.passive_health,
            ),
        )

    def after(self, kind: str, fields: Mapping[str, Any], routed: str | None = None) -> Monitor:
        """The monitor after one trace record. For a ``request``, ``routed`` is
        the node the engine routed it to (None: not routed)."""
        if kind == "request":
            return self._routed(fields, routed)
        if kind == "outcome":
            return self._outcome(fields)
        if kind == "neuron_added":
            name = fields["neuron"].name
            return attrs.evolve(self, nodes=(*self.nodes, NodeMonitor(name=name)))
        if kind == "neuron_removed":
            name = fields["node"]
            return attrs.evolve(
                self,
                nodes=tuple(n for n in self.nodes if n.name != name),
                open=tuple(o for o in self.open if o[1] != name),
                stale=(*self.stale, *(o[0] for o in self.open if o[1] == name)),
            )
        node = self.node(fields["node"])
        if node is None:
            return self
        if kind == "discovery":
            found = spec_discovery(fields["body"]) if fields["ok"] else None
            cached = node.discovery
            if found is None or (cached is not None and cached.max_prompt_tokens > 0):
                return self
            return self._with(attrs.evolve(node, discovery=found))
        if kind == "models":
            report = spec_models(fields["body"]) if fields["ok"] else None
            if report is None:
                return self._with(self._health_event(node, "poll_failed"))
            return self._with(attrs.evolve(self._health_event(node, "poll_ok"), models=report))
        if kind == "health":
            reading = spec_health(fields["body"]) if fields["ok"] else None
            if reading is None:
                return self
            return self._with(attrs.evolve(node, busy=reading))
        if kind == "load":
            if not fields["ok"]:
                return self
            return self._with(
                attrs.evolve(node, models={**node.models, fields["model"]: ModelStatus.LOADED})
            )
        if kind == "unload":
            model = fields["model"]
            if not fields["ok"] or model not in node.models:
                return self
            return self._with(
                attrs.evolve(node, models={**node.models, model: ModelStatus.UNLOADED})
            )
        return self  # truth, reconfigured: nothing the monitor tracks

    def _routed(self, fields: Mapping[str, Any], routed: str | None) -> Monitor:
        """A request the engine routed to ``routed`` (§8: counted under ``load =
        "max"`` only). ``fields["resolved"]`` is the model it resolved to."""
        if routed is None or self.policy.load != "max":
            return self
        key = (fields["id"], fields.get("attempt") or 1)
        monitor = self._finish(key)  # a key used again: its earlier attempt ends
        node = monitor.node(routed)
        if node is None:
            return monitor
        model = fields["resolved"]
        seq = monitor.seq + 1
        node = attrs.evolve(
            node,
            local={**node.local, model: node.local.get(model, 0) + 1},
            chosen={**node.chosen, model: seq},
        )
        monitor = monitor._with(node)
        return attrs.evolve(monitor, seq=seq, open=(*monitor.open, (key, routed, model)))

    def _finish(self, key: tuple[str, int]) -> Monitor:
        """The attempt routed under ``key`` (if open) ends: one local count less."""
        for entry in self.open:
            if entry[0] == key:
                _key, name, model = entry
                monitor = attrs.evolve(self, open=tuple(o for o in self.open if o != entry))
                node = monitor.node(name)
                if node is None:
                    return monitor
                n = node.local.get(model, 0) - 1
                local = _without(node.local, model) if n <= 0 else {**node.local, model: n}
                return monitor._with(attrs.evolve(node, local=local))
        return self

    def _outcome(self, fields: Mapping[str, Any]) -> Monitor:
        key = (fields["id"], fields["attempt"])
        if key in self.stale:  # §12: a removed node is forgotten, its requests too
            return attrs.evolve(self, stale=tuple(k for k in self.stale if k != key))
        monitor = self._finish(key)
        name = fields["node"]
        node = monitor.node(name) if name is not None else None
        if node is None:
            return monitor
        result = _attempt_result(fields)
        if result is None:
            return monitor
        return monitor._with(
            monitor._health_event(node, "request_ok" if result else "request_failed")
        )

    def snapshot(self) -> FleetSnapshot:
        """The fleet the invariants judge, as the observations say it must be."""
        return FleetSnapshot(
            nodes=tuple(
                NodeSnapshot(
                    name=n.name,
                    health=n.health,
                    discovery=n.discovery,
                    models={m: ModelEntry(status=s) for m, s in n.models.items()},
                    busy=n.busy,
                    local=n.local,
                    chosen=n.chosen,
                )
                for n in self.nodes
            )
        )

    def key(self) -> tuple[Any, ...]:
        """Everything but the absolute recency numbers (their order is kept)."""
        order = sorted((seq, n.name, m) for n in self.nodes for m, seq in n.chosen.items())
        return (
            tuple(n.key() for n in self.nodes),
            tuple((name, m) for _seq, name, m in order),
            tuple(sorted((node, model) for _key, node, model in self.open)),
            len(self.stale),
        )


def _attempt_result(fields: Mapping[str, Any]) -> bool | None:
    """§6 from the outcome's fields (written again from the text, not imported):
    answered below 500 by the node: ok; the gateway's answer after a transport
    failure, timeout or non-4xx status: failed; anything else: neither."""
    if fields["node"] is None:
        return None
    if fields["source"] == "upstream":
        return bool(fields["status"] < 500)
    error = fields["error"]
    if error is None:
        return None
    if error.startswith("status:"):
        return None if error[7:8] == "4" else False
    if error.startswith("bad_answer"):
        return None
    return False
