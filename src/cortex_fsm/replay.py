"""Trace replay: rerun what a gateway saw, under its policy or another one.

:func:`apply_event` is the one mapping from a trace event to an engine
observation. The gateway records the events it applies through the same
function, so replaying its recording reproduces its decisions exactly.

:class:`Replayer` feeds events to an engine and keeps what a summary needs:
counts per outcome and status, and per node its transitions and the time it
spent in each state (from the trace's first event to its last).
:func:`replay` and :func:`compare` drive one or two replayers over a file;
comparing runs both policies in lock-step over a single read of the trace.
"""

from __future__ import annotations

import itertools
import json
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import IO, Any

import attrs

from .engine import Engine, Transition
from .errors import Outcome, attempt_result
from .fleet import PollFailure
from .policy import Policy
from .routing import NO_EXCLUDE, Decision
from .trace import (
    _KIND_OF,
    _TAILS,
    Event,
    RequestEvent,
    TraceHeader,
    TraceReader,
    decision_line,
    decision_tail,
)
from .wire import Invalid, parse_discovery

__all__ = [
    "Comparison",
    "Difference",
    "NodeSummary",
    "Replayer",
    "Summary",
    "apply_event",
    "apply_record",
    "compare",
    "render_comparison",
    "render_summary",
    "replay",
]


# Each function applies one validated trace record (see TraceReader.records).


def _discovery(engine: Engine, f: Mapping[str, Any]) -> None:
    result = parse_discovery(f["body"]) if f["ok"] else Invalid(reason="fetch failed")
    engine.observe_discovery(f["node"], f["t"], result)


def _models(engine: Engine, f: Mapping[str, Any]) -> Transition | None:
    if f["ok"]:
        return engine.observe_models_body(f["node"], f["t"], f["body"])
    return engine.observe_models(
        f["node"], f["t"], PollFailure(reason=f.get("error") or "unspecified")
    )


def _health(engine: Engine, f: Mapping[str, Any]) -> None:
    if f["ok"]:
        engine.observe_health_body(f["node"], f["t"], f["body"])
    else:
        engine.observe_health(f["node"], f["t"], Invalid(reason="fetch failed"))


def _load(engine: Engine, f: Mapping[str, Any]) -> None:
    engine.observe_load(f["node"], f["t"], f["model"], f["ok"])


def _unload(engine: Engine, f: Mapping[str, Any]) -> None:
    engine.observe_unload(f["node"], f["t"], f["model"], f["ok"])


def _request(engine: Engine, f: Mapping[str, Any]) -> Decision:
    return engine.route(
        f["model"], f["t"], f.get("exclude", NO_EXCLUDE), (f["id"], f.get("attempt") or 1)
    )


def _outcome(engine: Engine, f: Mapping[str, Any]) -> Transition | None:
    node, error = f["node"], f["error"]
    ok = attempt_result(node=node, source=f["source"], status=f["status"], error=error)
    return engine.observe_outcome(
        (f["id"], f["attempt"]), f["t"], node=node, ok=ok, reason=error or ""
    )


def _neuron_added(engine: Engine, f: Mapping[str, Any]) -> None:
    engine.add_neuron(f["neuron"], f["t"])


def _neuron_removed(engine: Engine, f: Mapping[str, Any]) -> None:
    engine.remove_neuron(f["node"], f["t"])


def _truth(engine: Engine, f: Mapping[str, Any]) -> None:
    """Ground truth is for ``score``: the engine never sees it."""


def _reconfigured(engine: Engine, f: Mapping[str, Any]) -> list[Transition] | None:
    moved = engine.reconfigure(f["t"], catalogue=f.get("catalogue"), policy=f.get("policy"))
    return moved or None


#: What applying one record gives: a request's decision; the health transition
#: of a poll or request outcome; the transitions of a reconfiguration; or nothing.
_Result = Decision | Transition | list[Transition] | None
_APPLY: dict[str, Callable[[Engine, Mapping[str, Any]], _Result]] = {
    "discovery": _discovery,
    "models": _models,
    "health": _health,
    "load": _load,
    "unload": _unload,
    "request": _request,
    "outcome": _outcome,
    "neuron_added": _neuron_added,
    "neuron_removed": _neuron_removed,
    "truth": _truth,
    "reconfigured": _reconfigured,
}


