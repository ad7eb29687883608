"""The real engine against a deliberately naive model, step by step.

A hypothesis ``RuleBasedStateMachine`` feeds the engine everything a poller
can see -- discovery answers (good, incomplete, malformed, failed), ``/models``
answers (reports with every status string, duplicates, malformed bodies,
failures), ``/health`` loads (and malformed ones), load and unload outcomes --
and requests for catalogued models, aliases, uncatalogued and unknown ids, on
fleets of 1-4 nodes and failure thresholds 1-5; and Part II's events (docs/semantics.md
§6-§13): requests routed with an ``exclude`` set, the outcomes of routed
attempts (ending local in-flight counts, and passive health), request outcomes
for any node, nodes joining and leaving the fleet, and reconfiguration of the
policy and the catalogue -- under a policy drawn key by key (passive health,
load, known_down, lifecycle, Retry-After values), the reference included.

After every step it checks every invariant (``cortex_fsm.verify.invariants``)
on the engine's state, and every decision is compared with the naive model
below, which re-reads docs/semantics.md in the plainest possible way: health is
"has it ever answered, how many failures since the last success, and did
they reach the threshold", routing is the ordered list of rules over full
scans, load is a pair of dictionaries. Nothing in the naive model is shared
with the code under test.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cortex_fsm import Catalogue, Engine, Neuron, Policy, Profile
from cortex_fsm.fleet import ModelStatus
from cortex_fsm.health import HealthState, Phase
from cortex_fsm.routing import decide
from cortex_fsm.verify.invariants import (
    HealthHistory,
    check_decision,
    check_health,
    f1,
    r5,
    reordered_catalogue,
    reordered_views,
)
from cortex_fsm.wire import Invalid

REFERENCE = Policy.reference()
NAMES = ("alpha", "bravo", "charlie", "delta")
MODELS = ("big", "small", "pinned", "x", "tier/big")
REQUESTS = (*MODELS, "tier/small", "chain", "nope")
STATUS_TEXTS = ("loaded", "unloaded", "reloading", "loading", "recovering", "warming")


def _device(index: int, vram: int) -> dict[str, object]:
    return {"index": index, "name": "GPU", "vram_total_mb": vram, "compute_capability": "9.0"}


DISCOVERIES: dict[str, Any] = {
    "small": {"hostname": "h", "devices": [_device(0, 24000)], "max_prompt_tokens": 8192},
    "big": {
        "hostname": "h",
        "devices": [_device(0, 81920), _device(1, 81920)],
        "max_prompt_tokens": 8192,
    },
    "mixed": {
        "hostname": "h",
        "devices": [_device(3, 24000), _device(5, 81920), _device(7, 48000)],
        "max_prompt_tokens": 8192,
    },
    "big-incomplete": {"devices": [_device(0, 81920), _device(1, 81920)]},
    "none-incomplete": {"devices": [], "max_prompt_tokens": 0},
    "bad-devices": {"devices": "two"},
    "bad-index": {"devices": [{"index": "0", "vram_total_mb": 81920}]},
    "bad-bool": {"devices": [{"index": 0, "vram_total_mb": True}]},
    "not-object": ["devices"],
}

MALFORMED_MODELS: tuple[object, ...] = (
    {"models": []},
    [1],
    [{"id": 1, "status": "loaded"}],
    [{"id": "big"}],
    [{"status": "loaded"}],
    [{"id": "big", "status": None}],
    None,
    "loaded",
)

MALFORMED_HEALTH: tuple[object, ...] = (
    [],
    {"models": "none"},
    {"models": [{"id": "big", "in_flight": -1, "queue_depth": 0}]},
    {"models": [{"id": "big", "in_flight": True, "queue_depth": 0}]},
    {"models": [{"id": "big", "in_flight": 1}]},
    {"models": [{"in_flight": 1, "queue_depth": 1}]},
)


# --- the naive model ------------------------------------------------------------------------


def naive_discovery(body: object) -> tuple[list[tuple[int, int]], int] | None:
    """(devices as (index, vram), max_prompt_tokens) or None when invalid."""
    if not isinstance(body, dict) or not isinstance(body.get("devices"), list):
        return None
    devices = []
    for d in body["devices"]:
        if not isinstance(d, dict):
            return None
        index, vram = d.get("index"), d.get("vram_total_mb")
        if type(index) is not int or type(vram) is not int:
            return None
        devices.append((index, vram))
    mpt = body.get("max_prompt_tokens")
    return devices, (mpt if type(mpt) is int and mpt > 0 else 0)


def naive_models(body: object) -> dict[str, str] | None:
    if not isinstance(body, list):
        return None
    out: dict[str, str] = {}
    for item in body:
        if not isinstance(item, dict):
            return None
        if type(item.get("id")) is not str or type(item.get("status")) is not str:
            return None
        status = item["status"]
        known = ("loaded", "unloaded", "reloading", "loading", "recovering")
        out[item["id"]] = status if status in known else "loaded"
    return out


def naive_health(body: object) -> dict[str, int] | None:
    if not isinstance(body, dict):
        return None
    if "models" not in body or body["models"] is None:
        return {}
    if not isinstance(body["models"], list):
        return None
    out = {}
    for m in body["models"]:
        if not isinstance(m, dict) or type(m.get("id")) is not str:
            return None
        a, b = m.get("in_flight"), m.get("queue_depth")
        if type(a) is not int or type(b) is not int or a < 0 or b < 0:
            return None
        out[m["id"]] = a + b
    return out


class NaiveNode:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ever_ok = False
        self.fails = 0  # failures (polls, requests) since the last success
        self.down = False  # the failures reached the threshold
        self.models: dict[str, str] = {}
        self.busy: dict[str, int] = {}
        self.local: dict[str, int] = {}  # requests routed here and not finished
        self.chosen: dict[str, int] = {}  # when each model was last chosen here
        self.devices: list[tuple[int, int]] | None = None
        self.complete = False

    def routable(self) -> bool:
        return self.ever_ok and not self.down

    def label(self) -> str:
        if not self.ever_ok:
            return "unknown" if self.fails == 0 else "unhealthy"
        if self.down:
            return "unhealthy"
        return "healthy" if self.fails == 0 else f"suspect({self.fails})"

    def succeeded(self) -> None:
        self.ever_ok, self.fails, self.down = True, 0, False

    def failed(self, threshold: int) -> None:
        self.fails += 1
        if self.fails >= threshold:
            self.down = True


def naive_feasible(p: Mapping[str, Any], node: NaiveNode) -> bool:
    if node.devices is None:
        return False
    if p["pinned_on"] and node.name not in p["pinned_on"]:
        return False
    floor = p["min_vram"] or 0
    return (
        len(node.devices) >= p["min_devices"]
        and len([v for _, v in node.devices if v >= floor]) >= p["min_devices"]
    )


#: §9: the policy key of each retryable reject's Retry-After.
RETRY_KEYS = {
    "no_healthy_nodes": "retry_after_no_healthy_nodes",
    "model_recovering": "retry_after_recovering",
    "feasible_node_unhealthy": "retry_after_unhealthy",
}


def naive_decide(
    nodes: list[NaiveNode],
    profiles: Mapping[str, Mapping[str, Any]],
    aliases: Mapping[str, str],
    requested: str,
    *,
    policy: Mapping[str, Any],
    exclude: frozenset[str] = frozenset(),
) -> tuple[str, str | None, str | None, tuple[Any, ...] | None, int | None]:
    """(outcome, node, subject, load, Retry-After) by the ordered rules of
    docs/semantics.md §3, with §7 (excluded = down), §8, §9, §12 and §13."""
    outcome, node, subject, load = _naive_rules(
        nodes, profiles, aliases, requested, policy=policy, exclude=exclude
    )
    key = RETRY_KEYS.get(outcome)
    return (outcome, node, subject, load, None if key is None else policy[key])


def _naive_rules(
    nodes: list[NaiveNode],
    profiles: Mapping[str, Mapping[str, Any]],
    aliases: Mapping[str, str],
    requested: str,
    *,
    policy: Mapping[str, Any],
    exclude: frozenset[str],
) -> tuple[str, str | None, str | None, tuple[Any, ...] | None]:
    model = aliases.get(requested, requested)
    up = sorted((n for n in nodes if n.routable() and n.name not in exclude), key=lambda n: n.name)
    down = [n for n in nodes if n not in up]
    if not up:
        return ("no_healthy_nodes", None, None, None)
    serving = [n for n in up if n.models.get(model) in ("loaded", "reloading")]
    if serving:
        if policy["load"] == "max":
            best = min(
                serving,
                key=lambda n: (
                    max(n.busy.get(model, 0), n.local.get(model, 0)),
                    n.chosen.get(model, -1),
                    n.name,
                ),
            )
        else:
            best = min(serving, key=lambda n: (n.busy.get(model, 0), n.name))
        return ("route_loaded", best.name, None, None)
    rec = [n for n in up if n.models.get(model) == "recovering"]
    if rec:
        return ("model_recovering", None, rec[0].name, None)
    p = profiles.get(model)
    known = policy["known_down"] == "retry" and any(model in n.models for n in down)
    down_feasible = p is not None and any(naive_feasible(p, n) for n in down)
    if policy["lifecycle"] == "static":
        held_down = any(n.models.get(model) in ("loaded", "reloading") for n in down)
        if held_down or known or down_feasible:
            return ("feasible_node_unhealthy", None, None, None)
        return ("model_not_found", None, None, None)
    unl = [n for n in up if n.models.get(model) == "unloaded"]
    if unl:
        return ("route_unloaded", unl[0].name, None, None)
    if p is not None:
        cands = [n for n in nodes if naive_feasible(p, n) and n in up]
        if cands:
            pinned = sorted(n.name for n in cands if n.name in p["pinned_on"])
            name = (pinned or sorted(c.name for c in cands))[0]
            target = next(n for n in cands if n.name == name)
            assert target.devices is not None
            floor = p["min_vram"] or 0
            devices = tuple([i for i, v in target.devices if v >= floor][: p["min_devices"]])
            load = (
                f"{p['source']}:{model}" if p["source"] else model,
                p["harness"],
                p["quant"],
                p["min_devices"] if p["min_devices"] > 1 else None,
                devices,
            )
            return ("cold_load", target.name, None, load)
    if known:
        return ("feasible_node_unhealthy", None, None, None)
    if p is None:
        return ("model_not_found", None, None, None)
    if down_feasible:
        return ("feasible_node_unhealthy", None, None, None)
    return ("no_feasible_neuron", None, None, None)


# --- the machine ----------------------------------------------------------------------------


#: A policy drawn key by key (docs/semantics.md §6-§13): each value with the reference's
#: among the choices, so the reference policy is one of the draws.
POLICIES = st.fixed_dictionaries(
    {
        "passive_health": st.booleans(),
        "load": st.sampled_from(("max", "reported")),
        "known_down": st.sampled_from(("retry", "reference")),
        "lifecycle": st.sampled_from(("managed", "managed", "static")),
        "retry_after_no_healthy_nodes": st.sampled_from((5, 1)),
        "retry_after_recovering": st.sampled_from((2, 7)),
        "retry_after_unhealthy": st.sampled_from((3, 4)),
    }
)


def _profiles(variant: int, pinned: tuple[str, ...], big_source: str | None) -> dict[str, Any]:
    """The catalogue's profiles as plain data; variant 1 (a reconfiguration)
    raises big's VRAM floor to exactly the big node's VRAM and unpins."""
    return {
        "big": {
            "min_devices": 2,
            "min_vram": 40000 if variant == 0 else 81920,
            "pinned_on": (),
            "source": big_source,
            "harness": "candle",
            "quant": None,
        },
        "small": {
            "min_devices": 1,
            "min_vram": None,
            "pinned_on": (),
            "source": None,
            "harness": "llama",
            "quant": "q4",
        },
        "pinned": {
            "min_devices": 1,
            "min_vram": 30000,
            "pinned_on": pinned if variant == 0 else (),
            "source": None,
            "harness": None,
            "quant": "q8",
        },
    }


def _aliases(variant: int) -> dict[str, str]:
    if variant == 0:
        return {"tier/big": "big", "tier/small": "small", "chain": "tier/big"}
    return {"tier/big": "small", "tier/small": "small", "chain": "tier/small", "small": "big"}


def _catalogue(profiles: Mapping[str, Mapping[str, Any]], aliases: Mapping[str, str]) -> Catalogue:
    return Catalogue(
        profiles={
            m: Profile(
                id=m,
                harness=p["harness"],
                quant=p["quant"],
                min_devices=p["min_devices"],
                min_device_vram_mb=p["min_vram"],
                pinned_on=p["pinned_on"],
                source=p["source"],
            )
            for m, p in profiles.items()
        },
        aliases=dict(aliases),
    )


class EngineVersusNaive(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine: Engine | None = None
        self.t = 0.0
        self.requests = 0

    @initialize(
        nodes=st.integers(1, 4),
        threshold=st.integers(1, 5),
        pinned=st.sets(st.sampled_from((*NAMES, "elsewhere")), max_size=2),
        big_source=st.sampled_from((None, "", "hf")),
        values=POLICIES,
    )
    def setup(
        self,
        nodes: int,
        threshold: int,
        pinned: set[str],
        big_source: str | None,
        values: dict[str, Any],
    ) -> None:
        self.names = list(NAMES[:nodes])
        self.threshold = threshold
        self.pinned = tuple(sorted(pinned))
        self.big_source = big_source
        self.profiles = _profiles(0, self.pinned, big_source)
        self.aliases = _aliases(0)
        self.catalogue = _catalogue(self.profiles, self.aliases)
        self.values = dict(values)
        self.policy = Policy.reference().with_values({**values, "failure_threshold": threshold})
        self.engine = Engine(
            [Neuron(name=n, endpoint=f"http://{n}:13131") for n in self.names],
            self.catalogue,
            self.policy,
        )
        self.naive = {n: NaiveNode(n) for n in self.names}
        self.history = {n: HealthHistory() for n in self.names}
        self.seq = 0  # §8: routed requests counted so far
        #: attempts routed and not yet given an outcome:
        #: (key, node, model, counted, node_left)
        self.pending: list[tuple[tuple[str, int], str, str, bool, bool]] = []

    @property
    def eng(self) -> Engine:
        assert self.engine is not None
        return self.engine

    def tick(self) -> float:
        self.t += 1.0
        return self.t

    def _health_event(self, node: str, event: str) -> None:
        """One health event, applied to the history (for H1-H6) and the naive node."""
        passive = self.values["passive_health"]
        self.history[node] = self.history[node].after(
            event,
            routable_before=self.eng.state(node).routable,
            threshold=self.threshold,
            passive=passive,
        )
        n = self.naive[node]
        if event == "poll_ok":
            n.succeeded()
        elif event == "poll_failed":
            n.failed(self.threshold)
        elif not passive:
            pass  # §6: with passive health off, request outcomes are no events
        elif event == "request_ok":
            if n.routable():
                n.succeeded()
        elif n.ever_ok or n.fails > 0:  # request_failed: ignored by an unknown node
            n.failed(self.threshold)

    def _poll(self, node: str, ok: bool) -> None:
        self._health_event(node, "poll_ok" if ok else "poll_failed")

    # --- observations ---

    @precondition(lambda self: self.engine is not None)
    @rule(data=st.data(), variant=st.sampled_from(sorted(DISCOVERIES)), ok=st.booleans())
    def discovery(self, data: st.DataObject, variant: str, ok: bool) -> None:
        node = data.draw(st.sampled_from(self.names))
        body = DISCOVERIES[variant]
        from cortex_fsm.wire import parse_discovery

        self.eng.observe_discovery(
            node, self.tick(), parse_discovery(body) if ok else Invalid(reason="fetch failed")
        )
        n = self.naive[node]
        parsed = naive_discovery(body) if ok else None
        if parsed is not None and not n.complete:
            n.devices, n.complete = parsed[0], parsed[1] > 0

    @precondition(lambda self: self.engine is not None)
    @rule(
        data=st.data(),
        report=st.lists(
            st.tuples(st.sampled_from(MODELS), st.sampled_from(STATUS_TEXTS)), max_size=4
        ),
        repeat=st.booleans(),
    )
    def poll_ok(self, data: st.DataObject, report: list[tuple[str, str]], repeat: bool) -> None:
        node = data.draw(st.sampled_from(self.names))
        body = [{"id": m, "harness": "candle", "status": s, "devices": [0]} for m, s in report]
        for _ in range(2 if repeat else 1):  # a repeated identical answer takes a fast path
            self._poll(node, True)
            self.eng.observe_models_body(node, self.tick(), body)
            parsed = naive_models(body)
            assert parsed is not None
            self.naive[node].models = parsed

    @precondition(lambda self: self.engine is not None)
    @rule(data=st.data(), reason=st.sampled_from(("timeout", "connect", "status:502")))
    def poll_failed(self, data: st.DataObject, reason: str) -> None:
        from cortex_fsm.fleet import PollFailure

        node = data.draw(st.sampled_from(self.names))
        self._poll(node, False)
        self.eng.observe_models(node, self.tick(), PollFailure(reason=reason))

    @precondition(lambda self: self.engine is not None)
    @rule(data=st.data(), body=st.sampled_from(MALFORMED_MODELS))
    def poll_malformed(self, data: st.DataObject, body: object) -> None:
        node = data.draw(st.sampled_from(self.names))
        assert naive_models(body) is None
        self._poll(node, False)
        self.eng.observe_models_body(node, self.tick(), body)

    @precondition(lambda self: self.engine is not None)
    @rule(
        data=st.data(),
        loads=st.one_of(
            st.none(),
            st.dictionaries(
                st.sampled_from(MODELS),
                st.tuples(st.integers(0, 3), st.integers(0, 2)),
                max_size=3,
            ),
        ),
        broken=st.one_of(st.none(), st.sampled_from(MALFORMED_HEALTH)),
    )
    def health(
        self,
        data: st.DataObject,
        loads: dict[str, tuple[int, int]] | None,
        broken: object,
    ) -> None:
        node = data.draw(st.sampled_from(self.names))
        if broken is not None:
            body = broken
        elif loads is None:
            body = {"uptime_secs": 5, "devices": []}
        else:
            body = {
                "uptime_secs": 5,
                "devices": [],
                "models": [
                    {"id": m, "in_flight": a, "queue_depth": b} for m, (a, b) in loads.items()
                ],
            }
        self.eng.observe_health_body(node, self.tick(), body)
        parsed = naive_health(body)
        if parsed is not None:
            self.naive[node].busy = parsed

    @precondition(lambda self: self.engine is not None)
    @rule(data=st.data(), model=st.sampled_from(MODELS), ok=st.booleans())
    def load(self, data: st.DataObject, model: str, ok: bool) -> None:
        node = data.draw(st.sampled_from(self.names))
        self.eng.observe_load(node, self.tick(), model, ok)
        if ok:
            self.naive[node].models[model] = "loaded"

    @precondition(lambda self: self.engine is not None)
    @rule(data=st.data(), model=st.sampled_from(MODELS), ok=st.booleans())
    def unload(self, data: st.DataObject, model: str, ok: bool) -> None:
        node = data.draw(st.sampled_from(self.names))
        self.eng.observe_unload(node, self.tick(), model, ok)
        if ok and model in self.naive[node].models:
            self.naive[node].models[model] = "unloaded"

    def _route(self, requested: str, excluded: frozenset[str]) -> None:
        """Route one attempt (§7, §8), compare it with the naive model, and keep
        it pending until its outcome."""
        self.requests += 1
        key = (f"r{self.requests}", 1)
        decision = self.eng.route(requested, self.tick(), excluded, key=key)
        got = (
            decision.outcome.value,
            decision.node,
            decision.subject,
            None
            if decision.load is None
            else (
                decision.load.model_id,
                decision.load.harness,
                decision.load.quant,
                decision.load.tensor_parallel,
                decision.load.devices,
            ),
            decision.retry_after,
        )
        want = naive_decide(
            list(self.naive.values()),
            self.profiles,
            self.aliases,
            requested,
            policy=self.values,
            exclude=excluded,
        )
        assert got == want, (
            f"request {requested!r} excluding {sorted(excluded)}: engine {got}, naive model {want}"
        )
        assert decision.exclude == excluded
        if decision.node is not None:
            counted = self.values["load"] == "max"
            if counted:
                n = self.naive[decision.node]
                n.local[decision.model] = n.local.get(decision.model, 0) + 1
                self.seq += 1
                n.chosen[decision.model] = self.seq
            self.pending.append((key, decision.node, decision.model, counted, False))

    def _outcome(self, index: int, ok: bool | None) -> None:
        """The outcome of a pending attempt: its local count ends, and (``ok``
        not None) it is passive health for its node -- unless the node left (§12)."""
        key, node, model, counted, left = self.pending.pop(index)
        self.eng.observe_outcome(key, self.tick(), node=node, ok=ok, reason="connect")
        if left:
            return
        n = self.naive[node]
        if counted and n.local.get(model, 0) > 0:
            n.local[model] -= 1
            if n.local[model] == 0:
                del n.local[model]
        if ok is not None:
            self._health_event(node, "request_ok" if ok else "request_failed")

    @precondition(lambda self: self.engine is not None)
    @rule(
        requested=st.sampled_from(REQUESTS),
        exclude=st.sets(st.sampled_from((*NAMES, "ghost")), max_size=2),
        excluding=st.booleans(),
    )
    def request(self, requested: str, exclude: set[str], excluding: bool) -> None:
        """A routed attempt, with or without an ``exclude`` set."""
        self._route(requested, frozenset(exclude) if excluding else frozenset())

    @precondition(lambda self: self.engine is not None)
    @rule(
        requested=st.sampled_from(("small", "tier/small", "big")),
        count=st.integers(2, 5),
        finish=st.booleans(),
    )
    def sequential(self, requested: str, count: int, finish: bool) -> None:
        """Successive requests for one model, each finished before the next
        arrives or not (§8's round-robin consequence)."""
        for _ in range(count):
            self._route(requested, frozenset())
            if finish and self.pending and self.pending[-1][0] == (f"r{self.requests}", 1):
                self._outcome(len(self.pending) - 1, None)

    @precondition(lambda self: self.engine is not None and self.pending)
    @rule(data=st.data(), ok=st.sampled_from((True, False, None)))
    def outcome(self, data: st.DataObject, ok: bool | None) -> None:
        """The outcome of one pending attempt."""
        self._outcome(data.draw(st.integers(0, len(self.pending) - 1)), ok)

    @precondition(lambda self: self.engine is not None)
    @rule(data=st.data(), ok=st.booleans())
    def request_outcome(self, data: st.DataObject, ok: bool) -> None:
        """Passive health (§6) for any node, routed to or not."""
        node = data.draw(st.sampled_from(self.names))
        self._health_event(node, "request_ok" if ok else "request_failed")
        self.eng.observe_request(node, self.tick(), ok, "timeout")

    @precondition(lambda self: self.engine is not None and len(self.names) < len(NAMES))
    @rule(data=st.data())
    def add_neuron(self, data: st.DataObject) -> None:
        """A node joins (§12): unknown, nothing observed (a name that left and
        comes back is a new node)."""
        name = data.draw(st.sampled_from([n for n in NAMES if n not in self.names]))
        self.eng.add_neuron(Neuron(name=name, endpoint=f"http://{name}:13131"), self.tick())
        self.names.append(name)
        self.naive[name] = NaiveNode(name)
        self.history[name] = HealthHistory()

    @precondition(lambda self: self.engine is not None and len(self.names) > 1)
    @rule(data=st.data())
    def remove_neuron(self, data: st.DataObject) -> None:
        """A node leaves (§12) and is forgotten; the outcomes of the attempts
        routed to it are no events. (An attempt never counted is dropped here:
        its node's name may come back as a new node.)"""
        name = data.draw(st.sampled_from(self.names))
        self.eng.remove_neuron(name, self.tick())
        self.names.remove(name)
        del self.naive[name], self.history[name]
        self.pending = [
            (key, node, model, counted, left or node == name)
            for key, node, model, counted, left in self.pending
            if node != name or counted
        ]

    @precondition(lambda self: self.engine is not None)
    @rule(
        threshold=st.integers(1, 5),
        values=POLICIES,
        variant=st.sampled_from((0, 1)),
        what=st.sampled_from(("policy", "catalogue", "both")),
    )
    def reconfigure(self, threshold: int, values: dict[str, Any], variant: int, what: str) -> None:
        """A configuration reload: health kept, except that suspect(n) with
        n >= the new threshold is unhealthy; counts and recency kept."""
        policy = catalogue = None
        if what != "catalogue":
            self.values, self.threshold = dict(values), threshold
            self.policy = policy = Policy.reference().with_values(
                {**values, "failure_threshold": threshold}
            )
            for n in self.naive.values():
                if n.routable() and n.fails >= threshold:
                    n.down = True
        if what != "policy":
            self.profiles = _profiles(variant, self.pinned, self.big_source)
            self.aliases = _aliases(variant)
            self.catalogue = catalogue = _catalogue(self.profiles, self.aliases)
        self.eng.reconfigure(self.tick(), catalogue=catalogue, policy=policy)
        if policy is not None:  # the histories restart from the states just reached
            for name in self.names:
                self.history[name] = _history_from(
                    self.eng.state(name), self.history[name], threshold
                )

    # --- invariants, after every step ---

    @precondition(lambda self: self.engine is not None)
    @invariant()
    def health_matches_naive_and_invariants_hold(self) -> None:
        assert list(self.eng.node_names) == self.names
        for name in self.names:
            state = self.eng.state(name)
            assert state.label == self.naive[name].label(), name
            bad = check_health(self.history[name], state, self.threshold)
            assert not bad, f"{name}: {state.label} violates {bad}"
            if state.phase is Phase.SUSPECT:
                assert 1 <= state.failures < self.threshold

    @precondition(lambda self: self.engine is not None)
    @invariant()
    def model_maps_and_loads_match_naive(self) -> None:
        snapshot = self.eng.snapshot()
        for node in snapshot.nodes:
            n = self.naive[node.name]
            expected = {m: ModelStatus(s) for m, s in n.models.items()}
            assert f1(expected, node.models), (node.name, node.models, n.models)
            assert dict(node.busy) == n.busy
            assert dict(node.local) == n.local, (node.name, node.local, n.local)
            assert dict(node.chosen) == n.chosen, (node.name, node.chosen, n.chosen)
            if n.devices is None:
                assert node.discovery is None
            else:
                assert node.discovery is not None
                assert [(d.index, d.vram_total_mb) for d in node.discovery.devices] == n.devices

    @precondition(lambda self: self.engine is not None)
    @invariant()
    def routing_invariants_hold(self) -> None:
        snapshot = self.eng.snapshot()
        views = reordered_views(snapshot)
        reversed_catalogue = reordered_catalogue(self.catalogue)
        policy = self.policy
        for exclude in (frozenset(), frozenset(self.names[:1])):
            for requested in REQUESTS:
                reference = decide(snapshot, self.catalogue, requested, policy, exclude)
                others = [self.eng.decide(requested, exclude)] + [
                    decide(v, reversed_catalogue, requested, policy, exclude) for v in views
                ]
                assert r5(reference, others), (requested, reference, others)
                bad = check_decision(
                    snapshot, self.catalogue, reference, policy=policy, exclude=exclude
                )
                assert not bad, (
                    f"{requested!r} excluding {sorted(exclude)} -> {reference} violates {bad}"
                )


def _history_from(state: HealthState, history: HealthHistory, threshold: int) -> HealthHistory:
    """A history consistent with the node's state under a new threshold: H2-H6
    speak of runs of failures under one threshold, so after a reload each run
    is taken to have reached the state the node is in (suspect(k): k armed
    failures; unhealthy after a poll_ok: T of them)."""
    if not history.ever_ok:
        return history  # the threshold plays no part before a first poll_ok
    if state.phase is Phase.SUSPECT:
        return HealthHistory(ever_ok=True, streak=state.failures, armed=True)
    if state.phase is Phase.UNHEALTHY:
        return HealthHistory(ever_ok=True, streak=threshold, armed=True)
    return HealthHistory(ever_ok=True)


EngineVersusNaive.TestCase.settings = settings(
    settings(), stateful_step_count=50, max_examples=max(60, settings().max_examples * 2)
)
TestEngineVersusNaive = EngineVersusNaive.TestCase
