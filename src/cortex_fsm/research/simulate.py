"""Discrete-event simulation of a fleet behind the gateway, with ground truth.

Simulated time only: the run goes as fast as the CPU allows. The fleet's real
state comes from :mod:`.processes` (outages, blips, slow polls; seeded per
node), the clients' requests from the traffic table. The gateway's side is
the real :class:`~cortex_fsm.engine.Engine`, fed exactly what a gateway feeds
it: every observation is a trace record applied through
:func:`cortex_fsm.replay.apply_record` -- the one mapping replay uses -- and
written to the trace in the same step, so a replay of the trace makes the
same decisions. The two records of every request (its attempt, and a served
attempt's 200 outcome) are not built as dicts, and their lines are written
from cached parts (a listener still gets the records). For them the engine
gets what replay's mapping amounts to, through the calls a gateway makes
when it ends a request's count itself: ``Engine.route`` with the exclude
set, and for the outcome ``Engine.finish`` of the routed replica, then
``Engine.observe_request`` with ``ok=True`` (an upstream answer below 500
is ``request_ok``) -- which is what ``Engine.observe_outcome`` does for the
attempt's key, without keeping the key. An attempt that fails has its count
ended the same way before its outcome record is applied, which then finds
no key open and is passive health alone.

What the simulated gateway does, per docs/semantics.md:

* polls every node every ``poll_interval`` (all nodes at ``k * interval``, in
  scenario order): ``/discovery`` while the engine needs it, ``/models``,
  and on success ``/health`` with the node's real in-flight counts. A poll
  fails (``connect``) while the node is down, and times out (``timeout``)
  with probability ``slow_poll`` while it is up;
* a request is decided; a reject is answered at once (an ``outcome`` with no
  node); a routed attempt to a node that is down fails at once (``connect``,
  503) and, while attempts are left (``max_attempts``), is decided again with
  the failed nodes excluded (§7); a routed attempt to an up node is served:
  a ``cold_load`` first loads the model (``[run] load_s``; a ``load`` event),
  ``route_unloaded`` waits for the node's own reload, then the answer takes
  the service time of its token counts and ends with a 200 ``outcome``.
  A node that fails after the answer started cannot change its status (§4);
* ``truth`` events record every real change (``up``, and why).

Simulated time has a resolution of one microsecond: every time (arrivals,
service and load times, real changes, poll rounds) is rounded to it at the
source and kept as whole microseconds, and records carry it as seconds
(``us / 1e6``). The lines of requests and of served answers write it with
six decimals (``12.500000``), the other lines as the shortest float
(``12.5``); both read back as exactly the float the engine was given.

Same scenario and seed: byte-identical trace.
"""

from __future__ import annotations

import heapq
import json
import os
from bisect import insort
from collections.abc import Callable, Iterator
from itertools import chain
from typing import IO, Any

from ..engine import Engine
from ..errors import Outcome
from ..fleet import Neuron
from ..replay import apply_record
from ..routing import NO_EXCLUDE
from ..trace import AtomicOutput, TraceHeader
from .processes import Change, micros, requests, stream, truth_changes
from .scenario import Scenario, SimNeuron

__all__ = ["Simulation", "simulate", "simulate_to_file"]

_LOAD, _TRUTH = "load", "truth"
#: An answer in flight: (done, sequence, request id, attempt, node, model).
_Answer = tuple[int, int, str, int, str, str]
#: The calendar's bucket width, as a power of two microseconds (about 16 ms).
_BUCKET_BITS = 14
#: Later than any simulated time (in microseconds: about 146,000 years).
_NEVER = 1 << 62
#: "000" .. "999": a time's microseconds are written as two of these.
_MILLS = tuple(f"{i:03d}" for i in range(1000))
_NO_FAILED: list[str] = []  # never changed: a failure makes a new list

Listener = Callable[[str, dict[str, Any], object], None]


def _discovery_body(sim_neuron: SimNeuron) -> dict[str, object]:
    return {
        "hostname": sim_neuron.name,
        "os": "Linux",
        "kernel": "sim",
        "devices": [
            {"index": d.index, "name": d.name, "vram_total_mb": d.vram_total_mb}
            for d in sim_neuron.devices
        ],
        "harnesses": ["sim"],
        "max_prompt_tokens": 32768,
    }


