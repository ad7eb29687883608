"""Readers for public LLM-serving arrival traces: one arrival per row.

* **azure** -- the Azure LLM inference trace CSV:
  ``TIMESTAMP,ContextTokens,GeneratedTokens``, timestamps as in the public
  files (``2023-11-16 18:15:46.6805900``, up to 7 fractional digits);
* **burstgpt** -- BurstGPT CSV: ``Timestamp,Model,Request tokens,Response
  tokens,Total tokens,Log Type`` (timestamps in seconds);
* **mooncake** -- Mooncake JSONL: ``{"timestamp": ms, "input_length": N,
  "output_length": N, ...}``.

Times are made relative to the first row (it arrives at ``t = 0``) and must
never go backwards. Every problem is one :class:`ArrivalsError` line naming
the file, the line and the problem. Rows are read lazily, so a file of
millions of rows is never held in memory.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Generator, Iterator
from datetime import datetime

import attrs

from ..errors import CortexError
from ..wire import describe_json

__all__ = ["Arrival", "ArrivalsError", "detect_format", "read_arrivals"]


class ArrivalsError(CortexError):
    """A malformed arrivals file; ``str()`` is ``FILE:LINE: problem``."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {problem}")


@attrs.frozen(slots=True, kw_only=True)
class Arrival:
    """One request of an arrivals file. ``model`` None: the file has no model column."""

    t: float
    model: str | None
    input_tokens: int
    output_tokens: int
    line: int


_AZURE = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_BURST = ("Timestamp", "Model", "Request tokens", "Response tokens")


def _open_text(path: str) -> Generator[tuple[int, str], None, None]:
    try:
        fh = open(path, encoding="utf-8", newline="")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise ArrivalsError(path, None, "no such file") from None
    except IsADirectoryError:
        raise ArrivalsError(path, None, "is a directory, not an arrivals file") from None
    except OSError as exc:
        raise ArrivalsError(path, None, f"cannot open: {exc.strerror}") from None
    number = 0
    try:
        with fh:
            for number, text in enumerate(fh, 1):
                yield number, text
    except UnicodeDecodeError:
        raise ArrivalsError(path, number + 1, "not valid UTF-8") from None
    except OSError as exc:
        raise ArrivalsError(path, number + 1, f"cannot read: {exc.strerror}") from None


def detect_format(path: str) -> str:
    """``mooncake`` for ``.jsonl``/``.json``; for CSV, from its header line."""
    name = os.fspath(path)
    if name.endswith((".jsonl", ".json")):
        return "mooncake"
    lines = _open_text(name)
    try:
        for _, text in lines:
            header = [h.strip() for h in next(csv.reader([text]), [])]
            if all(c in header for c in _AZURE):
                return "azure"
            if all(c in header for c in _BURST):
                return "burstgpt"
            break
    finally:
        lines.close()
    raise ArrivalsError(
        name,
        1,
        "cannot tell the format: expected an Azure header "
        f"({','.join(_AZURE)}), a BurstGPT header ({','.join(_BURST)},...) "
        "or a .jsonl Mooncake file; or set [traffic] format",
    )


def _tokens(value: object, column: str) -> int:
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.isascii() and text.isdigit():
        return int(text)
    if type(text) is int and text >= 0:
        return text
    if type(text) is float and text.is_integer() and text >= 0:
        return int(text)
    raise ValueError(f"{column} must be a whole number of tokens >= 0, got {value!r}")


def _azure_time(text: str) -> int:
    """``2023-11-16 18:15:46.6805900`` -> nanoseconds since the epoch (exact)."""
    stamp = text.strip()
    whole, dot, frac = stamp.partition(".")
    try:
        if len(whole) != 19 or (dot and not (frac.isascii() and frac.isdigit())):
            raise ValueError
        if len(frac) > 9:
            raise ValueError
        dt = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise ValueError(
            f"TIMESTAMP must look like 2023-11-16 18:15:46.6805900, got {text!r}"
        ) from None
    seconds = (dt - _EPOCH).days * 86400 + (dt - _EPOCH).seconds
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0") or "0")


_EPOCH = datetime(1970, 1, 1)


def _seconds(value: object, column: str, per_second: int) -> float:
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"{column} must be a number, got {value!r}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ValueError(f"{column} must be a number, got {value!r}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{column} must be a finite number >= 0, got {value!r}")
    return number / per_second if per_second != 1 else number


