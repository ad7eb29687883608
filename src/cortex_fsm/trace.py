"""Trace format v1: reading with line-numbered errors, writing, decision lines.

A trace is JSON Lines (gzip when the name ends in ``.gz``): a header, then
events in time order. See ``docs/trace-format.md``. Every problem with a
trace -- unreadable file, corrupt gzip, bad JSON, a missing or mistyped
field, an unknown node, time going backwards -- is a :class:`TraceError`
naming the file and the line; nothing else escapes the reader.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import stat
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import IO, Any

import attrs

from .catalogue import Catalogue, catalogue_from_mapping
from .errors import ConfigError, TraceError
from .fleet import Neuron
from .policy import Policy
from .routing import Decision
from .wire import describe_json, load_json

__all__ = [
    "EVENT_KINDS",
    "DiscoveryEvent",
    "Event",
    "HealthEvent",
    "LoadEvent",
    "ModelsEvent",
    "RequestEvent",
    "TraceHeader",
    "TraceReader",
    "TraceWriter",
    "UnloadEvent",
    "decision_json",
    "decision_line",
    "open_output",
    "output_problem",
]

FORMAT = "cortex-fsm-trace"
VERSION = 1


@attrs.frozen(slots=True, kw_only=True)
class TraceHeader:
    """Line 1: the fleet, the catalogue and the recorded policy."""

    neurons: tuple[Neuron, ...]
    catalogue: Catalogue = attrs.field(factory=Catalogue)
    policy: Policy = attrs.field(factory=Policy)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": "header",
            "format": FORMAT,
            "version": VERSION,
            "policy": self.policy.to_json(),
            "neurons": [{"name": n.name, "endpoint": n.endpoint} for n in self.neurons],
            "catalogue": self.catalogue.to_json(),
        }


@attrs.frozen(slots=True, kw_only=True)
class DiscoveryEvent:
    t: float
    node: str
    ok: bool
    body: object = None


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
    t: float
    id: str
    model: str


Event = DiscoveryEvent | ModelsEvent | HealthEvent | LoadEvent | UnloadEvent | RequestEvent

EVENT_KINDS = ("discovery", "models", "health", "load", "unload", "request")
_KIND_OF: dict[type, str] = {
    DiscoveryEvent: "discovery",
    ModelsEvent: "models",
    HealthEvent: "health",
    LoadEvent: "load",
    UnloadEvent: "unload",
    RequestEvent: "request",
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
        self._request_ids: set[str] = set()
        self.events = 0
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
        self._neurons = frozenset(n.name for n in self.header.neurons)

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
        if version != VERSION or type(version) is not int:
            raise self._error(
                f"header: unsupported trace version {version!r} (this reader knows {VERSION})"
            )
        raw_neurons = obj.get("neurons")
        if type(raw_neurons) is not list:
            raise self._error("header: neurons must be an array of {name, endpoint} objects")
        neurons: list[Neuron] = []
        seen: set[str] = set()
        for i, n in enumerate(raw_neurons):
            if type(n) is not dict:
                raise self._error(f"header: neurons[{i}] must be an object")
            name, endpoint = n.get("name"), n.get("endpoint")
            if type(name) is not str or not name:
                raise self._error(f"header: neurons[{i}].name must be a non-empty string")
            if type(endpoint) is not str:
                raise self._error(f"header: neurons[{i}].endpoint must be a string")
            if name in seen:
                raise self._error(f"header: neurons[{i}].name {name!r} appears twice")
            seen.add(name)
            neurons.append(Neuron(name=name, endpoint=endpoint))
        try:
            raw_catalogue = obj.get("catalogue", {})
            if type(raw_catalogue) is not dict:
                raise ConfigError(f"header: catalogue must be an object, got {raw_catalogue!r}")
            catalogue = catalogue_from_mapping(raw_catalogue, where="header: catalogue")
            policy = Policy.from_mapping(obj.get("policy", {}), where="header: policy")
        except ConfigError as exc:
            raise self._error(str(exc)) from None
        return TraceHeader(neurons=tuple(neurons), catalogue=catalogue, policy=policy)

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
        check = _CHECKS
        neurons = self._neurons
        ids = self._request_ids
        decode = _raw_decode
        line = self.line
        events = self.events
        last_t = self._last_t
        try:
            for raw in self._fh:
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
                        if type(rid) is not str or type(obj.get("model")) is not str or rid in ids:
                            self._check_request(obj)  # raises with the reason
                        ids.add(rid)  # type: ignore[arg-type]
                    else:
                        node = obj.get("node")
                        if type(node) is not str or node not in neurons:
                            node = _str(obj, "node", kind)
                            raise _Bad(
                                f"{kind} event: unknown node {node!r} "
                                "(not among the header's neurons)"
                            )
                        # A successful fetch (ok true, with a body) needs no more checks here:
                        # the body itself is validated by the engine (semantics §1).
                        if obj.get("ok") is not True or "body" not in obj or kind in _LIFECYCLE:
                            check[kind](self, obj)
                except _Bad as exc:
                    self.line = line
                    raise self._error(str(exc)) from None
                events += 1
                yield kind, obj
        except (OSError, EOFError, zlib.error) as exc:
            # gzip.BadGzipFile is an OSError; a truncated stream is an EOFError.
            line += 1
            self.line = line
            raise self._error(f"unreadable data ({type(exc).__name__}: {exc})") from None
        finally:
            self.line, self.events, self._last_t = line, events, last_t

    def _check_request(self, obj: Mapping[str, Any]) -> None:
        rid = obj.get("id")
        if type(rid) is not str:
            _str(obj, "id", "request")
        if type(obj.get("model")) is not str:
            _str(obj, "model", "request")
        if rid in self._request_ids:
            raise _Bad(f"request event: id {rid!r} was used before")
        self._request_ids.add(rid)  # type: ignore[arg-type]

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

    def _check_lifecycle(self, obj: Mapping[str, Any]) -> None:
        kind = obj["kind"]
        _str(obj, "model", kind)
        _bool(obj, "ok", kind)


_LIFECYCLE = frozenset({"load", "unload"})


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
    return f"unknown kind {kind!r} (expected one of: {', '.join(EVENT_KINDS)})"


_CHECKS: dict[str, Callable[[TraceReader, Mapping[str, Any]], None]] = {
    "request": TraceReader._check_request,
    "models": TraceReader._check_models,
    "health": TraceReader._check_fetch,
    "discovery": TraceReader._check_fetch,
    "load": TraceReader._check_lifecycle,
    "unload": TraceReader._check_lifecycle,
}

_TYPED: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    "request": lambda f: RequestEvent(t=f["t"], id=f["id"], model=f["model"]),
    "models": lambda f: ModelsEvent(
        t=f["t"], node=f["node"], ok=f["ok"], body=f.get("body"), error=f.get("error", "")
    ),
    "health": lambda f: HealthEvent(t=f["t"], node=f["node"], ok=f["ok"], body=f.get("body")),
    "discovery": lambda f: DiscoveryEvent(t=f["t"], node=f["node"], ok=f["ok"], body=f.get("body")),
    "load": lambda f: LoadEvent(t=f["t"], node=f["node"], model=f["model"], ok=f["ok"]),
    "unload": lambda f: UnloadEvent(t=f["t"], node=f["node"], model=f["model"], ok=f["ok"]),
}


# --- writing ---------------------------------------------------------------------------------


def event_json(event: Event) -> dict[str, object]:
    """The trace line for ``event`` (as a dict, keys in the documented order)."""
    kind = _KIND_OF[type(event)]
    out: dict[str, object] = {"kind": kind}
    out.update(attrs.asdict(event, recurse=False))
    if isinstance(event, ModelsEvent):
        if event.ok:
            del out["error"]
        else:
            del out["body"]
    elif isinstance(event, HealthEvent | DiscoveryEvent) and not event.ok:
        del out["body"]
    return out


def open_output(path: str | os.PathLike[str]) -> IO[str]:
    """A text stream writing to ``path`` (gzip when it ends in ``.gz``)."""
    name = os.fspath(path)
    if name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(name, "wb"), encoding="utf-8", newline="\n")
    return open(name, "w", encoding="utf-8", newline="\n")


class TraceWriter:
    """Writes a v1 trace as it happens (used by the gateway's ``--record``).

    Each line is flushed as written, so a crash loses at most the line being
    written; :meth:`close` completes the gzip stream.
    """

    def __init__(self, path: str | os.PathLike[str], header: TraceHeader) -> None:
        self.path = os.fspath(path)
        self._fh = open_output(self.path)
        self._last_t = -math.inf
        self.write_obj(header.to_json())

    def write_obj(self, obj: Mapping[str, object]) -> None:
        self._fh.write(json.dumps(obj, separators=(", ", ": ")) + "\n")
        self._fh.flush()

    def write(self, event: Event) -> None:
        if not self._last_t <= event.t < math.inf:  # NaN fails both comparisons
            raise ValueError(
                f"trace time must be finite and never go backwards: {event.t} after {self._last_t}"
            )
        self._last_t = event.t
        self.write_obj(event_json(event))

    def close(self) -> None:
        self._fh.close()

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


def decision_json(decision: Decision, request_id: str, t: float) -> dict[str, object]:
    """The decision line as a dict (keys in the documented order)."""
    out: dict[str, object] = {
        "id": request_id,
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


def decision_line(decision: Decision, request_id: str, t: float) -> str:
    """The decision line exactly as ``json.dumps(decision_json(...))`` writes it, faster.

    ``t`` must be a float (trace records are). Everything after ``id`` and
    ``t`` depends on the decision alone, and decisions are interned, so that
    part is rendered once per decision.
    """
    tail = _TAILS.get(decision)
    if tail is None:
        if len(_TAILS) >= _TAIL_LIMIT:
            _TAILS.clear()
        tail = _TAILS[decision] = _tail(decision)
    return f'{{"id": {_enc(request_id)}, "t": {t!r}, {tail}'


_TAILS: dict[Decision, str] = {}
_TAIL_LIMIT = 1 << 16


def _tail(decision: Decision) -> str:
    outcome = decision.outcome
    node = decision.node
    retry = outcome.retry_after
    tail = (
        f'"model": {_enc(decision.requested)}, "resolved": {_enc(decision.model)}, '
        f'"outcome": "{outcome.value}", "node": {"null" if node is None else _enc(node)}, '
        f'"cold_start": {"true" if outcome.cold_start else "false"}, '
        f'"status": {outcome.status}, "retry_after": {"null" if retry is None else retry}'
    )
    if decision.load is not None:
        tail += ', "load": ' + json.dumps(decision.load.to_json())
    return tail + "}\n"