def apply_record(engine: Engine, kind: str, fields: Mapping[str, Any]) -> _Result:
    """Apply one validated trace record: a request gives its Decision, a poll or
    request outcome may give a Transition. This is the only mapping from trace
    events to observations."""
    return _APPLY[kind](engine, fields)


def record_of(event: Event) -> dict[str, Any]:
    """The validated-record form (``TraceReader.records``) of a typed event."""
    fields: dict[str, Any] = {"kind": _KIND_OF[type(event)]}
    fields.update(attrs.asdict(event, recurse=False))
    if type(event) is RequestEvent:
        if event.exclude:
            fields["exclude"] = frozenset(event.exclude)
        else:
            del fields["exclude"]
        if event.attempt is None:
            del fields["attempt"]
    return fields


def apply_event(engine: Engine, event: Event) -> _Result:
    """Apply one typed trace event (as the gateway does before recording it)."""
    fields = record_of(event)
    return _APPLY[fields["kind"]](engine, fields)


def transitions_of(result: object) -> list[Transition]:
    """The health transitions an applied record produced (none, one or several)."""
    if type(result) is Transition:
        return [result]
    if type(result) is list:
        return list(result)
    return []


@attrs.frozen(slots=True, kw_only=True)
class NodeSummary:
    name: str
    transitions: int
    final: str
    time_in: dict[str, float]


@attrs.frozen(slots=True, kw_only=True)
class Summary:
    policy: Policy
    events: int
    requests: int
    t_start: float | None
    t_end: float | None
    outcomes: dict[str, int]
    statuses: dict[int, int]
    nodes: tuple[NodeSummary, ...]


class Replayer:
    """One engine fed trace records, with the bookkeeping for a summary.

    Only transitions cost bookkeeping here (time spent per state); outcome
    counts come from the engine's statistics, times and event counts from
    the reader, so the per-request path stays as short as the engine's.

    ``adjust`` is applied to every policy the trace sets -- a recorded
    reconfiguration included -- so that ``--set`` overrides hold throughout.
    """

    def __init__(
        self,
        header: TraceHeader,
        policy: Policy,
        adjust: Callable[[Policy], Policy] | None = None,
    ) -> None:
        self.policy = policy
        self.adjust = adjust
        self.engine = Engine(header.neurons, header.catalogue, policy)
        self.t_start: float | None = None
        self._since: dict[str, float] = {}
        self._label = dict.fromkeys(self.engine.node_names, "unknown")
        self._time_in: dict[str, dict[str, float]] = {n: {} for n in self.engine.node_names}
        self._transitions = dict.fromkeys(self.engine.node_names, 0)
        self.transitions: list[Transition] | None = None  # set to a list to keep them

    def run(
        self,
        records: Iterable[tuple[str, Mapping[str, Any]]],
        write: Callable[[str], object] | None,
    ) -> None:
        """Apply every record; write each decision line with ``write`` (if given).

        The hot loop of replay: requests go straight to ``Engine.route``.
        """
        it = iter(records)
        first = next(it, None)
        if first is None:
            return
        if self.t_start is None:
            self.t_start = first[1]["t"]
        engine = self.engine
        route = engine.route
        models = engine.observe_models_body
        health = engine.observe_health_body
        feed = self.feed
        transition = self._transition
        # The common cases are spelled out (one call less each); the rest go
        # through feed(). Both do exactly what apply_record does.
        for kind, f in itertools.chain((first,), it):
            if kind == "request":
                if "exclude" in f or "attempt" in f:
                    decision = _request(engine, f)
                else:
                    decision = route(f["model"], f["t"], NO_EXCLUDE, (f["id"], 1))
                if write is not None:
                    write(decision_line(decision, f["id"], f["t"], f.get("attempt")))
            elif kind == "health" and f["ok"]:
                health(f["node"], f["t"], f["body"])
            elif kind == "models" and f["ok"]:
                result = models(f["node"], f["t"], f["body"])
                if result is not None:
                    transition(result)
            else:
                feed(kind, f)

    def run_trace(
        self, trace: TraceReader, write: Callable[[str], object] | None, *, fast: bool = True
    ) -> None:
        """Apply every record of ``trace``, as :meth:`run` does with ``trace.records()``.

        With ``fast`` and msgspec installed, the ordinary request, ``/models``
        and ``/health`` lines are decoded by :mod:`cortex_fsm.trace_fast`, and
        every other line -- or one it refuses -- by the reader's json path, so
        the decisions, the summary and every error (file, line, problem) are
        the same either way.
        """
        if fast and _fast_decoding():
            _run_fast(self, trace, write)
        else:
            self.run(trace.records(), write)

    def feed(self, kind: str, fields: Mapping[str, Any]) -> Decision | None:
        """Apply one record; returns the decision when it is a request."""
        if self.t_start is None:
            self.t_start = fields["t"]
        if kind == "reconfigured" and self.adjust is not None and "policy" in fields:
            fields = {**fields, "policy": self.adjust(fields["policy"])}
        result = _APPLY[kind](self.engine, fields)
        if type(result) is Decision:
            return result
        if kind == "neuron_added":
            self._joined(fields["neuron"].name, fields["t"])
        elif kind == "neuron_removed":
            self._left(fields["node"], fields["t"])
        for tr in transitions_of(result):
            self._transition(tr)
        return None

    def _joined(self, node: str, t: float) -> None:
        self._time_in.setdefault(node, {})
        self._transitions.setdefault(node, 0)
        self._label[node] = "unknown"
        self._since[node] = t

    def _left(self, node: str, t: float) -> None:
        self._account(node, t)
        self._label[node] = "removed"

    def _account(self, node: str, t: float) -> None:
        label = self._label[node]
        since = self._since.get(node, self.t_start)
        assert since is not None
        if label != "removed":
            spent = self._time_in[node]
            spent[label] = spent.get(label, 0.0) + (t - since)
        self._since[node] = t

    def _transition(self, tr: Transition) -> None:
        node = tr.node
        self._account(node, tr.t)
        self._label[node] = tr.to.label
        self._transitions[node] += 1
        if self.transitions is not None:
            self.transitions.append(tr)

    def summary(self, *, events: int, t_end: float | None) -> Summary:
        nodes = []
        for name in sorted(self._label):
            time_in = dict(self._time_in[name])
            label = self._label[name]
            since = self._since.get(name, self.t_start)
            if t_end is not None and since is not None and label != "removed":
                time_in[label] = time_in.get(label, 0.0) + (t_end - since)
            nodes.append(
                NodeSummary(
                    name=name,
                    transitions=self._transitions[name],
                    final=label,
                    time_in=time_in,
                )
            )
        outcomes = self.engine.statistics().decisions
        statuses: dict[int, int] = {}
        for outcome, n in outcomes.items():
            status = Outcome(outcome).status
            statuses[status] = statuses.get(status, 0) + n
        return Summary(
            policy=self.policy,
            events=events,
            requests=sum(outcomes.values()),
            t_start=self.t_start,
            t_end=t_end,
            outcomes=dict(sorted(outcomes.items())),
            statuses=dict(sorted(statuses.items())),
            nodes=tuple(nodes),
        )


