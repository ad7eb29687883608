"""The health machine: the table, step(), the expanded table and the statechart class."""

from __future__ import annotations

import pytest

from cortex_fsm.errors import ConfigError
from cortex_fsm.health import (
    TRANSITIONS,
    UNKNOWN,
    Event,
    Guard,
    HealthModel,
    HealthState,
    HealthTable,
    Phase,
    all_states,
    chart_state,
    health_chart_class,
    step,
    validate_threshold,
)

HEALTHY = HealthState(phase=Phase.HEALTHY)
UNHEALTHY = HealthState(phase=Phase.UNHEALTHY)


def suspect(n: int) -> HealthState:
    return HealthState(phase=Phase.SUSPECT, failures=n)


def spec_next(state: HealthState, event: Event, t: int) -> HealthState:
    """docs/semantics.md §2 and §6, written out independently of the table."""
    if event is Event.POLL_OK:
        return HEALTHY
    if event is Event.REQUEST_OK:
        return HEALTHY if state.routable else state  # never revives (H5)
    if event is Event.REQUEST_FAILED and state.phase is Phase.UNKNOWN:
        return state  # no request can reach a node that never answered: ignored
    if state.phase is Phase.UNKNOWN or state.phase is Phase.UNHEALTHY:
        return UNHEALTHY
    n = state.failures if state.phase is Phase.SUSPECT else 0
    return suspect(n + 1) if n + 1 < t else UNHEALTHY


@pytest.mark.parametrize("threshold", range(1, 7))
def test_step_matches_the_spec_table(threshold: int) -> None:
    for state in all_states(threshold):
        for event in Event:
            assert step(state, event, threshold) == spec_next(state, event, threshold)


def test_every_row_is_present_and_total() -> None:
    assert set(TRANSITIONS) == {(p, e) for p in Phase for e in Event}
    for branches in TRANSITIONS.values():
        assert branches[-1].guard is Guard.ALWAYS


@pytest.mark.parametrize("threshold", range(1, 7))
def test_expanded_table_is_step(threshold: int) -> None:
    table = HealthTable(threshold)
    assert len(table.states) == threshold + 2  # unknown, healthy, T-1 suspects, unhealthy
    for state, event, target in table.rows():
        assert target == step(state, event, threshold)
        assert table.step(state, event) is target  # interned
        assert table.on[event][state] is target
        assert target in table.states


def test_expanded_table_rejects_a_foreign_state() -> None:
    with pytest.raises(LookupError, match="suspect\\(5\\) is not a state"):
        HealthTable(3).step(suspect(5), Event.POLL_OK)


@pytest.mark.parametrize("threshold", range(1, 7))
def test_statechart_class_agrees_with_the_table(threshold: int) -> None:
    """Drive the python-statemachine class through every (state, event) pair."""
    cls = health_chart_class()
    table = HealthTable(threshold)
    for state in table.states:
        for event in Event:
            model = HealthModel(threshold)
            chart = cls(model=model)
            # reach `state` by the shortest path of events
            for e in _path_to(state):
                chart.send(e.label)
            assert chart_state(chart, model) == state
            chart.send(event.label)
            assert chart_state(chart, model) == table.step(state, event), (state, event)


def _path_to(state: HealthState) -> list[Event]:
    if state.phase is Phase.UNKNOWN:
        return []
    if state.phase is Phase.HEALTHY:
        return [Event.POLL_OK]
    if state.phase is Phase.UNHEALTHY:
        return [Event.POLL_FAILED]
    return [Event.POLL_OK] + [Event.POLL_FAILED] * state.failures


_FAILURES = (Event.POLL_FAILED, Event.REQUEST_FAILED)


def test_invariants_h1_to_h6_over_every_short_sequence() -> None:
    """Exhaustive over all sequences of the four events of length <= 7, thresholds 1..4."""
    import itertools

    for threshold in range(1, 5):
        table = HealthTable(threshold)
        for length in range(8):
            for events in itertools.product(Event, repeat=length):
                state = UNKNOWN
                ever_ok = False
                run = 0  # consecutive failures (of either kind) since the last success
                routable_before_run = False
                for event in events:
                    before = state
                    state = table.step(state, event)
                    if event is Event.POLL_OK:
                        ever_ok = True
                        run = 0
                        assert state == HEALTHY  # H4
                    elif event is Event.REQUEST_OK:
                        assert state.routable == before.routable  # H5 (and never evicts)
                        if before.routable:
                            run = 0
                    else:
                        if run == 0:
                            routable_before_run = before.routable
                        run += 1
                        if routable_before_run and run <= threshold - 1:
                            assert state.routable  # H2
                        if run >= threshold:
                            assert not state.routable  # H3, H6
                    if not ever_ok:
                        assert not state.routable  # H1


def test_without_passive_health_request_outcomes_change_nothing() -> None:
    table = HealthTable(3, passive=False)
    for state in table.states:
        for event in (Event.REQUEST_FAILED, Event.REQUEST_OK):
            assert table.step(state, event) is state
        assert table.step(state, Event.POLL_FAILED) == step(state, Event.POLL_FAILED, 3)


@pytest.mark.parametrize(
    "bad", [0, -1, 1.5, "3", True, None, 10_001, pytest.param(10**5000, id="10**5000")]
)
def test_invalid_thresholds_are_configuration_errors(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"failure_threshold must be an integer in 1\.\.10000"):
        validate_threshold(bad)


def test_labels_and_repr() -> None:
    assert [s.label for s in all_states(3)] == [
        "unknown",
        "healthy",
        "suspect(1)",
        "suspect(2)",
        "unhealthy",
    ]
    assert suspect(2).ident == "suspect_2"
    for state in all_states(3):
        assert eval(repr(state)) == state  # repr is valid Python
    assert not UNKNOWN.routable and HEALTHY.routable and suspect(1).routable
    assert not UNHEALTHY.routable
