"""Replay's msgspec path gives what the json path gives: decisions, summary, every error.

``replay(..., fast=True)`` (the default) decodes ordinary request, ``/models``
and ``/health`` lines with msgspec and hands any other line to the reader's
json path; ``fast=False`` reads every line with the json path. Each trace
here is replayed both ways and must give the same bytes, the same summary and
the same error (file, line, problem) or warning. The hostile lines come
*after* some ordinary ones, where the msgspec path is running.
"""

from __future__ import annotations

import gzip
import importlib
import io
import json
import logging
import os
import random
from pathlib import Path

import pytest

from cortex_fsm import TraceError, replay
from cortex_fsm.replay import render_summary

# the module (the package's name ``replay`` is its function)
replay_module = importlib.import_module("cortex_fsm.replay")

if not os.environ.get("CI"):
    pytest.importorskip("msgspec")  # CI installs the research extra: there, it must be present

ROOT = Path(__file__).resolve().parent.parent

HEADER = {
    "kind": "header",
    "format": "cortex-fsm-trace",
    "version": 2,
    "policy": {"load": "reported"},
    "neurons": [{"name": "a", "endpoint": "http://a:1"}, {"name": "b", "endpoint": "http://b:1"}],
    "catalogue": {"models": [{"id": "m"}, {"id": "n"}], "aliases": {"alias": "m"}},
}
MODELS_OK = {
    "kind": "models",
    "t": 1,
    "node": "a",
    "ok": True,
    "body": [{"id": "m", "status": "loaded"}],
}
HEALTH_OK = {
    "kind": "health",
    "t": 1.5,
    "node": "a",
    "ok": True,
    "body": {"models": [{"id": "m", "in_flight": 1, "queue_depth": 0}]},
}
PRELUDE = [
    MODELS_OK,
    {
        **MODELS_OK,
        "node": "b",
        "body": [{"id": "m", "status": "loaded"}, {"id": "n", "status": "unloaded"}],
    },
    HEALTH_OK,
    {"kind": "request", "t": 2, "id": "r1", "model": "alias"},
    {**MODELS_OK, "t": 2.5},  # the same body again
    {**HEALTH_OK, "t": 2.5, "node": "b"},
    {"kind": "request", "t": 3.0, "id": "r2", "model": "m"},
]


