"""Trace format v1 and v2: reading with line-numbered errors, writing, decision lines.

A trace is JSON Lines (gzip when the name ends in ``.gz``): a header, then
events in time order. See ``docs/trace-format.md``. The reader accepts both
versions (a v1 trace's policy defaults to the reference values of every
Part II key); the writer writes version 2. Every problem with a
trace -- unreadable file, corrupt gzip, bad JSON, a missing or mistyped
field, an unknown node, time going backwards -- is a :class:`TraceError`
naming the file and the line; nothing else escapes the reader.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import math
import os
import stat
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import IO, Any

import attrs

from .catalogue import Catalogue, catalogue_from_mapping
from .errors import ConfigError, TraceError
from .fleet import NEURON_KINDS, Device, Neuron
from .policy import Policy
from .routing import Decision
from .wire import describe_json, load_json

__all__ = [
    "DISCOVERY_SOURCES",
    "EVENT_KINDS",
    "OUTCOME_SOURCES",
    "DiscoveryEvent",
    "Event",
    "HealthEvent",
    "LoadEvent",
    "ModelsEvent",
    "NeuronAddedEvent",
    "NeuronRemovedEvent",
    "OutcomeEvent",
    "ReconfiguredEvent",
    "RequestEvent",
    "TraceHeader",
    "TraceReader",
    "TraceWriter",
    "TruthEvent",
    "UnloadEvent",
    "neuron_from_json",
    "decision_json",
    "decision_line",
    "open_output",
    "output_problem",
]

_log = logging.getLogger("cortex_fsm.trace")

FORMAT = "cortex-fsm-trace"
VERSION = 2
VERSIONS = (1, 2)
#: Where a ``discovery`` event's topology came from (docs/semantics.md §10).
DISCOVERY_SOURCES = ("live", "declared", "cache")
#: Who produced an ``outcome``: the gateway's own answer, or the node's relayed.
OUTCOME_SOURCES = ("gateway", "upstream")


@attrs.frozen(slots=True, kw_only=True)
class TraceHeader:
    """Line 1: the fleet, the catalogue and the recorded policy."""

    neurons: tuple[Neuron, ...]
    catalogue: Catalogue = attrs.field(factory=Catalogue)
    policy: Policy = attrs.field(factory=Policy)
    version: int = VERSION  # as read (a written header is always the current version)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": "header",
            "format": FORMAT,
            "version": VERSION,
            "policy": self.policy.to_json(),
            "neurons": [n.to_json() for n in self.neurons],
            "catalogue": self.catalogue.to_json(),
        }


@attrs.frozen(slots=True, kw_only=True)
class DiscoveryEvent:
    t: float
    node: str
    ok: bool
    body: object = None
    source: str = "live"


@attrs.frozen(slots=True, kw_only=True)
class ModelsEvent:
    t: float
    node: str
    ok: bool
    body: object = None
    error: str = ""


@attrs.frozen(slots=True, kw_only=True)
class HealthEvent:
    t: float
    node: str
    ok: bool
    body: object = None


@attrs.frozen(slots=True, kw_only=True)
class LoadEvent:
    t: float
    node: str
    model: str
    ok: bool


@attrs.frozen(slots=True, kw_only=True)
class UnloadEvent:
    t: float
    node: str
    model: str
    ok: bool


@attrs.frozen(slots=True, kw_only=True)
class RequestEvent:
    """A request to decide; ``attempt`` and ``exclude`` mark a failover attempt (§7)."""

    t: float
    id: str
    model: str
    attempt: int | None = None
    exclude: tuple[str, ...] = ()


@attrs.frozen(slots=True, kw_only=True)
class OutcomeEvent:
    """What one attempt got (and, for the last attempt, what the client got)."""

    t: float
    id: str
    attempt: int
    node: str | None
    status: int
    retry_after: int | None
    source: str  # OUTCOME_SOURCES
    error: str | None


@attrs.frozen(slots=True, kw_only=True)
class NeuronAddedEvent:
    t: float
    neuron: Neuron


@attrs.frozen(slots=True, kw_only=True)
class NeuronRemovedEvent:
    t: float
    node: str


@attrs.frozen(slots=True, kw_only=True)
class TruthEvent:
    """Ground truth from a simulation: was ``node`` really up? Replay ignores it."""

    t: float
    node: str
    up: bool
    why: str


@attrs.frozen(slots=True, kw_only=True)
class ReconfiguredEvent:
    """The configuration was reloaded: a new policy and/or catalogue from ``t`` on."""

    t: float
    policy: Policy | None = None
    catalogue: Catalogue | None = None


Event = (
    DiscoveryEvent
    | ModelsEvent
    | HealthEvent
    | LoadEvent
    | UnloadEvent
    | RequestEvent
    | OutcomeEvent
    | NeuronAddedEvent
    | NeuronRemovedEvent
    | TruthEvent
    | ReconfiguredEvent
)

V1_KINDS = ("discovery", "models", "health", "load", "unload", "request")
EVENT_KINDS = (
    *V1_KINDS,
    "outcome",
    "neuron_added",
    "neuron_removed",
    "truth",
    "reconfigured",
)
_KIND_OF: dict[type, str] = {
    DiscoveryEvent: "discovery",
    ModelsEvent: "models",
    HealthEvent: "health",
    LoadEvent: "load",
    UnloadEvent: "unload",
    RequestEvent: "request",
    OutcomeEvent: "outcome",
    NeuronAddedEvent: "neuron_added",
    NeuronRemovedEvent: "neuron_removed",
    TruthEvent: "truth",
    ReconfiguredEvent: "reconfigured",
}


class _Bad(Exception):
    """A problem with one line; the reader adds the file and line number."""


def _field(obj: Mapping[str, Any], key: str, kind: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise _Bad(f"{kind} event: missing field {key!r}") from None


def _str(obj: Mapping[str, Any], key: str, kind: str) -> str:
    value = _field(obj, key, kind)
    if type(value) is not str:
        raise _Bad(f"{kind} event: field {key!r} must be a string, got {describe_json(value)}")
    return value


def _bool(obj: Mapping[str, Any], key: str, kind: str) -> bool:
    value = _field(obj, key, kind)
    if type(value) is not bool:
        raise _Bad(f"{kind} event: field {key!r} must be a boolean, got {describe_json(value)}")
    return value


class TraceReader:
    """Reads one trace: ``header`` at once, then the events by iteration.

    Usage::

        with TraceReader(path) as trace:
            for event in trace:
                ...  # trace.line is the current line number

    Raises :class:`TraceError` for any problem, naming the file and line.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.line = 0
        self._last_t = -math.inf
        self._request_ids: set[object] = set()  # ids, or (id, attempt) for attempts >= 2
        self.events = 0
        self.truncated: str | None = None
        """Why the trace ended early, when it was cut off mid-way (see :meth:`records`)."""
        try:
            raw = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise TraceError(self.path, None, "no such file") from None
        except IsADirectoryError:
            raise TraceError(self.path, None, "is a directory, not a trace file") from None
        except OSError as exc:
            raise TraceError(self.path, None, f"cannot open: {exc.strerror}") from None
        self._raw = raw
        self._fh: IO[bytes] = (
            gzip.GzipFile(fileobj=raw) if self.path.endswith(".gz") else raw  # type: ignore[assignment]
        )
        try:
            self.header = self._read_header()
        except BaseException:
            self.close()
            raise
        #: the nodes in the fleet now (neuron_added / neuron_removed change it)
        self._neurons = {n.name for n in self.header.neurons}
        #: every node ever in the fleet (an outcome or truth may name a removed one)
        self._ever = set(self._neurons)
        self._outcomes: set[object] = set()
        self.version = self.header.version
        self._check = _CHECKS if self.version >= 2 else _CHECKS_V1

    @property
    def last_t(self) -> float | None:
        """The time of the last event read so far (None before the first)."""
        return None if self._last_t == -math.inf else self._last_t

    def close(self) -> None:
        self._fh.close()
        self._raw.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, problem: str) -> TraceError:
        return TraceError(self.path, self.line or None, problem)

    def _lines(self) -> Iterator[bytes]:
        fh = self._fh
        try:
            for raw in fh:
                self.line += 1
                if raw.strip():
                    yield raw
        except (OSError, EOFError, zlib.error) as exc:
            # gzip.BadGzipFile is an OSError; a truncated stream is an EOFError.
            self.line += 1
            raise self._error(f"unreadable data ({type(exc).__name__}: {exc})") from None

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            obj = load_json(raw.decode())
        except UnicodeDecodeError:
            raise self._error("not valid UTF-8") from None
        except ValueError as exc:
            raise self._error(f"not valid JSON: {exc}") from None
        if type(obj) is not dict:
            raise self._error(f"expected a JSON object, got {describe_json(obj)}")
        return obj

    def _read_header(self) -> TraceHeader:
        self._iter = self._lines()
        first = next(self._iter, None)
        if first is None:
            raise TraceError(self.path, None, "empty trace: no header line")
        obj = self._parse(first)
        if obj.get("kind") != "header":
            raise self._error(f'line {self.line} must be the header (kind "header")')
        if obj.get("format") != FORMAT:
            raise self._error(f"header: format must be {FORMAT!r}, got {obj.get('format')!r}")
        version = obj.get("version")
        if type(version) is not int or version not in VERSIONS:
            raise self._error(
                f"header: unsupported trace version {version!r} "
                f"(this reader knows {', '.join(map(str, VERSIONS))})"
            )
        raw_neurons = obj.get("neurons")
        if type(raw_neurons) is not list:
            raise self._error("header: neurons must be an array of {name, endpoint} objects")
        neurons: list[Neuron] = []
        seen: set[str] = set()
        for i, n in enumerate(raw_neurons):
            try:
                neuron = neuron_from_json(n, where=f"header: neurons[{i}]")
            except ConfigError as exc:
                raise self._error(str(exc)) from None
            if neuron.name in seen:
                raise self._error(f"header: neurons[{i}].name {neuron.name!r} appears twice")
            seen.add(neuron.name)
            neurons.append(neuron)
        try:
            raw_catalogue = obj.get("catalogue", {})
            if type(raw_catalogue) is not dict:
                raise ConfigError(f"header: catalogue must be an object, got {raw_catalogue!r}")
            catalogue = catalogue_from_mapping(raw_catalogue, where="header: catalogue")
            policy = Policy.from_mapping(
                obj.get("policy", {}), where="header: policy", version=version
            )
        except ConfigError as exc:
            raise self._error(str(exc)) from None
        return TraceHeader(
            neurons=tuple(neurons), catalogue=catalogue, policy=policy, version=version
        )

    def __iter__(self) -> Iterator[Event]:
        """The events as typed values."""
        for kind, fields in self.records():
            yield _TYPED[kind](fields)

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The events as ``(kind, fields)``, validated: the fast path replay uses.

        ``fields`` is the parsed line with ``t`` as a float; every field the
        kind needs is present and of the right type, and ``node`` names a
        neuron of the header. ``line``, ``events`` and ``last_t`` are brought
        up to date when iteration stops (the loop keeps them in locals).
        """
        return self._records(self._fh)

    def record_of_line(self, raw: bytes) -> list[tuple[str, dict[str, Any]]]:
        """The next line, read by a caller that iterates the file itself: what
        :meth:`records` makes of it -- no record (a blank line, or a cut-off
        last line: then ``truncated`` is set), or one -- with the same checks,
        the same errors, and ``line``, ``events`` and ``last_t`` advanced."""
        return list(self._records((raw,)))

    def read_failed(self, exc: Exception, line: int) -> None:
        """The file could not be read past ``line`` (a caller iterating it
        itself): a gzip member cut off mid-way ends the trace with a warning;
        anything else is a :class:`TraceError`."""
        if isinstance(exc, EOFError):
            # A gzip member cut off mid-way (the writer was killed while writing it):
            # everything before it is intact.
            self.line = line
            self._cut_off(line + 1, "it ends in the middle of a gzip member")
            return
        # gzip.BadGzipFile is an OSError.
        self.line = line + 1
        raise self._error(f"unreadable data ({type(exc).__name__}: {exc})") from None

    def _records(self, source: Iterable[bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
        check = self._check
        neurons = self._neurons
        ids = self._request_ids
        decode = _raw_decode
        line = self.line
        events = self.events
        last_t = self._last_t
        try:
            for raw in source:
                line += 1
                try:
                    # JSONDecoder.raw_decode: json.loads without its Python-level
                    # wrapper; anything unusual (blank line, surrounding spaces,
                    # trailing data, bad JSON) takes the json.loads path below.
                    text = raw.decode()
                    obj, end = decode(text)
                    n = len(text)
                    if end != n and (end != n - 1 or text[end] != "\n"):
                        raise ValueError("more than one JSON value")
                except (ValueError, RecursionError):
                    if not raw.strip():
                        continue  # blank lines are allowed
                    self.line = line
                    if not raw.endswith(b"\n"):
                        self._cut_off(line, "its last line is incomplete")
                        return
                    obj = self._parse(raw)  # json.loads: the value, or an error with the reason
                if type(obj) is not dict:
                    self.line = line
                    raise self._error(f"expected a JSON object, got {describe_json(obj)}")
                kind = obj.get("kind")
                t = obj.get("t")
                try:
                    if type(kind) is not str or kind not in check:
                        raise _Bad(_bad_kind(kind))
                    # Fast path: a float, finite (t - t is 0.0 unless inf/nan), not backwards.
                    if type(t) is not float or t < last_t or t - t != 0.0:
                        t = obj["t"] = _time(obj, kind, last_t)
                    last_t = t
                    if kind == "request":  # the most common kind, checked inline
                        rid = obj.get("id")
                        if (
                            type(rid) is not str
                            or type(obj.get("model")) is not str
                            or rid in ids
                            or "attempt" in obj
                            or "exclude" in obj
                        ):
                            self._check_request(obj)  # raises with the reason, or records it
                        else:
                            ids.add(rid)
                    elif kind in _NODE_KINDS:
                        node = obj.get("node")
                        if type(node) is not str or node not in neurons:
                            node = _str(obj, "node", kind)
                            raise _Bad(_unknown_node(kind, node, self._ever))
                        # A successful fetch (ok true, with a body) needs no more checks here:
                        # the body itself is validated by the engine (docs/semantics.md §1).
                        if obj.get("ok") is not True or "body" not in obj or kind in _CHECK_ALWAYS:
                            check[kind](self, obj)
                    else:
                        check[kind](self, obj)
                except _Bad as exc:
                    self.line = line
                    raise self._error(str(exc)) from None
                events += 1
                yield kind, obj
        except EOFError:
            # A gzip member cut off mid-way (the writer was killed while writing it):
            # everything before it is intact.
            self._cut_off(line + 1, "it ends in the middle of a gzip member")
        except (OSError, zlib.error) as exc:
            # gzip.BadGzipFile is an OSError; a truncated stream is an EOFError.
            line += 1
            self.line = line
            raise self._error(f"unreadable data ({type(exc).__name__}: {exc})") from None
        finally:
            self.line, self.events, self._last_t = line, events, last_t

    def _cut_off(self, line: int, why: str) -> None:
        """The trace stops early, as a crash leaves it: warn once, keep what came before."""
        self.truncated = (
            f"{self.path}:{line}: {why}: cut off (the recording gateway crashed?); "
            "using the events before it"
        )
        _log.warning("cortex-fsm: warning: %s", self.truncated)

    def _check_request(self, obj: dict[str, Any]) -> None:
        rid = _str(obj, "id", "request")
        if type(obj.get("model")) is not str:
            _str(obj, "model", "request")
        attempt = _attempt(obj, "request", required=False)
        if "exclude" in obj:
            exclude = obj["exclude"]
            if type(exclude) is not list or not all(type(n) is str for n in exclude):
                raise _Bad("request event: field 'exclude' must be an array of node names")
            obj["exclude"] = frozenset(exclude)
        key = _request_key(rid, attempt)
        if key in self._request_ids:
            if attempt is None:
                raise _Bad(f"request event: id {rid!r} was used before")
            raise _Bad(f"request event: id {rid!r} attempt {attempt} was used before")
        self._request_ids.add(key)

    def _check_outcome(self, obj: dict[str, Any]) -> None:
        rid = _str(obj, "id", "outcome")
        attempt = _attempt(obj, "outcome", required=True)
        node = _field(obj, "node", "outcome")
        if node is not None:
            if type(node) is not str:
                raise _Bad(
                    f"outcome event: field 'node' must be a string or null, "
                    f"got {describe_json(node)}"
                )
            if node not in self._ever:
                raise _Bad(f"outcome event: unknown node {node!r}")
        status = _field(obj, "status", "outcome")
        if type(status) is not int or not 100 <= status <= 599:
            raise _Bad(f"outcome event: field 'status' must be an HTTP status, got {status!r}")
        retry = _field(obj, "retry_after", "outcome")
        if retry is not None and (type(retry) is not int or retry < 0):
            raise _Bad(
                f"outcome event: field 'retry_after' must be a non-negative integer or null, "
                f"got {describe_json(retry)}"
            )
        source = _field(obj, "source", "outcome")
        if source not in OUTCOME_SOURCES:
            raise _Bad(
                f"outcome event: field 'source' must be one of {', '.join(OUTCOME_SOURCES)}, "
                f"got {source!r}"
            )
        error = _field(obj, "error", "outcome")
        if error is not None and type(error) is not str:
            raise _Bad(
                f"outcome event: field 'error' must be a string or null, got {describe_json(error)}"
            )
        key = _request_key(rid, attempt)
        if key not in self._request_ids:
            raise _Bad(f"outcome event: no earlier request {rid!r} attempt {attempt}")
        if key in self._outcomes:
            raise _Bad(f"outcome event: request {rid!r} attempt {attempt} already has an outcome")
        self._outcomes.add(key)

    def _check_neuron_added(self, obj: dict[str, Any]) -> None:
        raw = _field(obj, "neuron", "neuron_added")
        try:
            neuron = neuron_from_json(raw, where="neuron_added event: neuron")
        except ConfigError as exc:
            raise _Bad(str(exc)) from None
        if neuron.name in self._neurons:
            raise _Bad(f"neuron_added event: node {neuron.name!r} is already in the fleet")
        self._neurons.add(neuron.name)
        self._ever.add(neuron.name)
        obj["neuron"] = neuron

    def _check_neuron_removed(self, obj: dict[str, Any]) -> None:
        self._neurons.discard(obj["node"])

    def _check_truth(self, obj: dict[str, Any]) -> None:
        node = _str(obj, "node", "truth")
        if node not in self._ever:
            raise _Bad(f"truth event: unknown node {node!r}")
        _bool(obj, "up", "truth")
        _str(obj, "why", "truth")

    def _check_reconfigured(self, obj: dict[str, Any]) -> None:
        if "policy" not in obj and "catalogue" not in obj:
            raise _Bad("reconfigured event: needs 'policy', 'catalogue' or both")
        try:
            if "policy" in obj:
                obj["policy"] = Policy.from_mapping(
                    obj["policy"], where="reconfigured event: policy"
                )
            if "catalogue" in obj:
                raw = obj["catalogue"]
                if type(raw) is not dict:
                    raise ConfigError(
                        f"reconfigured event: catalogue must be an object, got {describe_json(raw)}"
                    )
                obj["catalogue"] = catalogue_from_mapping(
                    raw, where="reconfigured event: catalogue"
                )
        except ConfigError as exc:
            raise _Bad(str(exc)) from None

    def _check_models(self, obj: Mapping[str, Any]) -> None:
        ok = obj.get("ok")
        if ok is True:
            if "body" not in obj:
                raise _Bad("models event: missing field 'body'")
        elif ok is False:
            error = obj.get("error", "")
            if type(error) is not str:
                raise _Bad(
                    f"models event: field 'error' must be a string, got {describe_json(error)}"
                )
        else:
            _bool(obj, "ok", "models")

    def _check_fetch(self, obj: Mapping[str, Any]) -> None:
        ok = obj.get("ok")
        if ok is True:
            if "body" not in obj:
                raise _Bad(f"{obj['kind']} event: missing field 'body'")
        elif ok is not False:
            _bool(obj, "ok", obj["kind"])

    def _check_discovery(self, obj: Mapping[str, Any]) -> None:
        self._check_fetch(obj)
        source = obj.get("source", "live")
        if source not in DISCOVERY_SOURCES:
            raise _Bad(
                f"discovery event: field 'source' must be one of {', '.join(DISCOVERY_SOURCES)}, "
                f"got {source!r}"
            )

    def _check_lifecycle(self, obj: Mapping[str, Any]) -> None:
        kind = obj["kind"]
        _str(obj, "model", kind)
        _bool(obj, "ok", kind)


#: Kinds whose ``node`` must name a node in the fleet at that point.
_NODE_KINDS = frozenset({"discovery", "models", "health", "load", "unload", "neuron_removed"})
#: ... and that need their full check even when ``ok`` with a body.
_CHECK_ALWAYS = frozenset({"load", "unload", "neuron_removed", "discovery"})


def _unknown_node(kind: str, node: str, ever: set[str]) -> str:
    if node in ever:
        return f"{kind} event: node {node!r} was removed from the fleet earlier"
    return f"{kind} event: unknown node {node!r} (not among the header's neurons)"


def _attempt(obj: Mapping[str, Any], kind: str, *, required: bool) -> int | None:
    if "attempt" not in obj and not required:
        return None
    attempt = _field(obj, "attempt", kind)
    if type(attempt) is not int or attempt < 1:
        raise _Bad(f"{kind} event: field 'attempt' must be an integer >= 1, got {attempt!r}")
    return attempt


def _request_key(rid: str, attempt: int | None) -> object:
    """Requests are told apart by (id, attempt); attempt 1 is the same as none."""
    return rid if attempt is None or attempt == 1 else (rid, attempt)


def neuron_from_json(raw: object, *, where: str) -> Neuron:
    """A neuron as a trace header (or ``neuron_added``) writes it; ConfigError if bad."""
    if type(raw) is not dict:
        raise ConfigError(f"{where} must be an object")
    name, endpoint = raw.get("name"), raw.get("endpoint")
    if type(name) is not str or not name:
        raise ConfigError(f"{where}.name must be a non-empty string")
    if type(endpoint) is not str:
        raise ConfigError(f"{where}.endpoint must be a string")
    kind = raw.get("kind", "neuron")
    if kind not in NEURON_KINDS:
        raise ConfigError(f"{where}.kind must be one of {', '.join(NEURON_KINDS)}, got {kind!r}")
    devices: tuple[Device, ...] | None = None
    raw_devices = raw.get("devices")
    if raw_devices is not None:
        if type(raw_devices) is not list:
            raise ConfigError(f"{where}.devices must be an array of devices")
        parsed = []
        for i, d in enumerate(raw_devices):
            if (
                type(d) is not dict
                or type(d.get("index")) is not int
                or type(d.get("vram_total_mb")) is not int
            ):
                raise ConfigError(
                    f"{where}.devices[{i}] must be an object with integer index and vram_total_mb"
                )
            parsed.append(Device(index=d["index"], vram_total_mb=d["vram_total_mb"]))
        devices = tuple(parsed)
    return Neuron(name=name, endpoint=endpoint, kind=kind, devices=devices)


_raw_decode = json.JSONDecoder().raw_decode


def _time(obj: Mapping[str, Any], label: str, last_t: float) -> float:
    """The slow path for ``t``: convert an integer, or explain what is wrong."""
    t = _field(obj, "t", label)
    if type(t) is not float:
        if type(t) is not int:
            raise _Bad(f"{label} event: field 't' must be a number, got {describe_json(t)}")
        try:
            t = float(t)
        except OverflowError:
            raise _Bad(f"{label} event: field 't' is out of range") from None
    if not math.isfinite(t):
        raise _Bad(f"{label} event: field 't' must be finite, got {t}")
    if t < last_t:
        raise _Bad(f"{label} event: t goes backwards ({t!r} after {last_t!r})")
    return t


def _bad_kind(kind: object) -> str:
    if kind == "header":
        return "a second header"
    if kind is None:
        return "missing field 'kind'"
    if kind in EVENT_KINDS:
        return f"kind {kind!r} needs a version 2 trace (this header says version 1)"
    return f"unknown kind {kind!r} (expected one of: {', '.join(EVENT_KINDS)})"


_CHECKS_V1: dict[str, Callable[[TraceReader, Any], None]] = {
    "request": TraceReader._check_request,
    "models": TraceReader._check_models,
    "health": TraceReader._check_fetch,
    "discovery": TraceReader._check_discovery,
    "load": TraceReader._check_lifecycle,
    "unload": TraceReader._check_lifecycle,
}
_CHECKS: dict[str, Callable[[TraceReader, Any], None]] = {
    **_CHECKS_V1,
    "outcome": TraceReader._check_outcome,
    "neuron_added": TraceReader._check_neuron_added,
    "neuron_removed": TraceReader._check_neuron_removed,
    "truth": TraceReader._check_truth,
    "reconfigured": TraceReader._check_reconfigured,
}

_TYPED: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    "request": lambda f: RequestEvent(
        t=f["t"],
        id=f["id"],
        model=f["model"],
        attempt=f.get("attempt"),
        exclude=tuple(sorted(f.get("exclude", ()))),
    ),
    "models": lambda f: ModelsEvent(
        t=f["t"], node=f["node"], ok=f["ok"], body=f.get("body"), error=f.get("error", "")
    ),
    "health": lambda f: HealthEvent(t=f["t"], node=f["node"], ok=f["ok"], body=f.get("body")),
    "discovery": lambda f: DiscoveryEvent(
        t=f["t"], node=f["node"], ok=f["ok"], body=f.get("body"), source=f.get("source", "live")
    ),
    "load": lambda f: LoadEvent(t=f["t"], node=f["node"], model=f["model"], ok=f["ok"]),
    "unload": lambda f: UnloadEvent(t=f["t"], node=f["node"], model=f["model"], ok=f["ok"]),
    "outcome": lambda f: OutcomeEvent(
        t=f["t"],
        id=f["id"],
        attempt=f["attempt"],
        node=f["node"],
        status=f["status"],
        retry_after=f["retry_after"],
        source=f["source"],
        error=f["error"],
    ),
    "neuron_added": lambda f: NeuronAddedEvent(t=f["t"], neuron=f["neuron"]),
    "neuron_removed": lambda f: NeuronRemovedEvent(t=f["t"], node=f["node"]),
    "truth": lambda f: TruthEvent(t=f["t"], node=f["node"], up=f["up"], why=f["why"]),
    "reconfigured": lambda f: ReconfiguredEvent(
        t=f["t"], policy=f.get("policy"), catalogue=f.get("catalogue")
    ),
}


# --- writing ---------------------------------------------------------------------------------


def event_json(event: Event) -> dict[str, object]:
    """The trace line for ``event`` (as a dict, keys in the documented order)."""
    kind = _KIND_OF[type(event)]
    out: dict[str, object] = {"kind": kind}
    if isinstance(event, NeuronAddedEvent):
        out.update(t=event.t, neuron=event.neuron.to_json())
        return out
    if isinstance(event, ReconfiguredEvent):
        out["t"] = event.t
        if event.policy is not None:
            out["policy"] = event.policy.to_json()
        if event.catalogue is not None:
            out["catalogue"] = event.catalogue.to_json()
        return out
    out.update(attrs.asdict(event, recurse=False))
    if isinstance(event, ModelsEvent):
        if event.ok:
            del out["error"]
        else:
            del out["body"]
    elif isinstance(event, HealthEvent | DiscoveryEvent):
        if not event.ok:
            del out["body"]
        if isinstance(event, DiscoveryEvent) and event.source == "live":
            del out["source"]
    elif isinstance(event, RequestEvent):
        if event.attempt is None:
            del out["attempt"]
        if event.exclude:
            out["exclude"] = sorted(event.exclude)
        else:
            del out["exclude"]
    return out


def open_output(path: str | os.PathLike[str]) -> IO[str]:
    """A text stream writing to ``path`` (gzip when it ends in ``.gz``)."""
    name = os.fspath(path)
    if name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(name, "wb"), encoding="utf-8", newline="\n")
    return open(name, "w", encoding="utf-8", newline="\n")


class TraceWriter:
    """Writes a (version 2) trace as it happens (used by the gateway's ``--record``), crash-safe.

    Lines are collected in memory and written out by :meth:`flush`: on every
    write that comes ``flush_interval`` seconds or more after the last flush,
    whenever the owner calls it (the gateway does every 0.1 s), and on
    :meth:`close`. A ``.gz`` trace is written as a sequence of gzip members,
    one per flush, each complete (header, data, trailer) when it reaches the
    file, so what a crash (``kill -9``) leaves is every complete member plus
    at most one member cut off mid-way, which :class:`TraceReader` reads up
    to the cut with a warning. A crash therefore loses the events recorded
    since the last flush -- at most ``flush_interval`` seconds of them, or
    less when the owner flushes more often -- and nothing before.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        header: TraceHeader,
        *,
        flush_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.fspath(path)
        self._gzip = self.path.endswith(".gz")
        self._raw = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._pending: list[str] = []
        self._interval = flush_interval
        self._clock = clock
        self._flushed = clock()
        self._last_t = -math.inf
        self.write_obj(header.to_json())
        self.flush()

    def write_obj(self, obj: Mapping[str, object]) -> None:
        self._pending.append(json.dumps(obj, separators=(", ", ": ")) + "\n")
        if self._clock() - self._flushed >= self._interval:
            self.flush()

    def flush(self) -> None:
        """Write what was collected (a complete gzip member for ``.gz``)."""
        self._flushed = self._clock()
        if not self._pending:
            return
        data = "".join(self._pending).encode()
        self._pending.clear()
        if self._gzip:
            data = gzip.compress(data, compresslevel=6, mtime=0)
        self._raw.write(data)
        self._raw.flush()

    def write(self, event: Event) -> None:
        if not self._last_t <= event.t < math.inf:  # NaN fails both comparisons
            raise ValueError(
                f"trace time must be finite and never go backwards: {event.t} after {self._last_t}"
            )
        self._last_t = event.t
        self.write_obj(event_json(event))

    def close(self) -> None:
        if not self._raw.closed:
            try:
                self.flush()
            finally:
                self._raw.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def output_problem(path: str) -> str | None:
    """Why ``path`` cannot be written as an output file, or ``None``."""
    if not path:
        return "no file name given"
    if os.path.isdir(path):
        return f"{path} is a directory"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"directory {directory} does not exist"
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicOutput:
    """A file that appears under its name only when complete.

    Lines go to a temporary file beside the target; :meth:`commit` renames it
    into place, :meth:`discard` removes it. A replay that fails half-way
    therefore never leaves a half-written decisions file behind. The file
    keeps the permissions of the one it replaces (a new one gets the usual
    ``0o666`` less the umask), and a symbolic link is written through.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.realpath(path))
        suffix = ".tmp.gz" if self.path.name.endswith(".gz") else ".tmp"
        fd, self._tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=suffix, dir=self.path.parent
        )
        os.close(fd)
        try:
            mode = stat.S_IMODE(os.stat(self.path).st_mode)
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(self._tmp, mode)
        self.stream = open_output(self._tmp)

    def commit(self) -> None:
        try:
            self.stream.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            raise

    def discard(self) -> None:
        self.stream.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> IO[str]:
        return self.stream

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        """Commit when the block completes, discard when it raises."""
        if exc_type is None:
            self.commit()
        else:
            self.discard()


# --- decision output -------------------------------------------------------------------------


def decision_json(
    decision: Decision, request_id: str, t: float, attempt: int | None = None
) -> dict[str, object]:
    """The decision line as a dict (keys in the documented order; ``attempt``
    only when the request carried one)."""
    out: dict[str, object] = {"id": request_id}
    if attempt is not None:
        out["attempt"] = attempt
    out |= {
        "t": float(t),
        "model": decision.requested,
        "resolved": decision.model,
        "outcome": decision.outcome.value,
        "node": decision.node,
        "cold_start": decision.cold_start,
        "status": decision.status,
        "retry_after": decision.retry_after,
    }
    if decision.load is not None:
        out["load"] = decision.load.to_json()
    return out


_enc = encode_basestring_ascii


def decision_line(decision: Decision, request_id: str, t: float, attempt: int | None = None) -> str:
    """The decision line exactly as ``json.dumps(decision_json(...))`` writes it, faster.

    ``t`` must be a float (trace records are). Everything after ``id`` and
    ``t`` depends on the decision alone, and decisions are interned, so that
    part is rendered once per decision.
    """
    tail = _TAILS.get(decision)
    if tail is None:
        tail = decision_tail(decision)
    if attempt is not None:
        return f'{{"id": {_enc(request_id)}, "attempt": {attempt}, "t": {t!r}, {tail}'
    return f'{{"id": {_enc(request_id)}, "t": {t!r}, {tail}'


_TAILS: dict[Decision, str] = {}
_TAIL_LIMIT = 1 << 16


def decision_tail(decision: Decision) -> str:
    """A decision line after its ``id``, ``attempt`` and ``t``: the part that
    depends on the decision alone (remembered for the next time)."""
    if len(_TAILS) >= _TAIL_LIMIT:
        _TAILS.clear()
    tail = _TAILS[decision] = _tail(decision)
    return tail


def _tail(decision: Decision) -> str:
    outcome = decision.outcome
    node = decision.node
    retry = decision.retry_after
    tail = (
        f'"model": {_enc(decision.requested)}, "resolved": {_enc(decision.model)}, '
        f'"outcome": "{outcome.value}", "node": {"null" if node is None else _enc(node)}, '
        f'"cold_start": {"true" if outcome.cold_start else "false"}, '
        f'"status": {outcome.status}, "retry_after": {"null" if retry is None else retry}'
    )
    if decision.load is not None:
        tail += ', "load": ' + json.dumps(decision.load.to_json())
    return tail + "}\n"
