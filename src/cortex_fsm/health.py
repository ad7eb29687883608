"""Node-health state machine: states, events, the transition table and ``step()``.

Theory of operation
-------------------
A gateway polls every neuron's ``/models`` on a fixed interval. One slow
answer from a busy neuron must not evict it, and a neuron that never answered
must never receive traffic. Both requirements are captured by a small machine
per node, debounced by the policy's ``failure_threshold`` ``T``:

* ``unknown``    -- initial; the node has never answered a poll. Not routable.
* ``healthy``    -- the last poll succeeded. Routable.
* ``suspect(n)`` -- the last ``n`` polls failed, ``1 <= n < T``, after the node
  had been routable. Still routable: it keeps serving its last-known models.
* ``unhealthy``  -- ``T`` consecutive failures (or a failure before the node
  ever answered). Not routable.

The machine is described once, in :data:`TRANSITIONS`, as *data*: for each
``(phase, event)`` an ordered tuple of guarded branches. The first branch whose
guard holds fires. Guards and targets are closed vocabularies
(:class:`Guard`, :class:`Count`) so that every consumer -- ``step()``, the
python-statemachine class, the generated docs and the Promela model -- can
interpret the same rows without re-stating them.

``step()`` interprets the table directly and is the single source of truth.
:class:`HealthTable` expands it, for one threshold, into a flat dictionary
``(state, event) -> state`` built *by calling* ``step()`` on every state, so
the hot path is one dictionary lookup and cannot disagree with the table.

:func:`health_chart_class` builds a python-statemachine class from the same
rows. It is used for definition validation (the library checks that every
state is reachable when the class is created), for the diagram in the docs,
and by the verification suite, which checks class and table agree on every
``(state, event)`` pair. It is never on a request or replay path: one event
through it costs roughly a thousand times a table lookup.

Passive health (docs/semantics.md §6) adds two inputs from the gateway's own
forwarded requests: ``request_failed`` counts exactly like a failed poll (the
two share the one failure counter that ``suspect(n)`` carries), and
``request_ok`` clears that counter -- but only for a routable node: it never
revives an ``unknown`` or ``unhealthy`` node, because only a poll refreshes
the model map the node would be routed on.

Invariants (docs/semantics.md H1-H6, checked in :mod:`cortex_fsm.verify`),
"failure" meaning ``poll_failed`` or ``request_failed``:

* H1 a node that has never had ``poll_ok`` is never routable;
* H2 a routable node stays routable through any ``T-1`` consecutive failures;
* H3 ``T`` consecutive failures always make a node unroutable;
* H4 one ``poll_ok`` always makes a node routable (``healthy``);
* H5 ``request_ok`` never makes a non-routable node routable;
* H6 ``T`` consecutive failures of either kind, with no success between,
  make a node unroutable.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from .errors import ConfigError

__all__ = [
    "DEFAULT_FAILURE_THRESHOLD",
    "MAX_FAILURE_THRESHOLD",
    "Branch",
    "Count",
    "Event",
    "Guard",
    "HealthState",
    "HealthTable",
    "HealthTableError",
    "PASSIVE_EVENTS",
    "Phase",
    "TRANSITIONS",
    "UNKNOWN",
    "all_states",
    "health_chart_class",
    "step",
    "validate_threshold",
]

DEFAULT_FAILURE_THRESHOLD = 3


class Phase(enum.IntEnum):
    """The four kinds of health state (``suspect`` carries a count)."""

    UNKNOWN = 0
    HEALTHY = 1
    SUSPECT = 2
    UNHEALTHY = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class Event(enum.IntEnum):
    """Inputs to the machine: the outcome of one ``/models`` poll, or (passive
    health, docs/semantics.md §6) of one request the gateway forwarded to the node."""

    POLL_OK = 0
    POLL_FAILED = 1
    REQUEST_FAILED = 2
    REQUEST_OK = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class Guard(enum.IntEnum):
    """Conditions a branch may carry; evaluated against the source state."""

    ALWAYS = 0
    #: ``failures + 1 < T``: one more failure still stays below the threshold.
    NEXT_BELOW_THRESHOLD = 1

    def holds(self, failures: int, threshold: int) -> bool:
        if self is Guard.ALWAYS:
            return True
        return failures + 1 < threshold

    @property
    def text(self) -> str:
        return "" if self is Guard.ALWAYS else "n+1 < T"


class Count(enum.IntEnum):
    """How the target state's failure count derives from the source's."""

    #: the target carries no count (``unknown``/``healthy``/``unhealthy``).
    ZERO = 0
    #: the source's count plus one (``healthy`` counts as 0).
    NEXT = 1


@attrs.frozen(slots=True, kw_only=True, repr=False, cache_hash=True)
class HealthState:
    """One health state. ``failures`` is ``n`` for ``suspect(n)``, else 0."""

    phase: Phase
    failures: int = 0

    @property
    def routable(self) -> bool:
        return self.phase is Phase.HEALTHY or self.phase is Phase.SUSPECT

    @property
    def label(self) -> str:
        """``unknown``, ``healthy``, ``suspect(2)``, ``unhealthy``."""
        if self.phase is Phase.SUSPECT:
            return f"suspect({self.failures})"
        return self.phase.label

    @property
    def ident(self) -> str:
        """An identifier-safe name: ``suspect_2`` for ``suspect(2)``."""
        if self.phase is Phase.SUSPECT:
            return f"suspect_{self.failures}"
        return self.phase.label

    def __repr__(self) -> str:
        if self.phase is Phase.SUSPECT:
            return f"HealthState(phase=Phase.SUSPECT, failures={self.failures})"
        return f"HealthState(phase=Phase.{self.phase.name})"

    def __str__(self) -> str:
        return self.label


UNKNOWN = HealthState(phase=Phase.UNKNOWN)


@attrs.frozen(slots=True, kw_only=True)
class Branch:
    """One guarded branch of a table row."""

    guard: Guard
    target: Phase
    count: Count = Count.ZERO


#: The health transition table: for each ``(phase, event)`` the branches in
#: priority order; the first whose guard holds fires. The last branch of every
#: row is unguarded, so every row is total (checked at import, below).
TRANSITIONS: Mapping[tuple[Phase, Event], tuple[Branch, ...]] = {
    (Phase.UNKNOWN, Event.POLL_OK): (Branch(guard=Guard.ALWAYS, target=Phase.HEALTHY),),
    # H1: a node that never answered is not given the benefit of the doubt.
    (Phase.UNKNOWN, Event.POLL_FAILED): (Branch(guard=Guard.ALWAYS, target=Phase.UNHEALTHY),),
    (Phase.HEALTHY, Event.POLL_OK): (Branch(guard=Guard.ALWAYS, target=Phase.HEALTHY),),
    # The debounce: a routable node rides over T-1 misses (H2), not T (H3).
    (Phase.HEALTHY, Event.POLL_FAILED): (
        Branch(guard=Guard.NEXT_BELOW_THRESHOLD, target=Phase.SUSPECT, count=Count.NEXT),
        Branch(guard=Guard.ALWAYS, target=Phase.UNHEALTHY),
    ),
    (Phase.SUSPECT, Event.POLL_OK): (Branch(guard=Guard.ALWAYS, target=Phase.HEALTHY),),
    (Phase.SUSPECT, Event.POLL_FAILED): (
        Branch(guard=Guard.NEXT_BELOW_THRESHOLD, target=Phase.SUSPECT, count=Count.NEXT),
        Branch(guard=Guard.ALWAYS, target=Phase.UNHEALTHY),
    ),
    # H4: any successful poll restores a node, however long it was down.
    (Phase.UNHEALTHY, Event.POLL_OK): (Branch(guard=Guard.ALWAYS, target=Phase.HEALTHY),),
    (Phase.UNHEALTHY, Event.POLL_FAILED): (Branch(guard=Guard.ALWAYS, target=Phase.UNHEALTHY),),
    # Passive health (§6). A node that never answered a poll gets no request
    # (H1), so a request outcome for it can only be stale: ignored.
    (Phase.UNKNOWN, Event.REQUEST_FAILED): (Branch(guard=Guard.ALWAYS, target=Phase.UNKNOWN),),
    (Phase.UNKNOWN, Event.REQUEST_OK): (Branch(guard=Guard.ALWAYS, target=Phase.UNKNOWN),),
    # A failed request counts exactly like a failed poll: one shared counter (H6).
    (Phase.HEALTHY, Event.REQUEST_FAILED): (
        Branch(guard=Guard.NEXT_BELOW_THRESHOLD, target=Phase.SUSPECT, count=Count.NEXT),
        Branch(guard=Guard.ALWAYS, target=Phase.UNHEALTHY),
    ),
    (Phase.HEALTHY, Event.REQUEST_OK): (Branch(guard=Guard.ALWAYS, target=Phase.HEALTHY),),
    (Phase.SUSPECT, Event.REQUEST_FAILED): (
        Branch(guard=Guard.NEXT_BELOW_THRESHOLD, target=Phase.SUSPECT, count=Count.NEXT),
        Branch(guard=Guard.ALWAYS, target=Phase.UNHEALTHY),
    ),
    # A served request clears the counter of a routable node...
    (Phase.SUSPECT, Event.REQUEST_OK): (Branch(guard=Guard.ALWAYS, target=Phase.HEALTHY),),
    (Phase.UNHEALTHY, Event.REQUEST_FAILED): (Branch(guard=Guard.ALWAYS, target=Phase.UNHEALTHY),),
    # ...but never revives one (H5): only a poll refreshes the model map.
    (Phase.UNHEALTHY, Event.REQUEST_OK): (Branch(guard=Guard.ALWAYS, target=Phase.UNHEALTHY),),
}


class HealthTableError(LookupError):
    """The table has no transition for a state and event (a bug, never input)."""


def _check_table() -> None:
    for phase in Phase:
        for event in Event:
            branches = TRANSITIONS.get((phase, event))
            if not branches:
                raise HealthTableError(f"no health transition for {phase.label} on {event.label}")
            if branches[-1].guard is not Guard.ALWAYS:
                raise HealthTableError(
                    f"health transition for {phase.label} on {event.label} is not total"
                )


_check_table()


#: The largest failure threshold accepted. Every health state up to it is built
#: ahead (``HealthTable``: about 6 µs each), and at the default 10 s poll
#: interval this many failed polls is more than a day.
MAX_FAILURE_THRESHOLD = 10_000


def validate_threshold(value: object, *, key: str = "failure_threshold") -> int:
    """Return ``value`` if it is a valid failure threshold, else raise ConfigError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_FAILURE_THRESHOLD
    ):
        raise ConfigError(
            f"{key} must be an integer in 1..{MAX_FAILURE_THRESHOLD}, got {_shown(value)}"
        )
    return value


