"""H1-H4 and R1-R7 (and F1) hold over thousands of generated v1 traces.

Each example is a trace file -- a header with 1-4 neurons, a threshold of 1-5
and a catalogue, then 5-40 events of every kind drawn from a fixed repertoire
(discovery, /models and /health answers good and malformed, failed fetches,
load and unload outcomes, requests), written with ``TraceWriter`` and
replayed with ``TraceReader`` and the ``Replayer`` (the same code
``cortex-fsm replay`` runs). After every
event every invariant is checked on the replaying engine; every request's
decision is checked too.

The CI profile generates 20 x ``max_examples`` traces (2,000); the
``thorough`` profile 50,000.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cortex_fsm import Catalogue, Neuron, Policy, Profile
from cortex_fsm.fleet import ModelStatus
from cortex_fsm.replay import Replayer
from cortex_fsm.routing import decide
from cortex_fsm.trace import (
    DiscoveryEvent,
    Event,
    HealthEvent,
    LoadEvent,
    ModelsEvent,
    RequestEvent,
    TraceHeader,
    TraceReader,
    TraceWriter,
    UnloadEvent,
)
from cortex_fsm.verify.invariants import (
    HealthHistory,
    check_decision,
    check_health,
    f1,
    r5,
    reordered_catalogue,
    reordered_views,
)

NAMES = ("a", "b", "c", "d")
MODELS = ("big", "small", "pin", "x")
REQUESTS = (*MODELS, "alias/big", "alias/small", "nope")
STATUSES = ("loaded", "unloaded", "reloading", "loading", "recovering", "paused")
KNOWN = {"loaded", "unloaded", "reloading", "loading", "recovering"}

_TMP = Path(tempfile.mkdtemp(prefix="cortex-traces-"))

REFERENCE = Policy.reference()


def _device(i: int, vram: int) -> dict[str, object]:
    return {"index": i, "name": "GPU", "vram_total_mb": vram, "compute_capability": "9.0"}


DISCOVERY_BODIES: tuple[object, ...] = (
    {"hostname": "h", "devices": [_device(0, 24000)], "max_prompt_tokens": 4096},
    {"hostname": "h", "devices": [_device(0, 81920), _device(1, 81920)], "max_prompt_tokens": 4096},
    {"devices": [_device(2, 48000), _device(0, 16000), _device(1, 48000)]},  # incomplete
    {"devices": "none"},  # invalid: ignored
)
BAD_MODELS: tuple[object, ...] = ({"data": []}, [{"id": "big"}], [7], "x", None)
BAD_HEALTH: tuple[object, ...] = ({"models": {}}, [1], {"models": [{"id": "big", "in_flight": -2}]})


REPORTS: tuple[list[dict[str, str]], ...] = (
    [],
    [{"id": "big", "status": "loaded"}],
    [{"id": "big", "status": "recovering"}],
    [{"id": "big", "status": "unloaded"}],
    [{"id": "big", "status": "reloading"}, {"id": "small", "status": "loaded"}],
    [{"id": "small", "status": "loading"}, {"id": "pin", "status": "loaded"}],
    [{"id": "pin", "status": "recovering"}, {"id": "x", "status": "paused"}],
    [{"id": "big", "status": "loaded"}, {"id": "big", "status": "unloaded"}],  # the later wins
    [{"id": "small", "status": "unloaded"}, {"id": "x", "status": "loaded"}],
)
HEALTH_BODIES: tuple[object, ...] = (
    {"models": [{"id": "big", "in_flight": 2, "queue_depth": 1}]},
    {
        "models": [
            {"id": "big", "in_flight": 0, "queue_depth": 0},
            {"id": "small", "in_flight": 1, "queue_depth": 0},
        ]
    },
    {"uptime_secs": 1},
    *BAD_HEALTH,
)


def _templates(names: tuple[str, ...]) -> list[tuple[str, Any]]:
    """Every event the generator can emit (without its time), as (kind, fields)."""
    out: list[tuple[str, Any]] = []
    for n in names:
        out += [("discovery", (n, True, b)) for b in DISCOVERY_BODIES]
        out.append(("discovery", (n, False, None)))
        out += [("models", (n, True, b)) for b in REPORTS + BAD_MODELS]
        out += [("models", (n, False, None))] * 4  # failures are common
        out += [("health", (n, True, b)) for b in HEALTH_BODIES]
        out.append(("health", (n, False, None)))
        out += [
            (kind, (n, m, ok))
            for kind in ("load", "unload")
            for m in MODELS
            for ok in (True, False)
        ]
    out += [("request", r) for r in REQUESTS] * 3
    return out


_TEMPLATES = {k: _templates(NAMES[:k]) for k in range(1, 5)}


def _event(kind: str, fields: Any, t: float, i: int) -> Event:
    if kind == "request":
        return RequestEvent(t=t, id=f"r{i}", model=fields)
    if kind in ("load", "unload"):
        node, model, ok = fields
        cls = LoadEvent if kind == "load" else UnloadEvent
        return cls(t=t, node=node, model=model, ok=ok)
    node, ok, body = fields
    if kind == "models":
        if ok:
            return ModelsEvent(t=t, node=node, ok=True, body=body)
        return ModelsEvent(t=t, node=node, ok=False, error="timeout")
    cls2 = DiscoveryEvent if kind == "discovery" else HealthEvent
    return cls2(t=t, node=node, ok=ok, body=body)


@st.composite
def traces(draw: st.DrawFn) -> tuple[TraceHeader, list[Event]]:
    nodes = draw(st.integers(1, 4))
    names = NAMES[:nodes]
    threshold = draw(st.integers(1, 5))
    mask = draw(st.integers(0, 2**nodes - 1))  # which nodes the pinned profile names
    pinned = tuple(n for i, n in enumerate(names) if mask >> i & 1)
    catalogue = Catalogue(
        profiles={
            "big": Profile(
                id="big", harness="candle", min_devices=2, min_device_vram_mb=40000, source="hf"
            ),
            "small": Profile(id="small", harness="llama", quant="q4"),
            "pin": Profile(id="pin", min_devices=1, min_device_vram_mb=20000, pinned_on=pinned),
        },
        aliases={"alias/big": "big", "alias/small": "small"},
    )
    header = TraceHeader(
        neurons=tuple(Neuron(name=n, endpoint=f"http://{n}:1") for n in names),
        catalogue=catalogue,
        policy=Policy.reference().with_values({"failure_threshold": threshold}),
    )
    chosen = draw(st.lists(st.sampled_from(_TEMPLATES[nodes]), min_size=5, max_size=40))
    # Times never decrease; pairs of events share a time stamp.
    return header, [_event(kind, f, float(i // 2), i) for i, (kind, f) in enumerate(chosen)]


def _valid_report(body: object) -> dict[str, ModelStatus] | None:
    """The spec's reading of a /models body (docs/semantics.md §1), written out again."""
    if not isinstance(body, list):
        return None
    out = {}
    for item in body:
        if not isinstance(item, dict):
            return None
        if not isinstance(item.get("id"), str) or not isinstance(item.get("status"), str):
            return None
        s = item["status"]
        out[item["id"]] = ModelStatus(s) if s in KNOWN else ModelStatus.LOADED
    return out


