"""The policy: the tunable knobs of health and routing, validated.

A policy comes from a trace header's ``policy`` object, a gateway config's
``[policy]`` table, or ``--set KEY=VALUE`` on the command line. An unknown
key or an invalid value is an error everywhere: a typo must never be
silently ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import attrs

from .errors import ConfigError
from .health import DEFAULT_FAILURE_THRESHOLD, validate_threshold

__all__ = ["IO_ERRORS_MODES", "POLICY_KEYS", "Policy", "parse_assignment"]

#: ``io_errors``: how failures after a node was chosen are classified (semantics §4).
IO_ERRORS_MODES = ("extension", "reference")
POLICY_KEYS = ("failure_threshold", "poll_interval", "io_errors")


def _interval(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number of seconds > 0, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _io_errors(value: object, key: str) -> str:
    if value not in IO_ERRORS_MODES:
        raise ConfigError(f"{key} must be one of {', '.join(IO_ERRORS_MODES)}, got {value!r}")
    return str(value)


@attrs.frozen(slots=True, kw_only=True)
class Policy:
    """Validated policy values (defaults: semantics §2 and §4)."""

    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    poll_interval: float = 10.0
    io_errors: str = "extension"

    def __attrs_post_init__(self) -> None:
        validate_threshold(self.failure_threshold)
        _interval(self.poll_interval, "poll_interval")
        _io_errors(self.io_errors, "io_errors")

    @classmethod
    def from_mapping(cls, data: object, *, where: str = "policy") -> Policy:
        """Validate a ``policy`` object; unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be an object/table, got {data!r}")
        return cls().with_values(data, where=where)

    def with_values(self, values: Mapping[str, object], *, where: str = "policy") -> Policy:
        """This policy with some values replaced (validated)."""
        changes: dict[str, object] = {}
        for key, value in values.items():
            if key not in POLICY_KEYS:
                known = ", ".join(POLICY_KEYS)
                raise ConfigError(f"{where}: unknown policy key {key!r} (known: {known})")
            try:
                if key == "failure_threshold":
                    changes[key] = validate_threshold(value)
                elif key == "poll_interval":
                    changes[key] = _interval(value, key)
                else:
                    changes[key] = _io_errors(value, key)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        return attrs.evolve(self, **changes)  # type: ignore[arg-type]

    def with_assignments(self, assignments: Iterable[str], *, where: str) -> Policy:
        """Apply ``KEY=VALUE`` strings (``--set``/``--compare``)."""
        return self.with_values(
            dict(parse_assignment(a, where=where) for a in assignments), where=where
        )

    def to_json(self) -> dict[str, object]:
        return {
            "failure_threshold": self.failure_threshold,
            "poll_interval": self.poll_interval,
            "io_errors": self.io_errors,
        }

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.to_json().items())


def parse_assignment(text: str, *, where: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as an integer, a number, or else a string."""
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
    return key, raw


_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