def _shown(value: object, limit: int = 60) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past sys.get_int_max_str_digits()
        return "an integer too long to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def step(state: HealthState, event: Event, threshold: int) -> HealthState:
    """The next health state: interprets :data:`TRANSITIONS` (the source of truth).

    ``threshold`` must already be valid (see :func:`validate_threshold`).
    """
    for branch in TRANSITIONS[state.phase, event]:
        if branch.guard.holds(state.failures, threshold):
            if branch.count is Count.NEXT:
                return HealthState(phase=branch.target, failures=state.failures + 1)
            return HealthState(phase=branch.target)
    raise HealthTableError(  # unreachable while _check_table() passes
        f"no branch of {state.label} on {event.label} applies"
    )


def all_states(threshold: int) -> Iterator[HealthState]:
    """Every state of the machine for ``threshold``, in a fixed order."""
    yield UNKNOWN
    yield HealthState(phase=Phase.HEALTHY)
    for n in range(1, threshold):
        yield HealthState(phase=Phase.SUSPECT, failures=n)
    yield HealthState(phase=Phase.UNHEALTHY)


#: The events of passive health (docs/semantics.md §6).
PASSIVE_EVENTS = frozenset({Event.REQUEST_FAILED, Event.REQUEST_OK})


class HealthTable:
    """The machine expanded for one threshold: the hot path.

    Built by calling :func:`step` on every ``(state, event)``, so it cannot
    disagree with the table. States are interned: ``table.step`` returns the
    same objects, which keeps comparisons and hashing cheap.

    With ``passive=False`` (policy ``passive_health = false``, the reference)
    request outcomes are not inputs of the machine: their rows expand to the
    identity, so no request outcome ever moves a node.
    """

    __slots__ = ("_next", "on", "passive", "states", "threshold")

    def __init__(self, threshold: int, *, passive: bool = True) -> None:
        self.threshold = validate_threshold(threshold)
        self.passive = passive
        self.states: tuple[HealthState, ...] = tuple(all_states(threshold))
        interned = {s: s for s in self.states}
        self._next: dict[tuple[HealthState, Event], HealthState] = {}
        for state in self.states:
            for event in Event:
                if not passive and event in PASSIVE_EVENTS:
                    self._next[state, event] = state
                    continue
                target = step(state, event, threshold)
                if target not in interned:
                    raise HealthTableError(f"{state.label} on {event.label} leaves the machine")
                self._next[state, event] = interned[target]
        #: the same table split by event: ``on[event][state]`` -> next state
        self.on: dict[Event, dict[HealthState, HealthState]] = {
            event: {s: self._next[s, event] for s in self.states} for event in Event
        }

    def step(self, state: HealthState, event: Event) -> HealthState:
        try:
            return self._next[state, event]
        except KeyError:
            raise HealthTableError(
                f"{state.label} is not a state of the machine with threshold {self.threshold}"
            ) from None

    def rows(self) -> Iterator[tuple[HealthState, Event, HealthState]]:
        """Every expanded transition, in a fixed order."""
        for state in self.states:
            for event in Event:
                yield state, event, self._next[state, event]


