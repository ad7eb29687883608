"""Three implementations of the health step, for ``crosshair diffbehavior``.

``via_step`` interprets the table (``health.step``, the source of truth);
``via_table`` looks the pair up in ``HealthTable(T)`` (the engine's hot
path, expanded from the table); ``via_if_chain`` is docs/semantics.md §2's table
written as plain ``if`` statements here. Out-of-domain inputs (an invalid
state or threshold) give None in all three, so only the domain is compared.
"""

from __future__ import annotations

from cortex_fsm.health import Event, HealthState, HealthTable, Phase, step

MAX_THRESHOLD = 6


def _in_domain(phase: Phase, failures: int, threshold: int) -> bool:
    if not 1 <= threshold <= MAX_THRESHOLD:
        return False
    if phase is Phase.SUSPECT:
        return 1 <= failures < threshold
    return failures == 0


def _state(phase: Phase, failures: int) -> HealthState:
    if phase is Phase.SUSPECT:
        return HealthState(phase=phase, failures=failures)
    return HealthState(phase=phase)


def via_step(phase: Phase, failures: int, event: Event, threshold: int) -> tuple[int, int] | None:
    if not _in_domain(phase, failures, threshold):
        return None
    after = step(_state(phase, failures), event, threshold)
    return (int(after.phase), after.failures)


def via_table(phase: Phase, failures: int, event: Event, threshold: int) -> tuple[int, int] | None:
    if not _in_domain(phase, failures, threshold):
        return None
    after = HealthTable(threshold).step(_state(phase, failures), event)
    return (int(after.phase), after.failures)


def via_if_chain(
    phase: Phase, failures: int, event: Event, threshold: int
) -> tuple[int, int] | None:
    if not _in_domain(phase, failures, threshold):
        return None
    if event is Event.POLL_OK:
        return (int(Phase.HEALTHY), 0)
    if event is Event.REQUEST_OK:
        if phase is Phase.HEALTHY or phase is Phase.SUSPECT:
            return (int(Phase.HEALTHY), 0)
        return (int(phase), 0)  # never revives
    if event is Event.REQUEST_FAILED and phase is Phase.UNKNOWN:
        return (int(Phase.UNKNOWN), 0)
    if phase is Phase.UNKNOWN or phase is Phase.UNHEALTHY:
        return (int(Phase.UNHEALTHY), 0)
    if failures + 1 < threshold:
        return (int(Phase.SUSPECT), failures + 1)
    return (int(Phase.UNHEALTHY), 0)