def _fast_decoding() -> bool:
    """Is msgspec installed (so :mod:`cortex_fsm.trace_fast` can be imported)?"""
    try:
        from . import trace_fast  # noqa: F401
    except ImportError:
        return False
    return True


_CHUNK = 4096  # lines read between two writes of the decision lines they gave
_TAIL_LIMIT = 1 << 16  # decisions whose line tails are remembered by identity
_REFUSED = object()


def _run_fast(
    replayer: Replayer, trace: TraceReader, write: Callable[[str], object] | None
) -> None:
    """Replayer.run_trace with msgspec: the hot loop of replay.

    A line takes the fast path only when the json path would accept it and
    make the same record of it (the checks below are the reader's for these
    kinds, in :meth:`TraceReader.records`); every other line goes to
    ``trace.record_of_line``, which reads it exactly as ``records`` does. A
    body equal, byte for byte, to the node's last one of its kind is not
    decoded again: the engine gets the same value as last time, which it
    recognises at once.

    Lines are read as the json path reads them (the file's own line
    iteration, so a damaged gzip stream fails at the same line), in chunks of
    ``_CHUNK`` lines; the decision lines of a chunk are written at its end,
    in one call. Times need no finiteness check here: JSON has no infinities
    or NaN, and msgspec refuses a number out of a float's range (the json
    path then reads the line and reports it).
    """
    from .trace_fast import (
        Health,
        HealthRaw,
        Models,
        Request,
        decode_body,
        decode_health_raw,
        decode_line,
    )

    engine = replayer.engine
    route = engine.route
    models = engine.observe_models_body
    health = engine.observe_health_body
    health_busy = engine.observe_health
    feed = replayer.feed
    transition = replayer._transition
    neurons = trace._neurons  # shared with the reader: neuron_added/removed update it
    ids = trace._request_ids
    add_id = ids.add
    line, last_t, events = trace.line, trace._last_t, trace.events
    started = replayer.t_start is not None
    last_models: dict[str, tuple[object, object]] = {}  # node -> (raw body, its value)
    last_health: dict[str, tuple[object, object]] = {}  # ... of another shape
    pending: list[str] = []
    emit = pending.append
    lines = trace._fh
    chunk = itertools.islice
    tails = _TAILS
    # Decisions are interned: their line tails are found by identity (hashing
    # a Decision costs more than rendering the line's head); each is kept
    # alive in ``known`` while its id is a key.
    tail_of: dict[int, str] = {}
    known: list[Decision] = []
    enc = encode_basestring_ascii
    shown_t, t_text = math.nan, ""
    ev: Any
    try:
        while True:
            first = line
            try:
                for raw in chunk(lines, _CHUNK):
                    line += 1
                    try:
                        # A last line without its end of line: the json path
                        # decides whether it is complete.
                        ev = decode_line(raw) if raw[-1] == 10 else None
                    except Exception:
                        try:  # a /health line with a body of another shape?
                            ev = decode_health_raw(raw)
                        except Exception:  # anything else msgspec refuses: the json path says why
                            ev = None
                    cls = type(ev)
                    if cls is Request:
                        t = ev.t
                        rid = ev.id
                        if t >= last_t and started and rid not in ids:
                            add_id(rid)
                            last_t = t
                            events += 1
                            decision = route(ev.model, t, NO_EXCLUDE, (rid, 1))
                            if write is not None:
                                if t != shown_t:  # the events of a poll round share their time
                                    shown_t, t_text = t, repr(t)
                                tail = tail_of.get(id(decision))
                                if tail is None:
                                    tail = tails.get(decision)
                                    if tail is None:
                                        tail = decision_tail(decision)
                                    if len(known) >= _TAIL_LIMIT:
                                        tail_of.clear()
                                        known.clear()
                                    tail_of[id(decision)] = tail
                                    known.append(decision)
                                emit(f'{{"id": {enc(rid)}, "t": {t_text}, {tail}')
                            continue
                    elif cls is Health:  # a body of the documented shape
                        t = ev.t
                        node = ev.node
                        if t >= last_t and ev.ok and started and node in neurons:
                            last_t = t
                            events += 1
                            # The load readings parse_health makes of the body
                            # (a loop: cheaper than a comprehension's call).
                            busy = {}
                            readings = ev.body.models
                            if readings is not None:
                                for r in readings:
                                    busy[r.id] = r.in_flight + r.queue_depth
                            health_busy(node, t, busy)
                            continue
                    elif cls is HealthRaw:  # a body of another shape: the engine judges it
                        t = ev.t
                        node = ev.node
                        body_raw = ev.body
                        if t >= last_t and ev.ok and body_raw and started and node in neurons:
                            seen = last_health.get(node)
                            if seen is None or seen[0] != body_raw:
                                try:
                                    seen = (body_raw, decode_body(body_raw))
                                except Exception:  # not JSON: the json path reports it
                                    seen = None
                                else:
                                    last_health[node] = seen
                            if seen is not None:
                                last_t = t
                                events += 1
                                health(node, t, seen[1])
                                continue
                    elif cls is Models:
                        t = ev.t
                        node = ev.node
                        if t >= last_t and started and node in neurons:
                            if ev.ok:
                                body_raw = ev.body
                                if body_raw:
                                    seen_models = last_models.get(node)
                                    if seen_models is not None and seen_models[0] == body_raw:
                                        body = seen_models[1]
                                    else:
                                        try:
                                            body = decode_body(body_raw)
                                        except Exception:
                                            body = _REFUSED
                                        else:
                                            last_models[node] = (body_raw, body)
                                    if body is not _REFUSED:
                                        last_t = t
                                        events += 1
                                        result = models(node, t, body)
                                        if result is not None:
                                            transition(result)
                                        continue
                            else:  # a failed poll
                                last_t = t
                                events += 1
                                failed = {"kind": "models", "t": t, "node": node, "ok": False}
                                failed["error"] = ev.error
                                feed("models", failed)
                                continue
                    # Any other line: the json path reads it (or says what is wrong).
                    trace.line, trace._last_t, trace.events = line - 1, last_t, events
                    got = trace.record_of_line(raw)
                    line, last_t, events = trace.line, trace._last_t, trace.events
                    if trace.truncated is not None:
                        return
                    for kind, f in got:
                        answer = feed(kind, f)
                        if answer is not None and write is not None:
                            emit(decision_line(answer, f["id"], f["t"], f.get("attempt")))
                        started = True
            except (OSError, EOFError, zlib.error) as exc:
                # Reading the file failed (a write is never made in this block).
                trace.read_failed(exc, line)
                return
            if pending and write is not None:
                write("".join(pending))
            pending.clear()
            if line - first < _CHUNK:  # the end of the file
                return
    finally:
        trace.line, trace._last_t, trace.events = line, last_t, events
        if pending and write is not None:
            write("".join(pending))


