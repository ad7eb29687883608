"""CrossHair proofs over the engine: its model-map bookkeeping (F1) and passive
health (§6) as it applies them.

docs/semantics.md §2: on poll_ok the node's model map becomes exactly the reported
list; on poll_failed it is kept. The harness feeds a real ``Engine`` (one
node) two polls chosen symbolically -- each successful or failed, reporting
model ``x`` (loaded, or recovering in the first poll) or not, and ``y`` or not --
and checks the map after each against the spec (``invariants.f1``). The
engine's indexes and decision cache are checked on the way (R5): its
decision for each model equals ``routing.decide`` on its own snapshot.

The passive-health harness drives a real engine into every health state of
threshold 3 (with polls), feeds it one request outcome with passive health
on or off, and checks the state against the monitor's restatement of §2 and
§6 (``monitor.spec_next_health``, not the health table), the model map
(untouched) and the decision cache (R5: a request outcome that changes
routability must not leave a stale decision behind).
"""

# ruff: noqa: PLR0917 - CrossHair makes every parameter of a harness symbolic

from __future__ import annotations

from cortex_fsm.catalogue import Catalogue
from cortex_fsm.engine import Engine
from cortex_fsm.fleet import ModelsReport, ModelStatus, Neuron, PollFailure
from cortex_fsm.policy import Policy
from cortex_fsm.routing import decide
from cortex_fsm.verify.invariants import f1
from cortex_fsm.verify.monitor import spec_next_health


def _engine() -> Engine:
    return Engine([Neuron(name="n", endpoint="http://n")], Catalogue(), Policy(failure_threshold=2))


def _report(ok: bool, x: ModelStatus | None, y: bool) -> ModelsReport | PollFailure:
    if not ok:
        return PollFailure(reason="timeout")
    models = {}
    if x is not None:
        models["x"] = x
    if y:
        models["y"] = ModelStatus.UNLOADED
    return ModelsReport(models=models)


def prove_f1_polls(
    recovering: bool, ok1: bool, x1: bool, y1: bool, ok2: bool, x2: bool, y2: bool
) -> bool:
    """F1 after each of two polls (and R5 for the engine's indexes and cache).

    post: __return__
    """
    engine = _engine()
    expected: dict[str, ModelStatus] = {}
    polls = (
        _report(
            ok1, (ModelStatus.RECOVERING if recovering else ModelStatus.LOADED) if x1 else None, y1
        ),
        _report(ok2, ModelStatus.LOADED if x2 else None, y2),
    )
    for t, report in enumerate(polls):
        engine.observe_models("n", float(t), report)
        if isinstance(report, ModelsReport):
            expected = dict(report.models)
        snapshot = engine.snapshot()
        if not f1(expected, snapshot.node("n").models):
            return False
        for model in ("x", "y"):
            if engine.decide(model) != decide(snapshot, engine.catalogue, model):
                return False
    return True


#: The threshold of the passive-health harness, and how it reaches each of the
#: six states of that threshold: (the node answered a first poll, polls failed
#: after it) -- unknown, unhealthy without ever answering, healthy, suspect(1),
#: suspect(2), unhealthy.
_T = 3
_PATHS = ((False, 0), (False, 1), (True, 0), (True, 1), (True, 2), (True, 3))


def prove_passive_health(path: int, ok: bool, passive: bool) -> bool:
    """§6 through the engine: one request outcome moves the node exactly as the
    spec says (request_ok never revives, request_failed counts like a failed
    poll; nothing at all with passive health off), keeps its model map, and
    leaves no stale cached decision. Every state of T = 3 (the health
    lemmas cover every threshold; this checks the engine applies the table).

    pre: 0 <= path < 6
    post: __return__
    """
    answered, failures = _PATHS[path]
    engine = Engine(
        [Neuron(name="n", endpoint="http://n")],
        Catalogue(),
        Policy(failure_threshold=_T, passive_health=passive),
    )
    if answered:
        engine.observe_models("n", 0.0, ModelsReport(models={"x": ModelStatus.LOADED}))
    for k in range(failures):
        engine.observe_models("n", 1.0 + k, PollFailure(reason="timeout"))
    before = engine.state("n")
    models = engine.snapshot().node("n").models
    engine.decide("x")  # fills the decision cache
    engine.observe_request("n", 9.0, ok, "connect")
    want = spec_next_health(before, "request_ok" if ok else "request_failed", _T, passive=passive)
    snapshot = engine.snapshot()
    return (
        engine.state("n") == want
        and snapshot.node("n").models == models
        and engine.decide("x") == decide(snapshot, engine.catalogue, "x", engine.policy)
    )


def _warm_up() -> None:
    """Run the harness once, concretely, at import: module-level caches (the
    cached hashes of interned health states, interned decisions) are filled
    before CrossHair starts, so that every symbolic run takes the same paths."""
    for flags in range(128):
        prove_f1_polls(*[bool(flags >> i & 1) for i in range(7)])
    for path in range(len(_PATHS)):
        for flags in range(4):
            prove_passive_health(path, bool(flags & 1), bool(flags & 2))


_warm_up()
