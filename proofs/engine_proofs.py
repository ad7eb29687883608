"""CrossHair proof of F1 over the engine's model-map bookkeeping.

docs/semantics.md §2: on poll_ok the node's model map becomes exactly the reported
list; on poll_failed it is kept. The harness feeds a real ``Engine`` (one
node) two polls chosen symbolically -- each successful or failed, reporting
model ``x`` (loaded, or recovering in the first poll) or not, and ``y`` or not --
and checks the map after each against the spec (``invariants.f1``). The
engine's indexes and decision cache are checked on the way (R5): its
decision for each model equals ``routing.decide`` on its own snapshot.
"""

# ruff: noqa: PLR0917 - CrossHair makes every parameter of a harness symbolic

from __future__ import annotations

from cortex_fsm.catalogue import Catalogue
from cortex_fsm.engine import Engine
from cortex_fsm.fleet import ModelsReport, ModelStatus, Neuron, PollFailure
from cortex_fsm.policy import Policy
from cortex_fsm.routing import decide
from cortex_fsm.verify.invariants import f1


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


def _warm_up() -> None:
    """Run the harness once, concretely, at import: module-level caches (the
    cached hashes of interned health states, interned decisions) are filled
    before CrossHair starts, so that every symbolic run takes the same paths."""
    for flags in range(128):
        prove_f1_polls(*[bool(flags >> i & 1) for i in range(7)])


_warm_up()