def _adjuster(overrides: Sequence[str], where: str) -> Callable[[Policy], Policy] | None:
    if not overrides:
        return None
    return lambda policy: policy.with_assignments(overrides, where=where)


def replay(
    path: str,
    *,
    overrides: Sequence[str] = (),
    out: IO[str] | None = None,
    fast: bool = True,
) -> Summary:
    """Replay ``path``; write decision lines to ``out`` (if given); return the summary.

    ``overrides`` are ``KEY=VALUE`` policy changes on top of the header's policy.
    ``fast=False`` reads every line with the stdlib json path even when msgspec
    is installed (same result; see :meth:`Replayer.run_trace`).
    Raises :class:`~cortex_fsm.errors.TraceError` / ``ConfigError`` on bad input.
    """
    with TraceReader(path) as trace:
        policy = trace.header.policy.with_assignments(overrides, where="--set")
        replayer = Replayer(trace.header, policy, _adjuster(overrides, "--set"))
        replayer.run_trace(trace, None if out is None else out.write, fast=fast)
        return replayer.summary(events=trace.events, t_end=trace.last_t)


@attrs.frozen(slots=True, kw_only=True)
class Difference:
    """A request told different things under the two policies."""

    id: str
    t: float
    model: str
    base: Decision
    other: Decision


