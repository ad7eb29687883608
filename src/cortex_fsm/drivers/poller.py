"""The poller: every ``poll_interval``, per node, one poll in the protocol of its kind.

A ``neuron`` (docs/semantics.md §1): discovery (while the engine needs it),
``/models``, ``/health``. Any other kind (§11, :mod:`cortex_fsm.backends`):
its liveness call, its model-list calls, then -- when the poll succeeded
and the kind reports load -- its load reading (Prometheus ``/metrics``).
Each answer, or the reason there is none, becomes one observation through
the :class:`~cortex_fsm.drivers.journal.Journal`. A neuron's answers are
recorded as received; another kind's are recorded in the neuron's shape
(:func:`cortex_fsm.backends.models_body`, :func:`~cortex_fsm.backends.health_body`),
so a trace of any fleet replays through the same parser.

Every node has its own task, so one that stalls (each fetch waits up to
``timeout`` seconds) never delays the others, while each node's own
observations stay in order. A round that takes longer than the interval is
followed by the next one at once; missed ticks are not made up in a burst.

Logged on the ``cortex_fsm.poller`` logger, one JSON line each:

* ``answer_unusable`` (``node``, ``path``, ``reason``) when an answer that
  cannot be used -- a failed poll, a ``/discovery`` or load reading that
  changes nothing -- appears or its reason changes; ``answer_usable`` once
  the answers are usable again;
* ``wrong_kind`` (``node``, ``kind``, ``guess``, ``message``) once when a
  node answers as if it were of another kind: the poller asks it a few more
  questions, once, to name the ``kind`` setting to use.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import anyio

from ..backends import (
    BACKENDS,
    SNIFF_CALLS,
    Answer,
    Backend,
    guess_kind,
    health_body,
    models_body,
    wrong_kind_message,
    wrong_kind_symptom,
)
from ..fleet import ModelsReport, Neuron, PollFailure
from ..wire import Invalid, load_json, parse_discovery, parse_health
from .journal import Journal
from .neuron_client import Fetched, NeuronClient, Upstream

if TYPE_CHECKING:
    from .topology import Topology

__all__ = ["Poller"]

_log = logging.getLogger("cortex_fsm.poller")
_NEURON = BACKENDS["neuron"]
_MODELS = "models"  # the key of a models poll's problem (whichever path failed)


class _Stopped(Exception):
    """The poller was stopped while an answer was on its way: the answer is dropped."""


class Poller:
    """Polls ``neurons`` until cancelled (run it in a task group).

    ``upstreams`` says how to reach each node by name (kind, headers, TLS);
    a node absent from it is a plain ``neuron`` at its endpoint.
    ``topology``, when given, hears of every live discovery (to keep it
    across restarts, and to compare it with a declared one).
    """

    def __init__(
        self,
        journal: Journal,
        client: NeuronClient,
        neurons: Sequence[Neuron],
        *,
        interval: float,
        timeout: float,
        upstreams: Mapping[str, Upstream] | None = None,
        topology: Topology | None = None,
    ) -> None:
        self.journal = journal
        self.client = client
        self.neurons = tuple(neurons)
        self.interval = interval
        self.timeout = timeout
        self.topology = topology
        given = upstreams or {}
        self.upstreams = {
            n.name: given.get(n.name) or Upstream.plain(n.endpoint, n.name) for n in self.neurons
        }
        self.rounds: dict[str, int] = {n.name: 0 for n in self.neurons}
        """Completed poll rounds per neuron."""
        self.stopped = False
        """Set by :meth:`stop`: no answer that arrives later is recorded."""
        self._problems: dict[tuple[str, str], str] = {}
        self._known: dict[str, tuple[str, ...]] = {}
        self._kind_checked: set[str] = set()

    async def run(self) -> None:
        """Poll every neuron concurrently, forever (until cancelled)."""
        async with anyio.create_task_group() as tg:
            for neuron in self.neurons:
                tg.start_soon(self._loop, neuron, name=f"poll {neuron.name}")

    def stop(self) -> None:
        """Record nothing more, even an answer already on its way.

        Cancelling the poller's task is not enough on its own: an answer that
        is already in when the cancellation is requested lets the task run on
        to its next ``await``, and it would record the answer of a node that a
        reload has just removed (or replaced).
        """
        self.stopped = True

    async def _loop(self, neuron: Neuron) -> None:
        due = anyio.current_time()
        while not self.stopped:
            await self.poll_once(neuron)
            now = anyio.current_time()
            due = max(due + self.interval, now)
            await anyio.sleep(due - now)

    async def _get(self, node: Upstream, path: str) -> Answer:
        try:
            with anyio.fail_after(self.timeout):
                answer = await self.client.get(node, path)
        except TimeoutError:
            answer = Answer.failed(path, "timeout")
        if self.stopped:
            raise _Stopped
        return answer

    async def poll_once(self, neuron: Neuron) -> None:
        """One round for ``neuron``, in the protocol of its kind (nothing once stopped)."""
        node = self.upstreams[neuron.name]
        kind = BACKENDS[node.kind]
        try:
            if kind.daemon:
                await self._poll_neuron(node)
            else:
                await self._poll_backend(node, kind)
        except _Stopped:
            return
        self.rounds[node.name] += 1

    async def _poll_neuron(self, node: Upstream) -> None:
        """docs/semantics.md §1: discovery if the engine needs it, ``/models``, ``/health``."""
        journal = self.journal
        name = node.name
        if journal.needs_discovery(name):
            fetched = _fetched(await self._get(node, "/discovery"))
            journal.discovery(name, ok=fetched.ok, body=fetched.body)
            self._report(name, "/discovery", fetched, parse_discovery)
            if fetched.ok and self.topology is not None:
                self.topology.observed(name, fetched.body)
        answer = await self._get(node, "/models")
        fetched = _fetched(answer)
        journal.models(name, ok=fetched.ok, body=fetched.body, error=fetched.error)
        verdict = _NEURON.models({"/models": answer}, ())
        await self._after_models(node, verdict, [answer])
        fetched = _fetched(await self._get(node, "/health"))
        journal.health(name, ok=fetched.ok, body=fetched.body)
        self._report(name, "/health", fetched, parse_health)

    async def _poll_backend(self, node: Upstream, kind: Backend) -> None:
        """docs/semantics.md §11: liveness, model list, then the load reading."""
        journal = self.journal
        name = node.name
        first = await self._get(node, kind.liveness)
        answers = {kind.liveness: first}
        verdict: ModelsReport | PollFailure
        failure = kind.live(first)
        if failure is None:
            for path in kind.model_calls:
                answers[path] = await self._get(node, path)
            verdict = kind.models(answers, self._known.get(name, ()))
        else:
            verdict = failure
        if isinstance(verdict, PollFailure):
            journal.models(name, ok=False, error=verdict.reason)
        else:
            journal.models(name, ok=True, body=models_body(verdict))
        await self._after_models(node, verdict, answers.values())
        if isinstance(verdict, PollFailure) or kind.metrics is None or kind.load is None:
            return
        answer = await self._get(node, kind.metrics)
        reading = kind.load(answer, tuple(verdict.models))
        if isinstance(reading, Invalid):
            journal.health(name, ok=False)
            self._note(name, kind.metrics, kind.metrics, reading.reason)
        else:
            journal.health(name, ok=True, body=health_body(reading))
            self._note(name, kind.metrics, kind.metrics, None)

    async def _after_models(
        self, node: Upstream, verdict: ModelsReport | PollFailure, answers: Iterable[Answer]
    ) -> None:
        """Log why a models poll failed; look for a wrong ``kind`` once."""
        answers = list(answers)
        if isinstance(verdict, PollFailure):
            failing = next((a for a in reversed(answers) if not a.ok), answers[-1])
            self._note(node.name, _MODELS, failing.path, verdict.reason)
            if node.name not in self._kind_checked:
                await self._check_kind(node, answers)
        else:
            self._known[node.name] = tuple(verdict.models)
            self._kind_checked.discard(node.name)
            self._note(node.name, _MODELS, answers[0].path, None)

    async def _check_kind(self, node: Upstream, answers: Sequence[Answer]) -> None:
        symptom = wrong_kind_symptom(node.kind, answers)
        if symptom is None:
            return
        self._kind_checked.add(node.name)
        probes = {path: await self._get(node, path) for path in SNIFF_CALLS}
        guess = guess_kind(probes)
        if guess is not None and guess[0] == node.kind:
            return  # it is what it says it is; the 404 means something else
        fields = {
            "event": "wrong_kind",
            "node": node.name,
            "kind": node.kind,
            "guess": None if guess is None else guess[0],
            "message": wrong_kind_message(node.name, node.kind, symptom, guess),
        }
        _log.warning(json.dumps(fields))

    def _report(
        self, node: str, path: str, answer: Fetched, parse: Callable[[object], object]
    ) -> None:
        """Log an unusable ``/discovery`` or ``/health`` answer when its reason changes."""
        if not answer.ok:
            problem: str | None = answer.error
        else:
            parsed = parse(answer.body)
            problem = parsed.reason if isinstance(parsed, Invalid) else None
        self._note(node, path, path, problem)

    def _note(self, node: str, key: str, path: str, problem: str | None) -> None:
        """Log ``problem`` of ``node``'s ``key`` answers when it appears, changes or clears."""
        slot = (node, key)
        before = self._problems.get(slot)
        if problem == before:
            return
        if problem is None:
            del self._problems[slot]
            _log.info(json.dumps({"event": "answer_usable", "node": node, "path": path}))
        else:
            self._problems[slot] = problem
            fields = {"event": "answer_unusable", "node": node, "path": path, "reason": problem}
            _log.warning(json.dumps(fields))


def _fetched(answer: Answer) -> Fetched:
    """A neuron's JSON answer as the journal records it (``invalid json`` if unparsable)."""
    if not answer.ok:
        return Fetched.failure(answer.problem)
    try:
        return Fetched(ok=True, body=load_json(answer.body))
    except ValueError:
        return Fetched.failure("invalid json")
