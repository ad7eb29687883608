"""Copying the real engine cheaply, for the model checker.

The explorer expands every state by every move, so it copies an engine once
per transition. ``copy.deepcopy`` costs ~125 us for three nodes; this copier
knows the core's convention (mutable state is dicts, lists, sets and the
engine module's own records; everything else is a frozen value) and costs a
fraction.
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
    """
    memo: dict[int, Any] = dict(shared) if shared else {}
    copied: Engine = _copy(engine, memo)
    return copied


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
