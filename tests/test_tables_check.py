"""The two tables are complete and unambiguous, by enumeration.

* routing: every combination of the 10 conditions matches exactly one row
  (no gap, no overlap);
* health: every (state, event) pair has exactly one target, for T = 1..8, and
  the python-statemachine class built from the same rows agrees with it;

and the checks have teeth: a table with a gap or an overlap is reported.
"""

from __future__ import annotations

import itertools

import pytest

from cortex_fsm import routing, tables
from cortex_fsm.health import (
    TRANSITIONS,
    Branch,
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
)
from cortex_fsm.routing import CONDITIONS, RULES, Cond, Rule


def test_every_combination_of_conditions_matches_exactly_one_row() -> None:
    combos = 0
    for values in itertools.product((False, True), repeat=len(CONDITIONS)):
        assignment = dict(zip(CONDITIONS, values, strict=True))
        rows = [r for r in RULES if all(assignment[c] is v for c, v in r.when)]
        assert len(rows) == 1, f"{len(rows)} rows match {assignment}"
        combos += 1
    assert combos == 2 ** len(CONDITIONS) == 1024
    assert tables.check_routing_table() == (1024, [])


def test_every_row_is_reachable_and_outcomes_are_the_reference_ones() -> None:
    hit = {r.rule: 0 for r in RULES}
    for values in itertools.product((False, True), repeat=len(CONDITIONS)):
        (row,) = routing.matching_rules(dict(zip(CONDITIONS, values, strict=True)))
        hit[row.rule] += 1
    assert all(n > 0 for n in hit.values()), hit
    # Rows that share a rule label share its outcome.
    assert all(r.outcome is routing.RULE_OUTCOME[r.rule] for r in RULES)


def test_the_routing_check_sees_a_gap_and_an_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    without_5c = tuple(r for r in RULES if r.rule != "5c")
    monkeypatch.setattr(routing, "RULES", without_5c)
    count, problems = tables.check_routing_table()
    assert count == 1024 and problems and all("0 rows match" in p for p in problems)
    extra = Rule(
        rule="9", when=((Cond.ANY_ROUTABLE, False),), outcome=RULES[0].outcome, pick=RULES[0].pick
    )
    monkeypatch.setattr(routing, "RULES", (*RULES, extra))
    _count, problems = tables.check_routing_table()
    assert problems and all("2 rows match" in p for p in problems)


@pytest.mark.parametrize("threshold", range(1, 9))
def test_every_health_state_and_event_has_exactly_one_target(threshold: int) -> None:
    states = list(all_states(threshold))
    assert len(states) == len(set(states)) == threshold + 2
    table = HealthTable(threshold)
    for state in states:
        for event in Event:
            branches = TRANSITIONS[state.phase, event]
            firing = [b for b in branches if b.guard.holds(state.failures, threshold)]
            assert firing, f"no branch of {state.label} on {event.label} applies"
            target = step(state, event, threshold)
            assert target in states, f"{state.label} on {event.label} leaves the machine"
            assert table.step(state, event) == target
    pairs, problems = tables.check_health_table(range(threshold, threshold + 1))
    assert pairs == len(states) * len(Event) and problems == []


@pytest.mark.parametrize("threshold", range(1, 6))
def test_the_statemachine_class_agrees_with_the_table(threshold: int) -> None:
    cls = health_chart_class()
    for state in all_states(threshold):
        for event in Event:
            model = HealthModel(threshold)
            chart = cls(model=model)
            # Drive the chart to `state` the only way the machine allows.
            path: list[Event] = []
            if state.phase is not Phase.UNKNOWN:
                path = (
                    [Event.POLL_OK] if state.phase is not Phase.UNHEALTHY else [Event.POLL_FAILED]
                )
                path += [Event.POLL_FAILED] * state.failures
            for e in path:
                chart.send(e.label)
            assert chart_state(chart, model) == state
            chart.send(event.label)
            assert chart_state(chart, model) == step(state, event, threshold), (state, event)


def test_the_health_check_sees_a_missing_row(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = dict(TRANSITIONS)
    broken[Phase.HEALTHY, Event.POLL_FAILED] = (
        Branch(guard=Guard.NEXT_BELOW_THRESHOLD, target=Phase.SUSPECT),
    )
    monkeypatch.setattr(tables, "TRANSITIONS", broken)
    _pairs, problems = tables.check_health_table(range(1, 3))
    assert any("no target for healthy on poll_failed" in p for p in problems)


def test_the_generated_docs_state_both_checks() -> None:
    assert "All 1024 combinations of the 10 conditions match exactly one row" in (
        tables.routing_markdown()
    )
    assert "Every (state, event) pair has exactly one target for T = 1..6" in (
        tables.health_markdown()
    )


def test_suspect_states_are_exactly_one_to_t_minus_one() -> None:
    for threshold in range(1, 7):
        suspects = [s for s in all_states(threshold) if s.phase is Phase.SUSPECT]
        assert suspects == [
            HealthState(phase=Phase.SUSPECT, failures=n) for n in range(1, threshold)
        ]