# --- the python-statemachine expression of the same machine ---------------------------------

_COND_NAME = {Guard.NEXT_BELOW_THRESHOLD: "next_below_threshold"}
_ACTION_NAME = {Count.NEXT: "count_failure", Count.ZERO: "reset_failures"}


class HealthModel:
    """The model object a :func:`health_chart_class` instance drives.

    It holds the failure count that the chart's states do not carry
    (``suspect`` is one chart state; ``n`` lives here).
    """

    def __init__(self, threshold: int) -> None:
        self.threshold = validate_threshold(threshold)
        self.failures = 0

    def next_below_threshold(self) -> bool:
        return Guard.NEXT_BELOW_THRESHOLD.holds(self.failures, self.threshold)

    def count_failure(self) -> None:
        self.failures += 1

    def reset_failures(self) -> None:
        self.failures = 0


def chart_definition() -> dict[str, Any]:
    """The :data:`TRANSITIONS` rows in python-statemachine's dict format."""
    states: dict[str, Any] = {}
    for phase in Phase:
        on: dict[str, list[dict[str, Any]]] = {}
        for event in Event:
            branches = []
            for branch in TRANSITIONS[phase, event]:
                spec: dict[str, Any] = {
                    "target": branch.target.label,
                    "on": _ACTION_NAME[branch.count],
                }
                if branch.guard is not Guard.ALWAYS:
                    spec["cond"] = _COND_NAME[branch.guard]
                branches.append(spec)
            on[event.label] = branches
        states[phase.label] = {"on": on, **({"initial": True} if phase is Phase.UNKNOWN else {})}
    return states


_chart_class: Any = None


def health_chart_class() -> Any:
    """The python-statemachine class built from :data:`TRANSITIONS` (cached).

    Instantiate it with ``model=HealthModel(threshold)``. Creating the class
    runs the library's definition checks (initial state, reachability).
    """
    global _chart_class  # noqa: PLW0603 - built once, on first use
    if _chart_class is None:
        from statemachine.io import create_machine_class_from_definition

        _chart_class = create_machine_class_from_definition(
            "HealthChart", states=chart_definition()
        )
    return _chart_class


def chart_state(chart: Any, model: HealthModel) -> HealthState:
    """Read a chart instance's state as a :class:`HealthState`."""
    (value,) = tuple(chart.configuration_values)
    phase = Phase[str(value).upper()]
    if phase is Phase.SUSPECT:
        return HealthState(phase=phase, failures=model.failures)
    return HealthState(phase=phase)