def _csv_rows(path: str, needed: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    lines = _open_text(path)
    reader = csv.reader(text for _, text in lines)
    header: list[str] | None = None
    try:
        for row in reader:
            line = reader.line_num
            if header is None:
                header = [h.strip() for h in row]
                missing = [c for c in needed if c not in header]
                if missing:
                    raise ArrivalsError(
                        path, line, f"header lacks column(s) {', '.join(missing)}: got {row!r}"
                    )
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise ArrivalsError(
                    path, line, f"expected {len(header)} columns as in the header, got {len(row)}"
                )
            yield line, dict(zip(header, row, strict=True))
    except csv.Error as exc:
        raise ArrivalsError(path, reader.line_num, f"not valid CSV: {exc}") from None
    if header is None:
        raise ArrivalsError(path, None, "empty file: no header line")


def _azure(path: str) -> Iterator[tuple[int, int, str | None, int, int]]:
    for line, row in _csv_rows(path, _AZURE):
        try:
            yield (
                line,
                _azure_time(row["TIMESTAMP"]),
                None,
                _tokens(row["ContextTokens"], "ContextTokens"),
                _tokens(row["GeneratedTokens"], "GeneratedTokens"),
            )
        except ValueError as exc:
            raise ArrivalsError(path, line, str(exc)) from None


def _burstgpt(
    path: str, model_map: dict[str, str]
) -> Iterator[tuple[int, float, str | None, int, int]]:
    for line, row in _csv_rows(path, _BURST):
        try:
            t = _seconds(row["Timestamp"], "Timestamp", 1)
            name = row["Model"].strip()
            model: str | None = None
            if model_map:
                model = model_map.get(name)
                if model is None:
                    known = ", ".join(sorted(model_map))
                    raise ValueError(
                        f"Model {name!r} is not in [traffic] model_map (maps: {known})"
                    )
            yield (
                line,
                t,
                model,
                _tokens(row["Request tokens"], "Request tokens"),
                _tokens(row["Response tokens"], "Response tokens"),
            )
        except ValueError as exc:
            raise ArrivalsError(path, line, str(exc)) from None


def _mooncake(path: str) -> Iterator[tuple[int, float, str | None, int, int]]:
    for line, text in _open_text(path):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ArrivalsError(path, line, f"not valid JSON: {exc}") from None
        try:
            if type(obj) is not dict:
                raise ValueError("expected a JSON object per line")
            for key in ("timestamp", "input_length", "output_length"):
                if key not in obj:
                    raise ValueError(f"missing field {key!r}")
                value = obj[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{key} must be a number, got {describe_json(value)}")
            yield (
                line,
                _seconds(obj["timestamp"], "timestamp", 1000),
                None,
                _tokens(obj["input_length"], "input_length"),
                _tokens(obj["output_length"], "output_length"),
            )
        except ValueError as exc:
            raise ArrivalsError(path, line, str(exc)) from None


def read_arrivals(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    model_map: dict[str, str] | None = None,
) -> Iterator[Arrival]:
    """The arrivals of ``path`` in order, ``t`` relative to the first row."""
    name = os.fspath(path)
    fmt = fmt or detect_format(name)
    rows: (
        Iterator[tuple[int, float, str | None, int, int]]
        | Iterator[tuple[int, int, str | None, int, int]]
    )
    if fmt == "azure":
        rows = _azure(name)
        scale = 1e-9  # exact integer nanoseconds until the subtraction
        divisor = 1_000_000_000
    elif fmt == "burstgpt":
        rows = _burstgpt(name, model_map or {})
        scale, divisor = 1.0, 1
    elif fmt == "mooncake":
        rows = _mooncake(name)
        scale, divisor = 1.0, 1
    else:
        raise ArrivalsError(name, None, f"unknown arrivals format {fmt!r}")
    first: float | None = None
    last: float = -math.inf
    count = 0
    for line, stamp, model, tokens_in, tokens_out in rows:
        if first is None:
            first = stamp
        if stamp < last:
            raise ArrivalsError(
                name,
                line,
                f"time goes backwards ({(stamp - first) * scale:g} s after "
                f"{(last - first) * scale:g} s since the first row)",
            )
        last = stamp
        count += 1
        yield Arrival(
            t=(stamp - first) / divisor if divisor != 1 else stamp - first,
            model=model,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            line=line,
        )
    if count == 0:
        raise ArrivalsError(name, None, "no arrivals: the file has no rows")