def check_replay(header: TraceHeader, events: list[Event], path: Path) -> int:
    """Write the trace, replay it, check every invariant after every event.
    Returns the number of decisions checked."""
    with TraceWriter(path, header) as writer:
        for event in events:
            writer.write(event)
    threshold = header.policy.failure_threshold
    catalogue = header.catalogue
    reversed_catalogue = reordered_catalogue(catalogue)
    history = {n.name: HealthHistory() for n in header.neurons}
    expected: dict[str, dict[str, ModelStatus]] = {n.name: {} for n in header.neurons}
    checked = 0
    with TraceReader(path) as reader:
        replayer = Replayer(reader.header, reader.header.policy)
        engine = replayer.engine
        for kind, fields in reader.records():
            node = fields.get("node")
            if kind == "models":
                report = _valid_report(fields["body"]) if fields["ok"] else None
                history[node] = history[node].after(
                    "poll_ok" if report is not None else "poll_failed",
                    routable_before=engine.state(node).routable,
                    threshold=threshold,
                    passive=False,
                )
                if report is not None:
                    expected[node] = report
            elif kind == "load" and fields["ok"]:
                expected[node][fields["model"]] = ModelStatus.LOADED
            elif kind == "unload" and fields["ok"] and fields["model"] in expected[node]:
                expected[node][fields["model"]] = ModelStatus.UNLOADED
            decision = replayer.feed(kind, fields)
            snapshot = engine.snapshot()
            if decision is not None:
                bad = check_decision(snapshot, catalogue, decision)
                assert not bad, f"request {fields['model']!r} -> {decision} violates {bad}"
                checked += 1
            for n in snapshot.nodes:
                bad = check_health(history[n.name], n.health, threshold)
                assert not bad, f"{n.name} is {n.health.label}: violates {bad}"
                assert f1(expected[n.name], n.models), f"F1: {n.name} {n.models}"
            views = reordered_views(snapshot)
            for requested in REQUESTS:
                reference = decide(snapshot, catalogue, requested, REFERENCE)
                others = [engine.decide(requested)] + [
                    decide(v, reversed_catalogue, requested, REFERENCE) for v in views
                ]
                assert r5(reference, others), f"R5: {requested!r}: {reference} vs {others}"
                bad = check_decision(snapshot, catalogue, reference)
                assert not bad, f"{requested!r} -> {reference} violates {bad}"
                checked += 1
    return checked


@settings(max_examples=settings().max_examples * 20)
@given(traces())
def test_invariants_hold_on_generated_traces(trace: tuple[TraceHeader, list[Any]]) -> None:
    header, events = trace
    check_replay(header, events, _TMP / "trace.jsonl")


def test_a_violation_is_reported() -> None:
    """The checker itself has teeth: a snapshot-level violation is seen."""
    header = TraceHeader(
        neurons=(Neuron(name="a", endpoint="http://a:1"),),
        catalogue=Catalogue(),
        policy=Policy.reference().with_values({"failure_threshold": 2}),
    )
    events: list[Event] = [
        ModelsEvent(t=0.0, node="a", ok=True, body=[{"id": "m", "status": "loaded"}]),
        RequestEvent(t=1.0, id="r1", model="m"),
    ]
    assert check_replay(header, events, _TMP / "ok.jsonl") > 0
