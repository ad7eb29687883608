"""Log lines of the drivers, and the gateway's access log.

Every log line carries ``ts``, the wall-clock time in ISO 8601 UTC with
milliseconds (``2026-01-05T14:03:07.412Z``). Two formats (``serve
--log-format``):

* ``json`` (the default): one JSON object per line, ``ts``, ``level`` and
  ``logger`` first, then the event's own fields (the drivers log events as
  JSON objects; any other message becomes ``"message"``);
* ``text``: ``ts LEVEL logger: event key=value ...`` for people reading a
  terminal.

The access log (:class:`AccessLog`) is one JSON object per client request,
whatever the format, with exactly the keys of :data:`ACCESS_KEYS`. It goes to
standard error or to a file (appended, in batches written at least every
0.1 s; :meth:`AccessLog.reopen` after a log rotation).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from json.encoder import encode_basestring_ascii
from typing import IO, Final

__all__ = [
    "ACCESS_KEYS",
    "LOG_FORMATS",
    "FLUSH_INTERVAL",
    "AccessLog",
    "configure_logging",
    "wall_clock",
]

LOG_FORMATS: Final = ("json", "text")
ACCESS_KEYS: Final = (
    "ts",
    "id",
    "client",
    "method",
    "path",
    "model",
    "resolved",
    "outcome",
    "node",
    "status",
    "attempts",
    "duration_s",
    "bytes",
)
"""The keys of an access log line, in order."""

_SECOND_CACHE: list[tuple[int, str]] = [(-1, "")]


def wall_clock(t: float | None = None) -> str:
    """``t`` (``time.time()`` by default) as ISO 8601 UTC with milliseconds and ``Z``."""
    if t is None:
        t = time.time()
    second = int(t)
    cached, text = _SECOND_CACHE[0]
    if second != cached:  # formatting the date is the slow part: once a second
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _SECOND_CACHE[0] = (second, text)
    millis = int((t - second) * 1000)
    return f"{text}.{millis:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, object]:
    message = record.getMessage()
    if message.startswith("{"):
        try:
            value = json.loads(message)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
    fields: dict[str, object] = {"message": message}
    if record.exc_info:
        fields["exception"] = logging.Formatter().formatException(record.exc_info)
    return fields


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        head: dict[str, object] = {
            "ts": wall_clock(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        return json.dumps(head | _fields(record))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        parts = [wall_clock(record.created), record.levelname, f"{record.name}:"]
        event = fields.pop("event", None)
        if event is not None:
            parts.append(str(event))
        message = fields.pop("message", None)
        if message is not None:
            parts.append(str(message))
        for key, value in fields.items():
            shown = value if isinstance(value, str) and value and " " not in value else None
            parts.append(f"{key}={shown if shown is not None else json.dumps(value)}")
        return " ".join(parts)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Log lines of the ``cortex_fsm`` loggers go to stderr, one per line, in ``fmt``."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JSONFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger("cortex_fsm")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


_enc = encode_basestring_ascii


class AccessLog:
    """One JSON line per client request, to ``path`` (appended) or to standard error.

    Lines are collected in memory and written by :meth:`flush` -- the gateway
    calls it every :data:`FLUSH_INTERVAL` seconds and when it stops -- so
    a busy gateway pays one ``write`` per batch instead of one per request.
    A crash can lose the lines of the last interval.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self._out: IO[str] = self._open()
        self._pending: list[str] = []
        self._failed = False

    def _open(self) -> IO[str]:
        if self.path is None:
            return sys.stderr
        return open(self.path, "a", encoding="utf-8")

    def reopen(self) -> None:
        """Open the file again (after a log rotation moved it away)."""
        self.flush()
        if self.path is not None:
            old, self._out = self._out, self._open()
            old.close()

    def close(self) -> None:
        self.flush()
        if self.path is not None:
            self._out.close()

    def flush(self) -> None:
        """Write the lines collected so far."""
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        try:
            self._out.write(text)
            self._out.flush()
        except (OSError, ValueError) as exc:  # a full disk must not fail requests
            if not self._failed:
                self._failed = True
                logging.getLogger("cortex_fsm.gateway").error(
                    json.dumps({"event": "access_log_failed", "path": self.path, "error": str(exc)})
                )
        else:
            self._failed = False

    def write(  # noqa: PLR0917 - one argument per key, in the order of ACCESS_KEYS
        self,
        ts: float,
        request_id: str | None,
        client: str | None,
        method: str,
        path: str,
        model: str | None,
        resolved: str | None,
        outcome: str | None,
        node: str | None,
        status: int | None,
        attempts: int,
        duration_s: float,
        bytes_sent: int,
    ) -> None:
        """Add one line (the keys of :data:`ACCESS_KEYS`, in that order)."""
        self._pending.append(
            f'{{"ts": "{wall_clock(ts)}", '
            f'"id": {"null" if request_id is None else _enc(request_id)}, '
            f'"client": {"null" if client is None else _enc(client)}, '
            f'"method": {_enc(method)}, "path": {_enc(path)}, '
            f'"model": {"null" if model is None else _enc(model)}, '
            f'"resolved": {"null" if resolved is None else _enc(resolved)}, '
            f'"outcome": {"null" if outcome is None else _enc(outcome)}, '
            f'"node": {"null" if node is None else _enc(node)}, '
            f'"status": {"null" if status is None else status}, "attempts": {attempts}, '
            f'"duration_s": {duration_s:.6f}, "bytes": {bytes_sent}}}\n'
        )


FLUSH_INTERVAL: Final = 0.1
"""Seconds between two writes of the access log."""
