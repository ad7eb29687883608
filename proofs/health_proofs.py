"""CrossHair proofs of H1-H6 over the pure health kernel (``health.step``).

Each function below is a thin, contract-annotated harness (PEP 316 docstring
contracts) around contract-free core code, so CrossHair analyses the core's
own bodies. ``post: __return__`` means: for every input satisfying the
preconditions, the harness returns True.

The lemmas are inductive steps for **every** threshold (docs/verification.md
chains them into H1-H6 for runs of any length); the run harness checks the
invariants module's own predicates on every bounded run of all four events.
"""

# ruff: noqa: PLR0917 - CrossHair makes every parameter of a harness symbolic

from __future__ import annotations

from cortex_fsm.health import UNKNOWN, Event, HealthState, Phase, step
from cortex_fsm.verify.invariants import HealthHistory, h1, h2, h3, h4, h5, h6
from cortex_fsm.verify.monitor import spec_next_health


def _state(phase: Phase, failures: int) -> HealthState:
    if phase is Phase.SUSPECT:
        return HealthState(phase=phase, failures=failures)
    return HealthState(phase=phase)


def _valid(phase: Phase, failures: int, threshold: int) -> bool:
    if phase is Phase.SUSPECT:
        return 1 <= failures < threshold
    return failures == 0


def lemma_h1_closed(phase: Phase, event: Event, threshold: int) -> bool:
    """H1, inductive step: any event but poll_ok keeps a never-answered node
    unroutable.

    {unknown, unhealthy} contains no routable state and is closed under
    poll_failed, request_failed and request_ok, for every threshold; a node
    that never had poll_ok starts in unknown and sees only those events, so it
    stays in that set.

    pre: threshold >= 1
    pre: phase in (Phase.UNKNOWN, Phase.UNHEALTHY)
    pre: event is not Event.POLL_OK
    post: __return__
    """
    after = step(_state(phase, 0), event, threshold)
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


def lemma_h5_request_ok(phase: Phase, failures: int, threshold: int) -> bool:
    """H5, and §6's request_ok column: a request_ok leaves a non-routable node
    exactly as it was (it never revives one); on a routable node it clears the
    failure count (healthy), for every threshold.

    pre: threshold >= 1
    pre: _valid(phase, failures, threshold)
    post: __return__
    """
    before = _state(phase, failures)
    after = step(before, Event.REQUEST_OK, threshold)
    if not before.routable:
        return after == before and not after.routable
    return after.phase is Phase.HEALTHY and after.failures == 0


def lemma_h6_request_failed(phase: Phase, failures: int, threshold: int) -> bool:
    """H6, inductive step: on a node that has answered a poll, request_failed is
    exactly poll_failed (one shared failure counter), for every threshold; on
    a node that never answered it is ignored (a stale outcome, H1).

    With lemma_h2_counts and lemma_h3_evicts (stated for poll_failed) this
    gives H6: T consecutive failures of either kind end unroutable, and fewer
    leave a routable node routable.

    pre: threshold >= 1
    pre: _valid(phase, failures, threshold)
    post: __return__
    """
    before = _state(phase, failures)
    after = step(before, Event.REQUEST_FAILED, threshold)
    if phase is Phase.UNKNOWN:
        return after == before
    return after == step(before, Event.POLL_FAILED, threshold)


def _consistent(state: HealthState, history: HealthHistory, threshold: int) -> bool:
    """The inductive invariant tying a node's health state to its history: it
    holds at the start (unknown, empty history), every event keeps it
    (``runs_keep_h1_to_h6``), and it implies H1-H6. Written from §2 and §6:

    * never a poll_ok: unknown or unhealthy; the streak is 0 or 1 (H1 caps
      it), 1 when unhealthy; unknown with a streak only after a request
      failure (ignored by an unknown node, §6); no streak was armed;
    * else healthy exactly when no failure since the last success, and then
      nothing is pending; suspect(n) exactly when an armed streak of n < T
      failures is running; unhealthy when an armed streak reached T.
    """
    streak = history.streak
    if streak == 0 and (history.mixed or history.armed):
        return False
    phase = state.phase
    if not history.ever_ok:
        if history.armed or streak > 1:
            return False
        if phase is Phase.UNKNOWN:
            return streak == 0 or history.mixed
        return phase is Phase.UNHEALTHY and streak == 1
    if phase is Phase.HEALTHY:
        return streak == 0 and not history.revive
    if phase is Phase.SUSPECT:
        return history.armed and not history.revive and streak == state.failures < threshold
    return phase is Phase.UNHEALTHY and history.armed and streak == threshold


def runs_keep_h1_to_h6(
    phase: Phase,
    failures: int,
    ever_ok: bool,
    streak: int,
    mixed: bool,
    armed: bool,
    revive: bool,
    event: Event,
    threshold: int,
) -> bool:
    """H1-H6 as the invariants module states them, and HSPEC (each state is the
    one the monitor's restatement of §2 and §6 gives), on **every run of any
    length** of the four events from unknown, for **every threshold**, with
    passive health on.

    By induction over the run: the empty run from unknown satisfies
    ``_consistent``; for every state and history satisfying it (the harness's
    symbolic inputs: any phase, failure count, history and threshold), one
    event of any kind leads to the state ``spec_next_health`` gives, to a
    history (``HealthHistory.after``) that still satisfies it, and to a pair
    on which h1-h6 hold. The bound is only CrossHair's iteration bound; the
    harness has no run length or threshold range (a bounded enumeration of
    runs of 6 events of 4 kinds had too many paths to be exhausted).

    pre: threshold >= 1
    pre: _valid(phase, failures, threshold)
    pre: 0 <= streak <= threshold
    post: __return__
    """
    start = _consistent(UNKNOWN, HealthHistory(), threshold)
    state = _state(phase, failures)
    history = HealthHistory(ever_ok=ever_ok, streak=streak, mixed=mixed, armed=armed, revive=revive)
    if not _consistent(state, history, threshold):
        return start  # not a reachable pair: nothing to show but the base case
    label = event.label
    after_history = history.after(
        label, routable_before=state.routable, threshold=threshold, passive=True
    )
    after = step(state, event, threshold)
    return (
        start
        and after == spec_next_health(state, label, threshold, passive=True)
        and _consistent(after, after_history, threshold)
        and h1(after_history, after)
        and h2(after_history, after, threshold)
        and h3(after_history, after, threshold)
        and h4(after_history, after)
        and h5(after_history, after)
        and h6(after_history, after, threshold)
    )
