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
* whether it is in the fleet at all (§12);
* the configuration in force: the policy and catalogue the world started
  with, replaced by each reconfiguration (§12), the failure threshold's
  change mapping ``suspect(n)`` with ``n >= T'`` to ``unhealthy``;
* what the engine's **reports** must say (docs/semantics.md "Reports"): how
  many polls succeeded and failed, discoveries were taken and ignored,
  ``/health`` readings were valid and invalid, health transitions happened,
  decisions were counted per outcome, and per node its consecutive failures.

The policy a world runs under is built here from the spec's own table of
values (:data:`SPEC_DEFAULTS`, :data:`SPEC_REFERENCE`, written from
docs/semantics.md Part II), never from :class:`~cortex_fsm.policy.Policy`'s
defaults, so a wrong default in the code disagrees with the monitor.

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
from typing import Any, TypeVar

import attrs

from ..catalogue import Catalogue
from ..errors import ConfigError
from ..fleet import Device, Discovery, FleetSnapshot, ModelEntry, ModelStatus, NodeSnapshot
from ..health import HealthState, Phase
from ..policy import Policy

__all__ = [
    "REPORTS",
    "SPEC_DEFAULTS",
    "SPEC_RANGES",
    "SPEC_REFERENCE",
    "SPEC_WORDS",
    "HealthHistory",
    "Monitor",
    "NodeMonitor",
    "spec_label",
    "spec_policy",
    "spec_policy_problems",
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


# --- the policy keys, from the table of docs/semantics.md Part II ----------------------------

#: Every policy key at its default (docs/semantics.md, Part II's table).
SPEC_DEFAULTS: Mapping[str, object] = {
    "failure_threshold": 3,
    "poll_interval": 10.0,
    "io_errors": "extension",
    "passive_health": True,
    "max_attempts": 2,
    "load": "max",
    "retry_after_no_healthy_nodes": 5,
    "retry_after_recovering": 2,
    "retry_after_unhealthy": 3,
    "retry_after_upstream": 3,
    "lifecycle": "managed",
    "known_down": "retry",
}
#: Every Part II key at its reference value; Part I keys at their (shared) default.
SPEC_REFERENCE: Mapping[str, object] = {
    **SPEC_DEFAULTS,
    "passive_health": False,
    "max_attempts": 1,
    "load": "reported",
    "known_down": "reference",
}


#: The integers each integer key accepts (the table's "type / range" column).
SPEC_RANGES: Mapping[str, tuple[int, int]] = {
    "failure_threshold": (1, 10000),
    "max_attempts": (1, 8),
    "retry_after_no_healthy_nodes": (1, 3600),
    "retry_after_recovering": (1, 3600),
    "retry_after_unhealthy": (1, 3600),
    "retry_after_upstream": (1, 3600),
}
#: The words each choice key accepts.
SPEC_WORDS: Mapping[str, tuple[str, ...]] = {
    "io_errors": ("extension", "reference"),
    "load": ("max", "reported"),
    "lifecycle": ("managed", "static"),
    "known_down": ("retry", "reference"),
}


def spec_policy_problems() -> list[str]:
    """Where the code's policy validation disagrees with the spec's table:
    each integer key at both ends of its range and one past each, each word
    and one more word. Empty when they agree."""
    tries: list[tuple[str, object, bool]] = []
    for key, (low, high) in SPEC_RANGES.items():
        tries += [(key, low, True), (key, high, True), (key, low - 1, False)]
        tries.append((key, high + 1, False))
    for key, words in SPEC_WORDS.items():
        tries += [(key, word, True) for word in words]
        tries.append((key, "other", False))
    problems = []
    for key, value, valid in tries:
        try:
            spec_policy("defaults", **{key: value})
            accepted = True
        except ConfigError:
            accepted = False
        if accepted is not valid:
            verb = "accepts" if accepted else "refuses"
            problems.append(f"{key} = {value!r}: the policy {verb} it, the spec's table does not")
    return problems


def spec_policy(base: str = "defaults", **values: object) -> Policy:
    """The policy the spec describes: ``base`` (``defaults`` or ``reference``)
    with ``values`` over it, every key given explicitly (no default of the
    code's is used)."""
    table = SPEC_DEFAULTS if base == "defaults" else SPEC_REFERENCE
    return Policy(**{**table, **values})  # type: ignore[arg-type]


def spec_label(state: HealthState) -> str:
    """A health state's name as traces, transitions and status show it (§2):
    ``unknown``, ``healthy``, ``suspect(n)``, ``unhealthy``."""
    phase = state.phase
    if phase is Phase.SUSPECT:
        return f"suspect({state.failures})"
    return {Phase.UNKNOWN: "unknown", Phase.HEALTHY: "healthy"}.get(phase, "unhealthy")


#: The counters of ``Engine.statistics()`` the monitor keeps (docs/semantics.md "Reports").
REPORTS: tuple[str, ...] = (
    "polls_ok",
    "polls_failed",
    "discoveries",
    "discoveries_ignored",
    "health_readings",
    "health_invalid",
    "transitions",
)


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


_SIMPLE: dict[type, tuple[str, ...] | None] = {}
_T = TypeVar("_T", bound=attrs.AttrsInstance)


def _evolve(inst: _T, **changes: Any) -> _T:
    """``attrs.evolve`` for the monitor's own values, without its generic
    machinery: a class whose fields have no converter or validator is copied
    field by field (what its ``__init__`` would do); any other goes through
    ``attrs.evolve``."""
    cls = type(inst)
    names = _SIMPLE.get(cls, ())
    if names == ():
        fields = attrs.fields(cls)
        simple = all(f.converter is None and f.validator is None and f.init for f in fields)
        names = _SIMPLE[cls] = tuple(f.name for f in fields) if simple else None
    if names is None:
        return attrs.evolve(inst, **changes)  # type: ignore[misc]  # (attrs-mypy: a bound TypeVar)
    new: _T = object.__new__(cls)
    for name in names:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(inst, name))
    return new


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
                return _evolve(self, revive=False)
            if routable_before:
                return HealthHistory(ever_ok=self.ever_ok)
            return _evolve(self, revive=True)
        if event == "request_failed" and not passive:
            return _evolve(self, revive=False)
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
    """One node as its observations say it must be.

    ``failures`` is the consecutive-failure count ``status()`` reports (not
    part of the key: it is a report, judged by STATUS)."""

    name: str
    health: HealthState = _UNKNOWN
    history: HealthHistory = attrs.field(factory=HealthHistory)
    discovery: Discovery | None = None
    models: Mapping[str, ModelStatus] = attrs.field(factory=dict)
    busy: Mapping[str, int] = attrs.field(factory=dict)
    local: Mapping[str, int] = attrs.field(factory=dict)
    chosen: Mapping[str, int] = attrs.field(factory=dict)
    failures: int = 0

    @property
    def routable(self) -> bool:
        return self.health.phase is Phase.HEALTHY or self.health.phase is Phase.SUSPECT

    @property
    def needs_discovery(self) -> bool:
        """§1: ``/discovery`` is fetched again until a complete answer
        (``max_prompt_tokens > 0``) is cached."""
        return self.discovery is None or not self.discovery.max_prompt_tokens > 0

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