_dumps = json.dumps
_enc = json.encoder.encode_basestring_ascii


class Simulation:
    """One run of a scenario. :meth:`run` writes the trace lines through ``write``
    and hands every applied record (and what the engine answered) to ``listen``."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        write: Callable[[str], object] | None = None,
        flush: Callable[[], object] | None = None,
        listen: Listener | None = None,
    ) -> None:
        self.scenario = scenario
        self.policy = scenario.policy
        self.write = write
        self.flush = flush
        self.listen = listen
        self.header = TraceHeader(
            neurons=tuple(
                Neuron(
                    name=n.name,
                    endpoint=n.endpoint,
                    kind=n.kind,
                    devices=n.devices if n.declared else None,
                )
                for n in scenario.neurons
            ),
            catalogue=scenario.catalogue,
            policy=scenario.policy,
        )
        self.engine = Engine(self.header.neurons, scenario.catalogue, scenario.policy)
        self.requests = 0
        self.attempts = 0
        self.events = 0

    # --- output -------------------------------------------------------------------------------

    def _emit(self, line: str) -> None:
        self.events += 1
        if self.write is not None:
            self.write(line)

    def _apply(self, record: dict[str, Any], line: str | None = None) -> object:
        """Apply one record to the engine, write its line, tell the listener."""
        result = apply_record(self.engine, record["kind"], record)
        self._emit(line if line is not None else _record_line(record))
        if self.listen is not None:
            self.listen(record["kind"], record, result)
        return result

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> None:
        sc = self.scenario
        seed = sc.run.seed
        duration = sc.run.duration_s
        interval = self.policy.poll_interval
        max_attempts = self.policy.max_attempts
        upstream_retry = self.policy.retry_after(Outcome.UPSTREAM_UNAVAILABLE)
        # Simulated time is kept in whole microseconds (ints: exact, cheap to
        # compare and to write); the engine and the records get seconds.
        load_us = micros(sc.run.load_s)
        interval_us = max(1, micros(interval))
        traffic = sc.traffic
        nodes = [n.name for n in sc.neurons]
        up = dict.fromkeys(nodes, True)
        # Each node's real model map: model -> the time it is (or was) ready.
        ready = {n.name: dict.fromkeys(n.loaded, 0) for n in sc.neurons}
        busy: dict[str, dict[str, int]] = {n: {} for n in nodes}
        pollers = [
            _Poller(self, n, sc.failures[n.name].slow_poll, stream(seed, f"polls/{n.name}").random)
            for n in sc.neurons
        ]
        if self.write is not None:
            self.write(_dumps(self.header.to_json()) + "\n")
        apply = self._apply
        engine = self.engine
        write = self.write
        listen = self.listen
        route = engine.route
        finish = engine.finish
        observe_request = engine.observe_request
        # The fixed parts of the two lines every request writes, made once.
        served_tail = {
            name: f'"node": {_enc(name)}, "status": 200, "retry_after": null, '
            '"source": "upstream", "error": null}\n'
            for name in nodes
        }
        served_first = {name: f'", "attempt": 1, {tail}' for name, tail in served_tail.items()}
        first_part: dict[str, str] = {}  # a first attempt's line after its id, by model
        # A time's whole seconds, written: the last ones, kept (about a thousand lines share them).
        second, second_part = -1, ""
        flush = self.flush

        # Truth changes and loads wait in a heap of (t, sequence, what, and
        # three fields); answers in flight in a calendar (below). One sequence
        # number, shared by both, breaks ties in the order of scheduling.
        # Arrivals and poll rounds are merged in from outside them (one each is
        # pending at any time); at equal times the heap and the calendar go
        # first, then the poll round, then the arrival.
        queue: list[tuple[int, int, str, Any, Any, Any]] = []
        seq = 0
        changes: dict[str, Iterator[Change]] = {}
        for name in nodes:
            apply({"kind": "truth", "t": 0.0, "node": name, "up": True, "why": "start"})
            it = truth_changes(name, sc.failures[name], seed)
            changes[name] = it
            first = next(it, None)
            if first is not None:
                seq += 1
                heapq.heappush(queue, (micros(first.t), seq, _TRUTH, name, first, None))
        for n in sc.neurons:
            if n.declared:
                apply(
                    {
                        "kind": "discovery",
                        "t": 0.0,
                        "node": n.name,
                        "ok": True,
                        "body": {
                            "devices": [
                                {"index": d.index, "vram_total_mb": d.vram_total_mb}
                                for d in n.devices
                            ]
                        },
                        "source": "declared",
                    }
                )
        rounds = 0
        t_poll = 0
        rid = 0
        retries = 0  # attempts after a request's first
        answers = 0  # answers scheduled: each writes its outcome line when it ends
        push = heapq.heappush
        pop = heapq.heappop
        end = _NEVER if duration is None else micros(duration)
        # The heap's first entry, as (time, sequence): _NEVER when it is empty.
        qt, qseq = queue[0][:2] if queue else (_NEVER, 0)

        # Answers in flight (nearly every event) wait in a calendar instead:
        # bucket ``done >> _BUCKET_BITS`` holds the answers ending in it, as
        # (done, sequence, request id, attempt, node, model), unsorted until it is the current
        # bucket ``cur`` (sorted; ``cur[ci:]`` still to come); ``ahead`` is a heap
        # of the other buckets' numbers, all after ``cur_b``. An answer adds to
        # a list, instead of costing a heap's worth of comparisons.
        slots: dict[int, list[_Answer]] = {}
        ahead: list[int] = []
        cur: list[_Answer] = []
        ci = ncur = 0
        cur_b = -1

        # The requests drive the loop; before each, everything due up to its
        # time: answers and the heap's entries in (time, sequence) order, then
        # the poll round (at equal times the answers and the heap first, then
        # the poll round, then the arrival). A last arrival at infinity drains
        # the rest.
        arrivals = chain(requests(traffic, seed, duration), ((_NEVER, "", 0),))
        for t_arrival, model, service in arrivals:
            while True:
                # The answers due first (nearly every event), in a tight loop:
                # those ending by the arrival and the poll round, and before
                # the heap's first entry -- a tie with it goes by sequence.
                lim = t_arrival if t_arrival < t_poll else t_poll
                last = lim if lim < qt else qt - 1
                while True:
                    if ci == ncur:
                        if not ahead:
                            break
                        cur_b = pop(ahead)  # the next bucket becomes the current one
                        cur = slots.pop(cur_b)
                        cur.sort()
                        ci, ncur = 0, len(cur)
                    t, order, request_id, attempt, served, resolved = cur[ci]
                    if t > last and (t != qt or order > qseq or t > lim):
                        break
                    # An answer ends.
                    ci += 1
                    busy[served][resolved] -= 1
                    # What replay's mapping does with this record, by the
                    # calls the module docstring names: the attempt's count
                    # ends, and an upstream 200 is request_ok (see
                    # errors.attempt_result).
                    finish(served, resolved)
                    result = observe_request(served, t / 1e6, True)
                    if write is not None:
                        if attempt == 1:
                            rest = served_first[served]
                        else:
                            rest = f'", "attempt": {attempt}, {served_tail[served]}'
                        # The time written as the request line below writes it,
                        # inline in both: a call per line would cost more than
                        # the formatting.
                        whole = t // 1000000
                        if whole != second:
                            second, second_part = whole, f"{whole}."
                        frac = t % 1000000
                        write(
                            f'{{"kind": "outcome", "t": {second_part}'
                            f"{_MILLS[frac // 1000]}{_MILLS[frac % 1000]}, "
                            f'"id": "{request_id}{rest}'
                        )
                    if listen is not None:
                        record = {
                            "kind": "outcome",
                            "t": t / 1e6,
                            "id": request_id,
                            "attempt": attempt,
                            "node": served,
                            "status": 200,
                            "retry_after": None,
                            "source": "upstream",
                            "error": None,
                        }
                        listen("outcome", record, result)
                if t_arrival < qt and t_arrival < t_poll:
                    break  # the arrival is next (the common case)
                drained = duration is None and t_arrival == _NEVER and ci == ncur and not ahead
                if qt <= t_poll and qt <= t_arrival and qt != _NEVER:
                    # The heap's entry (the answers before it are done).
                    t, _, what, a, b, _c = pop(queue)
                    qt, qseq = queue[0][:2] if queue else (_NEVER, 0)
                    now = t / 1e6
                    if what is _LOAD:  # a cold load finished: the gateway records it
                        apply({"kind": "load", "t": now, "node": a, "model": b, "ok": True})
                    elif t > end or drained:
                        pass  # the run is over: the fleet is no longer watched
                    else:  # a real change of a node's state
                        name, change = a, b
                        up[name] = change.up
                        apply(
                            {
                                "kind": "truth",
                                "t": now,
                                "node": name,
                                "up": change.up,
                                "why": change.why,
                            }
                        )
                        following = next(changes[name], None)
                        if following is not None:
                            seq += 1
                            push(queue, (micros(following.t), seq, _TRUTH, name, following, None))
                            qt, qseq = queue[0][:2]
                    continue
                if t_poll > t_arrival or t_poll == _NEVER:
                    break
                t = t_poll
                if t > end or drained:
                    t_poll = _NEVER  # no more rounds
                    continue
                for poller in pollers:
                    poller.poll(t, up, ready, busy)
                rounds += 1
                t_poll = rounds * interval_us
            if t_arrival == _NEVER:
                break

            # An arrival: decide, and fail over while attempts are left.
            t = t_arrival
            now = t / 1e6
            rid += 1
            if not rid & 0x3FF and flush is not None:
                flush()  # a few hundred kB: the buffered lines stay in the CPU's caches
            request_id = f"r{rid}"
            # What replay's mapping does with the request record, but for
            # keeping its key (see the module docstring).
            decision = route(model, now)
            if write is not None:
                after_id = first_part.get(model)
                if after_id is None:
                    after_id = first_part[model] = f'", {_model_part(model)}1}}\n'
                whole = t // 1000000
                if whole != second:
                    second, second_part = whole, f"{whole}."
                frac = t % 1000000
                write(
                    f'{{"kind": "request", "t": {second_part}'
                    f'{_MILLS[frac // 1000]}{_MILLS[frac % 1000]}, "id": "{request_id}{after_id}'
                )
            if listen is not None:
                listen("request", _request_record(now, request_id, 1, model, NO_EXCLUDE), decision)
            node = decision.node
            attempt = 1
            failed: list[str] = _NO_FAILED
            while True:
                if node is not None and up[node]:
                    # Served: once the model is ready on the node (a load first if needed).
                    resolved = decision.model
                    models = ready[node]
                    at = models.get(resolved)
                    if at is None:
                        at = models[resolved] = t + load_us
                        if decision.outcome is Outcome.COLD_LOAD:
                            seq += 1
                            push(queue, (at, seq, _LOAD, node, resolved, None))
                            qt, qseq = queue[0][:2]
                    done = (at if at > t else t) + service
                    counts = busy[node]
                    counts[resolved] = counts.get(resolved, 0) + 1
                    answers += 1
                    seq += 1
                    answer = (done, seq, request_id, attempt, node, resolved)
                    bucket = done >> _BUCKET_BITS
                    if bucket == cur_b:
                        insort(cur, answer, ci)
                        ncur += 1
                    else:
                        if bucket < cur_b:  # before the current bucket: put it back
                            if ci < ncur:
                                slots[cur_b] = cur[ci:]
                                push(ahead, cur_b)
                            cur, ci, ncur, cur_b = [], 0, 0, -1
                        slot = slots.get(bucket)
                        if slot is None:
                            slots[bucket] = [answer]
                            push(ahead, bucket)
                        else:
                            slot.append(answer)
                    break
                if node is None:  # a reject: answered at once, final
                    apply(
                        {
                            "kind": "outcome",
                            "t": now,
                            "id": request_id,
                            "attempt": attempt,
                            "node": None,
                            "status": decision.status,
                            "retry_after": decision.retry_after,
                            "source": "gateway",
                            "error": None,
                        }
                    )
                    break
                # The node is down: the connection fails at once, and its count ends.
                finish(node, decision.model)
                apply(
                    {
                        "kind": "outcome",
                        "t": now,
                        "id": request_id,
                        "attempt": attempt,
                        "node": node,
                        "status": 503,
                        "retry_after": upstream_retry,
                        "source": "gateway",
                        "error": "connect",
                    }
                )
                failed = [*failed, node]
                if attempt >= max_attempts:
                    break
                # Decided again with every failed node excluded (§7).
                attempt += 1
                retries += 1
                exclude = frozenset(failed)
                decision = route(model, now, exclude)
                if write is not None:
                    write(_record_line(_request_record(now, request_id, attempt, model, exclude)))
                if listen is not None:
                    record = _request_record(now, request_id, attempt, model, exclude)
                    listen("request", record, decision)
                node = decision.node
        # Lines not written through _apply: one request line per attempt, one
        # outcome line per answer.
        self.events += rid + retries + answers
        self.requests = rid
        self.attempts = rid + retries


class _Poller:
    """The gateway's poll of one node, against the node's real state."""

    def __init__(
        self, sim: Simulation, neuron: SimNeuron, slow_poll: float, draw: Callable[[], float]
    ) -> None:
        self.sim = sim
        self.name = neuron.name
        self.neuron = neuron
        self.slow_poll = slow_poll
        self.draw = draw
        self.discovers = neuron.kind == "neuron"

    def poll(
        self,
        t_us: int,
        up: dict[str, bool],
        ready: dict[str, dict[str, int]],
        busy: dict[str, dict[str, int]],
    ) -> None:
        """The poll at ``t_us`` (microseconds)."""
        t = t_us / 1e6
        name = self.name
        apply = self.sim._apply
        failed: str | None = None
        if not up[name]:
            failed = "connect"
        elif self.slow_poll and self.draw() < self.slow_poll:
            failed = "timeout"
        if self.discovers and self.sim.engine.needs_discovery(name):
            if failed is None:
                body = _discovery_body(self.neuron)
                apply({"kind": "discovery", "t": t, "node": name, "ok": True, "body": body})
            else:
                apply({"kind": "discovery", "t": t, "node": name, "ok": False})
        if failed is not None:
            apply({"kind": "models", "t": t, "node": name, "ok": False, "error": failed})
            return
        models = [
            {"id": m, "status": "loaded" if at <= t_us else "loading"}
            for m, at in ready[name].items()
        ]
        apply({"kind": "models", "t": t, "node": name, "ok": True, "body": models})
        load = [{"id": m, "in_flight": n, "queue_depth": 0} for m, n in busy[name].items() if n]
        apply({"kind": "health", "t": t, "node": name, "ok": True, "body": {"models": load}})


def _model_part(model: str) -> str:
    return f'"model": {_enc(model)}, "attempt": '


def _request_record(
    t: float, request_id: str, attempt: int, model: str, exclude: frozenset[str]
) -> dict[str, Any]:
    """The request record of an attempt (as replay reads it back)."""
    record: dict[str, Any] = {
        "kind": "request",
        "t": t,
        "id": request_id,
        "model": model,
        "attempt": attempt,
    }
    if exclude:
        record["exclude"] = exclude
    return record


def _record_line(record: dict[str, Any]) -> str:
    if "exclude" in record:
        record = {**record, "exclude": sorted(record["exclude"])}
    return _dumps(record) + "\n"


def simulate(
    scenario: Scenario, out: IO[str] | None = None, listen: Listener | None = None
) -> Simulation:
    """Run ``scenario``; write the trace to ``out`` (if given). Returns the finished run."""
    if out is None:
        sim = Simulation(scenario, listen=listen)
        sim.run()
        return sim
    # Lines are collected and written in large chunks: one write per line
    # would cost as much as the engine.
    lines: list[str] = []

    def flush() -> None:
        out.write("".join(lines))
        lines.clear()

    sim = Simulation(scenario, write=lines.append, flush=flush, listen=listen)
    try:
        sim.run()
    finally:
        flush()
    return sim


def simulate_to_file(scenario: Scenario, path: str | os.PathLike[str]) -> Simulation:
    """Run ``scenario`` and write its trace to ``path`` (``.gz``: gzip); the file
    appears only when complete."""
    with AtomicOutput(path) as out:
        return simulate(scenario, out)
