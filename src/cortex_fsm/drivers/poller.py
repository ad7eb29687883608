"""The poller: every ``poll_interval``, per neuron: discovery (while needed), models, health.

Exactly docs/semantics.md §1: each answer -- or the reason there is none -- becomes
one observation through the :class:`~cortex_fsm.drivers.journal.Journal`, in
the order discovery, models, health. Whether discovery is still needed is the
engine's call (:meth:`Engine.needs_discovery`), not ours.

Every neuron has its own task, so one that stalls (each fetch waits up to
``timeout`` seconds) never delays the others, while each neuron's own
observations stay in order. A round that takes longer than the interval is
followed by the next one at once; missed ticks are not made up in a burst.

A ``/discovery`` or ``/health`` answer that is missing or fails validation
changes no health (docs/semantics.md §1), so nothing else would show it: the reason
is logged as one JSON line on the ``cortex_fsm.poller`` logger when it
appears or changes, and once more when the answers are usable again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

import anyio

from ..fleet import Neuron
from ..wire import Invalid, parse_discovery, parse_health
from .journal import Journal
from .neuron_client import Fetched, NeuronClient

__all__ = ["Poller"]

_log = logging.getLogger("cortex_fsm.poller")


class Poller:
    """Polls ``neurons`` until cancelled (run it in a task group)."""

    def __init__(
        self,
        journal: Journal,
        client: NeuronClient,
        neurons: Sequence[Neuron],
        *,
        interval: float,
        timeout: float,
    ) -> None:
        self.journal = journal
        self.client = client
        self.neurons = tuple(neurons)
        self.interval = interval
        self.timeout = timeout
        self.rounds: dict[str, int] = {n.name: 0 for n in self.neurons}
        """Completed poll rounds per neuron."""
        self._problems: dict[tuple[str, str], str] = {}

    async def run(self) -> None:
        """Poll every neuron concurrently, forever (until cancelled)."""
        async with anyio.create_task_group() as tg:
            for neuron in self.neurons:
                tg.start_soon(self._loop, neuron, name=f"poll {neuron.name}")

    async def _loop(self, neuron: Neuron) -> None:
        due = anyio.current_time()
        while True:
            await self.poll_once(neuron)
            now = anyio.current_time()
            due = max(due + self.interval, now)
            await anyio.sleep(due - now)

    async def _fetch(self, neuron: Neuron, path: str) -> Fetched:
        try:
            with anyio.fail_after(self.timeout):
                return await self.client.fetch(neuron.endpoint, path)
        except TimeoutError:
            return Fetched.failure("timeout")

    async def poll_once(self, neuron: Neuron) -> None:
        """One round for ``neuron``: discovery if the engine needs it, ``/models``, ``/health``."""
        journal = self.journal
        name = neuron.name
        if journal.needs_discovery(name):
            answer = await self._fetch(neuron, "/discovery")
            journal.discovery(name, ok=answer.ok, body=answer.body)
            self._report(name, "/discovery", answer, parse_discovery)
        answer = await self._fetch(neuron, "/models")
        journal.models(name, ok=answer.ok, body=answer.body, error=answer.error)
        answer = await self._fetch(neuron, "/health")
        journal.health(name, ok=answer.ok, body=answer.body)
        self._report(name, "/health", answer, parse_health)
        self.rounds[name] += 1

    def _report(
        self, node: str, path: str, answer: Fetched, parse: Callable[[object], object]
    ) -> None:
        """Log an unusable ``/discovery`` or ``/health`` answer when its reason changes."""
        if not answer.ok:
            problem: str | None = answer.error
        else:
            parsed = parse(answer.body)
            problem = parsed.reason if isinstance(parsed, Invalid) else None
        key = (node, path)
        before = self._problems.get(key)
        if problem == before:
            return
        if problem is None:
            del self._problems[key]
            _log.info(json.dumps({"event": "answer_usable", "node": node, "path": path}))
        else:
            self._problems[key] = problem
            fields = {"event": "answer_unusable", "node": node, "path": path, "reason": problem}
            _log.warning(json.dumps(fields))
