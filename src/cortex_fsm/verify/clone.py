"""Copying the real engine cheaply, for the model checker.

The explorer expands every state by every move, so it copies an engine once
per transition. ``copy.deepcopy`` costs ~125 us for three nodes; this copier
knows the core's convention (mutable state is dicts, lists, sets and the
engine module's own records; everything else is a frozen value) and costs a
fraction. The engine's own fields and node records are copied by code written
for their shape (about half the generic walk's time); whatever it does not know
-- a new field, a record of another shape -- still goes through the generic
walk, so a copy never shares mutable state with its original.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from typing import Any

from .. import engine as _engine_module
from ..engine import Engine

__all__ = ["clone_engine", "containers", "frozen_containers"]

# --- cloning the real engine ----------------------------------------------------------------
#
# The explorer expands every state by every move, so it copies an engine once per
# transition. ``copy.deepcopy`` costs ~125 us for three nodes; this copier knows
# the core's convention (mutable state is dicts, lists, sets and the engine
# module's own records; everything else is a frozen value) and costs a fraction.

_SHARE, _DICT, _LIST, _SET, _COUNTER, _OTHER_DICT, _RECORD = range(7)
_KINDS: dict[type, int] = {
    str: _SHARE,
    int: _SHARE,
    float: _SHARE,
    bool: _SHARE,
    type(None): _SHARE,
    tuple: _SHARE,
    frozenset: _SHARE,
    dict: _DICT,
    list: _LIST,
    set: _SET,
    Counter: _COUNTER,
}
_ENGINE_MODULE = _engine_module.__name__


def _kind(cls: type) -> int:
    kind = _KINDS.get(cls)
    if kind is None:
        if issubclass(cls, dict):
            kind = _OTHER_DICT
        elif cls.__module__ == _ENGINE_MODULE:
            kind = _RECORD  # the engine's own mutable records
        else:
            # Everything else the engine holds is a frozen value (the core's
            # convention): health states, discoveries, decisions, the catalogue...
            kind = _SHARE
        _KINDS[cls] = kind
    return kind


def _fields(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in cls.__mro__:
        names.extend(s for s in getattr(klass, "__slots__", ()) if s not in ("__dict__",))
    return tuple(names)


_SLOTS: dict[type, tuple[str, ...]] = {}


def _copy(obj: Any, memo: dict[int, Any]) -> Any:
    got = memo.get(id(obj))
    if got is not None:
        return got
    cls = type(obj)
    kind = _KINDS.get(cls)
    if kind is None:
        kind = _kind(cls)
    if kind == _SHARE:
        return obj
    new: Any
    if kind in (_DICT, _COUNTER):
        new = {} if kind == _DICT else Counter()
        memo[id(obj)] = new
        kinds = _KINDS
        for k, v in obj.items():
            new[k] = v if kinds.get(type(v)) == _SHARE else _copy(v, memo)
        return new
    if kind == _LIST:
        new = []
        memo[id(obj)] = new
        new.extend([_copy(v, memo) for v in obj])
        return new
    if kind == _SET:
        new = set(obj)
        memo[id(obj)] = new
        return new
    if kind == _OTHER_DICT:
        import copy

        new = copy.copy(obj)
        memo[id(obj)] = new
        for k, v in new.items():
            new[k] = _copy(v, memo)
        return new
    new = object.__new__(cls)
    memo[id(obj)] = new
    slots = _SLOTS.get(cls)
    if slots is None:
        slots = _SLOTS[cls] = _fields(cls)
    kinds = _KINDS
    for slot in slots:
        try:
            v = getattr(obj, slot)
        except AttributeError:
            continue
        setattr(new, slot, v if kinds.get(type(v)) == _SHARE else _copy(v, memo))
    if hasattr(obj, "__dict__"):
        target = new.__dict__
        for k, v in obj.__dict__.items():
            target[k] = v if kinds.get(type(v)) == _SHARE else _copy(v, memo)
    return new


def clone_engine(engine: Engine, shared: Mapping[int, Any] | None = None) -> Engine:
    """An independent copy of ``engine``: every dict, list, set and record of the
    engine module is copied (with sharing preserved), frozen values are shared.

    ``shared`` maps ids of objects known never to be mutated (input bodies, the
    health table's dicts) to themselves, so they are not copied.

    The engine's own fields are copied by code that knows their shape (what
    :func:`_copy` would do, without its walk); a field or record shape it does
    not know goes through the generic copier, so a new field is still copied.
    """
    if type(engine) is not Engine or not _KNOWN_RECORDS:
        memo: dict[int, Any] = dict(shared) if shared else {}
        copied: Engine = _copy(engine, memo)
        return copied
    return _clone_known(engine, shared if shared is not None else _NOTHING)


_NOTHING: Mapping[int, Any] = {}
_NODE_SLOTS = frozenset(
    {
        "busy",
        "chosen",
        "discovery",
        "endpoint",
        "failures",
        "health",
        "health_body",
        "last_failure",
        "last_ok",
        "local",
        "models",
        "models_body",
        "name",
        "routable",
    }
)
#: The record shapes the specialised copy is written for; when the engine's
#: records change shape, every copy goes through the generic copier.
_KNOWN_RECORDS = frozenset(_fields(_engine_module._Node)) == _NODE_SLOTS and frozenset(
    _fields(_engine_module._Entry)
) == frozenset({"last_accessed", "status"})
#: The engine's counters of what it observed (integers; statistics() reports them).
ENGINE_COUNTERS = frozenset(
    {
        "_polls_ok",
        "_polls_failed",
        "_discoveries",
        "_discoveries_ignored",
        "_health_readings",
        "_health_invalid",
        "_transitions",
    }
)
#: Engine fields holding frozen values or scalars: shared as they are.
_SHARED_FIELDS = ENGINE_COUNTERS | {
    "catalogue",
    "policy",
    "_table",
    "neurons",
    "_routable",
    "_seq",
    "_count_local",
}
#: Engine fields that are dicts of frozen values (or sets of them): copied flat.
_FLAT_FIELDS = frozenset({"_cache", "_picks", "_open", "_cache_keys", "_after_request"})


def _clone_known(engine: Engine, shared: Mapping[int, Any]) -> Engine:
    Node, Entry, Ranked = _engine_module._Node, _engine_module._Entry, _engine_module._Ranked
    new_entry = Entry.__new__
    new_node = Node.__new__
    kinds = _KINDS
    memo: dict[int, Any] | None = None
    old = engine.__dict__
    nodes: dict[str, Any] = {}
    mapped: dict[int, Any] = {}
    for name, rec in old["_nodes"].items():
        if type(rec) is not Node:
            memo = _memo(memo, shared, mapped)
            nodes[name] = _copy(rec, memo)
            continue
        new = new_node(Node)
        mapped[id(rec)] = nodes[name] = new
        new.name = rec.name
        new.endpoint = rec.endpoint
        new.health = rec.health
        new.routable = rec.routable
        new.discovery = rec.discovery
        models = {}
        for model, entry in rec.models.items():
            if type(entry) is Entry:
                copy = new_entry(Entry)
                copy.status = entry.status
                copy.last_accessed = entry.last_accessed
                models[model] = copy
            else:
                memo = _memo(memo, shared, mapped)
                models[model] = _copy(entry, memo)
        new.models = models
        for slot in ("busy", "local", "chosen"):
            counts = getattr(rec, slot)
            if type(counts) is dict and (not counts or _flat(counts.values())):
                counts = counts.copy()
            else:
                memo = _memo(memo, shared, mapped)
                counts = _copy(counts, memo)
            setattr(new, slot, counts)
        new.failures = rec.failures
        new.last_ok = rec.last_ok
        new.last_failure = rec.last_failure
        for slot in ("models_body", "health_body"):
            body = getattr(rec, slot)
            if body is not None and id(body) not in shared and kinds.get(type(body)) != _SHARE:
                memo = _memo(memo, shared, mapped)
                body = _copy(body, memo)
            setattr(new, slot, body)
    copied: Engine = object.__new__(Engine)
    out = copied.__dict__
    for field, value in old.items():
        if field in _SHARED_FIELDS and kinds.get(type(value)) == _SHARE:
            out[field] = value
        elif field == "_nodes":
            out[field] = nodes
        elif field in ("_holders", "_feasible"):
            index: dict[str, dict[str, Any]] = {}
            for key, members in value.items():
                inner = {}
                for name, rec in members.items():
                    got = mapped.get(id(rec))
                    if got is None:
                        memo = _memo(memo, shared, mapped)
                        got = _copy(rec, memo)
                    inner[name] = got
                index[key] = inner
            out[field] = index
        elif field in _FLAT_FIELDS and type(value) is dict and _flat(value.values(), shared):
            out[field] = value.copy()
        elif (
            field == "_ranked"
            and type(value) is dict
            and all(type(r) is Ranked and type(r.keys) is list for r in value.values())
        ):
            # only the keys change once made
            out[field] = {m: Ranked(r.keys.copy(), r.index) for m, r in value.items()}
        elif field == "_decisions" and type(value) is Counter:
            out[field] = Counter(value)
        elif field == "_stale" and type(value) is set:
            out[field] = set(value)
        elif (
            field == "_aliases_of"
            and type(value) is dict
            and all(type(v) is list and _flat(v) for v in value.values())
        ):
            out[field] = {k: v.copy() if type(v) is list else v for k, v in value.items()}
        elif id(value) in shared:
            out[field] = value
        else:
            memo = _memo(memo, shared, mapped)
            out[field] = _copy(value, memo)
    return copied


def _flat(values: Any, shared: Mapping[int, Any] = _NOTHING) -> bool:
    """Whether the generic copier would share every value (a frozen value, or
    one of ``shared``)."""
    kinds = _KINDS
    for v in values:
        kind = kinds.get(type(v))
        if kind is None:
            kind = _kind(type(v))
        if kind != _SHARE and id(v) not in shared:
            return False
    return True


def _memo(
    memo: dict[int, Any] | None, shared: Mapping[int, Any], mapped: dict[int, Any]
) -> dict[int, Any]:
    if memo is None:
        memo = dict(shared)
    memo.update(mapped)
    return memo


def frozen_containers(engine: Engine) -> dict[int, Any]:
    """Containers inside the engine's frozen values (e.g. the health table's
    lookup dicts, which the engine may also reference directly): shared, not copied."""
    out: dict[int, Any] = {}
    seen: set[int] = set()

    def walk(obj: Any, inside_frozen: bool) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        kind = _kind(type(obj))
        if kind in (_DICT, _COUNTER, _OTHER_DICT):
            if inside_frozen:
                out[id(obj)] = obj
            for k, v in obj.items():
                walk(k, inside_frozen)
                walk(v, inside_frozen)
        elif kind in (_LIST, _SET):
            if inside_frozen:
                out[id(obj)] = obj
            for v in obj:
                walk(v, inside_frozen)
        elif kind == _RECORD or (
            kind == _SHARE
            and type(obj).__module__.startswith(_PACKAGE)
            and not isinstance(obj, enum.Enum)
        ):
            frozen = inside_frozen or kind == _SHARE
            for slot in _fields(type(obj)):
                if hasattr(obj, slot):
                    walk(getattr(obj, slot), frozen)
            for v in getattr(obj, "__dict__", {}).values():
                walk(v, frozen)

    walk(engine, False)
    return out


_PACKAGE = _ENGINE_MODULE.partition(".")[0] + "."


def containers(obj: object, out: dict[int, Any]) -> None:
    if isinstance(obj, dict):
        out[id(obj)] = obj
        for v in obj.values():
            containers(v, out)
    elif isinstance(obj, list):
        out[id(obj)] = obj
        for v in obj:
            containers(v, out)
