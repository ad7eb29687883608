"""``cortex-fsm audit``: runtime verification of a recorded trace.

A gateway's recording (``serve --record``, trace format version 2) says what
every node answered, what every request was decided, and -- in its
``outcome`` events -- what every attempt was actually told. The audit reads
it once, in order, and judges it against docs/semantics.md:

* **the decisions** (``REPLAY``): the engine, fed the recording exactly as
  ``cortex-fsm replay`` feeds it, decides every attempt as the gateway did:
  a routed attempt's outcome names the decision's node; a reject's outcome
  names none, with the reject's status and Retry-After;
* **what the gateway told clients** -- every ``outcome`` whose ``source`` is
  ``gateway``: R1 (no 404 while a down or excluded node is feasible for the
  model or, with ``known_down = "retry"``, is known to hold it), R2 (every
  503 carries a Retry-After, the value the policy in force gives for that
  answer; no 404 carries one), R8 (a transport failure or 5xx of the chosen
  node never reaches the client as a 404, with ``io_errors = "extension"``),
  R9 (the attempt's node is not one it excluded), R10 (with attempts left,
  a node failing before its first byte while another routable node has the
  model loaded is followed by another attempt, excluding every node the
  request failed on);
* **every replayed decision**, on the fleet the observations describe:
  R1-R4, R6, R7, R9, SPEC (the ordered rules) and ANSWER (§4, §9);
* **health**: after every poll and every outcome, H1-H6 hold for the node
  given the events the trace shows, and its state is the one the table of
  §2 and §6 gives (HSPEC).

Nothing is restated here: the predicates are those of
:mod:`cortex_fsm.verify.invariants` and the fleet they judge is the one a
:class:`~cortex_fsm.verify.monitor.Monitor` (the spec's own reading of the
same observations) keeps; this module only walks the trace, pairs each
outcome with its decision, and words what went wrong with the file and line.

Exit status of the command: 0 when the trace obeys every invariant, 1 with
the first violations (``FILE:LINE: INVARIANT: what happened``), 2 when the
trace is malformed (one line naming the file, the line and the problem).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

import attrs

from ..catalogue import Catalogue
from ..engine import Engine
from ..errors import Outcome, TraceError
from ..fleet import FleetSnapshot, ModelStatus
from ..health import HealthState, Phase
from ..policy import Policy
from ..replay import apply_record
from ..routing import Decision
from ..trace import TraceHeader, TraceReader
from ..verify.invariants import (
    ANSWERS,
    INVARIANTS,
    check_decision,
    check_health,
    r1,
    r2,
    spec_feasible,
    spec_model,
)
from ..verify.monitor import Monitor, NodeMonitor, _attempt_result
from .check import gh_escape

__all__ = [
    "AUDITED",
    "Violation",
    "add_audit_arguments",
    "audit",
    "audit_main",
    "render",
]

#: What the audit checks, by name (the invariants of docs/semantics.md it
#: judges a recording by, and REPLAY).
AUDITED: Mapping[str, str] = {
    "REPLAY": "replaying the recording gives the decisions the gateway recorded",
    "R1": INVARIANTS["R1"],
    "R2": "every 503 carries Retry-After (the value of the policy in force); no 404 does",
    "R8": "a transport failure or 5xx of a chosen node never reaches the client as a 404",
    "R9": INVARIANTS["R9"],
    "R10": "with attempts left, a node that fails before its first byte while another "
    "routable node has the model loaded is followed by another attempt excluding it",
    **{k: INVARIANTS[k] for k in ("H1", "H2", "H3", "H4", "H5", "H6", "HSPEC")},
    **{k: INVARIANTS[k] for k in ("R3", "R4", "R6", "R7", "SPEC", "ANSWER")},
}

_SERVING = (ModelStatus.LOADED, ModelStatus.RELOADING)
_NONE: frozenset[str] = frozenset()


@attrs.frozen(slots=True, kw_only=True)
class Violation:
    """One invariant a recording breaks: where (``file``, ``line``; None: the
    trace as a whole), which (``invariant``, a key of :data:`AUDITED`), and
    what happened, in a sentence."""

    file: str
    line: int | None
    invariant: str
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "invariant": self.invariant,
            "message": self.message,
        }

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.invariant}: {self.message}"


# --- line numbers -----------------------------------------------------------------------------


class _Lines:
    """The line number of each event, read alongside the trace reader: the
    reader skips blank lines and so does this (the header is the first
    non-blank line)."""

    def __init__(self, path: str) -> None:
        raw = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._raw = raw
        self._fh: IO[bytes] = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw  # type: ignore[assignment]
        self._n = 0
        self.next()  # the header

    def next(self) -> int | None:
        try:
            for raw in self._fh:
                self._n += 1
                if raw.strip():
                    return self._n
        except (OSError, EOFError, zlib.error):
            return None  # the reader reports it
        return None

    def close(self) -> None:
        self._fh.close()
        self._raw.close()


# --- the walk -----------------------------------------------------------------------------------


@attrs.frozen(slots=True, kw_only=True)
class _Attempt:
    """A recorded attempt awaiting its outcome: its decision, and what it was
    decided on."""

    line: int | None
    requested: str
    decision: Decision
    exclude: frozenset[str]


def _key_text(key: tuple[str, int]) -> str:
    rid, attempt = key
    return f"request {rid!r}" if attempt == 1 else f"request {rid!r} attempt {attempt}"


def _told(decision: Decision) -> str:
    if decision.routed:
        return f"{decision.outcome.value} -> {decision.node}"
    retry = "" if decision.retry_after is None else f", Retry-After {decision.retry_after}"
    return f"{decision.outcome.value} ({decision.status}{retry})"


def _recorded(fields: Mapping[str, Any]) -> str:
    retry = fields["retry_after"]
    parts = [f"status {fields['status']}"]
    parts.append("no Retry-After" if retry is None else f"Retry-After {retry}")
    if fields["node"] is not None:
        parts.append(f"node {fields['node']}")
    if fields["error"] is not None:
        parts.append(f"error {fields['error']!r}")
    return ", ".join(parts)


def _history(node: NodeMonitor) -> str:
    h = node.history
    text = "answered a poll before" if h.ever_ok else "never answered a poll"
    if h.streak:
        kind = "of either kind" if h.mixed else "of polls"
        began = "routable" if h.armed else "not routable"
        text += f", then {h.streak} failure(s) {kind} in a row (it was {began} before)"
    if h.revive:
        text += ", then a request_ok while it was not routable"
    return text


class _Audit:
    """Walks one trace: the engine (as replay drives it), the monitor beside
    it, the attempts awaiting their outcomes and the failovers awaited."""

    def __init__(self, path: str, header: TraceHeader) -> None:
        self.path = path
        self.policy: Policy = header.policy
        self.catalogue: Catalogue = header.catalogue
        self.engine = Engine(header.neurons, header.catalogue, header.policy)
        self.monitor = Monitor.start(tuple(n.name for n in header.neurons), header.policy)
        self.open: dict[tuple[str, int], _Attempt] = {}
        #: nodes each request has failed on so far (§7: the next attempt excludes them)
        self.failed: dict[str, list[str]] = {}
        #: (id, next attempt) -> (line, failed node, why another attempt was due)
        self.awaited: dict[tuple[str, int], tuple[int | None, str, str]] = {}
        self.found: list[Violation] = []
        self.outcomes = header.version >= 2

    def bad(self, line: int | None, invariant: str, message: str) -> None:
        self.found.append(
            Violation(file=self.path, line=line, invariant=invariant, message=message)
        )

    # -- one record --

    def feed(self, kind: str, fields: Mapping[str, Any], line: int | None) -> None:
        if kind == "request":
            self._request(fields, line)
        elif kind == "outcome":
            self._outcome(fields, line)
        elif kind == "reconfigured":
            self._reconfigured(fields, line)
        else:
            apply_record(self.engine, kind, fields)
            self.monitor = self.monitor.after(kind, fields)
            if kind == "models":
                self._health(fields["node"], line)

    def _request(self, fields: Mapping[str, Any], line: int | None) -> None:
        key = (fields["id"], fields.get("attempt") or 1)
        exclude: frozenset[str] = fields.get("exclude", _NONE)
        fleet = self.monitor.snapshot()
        decision = apply_record(self.engine, "request", fields)
        assert isinstance(decision, Decision)
        requested = fields["model"]
        for name in check_decision(
            fleet, self.catalogue, decision, policy=self.policy, exclude=exclude
        ):
            self.bad(
                line,
                name,
                f"{_key_text(key)} for {requested!r}: replay decides {_told(decision)}, "
                f"which breaks it on the fleet the observations describe",
            )
        self.monitor = self.monitor.after(
            "request",
            {**fields, "resolved": spec_model(self.catalogue, requested)},
            decision.node if decision.routed else None,
        )
        if self.outcomes:  # (a version 1 trace has none to pair them with)
            self.open[key] = _Attempt(
                line=line, requested=requested, decision=decision, exclude=exclude
            )
        self.awaited.pop(key, None)
        if key[1] > 1:
            missing = [n for n in self.failed.get(key[0], ()) if n not in exclude]
            if missing:
                self.bad(
                    line,
                    "R10",
                    f"{_key_text(key)} does not exclude {', '.join(missing)}, which this "
                    "request already failed on",
                )

    def _outcome(self, fields: Mapping[str, Any], line: int | None) -> None:
        key = (fields["id"], fields["attempt"])
        attempt = self.open.pop(key, None)
        node = fields["node"]
        if attempt is not None:
            self._replayed(key, attempt, fields, line)
            if fields["source"] == "gateway":
                self._told_by_gateway(key, attempt, fields, line, self.monitor.snapshot())
        apply_record(self.engine, "outcome", fields)
        self.monitor = self.monitor.after("outcome", fields)
        if node is not None:
            self._health(node, line)

    def _replayed(
        self, key: tuple[str, int], attempt: _Attempt, fields: Mapping[str, Any], line: int | None
    ) -> None:
        """REPLAY: the recorded outcome is the one the replayed decision gives."""
        d = attempt.decision
        node = fields["node"]
        if d.routed:
            same = node == d.node
        else:
            same = (
                node is None
                and fields["status"] == d.status
                and fields["retry_after"] == d.retry_after
                and fields["source"] == "gateway"
            )
        if not same:
            self.bad(
                line,
                "REPLAY",
                f"{_key_text(key)}: the recording says {_recorded(fields)}; replaying it "
                f"decides {_told(d)}",
            )

    def _told_by_gateway(
        self,
        key: tuple[str, int],
        attempt: _Attempt,
        fields: Mapping[str, Any],
        line: int | None,
        fleet: FleetSnapshot,
    ) -> None:
        """R1, R2, R8, R9, R10 for an answer the gateway made itself."""
        d = attempt.decision
        node, status, retry = fields["node"], fields["status"], fields["retry_after"]
        what = f"{_key_text(key)} for {attempt.requested!r}"
        told, known = self._as_outcome(d, node, status)
        if told is not None:
            answer = attrs.evolve(d, outcome=told, retry_after=retry)
            if not r1(fleet, self.catalogue, answer, self.policy, attempt.exclude) and not (
                node is not None and _attempt_result(fields) is None
            ):
                self.bad(
                    line,
                    "R1",
                    f"{what} was told {_recorded(fields)} while "
                    f"{self._down_holders(fleet, d.model, attempt.exclude)}",
                )
            want = self._retry_after(told)
            if not r2(answer):
                self.bad(line, "R2", f"{what} was told {_recorded(fields)}")
            elif known and status == 503 and retry != want:
                self.bad(
                    line,
                    "R2",
                    f"{what} was told {_recorded(fields)}; the policy in force gives "
                    f"{told.value} Retry-After {want}",
                )
        failed = node is not None and _attempt_result(fields) is False
        if failed and status == 404 and self.policy.io_errors == "extension":
            self.bad(
                line,
                "R8",
                f"{what}: {node} failed ({fields['error']}) and the client was told 404",
            )
        if node is not None and node in attempt.exclude:
            self.bad(line, "R9", f"{what} was carried out on {node}, which it excluded")
        if failed and status != 404:
            assert node is not None
            self.failed.setdefault(key[0], []).append(node)
            if key[1] < self.policy.max_attempts:
                other = self._other_replica(fleet, d.model, attempt.exclude | {node})
                if other is not None:
                    why = f"{other} had {d.model!r} loaded and was routable"
                    self.awaited[(key[0], key[1] + 1)] = (line, node, why)

    @staticmethod
    def _as_outcome(d: Decision, node: str | None, status: int) -> tuple[Outcome | None, bool]:
        """The answer an outcome's status stands for (None: neither 404 nor 503),
        and whether it is known for sure (so its Retry-After value can be judged):
        a reject's own answer, or a routed attempt's 503 (``upstream_unavailable``).
        An outcome that disagrees with its decision is REPLAY's finding; it is
        still judged by its status."""
        if node is None and not d.routed and d.outcome.status == status:
            return d.outcome, True
        if status == 503:
            if node is not None:
                return Outcome.UPSTREAM_UNAVAILABLE, True
            return Outcome.FEASIBLE_NODE_UNHEALTHY, False
        if status == 404:
            if node is not None:
                return Outcome.COLD_LOAD_FAILED, False
            return Outcome.NO_FEASIBLE_NEURON, False
        return None, False

    def _retry_after(self, outcome: Outcome) -> int | None:
        key = ANSWERS[outcome][3] if outcome in ANSWERS else None
        return None if key is None else int(getattr(self.policy, key))

    def _down_holders(self, fleet: FleetSnapshot, model: str, exclude: frozenset[str]) -> str:
        """Which down (or excluded) nodes are feasible for ``model`` or known to hold it."""
        profile = self.catalogue.profiles.get(model)
        parts = []
        for n in sorted(fleet.nodes, key=lambda n: n.name):
            if n.routable and n.name not in exclude:
                continue
            state = "excluded" if n.name in exclude else n.health.label
            if profile is not None and spec_feasible(profile, n.name, n.discovery):
                parts.append(f"{n.name} ({state}) is feasible for {model!r}")
            elif self.policy.known_down == "retry" and model in n.models:
                parts.append(f"{n.name} ({state}) is known to hold {model!r}")
        return "; ".join(parts) or f"a down node is feasible for {model!r}"

    @staticmethod
    def _other_replica(fleet: FleetSnapshot, model: str, exclude: frozenset[str]) -> str | None:
        for n in sorted(fleet.nodes, key=lambda n: n.name):
            entry = n.models.get(model)
            if (
                n.routable
                and n.name not in exclude
                and entry is not None
                and entry.status in _SERVING
            ):
                return n.name
        return None

    def _reconfigured(self, fields: Mapping[str, Any], line: int | None) -> None:
        apply_record(self.engine, "reconfigured", fields)
        policy = fields.get("policy")
        catalogue = fields.get("catalogue")
        if catalogue is not None:
            self.catalogue = catalogue
        if policy is not None:
            self.policy = policy
            # §12: under a lower threshold, suspect(n) with n >= T has had T failures.
            nodes = tuple(
                attrs.evolve(n, health=HealthState(phase=Phase.UNHEALTHY))
                if n.health.phase is Phase.SUSPECT and n.health.failures >= policy.failure_threshold
                else n
                for n in self.monitor.nodes
            )
            self.monitor = attrs.evolve(self.monitor, policy=policy, nodes=nodes)
            for n in nodes:
                self._health(n.name, line)

    def _health(self, name: str, line: int | None) -> None:
        """H1-H6 and HSPEC for one node after an event that may move its health."""
        mon = self.monitor.node(name)
        if mon is None or not self.engine.has_node(name):
            return
        state = self.engine.state(name)
        for invariant in check_health(mon.history, state, self.policy.failure_threshold):
            self.bad(
                line, invariant, f"{name} is {state.label}; its health events: {_history(mon)}"
            )
        if state != mon.health:
            self.bad(
                line,
                "HSPEC",
                f"{name} is {state.label}; the table of docs/semantics.md §2/§6 gives "
                f"{mon.health.label}",
            )

    def end(self, complete: bool) -> None:
        """Failovers still awaited when the trace ends (unless it was cut off)."""
        if not complete:
            return
        for (rid, number), (line, node, why) in self.awaited.items():
            self.bad(
                line,
                "R10",
                f"request {rid!r}: attempt {number - 1} failed on {node} before its first "
                f"byte and no attempt {number} followed, though {why}",
            )


def _walk(path: str) -> Iterator[Violation]:
    with TraceReader(path) as trace:
        lines = _Lines(path)
        try:
            walk = _Audit(path, trace.header)
            for kind, fields in trace.records():
                walk.feed(kind, fields, lines.next())
                if walk.found:
                    yield from walk.found
                    walk.found.clear()
            walk.end(complete=trace.truncated is None)
            yield from walk.found
        finally:
            lines.close()


def audit(path: str | os.PathLike[str], *, limit: int | None = None) -> list[Violation]:
    """The invariants the recording at ``path`` breaks, in the order found
    (at most ``limit`` of them; None: all). An empty list: the trace obeys
    every invariant the audit checks (:data:`AUDITED`).

    Raises :class:`~cortex_fsm.errors.TraceError` when the trace is malformed."""
    out: list[Violation] = []
    for v in _walk(os.fspath(path)):
        out.append(v)
        if limit is not None and len(out) >= limit:
            break
    return out


# --- the command ------------------------------------------------------------------------------


def render(violations: Sequence[Violation], fmt: str = "text", *, limit: int | None = None) -> str:
    """Violations as ``text`` lines, one ``json`` array, or ``github`` annotations."""
    if fmt == "json":
        return json.dumps([v.to_json() for v in violations], indent=2, ensure_ascii=False) + "\n"
    lines = []
    for v in violations:
        if fmt == "github":
            props = f"file={gh_escape(v.file, prop=True)}"
            if v.line is not None:
                props += f",line={v.line}"
            props += f",title={gh_escape(f'cortex-fsm audit {v.invariant}', prop=True)}"
            lines.append(f"::error {props}::{gh_escape(v.message)}")
        else:
            lines.append(str(v))
    if not violations:
        lines.append("no violations found")
    elif limit is not None and len(violations) >= limit:
        lines.append(f"stopped after the first {len(violations)} violations")
    else:
        lines.append(f"{len(violations)} violation{'' if len(violations) == 1 else 's'}")
    return "\n".join(lines) + "\n"


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Runtime verification of a recorded trace (serve --record): replaying it gives the "
        "recorded decisions; every answer the gateway made itself obeys R1, R2 (with the "
        "policy's Retry-After), R8, R9 and R10; every decision obeys the routing invariants "
        "on the fleet the observations describe; H1-H6 hold and health follows the table of "
        "docs/semantics.md. Exit 0: clean; 1: violations (the first ones are listed); 2: the "
        "trace is malformed."
    )
    parser.add_argument("traces", nargs="+", metavar="TRACE", help="a trace (.jsonl, .jsonl.gz)")
    parser.add_argument(
        "--max",
        type=int,
        default=20,
        metavar="N",
        help="stop after N violations per trace (default: %(default)s; 0: no limit)",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json", "github"),
        default="text",
        help="text lines (default), one JSON array of {file, line, invariant, message}, "
        "or GitHub workflow annotations",
    )


def audit_main(args: argparse.Namespace) -> int:
    limit = None if args.max <= 0 else args.max
    found: list[Violation] = []
    for path in args.traces:
        try:
            found += audit(path, limit=limit)
        except TraceError as exc:
            print(f"cortex-fsm audit: error: {exc}", file=sys.stderr)
            return 2
    sys.stdout.write(render(found, args.format, limit=limit))
    return 1 if found else 0