#: An attempt routed and not yet finished: its key (request id, attempt), its
#: node and resolved model, and whether it started a local count (load = max).
Open = tuple[tuple[str, int], str, str, bool]


@attrs.frozen(slots=True, kw_only=True)
class Monitor:
    """The whole fleet as its observations say it must be.

    ``open`` lists the attempts routed under a key and not yet finished;
    ``seq`` counts routed requests (recency). ``policy`` and ``catalogue``
    are the configuration in force (``catalogue`` None: the one the caller
    started with). ``counts`` and ``decisions`` are what
    ``Engine.statistics()`` must report (not part of the key).
    """

    policy: Policy
    nodes: tuple[NodeMonitor, ...]
    catalogue: Catalogue | None = None
    seq: int = 0
    open: tuple[Open, ...] = ()
    #: attempts in flight to a node when it left: their outcomes teach nothing
    stale: tuple[tuple[str, int], ...] = ()
    counts: Mapping[str, int] = attrs.field(factory=dict)
    decisions: Mapping[str, int] = attrs.field(factory=dict)
    #: also list the attempts that started no count (routed under ``load =
    #: "reported"``), for a caller that wants to end them; their outcomes
    #: change no count either way
    uncounted: bool = False

    @classmethod
    def start(
        cls,
        names: tuple[str, ...],
        policy: Policy,
        catalogue: Catalogue | None = None,
        *,
        uncounted: bool = False,
    ) -> Monitor:
        return cls(
            policy=policy,
            catalogue=catalogue,
            nodes=tuple(NodeMonitor(name=n) for n in names),
            uncounted=uncounted,
        )

    def node(self, name: str) -> NodeMonitor | None:
        for n in self.nodes:
            if n.name == name:
                return n
        return None

    def count(self, name: str) -> int:
        return self.counts.get(name, 0)

    def _counted(self, name: str) -> Monitor:
        return _evolve(self, counts={**self.counts, name: self.counts.get(name, 0) + 1})

    def _with(self, node: NodeMonitor) -> Monitor:
        return _evolve(self, nodes=tuple(node if n.name == node.name else n for n in self.nodes))

    def _health_event(self, node: NodeMonitor, event: str) -> NodeMonitor:
        policy = self.policy
        passive = policy.passive_health
        failures = node.failures
        if event == "poll_ok" or (event == "request_ok" and passive and node.routable):
            failures = 0
        elif event == "poll_failed" or (
            event == "request_failed" and passive and node.health.phase is not Phase.UNKNOWN
        ):
            failures += 1
        return _evolve(
            node,
            health=spec_next_health(node.health, event, policy.failure_threshold, passive=passive),
            history=node.history.after(
                event,
                routable_before=node.routable,
                threshold=policy.failure_threshold,
                passive=passive,
            ),
            failures=failures,
        )

    def _event(self, node: NodeMonitor, event: str) -> Monitor:
        """``node`` after a health event; a change of state is a transition."""
        after = self._health_event(node, event)
        monitor = self._with(after)
        if after.health != node.health:
            monitor = monitor._counted("transitions")
        return monitor

    def after(self, kind: str, fields: Mapping[str, Any], routed: str | None = None) -> Monitor:
        """The monitor after one trace record. For a ``request``, ``routed`` is
        the node the engine routed it to (None: not routed) and
        ``fields["outcome"]``, when given, the outcome it was counted under."""
        if kind == "request":
            monitor = self
            outcome = fields.get("outcome")
            if outcome is not None:
                decisions = {**self.decisions, outcome: self.decisions.get(outcome, 0) + 1}
                monitor = _evolve(self, decisions=decisions)
            return monitor._routed(fields, routed)
        if kind == "outcome":
            return self._outcome(fields)
        if kind == "neuron_added":
            name = fields["neuron"].name
            return _evolve(self, nodes=(*self.nodes, NodeMonitor(name=name)))
        if kind == "neuron_removed":
            name = fields["node"]
            return _evolve(
                self,
                nodes=tuple(n for n in self.nodes if n.name != name),
                open=tuple(o for o in self.open if o[1] != name),
                stale=(*self.stale, *(o[0] for o in self.open if o[1] == name)),
            )
        if kind == "reconfigured":
            return self._reconfigured(fields)
        if kind == "finish":
            return self._end(fields["node"], fields["model"])
        node = self.node(fields["node"])
        if node is None:
            return self
        if kind == "discovery":
            found = spec_discovery(fields["body"]) if fields["ok"] else None
            cached = node.discovery
            if found is None or (cached is not None and cached.max_prompt_tokens > 0):
                return self._counted("discoveries_ignored")
            return self._with(_evolve(node, discovery=found))._counted("discoveries")
        if kind == "models":
            report = spec_models(fields["body"]) if fields["ok"] else None
            if report is None:
                return self._event(node, "poll_failed")._counted("polls_failed")
            monitor = self._event(node, "poll_ok")._counted("polls_ok")
            polled = monitor.node(node.name)
            assert polled is not None
            return monitor._with(_evolve(polled, models=report))
        if kind == "health":
            reading = spec_health(fields["body"]) if fields["ok"] else None
            if reading is None:
                return self._counted("health_invalid")
            return self._with(_evolve(node, busy=reading))._counted("health_readings")
        if kind == "load":
            if not fields["ok"]:
                return self
            return self._with(
                _evolve(node, models={**node.models, fields["model"]: ModelStatus.LOADED})
            )
        if kind == "unload":
            model = fields["model"]
            if not fields["ok"] or model not in node.models:
                return self
            return self._with(_evolve(node, models={**node.models, model: ModelStatus.UNLOADED}))
        return self  # truth: nothing the monitor tracks

    def _reconfigured(self, fields: Mapping[str, Any]) -> Monitor:
        """§12: the new policy and/or catalogue apply from now on; everything
        observed is kept, but under a new threshold ``T'`` a node in
        ``suspect(n)`` with ``n >= T'`` has had ``T'`` failures: ``unhealthy``.
        H2 (routable through fewer failures in a row than the threshold) was
        judged, until now, under the threshold then in force: a node that is
        not routable once the threshold changes -- made unhealthy by the
        reload, or by failures under the old threshold -- is no longer held to
        it for its current streak (a threshold raised later does not make its
        going down wrong)."""
        monitor = self
        catalogue = fields.get("catalogue")
        if catalogue is not None:
            monitor = _evolve(monitor, catalogue=catalogue)
        policy = fields.get("policy")
        if policy is None:
            return monitor
        changed = policy.failure_threshold != monitor.policy.failure_threshold
        monitor = _evolve(monitor, policy=policy)
        for n in monitor.nodes:
            if n.health.phase is Phase.SUSPECT and n.health.failures >= policy.failure_threshold:
                monitor = monitor._with(_evolve(n, health=_UNHEALTHY))._counted("transitions")
        if changed:
            for n in monitor.nodes:
                if not n.health.routable and n.history.armed:
                    monitor = monitor._with(_evolve(n, history=_evolve(n.history, armed=False)))
        return monitor

    def _routed(self, fields: Mapping[str, Any], routed: str | None) -> Monitor:
        """A request the engine routed to ``routed`` (§8: a local count and a
        stamp under ``load = "max"`` only). ``fields["resolved"]`` is the model
        it resolved to."""
        if routed is None:
            return self
        key = (fields["id"], fields.get("attempt") or 1)
        model = fields["resolved"]
        if self.policy.load != "max":
            if not self.uncounted:
                return self
            return _evolve(self, open=(*self.open, (key, routed, model, False)))
        monitor = self._finish(key)  # a key used again: its earlier attempt ends
        node = monitor.node(routed)
        if node is None:
            return monitor
        seq = monitor.seq + 1
        node = _evolve(
            node,
            local={**node.local, model: node.local.get(model, 0) + 1},
            chosen={**node.chosen, model: seq},
        )
        monitor = monitor._with(node)
        return _evolve(monitor, seq=seq, open=(*monitor.open, (key, routed, model, True)))

    def _finish(self, key: tuple[str, int]) -> Monitor:
        """The attempt routed under ``key`` (if open) ends: if it started a local
        count, one count of its replica less."""
        for entry in self.open:
            if entry[0] == key:
                _key, name, model, counted = entry
                monitor = _evolve(self, open=tuple(o for o in self.open if o != entry))
                return monitor._end(name, model) if counted else monitor
        return self

    def _end(self, name: str, model: str) -> Monitor:
        """§8: one local count of (``name``, ``model``) ends; none open: nothing."""
        node = self.node(name)
        if node is None:
            return self
        n = node.local.get(model, 0)
        if n <= 0:
            return self
        local = _without(node.local, model) if n == 1 else {**node.local, model: n - 1}
        return self._with(_evolve(node, local=local))

    def _outcome(self, fields: Mapping[str, Any]) -> Monitor:
        key = (fields["id"], fields["attempt"])
        if key in self.stale:  # §12: a removed node is forgotten, its requests too
            return _evolve(self, stale=tuple(k for k in self.stale if k != key))
        monitor = self._finish(key)
        name = fields["node"]
        node = monitor.node(name) if name is not None else None
        if node is None:
            return monitor
        result = _attempt_result(fields)
        if result is None:
            return monitor
        return monitor._event(node, "request_ok" if result else "request_failed")

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
        """Everything but the absolute recency numbers (their order is kept) and
        the reports' counters; the configuration in force by identity."""
        order = sorted((seq, n.name, m) for n in self.nodes for m, seq in n.chosen.items())
        return (
            tuple(n.key() for n in self.nodes),
            tuple((name, m) for _seq, name, m in order),
            tuple(sorted((node, model, counted) for _key, node, model, counted in self.open)),
            len(self.stale),
            self.policy,
            id(self.catalogue),
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
