"""The policy: the tunable knobs of health and routing, validated.

A policy comes from a trace header's ``policy`` object, a gateway config's
``[policy]`` table, or ``--set KEY=VALUE`` on the command line. An unknown
key or an invalid value is an error everywhere: a typo must never be
silently ignored.

The keys are data (:data:`KEYS`): each has a validator, a default and -- for
the extensions of docs/semantics.md Part II -- a *reference* value. Setting
every Part II key to its reference value reproduces Part I exactly
(:meth:`Policy.reference`), and a v1 trace, recorded before Part II existed,
replays under those values unless told otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping

import attrs

from .errors import ConfigError, Outcome
from .health import DEFAULT_FAILURE_THRESHOLD, validate_threshold

__all__ = [
    "IO_ERRORS_MODES",
    "KNOWN_DOWN_MODES",
    "LIFECYCLE_MODES",
    "LOAD_MODES",
    "MAX_ATTEMPTS",
    "PART2_KEYS",
    "POLICY_KEYS",
    "REFERENCE_VALUES",
    "RETRY_AFTER_KEYS",
    "Policy",
    "parse_assignment",
]

#: ``io_errors``: how failures after a node was chosen are classified (docs/semantics.md §4).
IO_ERRORS_MODES = ("extension", "reference")
#: ``load``: what a replica's load is for rule 2 (§8).
LOAD_MODES = ("max", "reported")
#: ``lifecycle``: may the engine ask a node to load a model (§12)?
LIFECYCLE_MODES = ("managed", "static")
#: ``known_down``: a model a down node is known to hold (§13).
KNOWN_DOWN_MODES = ("retry", "reference")
MAX_ATTEMPTS = 8
MAX_RETRY_AFTER = 3600

#: The Retry-After policy key of each retryable reject (§9).
RETRY_AFTER_KEYS: Mapping[Outcome, str] = {
    Outcome.NO_HEALTHY_NODES: "retry_after_no_healthy_nodes",
    Outcome.MODEL_RECOVERING: "retry_after_recovering",
    Outcome.FEASIBLE_NODE_UNHEALTHY: "retry_after_unhealthy",
    Outcome.UPSTREAM_UNAVAILABLE: "retry_after_upstream",
}


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _interval(value: object, key: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{key} must be a number of seconds > 0, got {_shown(value)}")
    return float(value)


def _choice(modes: tuple[str, ...]) -> Callable[[object, str], str]:
    def check(value: object, key: str) -> str:
        if not isinstance(value, str) or value not in modes:
            raise ConfigError(f"{key} must be one of {', '.join(modes)}, got {_shown(value)}")
        return value

    return check


def _int_in(lo: int, hi: int) -> Callable[[object, str], int]:
    def check(value: object, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{key} must be an integer in {lo}..{hi}, got {_shown(value)}")
        return value

    return check


def _flag(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {_shown(value)}")
    return value


def _threshold(value: object, key: str) -> int:
    return validate_threshold(value, key=key)


@attrs.frozen(slots=True)
class _Key:
    validate: Callable[[object, str], object]
    default: object
    reference: object | None  # None: not a Part II key


_RETRY = _int_in(1, MAX_RETRY_AFTER)

#: Every policy key: validator, default, reference value (Part II keys only).
KEYS: Mapping[str, _Key] = {
    "failure_threshold": _Key(_threshold, DEFAULT_FAILURE_THRESHOLD, None),
    "poll_interval": _Key(_interval, 10.0, None),
    "io_errors": _Key(_choice(IO_ERRORS_MODES), "extension", None),
    "passive_health": _Key(_flag, True, False),
    "max_attempts": _Key(_int_in(1, MAX_ATTEMPTS), 2, 1),
    "load": _Key(_choice(LOAD_MODES), "max", "reported"),
    "retry_after_no_healthy_nodes": _Key(_RETRY, 5, 5),
    "retry_after_recovering": _Key(_RETRY, 2, 2),
    "retry_after_unhealthy": _Key(_RETRY, 3, 3),
    "retry_after_upstream": _Key(_RETRY, 3, 3),
    "lifecycle": _Key(_choice(LIFECYCLE_MODES), "managed", "managed"),
    "known_down": _Key(_choice(KNOWN_DOWN_MODES), "retry", "reference"),
}
POLICY_KEYS: tuple[str, ...] = tuple(KEYS)
PART2_KEYS: tuple[str, ...] = tuple(k for k, spec in KEYS.items() if spec.reference is not None)
#: The value of every Part II key that reproduces Part I exactly.
REFERENCE_VALUES: Mapping[str, object] = {k: KEYS[k].reference for k in PART2_KEYS}


@attrs.frozen(slots=True, kw_only=True)
class Policy:
    """Validated policy values (defaults: docs/semantics.md §2, §4 and Part II)."""

    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    poll_interval: float = 10.0
    io_errors: str = "extension"
    passive_health: bool = True
    max_attempts: int = 2
    load: str = "max"
    retry_after_no_healthy_nodes: int = 5
    retry_after_recovering: int = 2
    retry_after_unhealthy: int = 3
    retry_after_upstream: int = 3
    lifecycle: str = "managed"
    known_down: str = "retry"

    def __attrs_post_init__(self) -> None:
        for key, spec in KEYS.items():
            value = spec.validate(getattr(self, key), key)
            if key == "poll_interval":
                object.__setattr__(self, key, value)  # an int given in code becomes a float

    @classmethod
    def reference(cls) -> Policy:
        """Every Part II key at its reference value: Part I's behaviour exactly."""
        return cls(**REFERENCE_VALUES)  # type: ignore[arg-type]

    @classmethod
    def from_mapping(cls, data: object, *, where: str = "policy", version: int = 2) -> Policy:
        """Validate a ``policy`` object; unknown keys are errors.

        Keys not given take their defaults; for ``version=1`` (a v1 trace,
        recorded before Part II) the Part II keys default to their reference
        values instead.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be an object/table, got {_shown(data)}")
        base = cls.reference() if version < 2 else cls()
        return base.with_values(data, where=where)

    def with_values(self, values: Mapping[str, object], *, where: str = "policy") -> Policy:
        """This policy with some values replaced (validated)."""
        changes: dict[str, object] = {}
        for key, value in values.items():
            spec = KEYS.get(key) if isinstance(key, str) else None
            if spec is None:
                known = ", ".join(POLICY_KEYS)
                raise ConfigError(f"{where}: unknown policy key {_shown(key)} (known: {known})")
            try:
                changes[key] = spec.validate(value, key)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        return attrs.evolve(self, **changes)  # type: ignore[arg-type]

    def with_assignments(self, assignments: Iterable[str], *, where: str) -> Policy:
        """Apply ``KEY=VALUE`` strings (``--set``/``--compare``)."""
        return self.with_values(
            dict(parse_assignment(a, where=where) for a in assignments), where=where
        )

    def retry_after(self, outcome: Outcome) -> int | None:
        """The ``Retry-After`` seconds a reject carries under this policy (None: no header)."""
        key = RETRY_AFTER_KEYS.get(outcome)
        return None if key is None else int(getattr(self, key))

    def to_json(self) -> dict[str, object]:
        return {key: getattr(self, key) for key in POLICY_KEYS}

    def describe(self) -> str:
        return ", ".join(f"{k}={_text(v)}" for k, v in self.to_json().items())

    def describe_changes(self, base: Policy | None = None) -> str:
        """The keys that differ from ``base`` (default: the defaults), or ``defaults``."""
        base = Policy() if base is None else base
        changed = [f"{k}={_text(v)}" for k, v in self.to_json().items() if getattr(base, k) != v]
        return ", ".join(changed) or "defaults"


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_assignment(text: str, *, where: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as an integer, a number, a boolean
    (``true``/``false``), or else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{where}: expected KEY=VALUE, got {text!r}")
    raw = raw.strip()
    # Plain decimal numbers only: int() and float() would also take "1_0",
    # non-ASCII digits, "nan" and "inf".
    if _INTEGER.fullmatch(raw):
        return key, int(raw)
    if _DECIMAL.fullmatch(raw):
        return key, float(raw)
    if raw in ("true", "false"):
        return key, raw == "true"
    return key, raw


_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