@attrs.frozen(slots=True, kw_only=True)
class Comparison:
    base: Summary
    other: Summary
    differences: tuple[Difference, ...]
    differing: int  # may exceed len(differences) when the list was capped


def compare(
    path: str,
    other: Sequence[str],
    *,
    overrides: Sequence[str] = (),
    out: IO[str] | None = None,
    keep: int = 1000,
) -> Comparison:
    """Replay ``path`` under the base policy (header + ``overrides``) and under
    the base policy changed by ``other``; list requests whose outcome or node differ.
    Decision lines of the base run go to ``out`` if given."""
    with TraceReader(path) as trace:
        base_policy = trace.header.policy.with_assignments(overrides, where="--set")
        other_policy = base_policy.with_assignments(other, where="--compare")
        a = Replayer(trace.header, base_policy, _adjuster(overrides, "--set"))
        b = Replayer(
            trace.header,
            other_policy,
            lambda p: p.with_assignments([*overrides, *other], where="--compare"),
        )
        diffs: list[Difference] = []
        differing = 0
        for kind, fields in trace.records():
            da = a.feed(kind, fields)
            db = b.feed(kind, fields)
            if da is None or db is None:
                continue
            if out is not None:
                out.write(decision_line(da, fields["id"], fields["t"], fields.get("attempt")))
            if (da.outcome, da.node) != (db.outcome, db.node):
                differing += 1
                if len(diffs) < keep:
                    diffs.append(
                        Difference(
                            id=fields["id"], t=fields["t"], model=fields["model"], base=da, other=db
                        )
                    )
        events, t_end = trace.events, trace.last_t
    return Comparison(
        base=a.summary(events=events, t_end=t_end),
        other=b.summary(events=events, t_end=t_end),
        differences=tuple(diffs),
        differing=differing,
    )


# --- rendering ---------------------------------------------------------------------------------


def _fmt_time(seconds: float) -> str:
    return f"{seconds:g}s"