def both(path: Path, caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    """(decision lines, summary or error, warnings) for the json path, then
    msgspec's -- as it runs, and reading 3 lines per chunk and remembering the
    line tails of 2 decisions at most (so that every trace here crosses chunk
    boundaries and forgets tails)."""
    results = []
    for fast, chunk, tails in ((False, 0, 0), (True, 0, 0), (True, 3, 2)):
        caplog.clear()
        out = io.StringIO()
        saved = replay_module._CHUNK, replay_module._TAIL_LIMIT
        if chunk:
            replay_module._CHUNK, replay_module._TAIL_LIMIT = chunk, tails
        try:
            with caplog.at_level(logging.WARNING):
                try:
                    summary = render_summary(replay(str(path), out=out, fast=fast))
                except TraceError as exc:
                    summary = f"error: {exc}"
        finally:
            replay_module._CHUNK, replay_module._TAIL_LIMIT = saved
        results.append((out.getvalue(), summary, caplog.text))
    return results


def write(path: Path, *lines: object) -> Path:
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def same(path: Path, caplog: pytest.LogCaptureFixture) -> tuple[str, str, str]:
    slow, fast, chunked = both(path, caplog)
    assert fast == slow
    assert chunked == slow
    return fast


@pytest.mark.parametrize(
    "trace",
    [
        ROOT / "examples" / "two-gpu-blip.jsonl",
        *sorted((ROOT / "tests" / "scenarios").glob("*.jsonl")),
        *sorted((ROOT / "examples").glob("*.jsonl")),
    ],
    ids=lambda p: p.name,
)
def test_recorded_traces_give_the_same_bytes(trace: Path, caplog: pytest.LogCaptureFixture) -> None:
    if trace.name.endswith(".decisions.jsonl"):
        return
    _decisions, summary, _ = same(trace, caplog)
    assert not summary.startswith("error")


def test_ordinary_lines_replay_the_same(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    decisions, summary, warnings = same(write(tmp_path / "t.jsonl", HEADER, *PRELUDE), caplog)
    assert (decisions.count("\n") == 2 and "events    7" in summary.replace("  ", " ")) or summary
    assert warnings == ""


HOSTILE: list[object] = [
    # what the json path rejects, with its message
    "{not json",
    '{"kind": "request", "t": 9, "id": "x", "model": "m"}x',
    '{"kind": "request", "t": 9, "id": "x", "model": "m"} {}',
    "[1, 2]",
    {"t": 9},
    {"kind": "poll", "t": 9},
    {"kind": "request", "id": "x", "model": "m"},
    {"kind": "request", "t": "9", "id": "x", "model": "m"},
    {"kind": "request", "t": True, "id": "x", "model": "m"},
    '{"kind": "request", "t": 1e400, "id": "x", "model": "m"}',
    '{"kind": "request", "t": NaN, "id": "x", "model": "m"}',
    '{"kind": "request", "t": Infinity, "id": "x", "model": "m"}',
    {"kind": "request", "t": 9, "id": 1, "model": "m"},
    {"kind": "request", "t": 9, "id": "r1", "model": "m"},  # id used before
    {"kind": "request", "t": 0.5, "id": "x", "model": "m"},  # time goes backwards
    {"kind": "request", "t": 9, "id": "x", "model": "m", "attempt": 0},
    {"kind": "request", "t": 9, "id": "x", "model": "m", "exclude": "a"},
    {"kind": "models", "t": 9, "node": "zz", "ok": True, "body": []},
    {"kind": "models", "t": 9, "node": "a", "ok": True},
    {"kind": "models", "t": 9, "node": "a", "ok": "yes"},
    {"kind": "models", "t": 9, "node": "a", "ok": False, "error": 5},
    {"kind": "models", "t": 0.5, "node": "a", "ok": True, "body": []},
    {"kind": "health", "t": 9, "node": "a", "ok": True},
    {"kind": "health", "t": 9, "node": "zz", "ok": True, "body": {}},
    {"kind": "health", "t": 9, "node": ["a"], "ok": True, "body": {}},
    {"kind": "health", "t": 9, "node": "a", "ok": 1, "body": {}},
    {
        "kind": "outcome",
        "t": 9,
        "id": "nope",
        "attempt": 1,
        "node": None,
        "status": 503,
        "retry_after": None,
        "source": "gateway",
        "error": None,
    },
    '{"kind": "request", "t": 9, "id": "x", "model": "m", "kind": "poll"}',
    '{"kind": "poll", "t": 9, "id": "x", "model": "m", "kind": "request"}',
    '{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {}, "kind": "models"}',
    '{"kind": "request", "t": 9, "id": "\\ud800", "model": "m"}',  # a lone surrogate: allowed
    b'{"kind": "request", "t": 9, "id": "\xff", "model": "m"}',  # not UTF-8
    b'{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {"x": "\xff"}}',
    '{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {"x": 1e400}}',
    '{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {"x": NaN}}',
    '{"kind": "models", "t": 9, "node": "a", "ok": true, "body": [' * 3000 + "]" * 3000 + "}",
    "\ufeff" + json.dumps({"kind": "request", "t": 9, "id": "x", "model": "m"}),
    # msgspec skips unknown fields and raw bodies without checking them as it decodes
    b'{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {}, "x": "\xff"}',
    b'{"kind": "models", "t": 9, "node": "a", "ok": true, "body": [], "x": "\xff"}',
    b'{"kind": "models", "t": 9, "node": "a", "ok": false, "x": "\xff"}',
    b'{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {}, "x": "\\q"}',
    b'{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {}, "x": 01}',
    b'{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {"x": "\\q"}}',
    b'{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {"x": 01}}',
    b'{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {"x": [1 2]}}',
    b'{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {"x": "\\ud800"}}',
    # what the json path accepts, perhaps unusually
    "",
    "   \t",
    '  {"kind": "request", "t": 9, "id": "x", "model": "m"}  ',
    {"kind": "request", "t": 9, "id": "x", "model": "m", "user": "ignored"},
    {"kind": "request", "t": 9, "id": "x", "model": "m", "attempt": 2, "exclude": ["a"]},
    {"kind": "request", "t": 9, "id": "r1", "model": "m", "attempt": 2},
    {"kind": "request", "t": 12345678901234567890123, "id": "x", "model": "m"},
    '{"kind": "request", "t": 9, "id": "a", "model": "m", "id": "x"}',
    '{"t": 9, "id": "x", "model": "m", "kind": "request"}',
    {"kind": "models", "t": 9, "node": "a", "ok": False},
    {"kind": "models", "t": 9, "node": "a", "ok": False, "error": "timeout", "body": 5},
    {"kind": "models", "t": 9, "node": "a", "ok": True, "body": None},
    {"kind": "models", "t": 9, "node": "a", "ok": True, "body": {"not": "a list"}},
    {"kind": "models", "t": 9, "node": "a", "ok": True, "body": [], "error": 5},
    {"kind": "models", "t": 9, "node": "a", "ok": True, "body": [{"id": "n", "status": "odd"}]},
    {"kind": "health", "t": 9, "node": "a", "ok": False},
    {"kind": "health", "t": 9, "node": "a", "ok": True, "body": None},
    {"kind": "health", "t": 9, "node": "a", "ok": True, "body": {"models": [{"id": "m"}]}},
    {
        "kind": "health",
        "t": 9,
        "node": "a",
        "ok": True,
        "body": {"models": [{"id": "m", "in_flight": True, "queue_depth": 0}]},
    },
    {
        "kind": "health",
        "t": 9,
        "node": "a",
        "ok": True,
        "body": {"models": [{"id": "m", "in_flight": 2**70, "queue_depth": 0}]},
    },
    '{"kind": "health", "t": 9, "node": "a", "ok": true, "body": '
    '{"models": [{"id": "m", "in_flight": 1.0, "queue_depth": 0}]}}',
    '{"kind": "health", "t": 9, "node": "a", "ok": true, "body": '
    '{"models": [ {"id": "m", "in_flight": 1, "queue_depth": 0}]}}',
    # /health bodies: of the documented shape (decoded as such) or not (judged by the engine)
    {"kind": "health", "t": 9, "node": "a", "ok": True, "body": {}},
    {"kind": "health", "t": 9, "node": "a", "ok": True, "body": {"models": None}},
    {"kind": "health", "t": 9, "node": "a", "ok": True, "body": {"models": []}},
    {"kind": "health", "t": 9, "node": "a", "ok": True, "body": {"models": {}}},
    {"kind": "health", "t": 9, "node": "a", "ok": True, "body": {"models": [5]}},
    {"kind": "health", "t": 9, "node": "a", "ok": True, "body": []},
    {"kind": "health", "t": 9, "node": "a", "ok": True, "body": "up"},
    {
        "kind": "health",
        "t": 9,
        "node": "a",
        "ok": True,
        "body": {
            "uptime_secs": 5,
            "devices": [{"index": 0}],
            "models": [
                {"id": "m", "in_flight": 2, "queue_depth": 3},
                {"id": "n", "in_flight": 0, "queue_depth": 1},
                {"id": "m", "in_flight": 1, "queue_depth": 0},
            ],
        },
    },
    {
        "kind": "health",
        "t": 9,
        "node": "a",
        "ok": True,
        "body": {"extra": 1, "models": [{"id": "m", "in_flight": 2, "queue_depth": 3}]},
    },
    {
        "kind": "health",
        "t": 9,
        "node": "a",
        "ok": True,
        "body": {"models": [{"id": "m", "in_flight": 2, "queue_depth": 3, "extra": None}]},
    },
    {
        "kind": "health",
        "t": 9,
        "node": "a",
        "ok": True,
        "body": {"models": [{"id": "m", "in_flight": 2, "queue_depth": -1}]},
    },
    {
        "kind": "health",
        "t": 9,
        "node": "a",
        "ok": True,
        "body": {"models": [{"id": 7, "in_flight": 2, "queue_depth": 0}]},
    },
    '{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {"devices": [1e400], '
    '"models": [{"id": "m", "in_flight": 2, "queue_depth": 3}]}}',
    '{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {"models": '
    '[{"id": "m", "in_flight": 2, "queue_depth": 3, "in_flight": 0}]}}',
    '{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {"models": '
    '[{"id": "m", "in_flight": 2, "queue_depth": 3}], "models": 5}}',
    '{"kind": "health", "t": 9, "node": "a", "ok": true, "body": {"models": 5, "models": '
    '[{"id": "m", "in_flight": 2, "queue_depth": 3}]}}',
    {"kind": "discovery", "t": 9, "node": "a", "ok": True, "body": {"devices": []}},
    {"kind": "truth", "t": 9, "node": "a", "up": False, "why": "blip"},
    {"kind": "load", "t": 9, "node": "a", "model": "n", "ok": True},
    {"kind": "neuron_removed", "t": 9, "node": "b"},
    {"kind": "neuron_added", "t": 9, "neuron": {"name": "c", "endpoint": "http://c:1"}},
    {"kind": "reconfigured", "t": 9, "policy": {"failure_threshold": 1}},
]


def _line_bytes(line: object) -> bytes:
    if isinstance(line, bytes):
        return line
    if isinstance(line, str):
        return line.encode("utf-8", "surrogatepass")
    return json.dumps(line).encode()


def _trace(path: Path, *lines: object, end: bytes = b"\n") -> Path:
    data = b"".join(_line_bytes(x) + b"\n" for x in (HEADER, *PRELUDE))
    data += b"\n".join(_line_bytes(x) for x in lines) + end
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("line", HOSTILE, ids=range(len(HOSTILE)))
def test_unusual_lines_after_ordinary_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, line: object
) -> None:
    # the line, then the lines that follow it in an ordinary trace (after a
    # removal or a reconfiguration, node b or the policy differ for them)
    after = [
        {**HEALTH_OK, "t": 10, "body": {"models": [{"id": "m", "in_flight": 0, "queue_depth": 0}]}},
        {**MODELS_OK, "t": 10},
        {"kind": "request", "t": 10, "id": "after", "model": "alias"},
    ]
    same(_trace(tmp_path / "t.jsonl", line, *after), caplog)
    # ... as the last line, with and without its end of line
    same(_trace(tmp_path / "end.jsonl", line), caplog)
    same(_trace(tmp_path / "cut.jsonl", line, end=b""), caplog)


def test_a_cut_off_last_line_is_a_warning_either_way(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _trace(tmp_path / "t.jsonl", '{"kind": "request", "t": 9, "id": "x", "mo', end=b"")
    decisions, _summary, warnings = same(path, caplog)
    assert "its last line is incomplete" in warnings and decisions.count("\n") == 2


@pytest.mark.parametrize("cut", ["member", "corrupt"])
def test_gzip_cut_off_or_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cut: str
) -> None:
    first = b"".join(_line_bytes(x) + b"\n" for x in (HEADER, *PRELUDE))
    second = b"".join(
        _line_bytes({"kind": "request", "t": 9, "id": f"x{i}", "model": "m"}) + b"\n"
        for i in range(200)
    )
    member = gzip.compress(second, mtime=0)
    if cut == "member":
        data = gzip.compress(first, mtime=0) + member[: len(member) // 2]
    else:
        data = gzip.compress(first, mtime=0) + member[:10] + b"\x00" * 40 + member[50:]
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(data)
    _decisions, summary, warnings = same(path, caplog)
    assert ("cut off" in warnings) if cut == "member" else summary.startswith("error")


def test_random_damage_to_a_long_trace(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Ordinary polls and requests with a damaged line here and there: every
    damage the msgspec path might judge differently from the json path."""
    rng = random.Random(11)
    lines: list[bytes] = [_line_bytes(HEADER)]
    t = 0.0
    rid = 0
    for _ in range(400):
        t += rng.choice([0.0, 0.5, 1.0])
        node = rng.choice(["a", "b"])
        kind = rng.random()
        if kind < 0.25:
            body = [
                {"id": m, "status": rng.choice(["loaded", "unloaded", "loading"])} for m in "mn"
            ]
            obj: dict[str, object] = {
                "kind": "models",
                "t": t,
                "node": node,
                "ok": rng.random() < 0.9,
            }
            if obj["ok"]:
                obj["body"] = body
            else:
                obj["error"] = "timeout"
        elif kind < 0.5:
            loads = [
                {"id": m, "in_flight": rng.randint(0, 2), "queue_depth": rng.randint(0, 2)}
                for m in "mn"
            ]
            obj = {"kind": "health", "t": t, "node": node, "ok": True, "body": {"models": loads}}
        else:
            rid += 1
            obj = {
                "kind": "request",
                "t": t,
                "id": f"r{rid}",
                "model": rng.choice("mn") if rng.random() < 0.9 else "alias",
            }
        lines.append(json.dumps(obj).encode())
    for trial in range(30):
        damaged = list(lines)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(1, len(damaged))
            data = bytearray(damaged[i])
            j = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.4:
                del data[j]
            elif choice < 0.8:
                data[j] = rng.choice(b'{}[]":,0129.-etfnul \\x')
            else:
                data[j:j] = rng.choice([b"1", b" ", b'"', b"e9", b"\xff"])
            damaged[i] = bytes(data)
        path = tmp_path / f"d{trial}.jsonl"
        path.write_bytes(b"\n".join(damaged) + b"\n")
        same(path, caplog)
