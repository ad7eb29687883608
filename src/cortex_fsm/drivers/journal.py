"""The one door from the drivers to the engine.

Every observation the poller makes and every request the gateway routes is
turned into a typed trace event, applied with :func:`cortex_fsm.replay.apply_event`
-- the very function replay uses -- and, when recording, written with
:class:`cortex_fsm.trace.TraceWriter`. Recording and replay therefore cannot
disagree: replaying a recording gives exactly the decisions the gateway made.

Time is one monotonic clock, in seconds since the journal was created (the
gateway's start), never going backwards. Calls are synchronous and never
yield, so the event-loop thread serialises them: an event's place in the
trace is the order in which the engine saw it.

Health transitions are logged as one JSON line each on the
``cortex_fsm.health`` logger.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable

from ..catalogue import Catalogue
from ..engine import Engine, Transition
from ..fleet import Neuron
from ..policy import Policy
from ..replay import apply_event, transitions_of
from ..routing import Decision
from ..trace import (
    DiscoveryEvent,
    Event,
    HealthEvent,
    LoadEvent,
    ModelsEvent,
    NeuronAddedEvent,
    NeuronRemovedEvent,
    OutcomeEvent,
    ReconfiguredEvent,
    RequestEvent,
    TraceWriter,
    UnloadEvent,
)

__all__ = ["DecisionListener", "Journal", "TransitionListener"]

_health_log = logging.getLogger("cortex_fsm.health")

TransitionListener = Callable[[Transition], None]
DecisionListener = Callable[[str, float, Decision], None]
"""``(request id, t, decision)``."""


class Journal:
    """Owns the engine, the clock and the recording; applies events in order."""

    def __init__(
        self,
        engine: Engine,
        *,
        recorder: TraceWriter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.recorder = recorder
        self._clock = clock
        self._origin = clock()
        self._last_t = 0.0
        self._requests = 0
        self._generation: dict[str, int] = dict.fromkeys(engine.node_names, 0)
        self._models_body: dict[str, object] = {}
        self.transition_listeners: list[TransitionListener] = []
        self.decision_listeners: list[DecisionListener] = []

    # -- time ---------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the journal started; never decreases."""
        t = max(self._clock() - self._origin, self._last_t)
        self._last_t = t
        return t

    @property
    def requests(self) -> int:
        """Requests routed so far."""
        return self._requests

    # -- the one path to the engine -------------------------------------------------------

    def apply(self, event: Event) -> Decision | Transition | None:
        """Apply ``event`` to the engine (as replay does), record it, tell listeners.

        Returns the request's decision, or the (last) health transition it caused.
        """
        result = apply_event(self.engine, event)
        if self.recorder is not None:
            self.recorder.write(event)
        if isinstance(event, ModelsEvent):
            self._track_models(event)
        elif isinstance(event, LoadEvent | UnloadEvent):
            self._generation[event.node] += 1
        elif isinstance(event, NeuronAddedEvent):
            self._generation[event.neuron.name] = 0
        elif isinstance(event, NeuronRemovedEvent):
            self._generation.pop(event.node, None)
            self._models_body.pop(event.node, None)
        if isinstance(result, Decision):
            return result
        moved = transitions_of(result)
        for transition in moved:
            _health_log.info(json.dumps({"event": "health_transition", **transition.to_json()}))
            for on_transition in self.transition_listeners:
                on_transition(transition)
        return moved[-1] if moved else None

    def _track_models(self, event: ModelsEvent) -> None:
        if not event.ok or event.body != self._models_body.get(event.node):
            self._generation[event.node] += 1
        if event.ok:
            self._models_body[event.node] = event.body
        else:
            self._models_body.pop(event.node, None)

    def generation(self, node: str) -> int:
        """Changes whenever ``node``'s model map may have changed (or a poll failed).

        The gateway's endpoint cache keeps an answer only while this is unchanged.
        """
        return self._generation[node]

    # -- observations, stamped now ------------------------------------------------------------

    def needs_discovery(self, node: str) -> bool:
        return self.engine.needs_discovery(node)

    def discovery(self, node: str, *, ok: bool, body: object = None, source: str = "live") -> None:
        """A ``/discovery`` answer; ``source`` ``declared`` or ``cache`` for a
        topology known without asking (docs/semantics.md §10)."""
        self.apply(
            DiscoveryEvent(t=self.now(), node=node, ok=ok, body=body if ok else None, source=source)
        )

    def models(
        self, node: str, *, ok: bool, body: object = None, error: str = ""
    ) -> Transition | None:
        event = ModelsEvent(
            t=self.now(),
            node=node,
            ok=ok,
            body=body if ok else None,
            error="" if ok else (error or "unspecified"),
        )
        result = self.apply(event)
        return result if isinstance(result, Transition) else None

    def health(self, node: str, *, ok: bool, body: object = None) -> None:
        self.apply(HealthEvent(t=self.now(), node=node, ok=ok, body=body if ok else None))

    def load(self, node: str, model: str, *, ok: bool) -> None:
        self.apply(LoadEvent(t=self.now(), node=node, model=model, ok=ok))

    def unload(self, node: str, model: str, *, ok: bool) -> None:
        self.apply(UnloadEvent(t=self.now(), node=node, model=model, ok=ok))

    def request(
        self,
        model: str,
        *,
        exclude: Iterable[str] = (),
        attempt: int | None = None,
        request_id: str | None = None,
    ) -> tuple[str, Decision]:
        """Route a request for ``model`` now: ``(request id, decision)``.

        A failover attempt (docs/semantics.md §7) passes the client request's
        ``request_id``, its ``attempt`` number and the nodes to ``exclude``.
        """
        if request_id is None:
            self._requests += 1
            request_id = f"r{self._requests}"
        t = self.now()
        event = RequestEvent(
            t=t, id=request_id, model=model, attempt=attempt, exclude=tuple(sorted(exclude))
        )
        decision = self.apply(event)
        assert isinstance(decision, Decision)
        for on_decision in self.decision_listeners:
            on_decision(request_id, t, decision)
        return request_id, decision

    def outcome(
        self,
        request_id: str,
        attempt: int,
        *,
        node: str | None,
        status: int,
        retry_after: int | None,
        source: str,
        error: str | None,
    ) -> Transition | None:
        """What one attempt got: ends its in-flight count, feeds passive health (§6)."""
        event = OutcomeEvent(
            t=self.now(),
            id=request_id,
            attempt=attempt,
            node=node,
            status=status,
            retry_after=retry_after,
            source=source,
            error=error,
        )
        result = self.apply(event)
        return result if isinstance(result, Transition) else None

    def neuron_added(self, neuron: Neuron) -> None:
        self.apply(NeuronAddedEvent(t=self.now(), neuron=neuron))

    def neuron_removed(self, name: str) -> None:
        self.apply(NeuronRemovedEvent(t=self.now(), node=name))

    def reconfigured(
        self, *, catalogue: Catalogue | None = None, policy: Policy | None = None
    ) -> None:
        self.apply(ReconfiguredEvent(t=self.now(), policy=policy, catalogue=catalogue))
