"""The real engine against a deliberately naive model, step by step.

A hypothesis ``RuleBasedStateMachine`` feeds the engine everything a poller
can see -- discovery answers (good, incomplete, malformed, failed), ``/models``
answers (reports with every status string, duplicates, malformed bodies,
failures), ``/health`` loads (and malformed ones), load and unload outcomes --
and requests for catalogued models, aliases, uncatalogued and unknown ids, on
fleets of 1-4 nodes and failure thresholds 1-5.

After every step it checks every invariant (``cortex_fsm.verify.invariants``)
on the engine's state, and every decision is compared with the naive model
below, which re-reads docs/semantics.md in the plainest possible way: health is
"has it ever answered, and how many polls failed since", routing is the
ordered list of rules over full scans. Nothing in the naive model is shared
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
from cortex_fsm.health import Phase
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
        self.fails = 0  # failed polls since the last success
        self.models: dict[str, str] = {}
        self.busy: dict[str, int] = {}
        self.devices: list[tuple[int, int]] | None = None
        self.complete = False

    def routable(self, threshold: int) -> bool:
        return self.ever_ok and self.fails < threshold

    def label(self, threshold: int) -> str:
        if not self.ever_ok:
            return "unknown" if self.fails == 0 else "unhealthy"
        if self.fails == 0:
            return "healthy"
        return f"suspect({self.fails})" if self.fails < threshold else "unhealthy"


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


def naive_decide(
    nodes: list[NaiveNode],
    profiles: Mapping[str, Mapping[str, Any]],
    aliases: Mapping[str, str],
    requested: str,
    threshold: int,
) -> tuple[str, str | None, str | None, tuple[Any, ...] | None]:
    """(outcome, node, subject, load) by the ordered rules of docs/semantics.md §3."""
    model = aliases.get(requested, requested)
    up = sorted((n for n in nodes if n.routable(threshold)), key=lambda n: n.name)
    if not up:
        return ("no_healthy_nodes", None, None, None)
    serving = [n for n in up if n.models.get(model) in ("loaded", "reloading")]
    if serving:
        best = min(serving, key=lambda n: (n.busy.get(model, 0), n.name))
        return ("route_loaded", best.name, None, None)
    rec = [n for n in up if n.models.get(model) == "recovering"]
    if rec:
        return ("model_recovering", None, rec[0].name, None)
    unl = [n for n in up if n.models.get(model) == "unloaded"]
    if unl:
        return ("route_unloaded", unl[0].name, None, None)
    p = profiles.get(model)
    if p is None:
        return ("model_not_found", None, None, None)
    ok = [n for n in nodes if naive_feasible(p, n)]
    cands = [n for n in ok if n.routable(threshold)]
    if cands:
        pinned = sorted(n.name for n in cands if n.name in p["pinned_on"])
        target = next(n for n in cands if n.name == (pinned or sorted(c.name for c in cands))[0])
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
    if ok:
        return ("feasible_node_unhealthy", None, None, None)
    return ("no_feasible_neuron", None, None, None)


# --- the machine ----------------------------------------------------------------------------


class EngineVersusNaive(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine: Engine | None = None
        self.t = 0.0

    @initialize(
        nodes=st.integers(1, 4),
        threshold=st.integers(1, 5),
        pinned=st.sets(st.sampled_from((*NAMES, "elsewhere")), max_size=2),
        big_source=st.sampled_from((None, "", "hf")),
    )
    def setup(self, nodes: int, threshold: int, pinned: set[str], big_source: str | None) -> None:
        self.names = NAMES[:nodes]
        self.threshold = threshold
        self.profiles: dict[str, dict[str, Any]] = {
            "big": {"min_devices": 2, "min_vram": 40000, "pinned_on": (), "source": big_source},
            "small": {"min_devices": 1, "min_vram": None, "pinned_on": (), "source": None},
            "pinned": {"min_devices": 1, "min_vram": 30000, "pinned_on": tuple(sorted(pinned))},
        }
        self.profiles["pinned"]["source"] = None
        harness = {"big": "candle", "small": "llama", "pinned": None}
        quant = {"big": None, "small": "q4", "pinned": "q8"}
        for model, p in self.profiles.items():
            p["harness"], p["quant"] = harness[model], quant[model]
        self.aliases = {"tier/big": "big", "tier/small": "small", "chain": "tier/big"}
        catalogue = Catalogue(
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
                for m, p in self.profiles.items()
            },
            aliases=self.aliases,
        )
        self.catalogue = catalogue
        self.engine = Engine(
            [Neuron(name=n, endpoint=f"http://{n}:13131") for n in self.names],
            catalogue,
            Policy.reference().with_values({"failure_threshold": threshold}),
        )
        self.naive = {n: NaiveNode(n) for n in self.names}
        self.history = {n: HealthHistory() for n in self.names}

    @property
    def eng(self) -> Engine:
        assert self.engine is not None
        return self.engine

    def tick(self) -> float:
        self.t += 1.0
        return self.t

    def _poll(self, node: str, ok: bool) -> None:
        routable = self.eng.state(node).routable
        self.history[node] = self.history[node].after(
            "poll_ok" if ok else "poll_failed",
            routable_before=routable,
            threshold=self.threshold,
            passive=False,
        )
        n = self.naive[node]
        if ok:
            n.ever_ok, n.fails = True, 0
        else:
            n.fails += 1

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

    @precondition(lambda self: self.engine is not None)
    @rule(requested=st.sampled_from(REQUESTS))
    def request(self, requested: str) -> None:
        decision = self.eng.route(requested, self.tick())
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
        )
        want = naive_decide(
            list(self.naive.values()), self.profiles, self.aliases, requested, self.threshold
        )
        assert got == want, f"request {requested!r}: engine {got}, naive model {want}"

    # --- invariants, after every step ---

    @precondition(lambda self: self.engine is not None)
    @invariant()
    def health_matches_naive_and_invariants_hold(self) -> None:
        for name in self.names:
            state = self.eng.state(name)
            assert state.label == self.naive[name].label(self.threshold), name
            bad = check_health(self.history[name], state, self.threshold)
            assert not bad, f"{name}: {state.label} violates {bad}"
            if state.phase is Phase.SUSPECT:
                assert 1 <= state.failures < self.threshold

    @precondition(lambda self: self.engine is not None)
    @invariant()
    def model_maps_match_naive(self) -> None:
        snapshot = self.eng.snapshot()
        for node in snapshot.nodes:
            n = self.naive[node.name]
            expected = {m: ModelStatus(s) for m, s in n.models.items()}
            assert f1(expected, node.models), (node.name, node.models, n.models)
            assert dict(node.busy) == n.busy
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
        for requested in REQUESTS:
            reference = decide(snapshot, self.catalogue, requested, REFERENCE)
            others = [self.eng.decide(requested)] + [
                decide(v, reversed_catalogue, requested, REFERENCE) for v in views
            ]
            assert r5(reference, others), (requested, reference, others)
            bad = check_decision(snapshot, self.catalogue, reference)
            assert not bad, f"{requested!r} -> {reference} violates {bad}"


EngineVersusNaive.TestCase.settings = settings(
    settings(), stateful_step_count=40, max_examples=max(50, settings().max_examples * 2)
)
TestEngineVersusNaive = EngineVersusNaive.TestCase