def _summary_rows(s: Summary) -> list[tuple[str, str, str]]:
    """(key, label, value) rows of a summary; keys are unique, so two summaries
    can be shown side by side."""
    rows: list[tuple[str, str, str]] = [
        ("policy", "policy", s.policy.describe()),
        ("events", "events", str(s.events)),
        ("requests", "requests", str(s.requests)),
    ]
    for outcome, n in s.outcomes.items():
        rows.append((f"outcome/{outcome}", f"  {outcome}", str(n)))
    for status in (200, 404, 503):
        rows.append((f"status/{status}", f"  status {status}", str(s.statuses.get(status, 0))))
    for node in s.nodes:
        # Node names are arbitrary strings: keys are JSON arrays, never ambiguous.
        rows.append(
            (
                json.dumps(["node", node.name]),
                f"node {node.name}",
                f"final {node.final}, {node.transitions} transitions",
            )
        )
        for label, seconds in sorted(node.time_in.items(), key=lambda kv: _state_order(kv[0])):
            key = json.dumps(["node", node.name, label])
            rows.append((key, f"  in {label}", _fmt_time(seconds)))
    return rows


def _state_order(label: str) -> tuple[int, int]:
    if label.startswith("suspect("):
        return (2, int(label[8:-1]))
    return ({"unknown": 0, "healthy": 1, "unhealthy": 3}.get(label, 4), 0)


def render_summary(s: Summary, *, source: str = "") -> str:
    span = "" if s.t_start is None else f" (t {s.t_start:g} .. {s.t_end:g})"
    lines = [f"summary of {source}{span}"] if source else [f"summary{span}"]
    rows = _summary_rows(s)
    width = max(len(label) for _, label, _ in rows)
    lines += [f"  {label:<{width}}  {value}" for _, label, value in rows]
    return "\n".join(lines) + "\n"


def _describe(d: Decision) -> str:
    if d.node is not None:
        return f"{d.outcome.value} -> {d.node}"
    retry = f", retry {d.retry_after}s" if d.retry_after is not None else ""
    return f"{d.outcome.value} ({d.status}{retry})"


def render_comparison(c: Comparison, *, source: str = "") -> str:
    a, b = c.base.policy.describe(), c.other.policy.describe()
    out = [f"comparing {source}" if source else "comparing", f"  A: {a}", f"  B: {b}", ""]
    out.append(f"{c.differing} of {c.base.requests} requests differ")
    if c.differences:
        w_id = max(len(d.id) for d in c.differences)
        w_model = max(len("model"), *(len(d.model) for d in c.differences))
        w_a = max(len(_describe(d.base)) for d in c.differences)
        out.append(f"  {'id':<{w_id}}  {'t':>8}  {'model':<{w_model}}  {'A':<{w_a}}  B")
        for d in c.differences:
            out.append(
                f"  {d.id:<{w_id}}  {d.t:>8g}  {d.model:<{w_model}}  "
                f"{_describe(d.base):<{w_a}}  {_describe(d.other)}"
            )
        if c.differing > len(c.differences):
            out.append(f"  ... and {c.differing - len(c.differences)} more")
    out.append("")
    rows_a, rows_b = _summary_rows(c.base), _summary_rows(c.other)
    keys = _merge_keys([k for k, _, _ in rows_a], [k for k, _, _ in rows_b])
    labels = {k: label for k, label, _ in [*rows_a, *rows_b]}
    va = {k: v for k, _, v in rows_a}
    vb = {k: v for k, _, v in rows_b}
    keys.remove("policy")
    width = max(len(labels[k]) for k in keys)
    col = max(len(va.get(k, "-")) for k in keys)
    out.append(f"  {'':<{width}}  {'A':<{col}}  B")
    for k in keys:
        out.append(f"  {labels[k]:<{width}}  {va.get(k, '-'):<{col}}  {vb.get(k, '-')}")
    return "\n".join(out) + "\n"


def _merge_keys(a: Iterable[str], b: Iterable[str]) -> list[str]:
    """Both key lists in one order: A's order, B-only keys after their predecessor
    in B (the first key of B, if B-only, at the end). Linear in the keys."""
    merged = list(a)
    known = set(merged)
    after: dict[str | None, list[str]] = {}
    prev: str | None = None
    for key in b:
        if key not in known:
            known.add(key)
            after.setdefault(prev, []).append(key)
        prev = key
    out: list[str] = []
    stack = [*merged, *after.pop(None, [])][::-1]  # popped from the end: in order
    while stack:
        key = stack.pop()
        out.append(key)
        stack.extend(reversed(after.pop(key, [])))
    return out
