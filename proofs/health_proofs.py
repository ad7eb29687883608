"""CrossHair proofs of H1-H4 over the pure health kernel (``health.step``).

Each function below is a thin, contract-annotated harness (PEP 316 docstring
contracts) around contract-free core code, so CrossHair analyses the core's
own bodies. ``post: __return__`` means: for every input satisfying the
preconditions, the harness returns True.
"""

# ruff: noqa: PLR0917 - CrossHair makes every parameter of a harness symbolic

from __future__ import annotations

from cortex_fsm.health import UNKNOWN, Event, HealthState, Phase, step
from cortex_fsm.verify.invariants import HealthHistory, h1, h2, h3, h4


def _state(phase: Phase, failures: int) -> HealthState:
    if phase is Phase.SUSPECT:
        return HealthState(phase=phase, failures=failures)
    return HealthState(phase=phase)


def _valid(phase: Phase, failures: int, threshold: int) -> bool:
    if phase is Phase.SUSPECT:
        return 1 <= failures < threshold
    return failures == 0


def lemma_h1_closed(phase: Phase, threshold: int) -> bool:
    """H1, inductive step: a failure keeps a never-answered node unroutable.

    {unknown, unhealthy} contains no routable state and is closed under
    poll_failed, for every threshold; a node that never had poll_ok starts in
    unknown and sees only failures, so it stays in that set.

    pre: threshold >= 1
    pre: phase in (Phase.UNKNOWN, Phase.UNHEALTHY)
    post: __return__
    """
    after = step(_state(phase, 0), Event.POLL_FAILED, threshold)
    return after.phase in (Phase.UNKNOWN, Phase.UNHEALTHY) and not after.routable


def lemma_h2_counts(failures: int, threshold: int) -> bool:
    """H2, inductive step: a routable node with n failures (healthy: 0) and
    n + 1 < T is still routable after one more failure, with n + 1 failures.

    From healthy (where every streak starts, H4) this gives: after k <= T-1
    failures the node is routable with failures k.

    pre: threshold >= 1
    pre: 0 <= failures < threshold
    post: __return__
    """
    before = _state(Phase.HEALTHY if failures == 0 else Phase.SUSPECT, failures)
    after = step(before, Event.POLL_FAILED, threshold)
    if failures + 1 < threshold:
        return after.routable and after.failures == failures + 1
    return True


def lemma_h3_evicts(failures: int, threshold: int) -> bool:
    """H3, the last step: a routable node with n + 1 >= T failures becomes
    unroutable on one more (with lemma_h2_counts and lemma_h1_closed: T
    consecutive failures always end unroutable, and stay so).

    pre: threshold >= 1
    pre: 0 <= failures < threshold
    post: __return__
    """
    before = _state(Phase.HEALTHY if failures == 0 else Phase.SUSPECT, failures)
    after = step(before, Event.POLL_FAILED, threshold)
    if failures + 1 >= threshold:
        return after.phase is Phase.UNHEALTHY and not after.routable
    return True


def lemma_h4_ok(phase: Phase, failures: int, threshold: int) -> bool:
    """H4: one poll_ok makes any state healthy, for every threshold.

    pre: threshold >= 1
    pre: _valid(phase, failures, threshold)
    post: __return__
    """
    after = step(_state(phase, failures), Event.POLL_OK, threshold)
    return after.phase is Phase.HEALTHY and after.routable and after.failures == 0


def runs_keep_h1_to_h4(
    threshold: int, e1: Event, e2: Event, e3: Event, e4: Event, e5: Event, e6: Event
) -> bool:
    """H1-H4 as the invariants module states them, on every run of 6 polls
    from unknown, for thresholds 1-5 (checked after every poll).

    pre: 1 <= threshold <= 5
    pre: all(e in (Event.POLL_OK, Event.POLL_FAILED) for e in (e1, e2, e3, e4, e5, e6))
    post: __return__
    """
    state = UNKNOWN
    history = HealthHistory()
    for event in (e1, e2, e3, e4, e5, e6):
        history = history.after(
            event.label, routable_before=state.routable, threshold=threshold, passive=True
        )
        state = step(state, event, threshold)
        if not (
            h1(history, state)
            and h2(history, state, threshold)
            and h3(history, state, threshold)
            and h4(history, state)
        ):
            return False
    return True
