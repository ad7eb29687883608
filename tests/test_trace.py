"""Trace format v1: reading, line-numbered errors, writing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from cortex_fsm import TraceError, TraceReader, TraceWriter
from cortex_fsm.trace import (
    DiscoveryEvent,
    HealthEvent,
    LoadEvent,
    ModelsEvent,
    RequestEvent,
    TraceHeader,
    UnloadEvent,
    decision_json,
    decision_line,
)

HEADER = {
    "kind": "header",
    "format": "cortex-fsm-trace",
    "version": 1,
    "neurons": [{"name": "a", "endpoint": "http://a:1"}],
}


def write(path: Path, *lines: object) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def read_all(path: Path) -> list[object]:
    with TraceReader(path) as trace:
        return list(trace)


def test_reads_header_and_typed_events(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.jsonl",
        {**HEADER, "policy": {"failure_threshold": 2}, "extra_key": {"kept": "ignored"}},
        "",
        {"kind": "discovery", "t": 0, "node": "a", "ok": False},
        {"kind": "models", "t": 1, "node": "a", "ok": True, "body": []},
        {"kind": "models", "t": 2, "node": "a", "ok": False, "error": "timeout"},
        {"kind": "health", "t": 2, "node": "a", "ok": True, "body": {}},
        {"kind": "load", "t": 3, "node": "a", "model": "m", "ok": True},
        {"kind": "unload", "t": 3, "node": "a", "model": "m", "ok": False},
        "   ",
        '  {"kind": "request", "t": 4.5, "id": "r1", "model": "m", "user": "ignored"}\t ',
    )
    with TraceReader(path) as trace:
        assert trace.header.policy.failure_threshold == 2
        assert [n.name for n in trace.header.neurons] == ["a"]
        events = list(trace)
        assert trace.line == 10 and trace.events == 7 and trace.last_t == 4.5
    assert events == [
        DiscoveryEvent(t=0.0, node="a", ok=False),
        ModelsEvent(t=1.0, node="a", ok=True, body=[]),
        ModelsEvent(t=2.0, node="a", ok=False, error="timeout"),
        HealthEvent(t=2.0, node="a", ok=True, body={}),
        LoadEvent(t=3.0, node="a", model="m", ok=True),
        UnloadEvent(t=3.0, node="a", model="m", ok=False),
        RequestEvent(t=4.5, id="r1", model="m"),
    ]
    assert all(type(e.t) is float for e in events)


def test_gzip_traces(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(HEADER) + "\n")
        fh.write(json.dumps({"kind": "request", "t": 0, "id": "r", "model": "m"}) + "\n")
    assert read_all(path) == [RequestEvent(t=0.0, id="r", model="m")]


LINE2 = [
    ("{not json", "not valid JSON: Expecting property name"),
    ('{"kind": "request", "t": 0, "id": "r", "model": "m"}x', "not valid JSON: Extra data"),
    ('{"kind": "request", "t": 0, "id": "r", "model": "m"} {}', "not valid JSON: Extra data"),
    ("[1, 2]", "expected a JSON object, got an array"),
    ('"text"', "expected a JSON object, got a string"),
    ({"t": 0}, "missing field 'kind'"),
    ({"kind": "poll", "t": 0}, "unknown kind 'poll'"),
    ({"kind": 3, "t": 0}, "unknown kind 3"),
    (HEADER, "a second header"),
    ({"kind": "request", "id": "r", "model": "m"}, "request event: missing field 't'"),
    ({"kind": "request", "t": "0", "id": "r", "model": "m"}, "field 't' must be a number"),
    ({"kind": "request", "t": True, "id": "r", "model": "m"}, "field 't' must be a number"),
    ({"kind": "request", "t": 1e400, "id": "r", "model": "m"}, "field 't' must be finite"),
    ({"kind": "request", "t": 0, "model": "m"}, "request event: missing field 'id'"),
    ({"kind": "request", "t": 0, "id": 1, "model": "m"}, "field 'id' must be a string"),
    ({"kind": "request", "t": 0, "id": "r"}, "request event: missing field 'model'"),
    ({"kind": "models", "t": 0, "ok": True, "body": []}, "models event: missing field 'node'"),
    ({"kind": "models", "t": 0, "node": "zz", "ok": True, "body": []}, "unknown node 'zz'"),
    ({"kind": "models", "t": 0, "node": ["a"], "ok": True}, "field 'node' must be a string"),
    ({"kind": "models", "t": 0, "node": "a", "body": []}, "models event: missing field 'ok'"),
    ({"kind": "models", "t": 0, "node": "a", "ok": "yes"}, "field 'ok' must be a boolean"),
    ({"kind": "models", "t": 0, "node": "a", "ok": True}, "models event: missing field 'body'"),
    ({"kind": "models", "t": 0, "node": "a", "ok": False, "error": 5}, "'error' must be a string"),
    ({"kind": "health", "t": 0, "node": "a", "ok": True}, "health event: missing field 'body'"),
    ({"kind": "discovery", "t": 0, "node": "a", "ok": 1}, "field 'ok' must be a boolean"),
    ({"kind": "load", "t": 0, "node": "a", "ok": True}, "load event: missing field 'model'"),
    ({"kind": "unload", "t": 0, "node": "a", "model": "m"}, "unload event: missing field 'ok'"),
]


@pytest.mark.parametrize(("line", "message"), LINE2)
def test_malformed_event_lines_name_file_line_and_problem(
    tmp_path: Path, line: object, message: str
) -> None:
    path = write(tmp_path / "bad.jsonl", HEADER, line)
    with pytest.raises(TraceError) as info:
        read_all(path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert message in str(info.value)
    assert info.value.line == 2


def test_time_going_backwards(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.jsonl",
        HEADER,
        {"kind": "request", "t": 5, "id": "r1", "model": "m"},
        {"kind": "request", "t": 4.5, "id": "r2", "model": "m"},
    )
    with pytest.raises(
        TraceError, match=r"t\.jsonl:3: request event: t goes backwards \(4\.5 after 5\.0\)"
    ):
        read_all(path)


def test_duplicate_request_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.jsonl",
        HEADER,
        {"kind": "request", "t": 0, "id": "r1", "model": "m"},
        {"kind": "request", "t": 0, "id": "r1", "model": "m"},
    )
    with pytest.raises(TraceError, match=r":3: request event: id 'r1' was used before"):
        read_all(path)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"kind": "request", "t": 0, "id": "r", "model": "m"}, "line 1 must be the header"),
        ({**HEADER, "format": "other"}, "format must be 'cortex-fsm-trace'"),
        ({**HEADER, "version": 3}, "unsupported trace version 3"),
        ({**HEADER, "neurons": {}}, "neurons must be an array"),
        ({**HEADER, "neurons": [{"name": "", "endpoint": "x"}]}, r"neurons\[0\].name"),
        ({**HEADER, "neurons": [{"name": "a"}]}, r"neurons\[0\].endpoint must be a string"),
        (
            {**HEADER, "neurons": [{"name": "a", "endpoint": "x"}, {"name": "a", "endpoint": "y"}]},
            "appears twice",
        ),
        ({**HEADER, "policy": {"failure_threshld": 3}}, "unknown policy key 'failure_threshld'"),
        (
            {**HEADER, "policy": {"failure_threshold": 0}},
            "failure_threshold must be an integer in 1..10000",
        ),
        ({**HEADER, "policy": []}, "policy must be an object"),
        ({**HEADER, "catalogue": {"models": [{"id": 1}]}}, r"catalogue: models\[0\].id"),
        ({**HEADER, "catalogue": []}, "catalogue must be an object"),
    ],
)
def test_header_errors(tmp_path: Path, header: dict[str, object], message: str) -> None:
    path = write(tmp_path / "h.jsonl", header)
    with pytest.raises(TraceError, match=f"h.jsonl:1: .*{message}"):
        read_all(path)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"missing.jsonl: no such file"):
        TraceReader(tmp_path / "missing.jsonl")
    with pytest.raises(TraceError, match="is a directory"):
        TraceReader(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(TraceError, match="empty trace: no header line"):
        TraceReader(empty)
    bad_utf8 = tmp_path / "utf8.jsonl"
    bad_utf8.write_bytes(json.dumps(HEADER).encode() + b'\n{"kind": "\xff"}\n')
    with pytest.raises(TraceError, match=r"utf8.jsonl:2: not valid UTF-8"):
        read_all(bad_utf8)


def test_corrupt_and_truncated_gzip(tmp_path: Path) -> None:
    notgz = tmp_path / "plain.jsonl.gz"
    notgz.write_text(json.dumps(HEADER) + "\n")
    with pytest.raises(TraceError, match=r"plain.jsonl.gz:1: unreadable data"):
        read_all(notgz)
    request = json.dumps({"kind": "request", "t": 0, "id": "r", "model": "m"})
    full = gzip.compress((json.dumps(HEADER) + "\n" + request + "\n").encode())
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(full[:-8] + bytes(b ^ 0xFF for b in full[-8:-4]) + full[-4:])
    with pytest.raises(TraceError, match=r"corrupt.jsonl.gz:.*unreadable data"):
        read_all(corrupt)
    # cut off mid-way, as a crash leaves it: what came before is read (test_trace_crash.py)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(full[: len(full) - 12])
    with TraceReader(cut) as trace:
        list(trace)
        assert trace.truncated is not None


def test_writer_round_trip(tmp_path: Path) -> None:
    with TraceReader(write(tmp_path / "h.jsonl", HEADER)) as reader:
        header = reader.header
    events = [
        DiscoveryEvent(t=0.0, node="a", ok=True, body={"devices": []}),
        ModelsEvent(t=1.0, node="a", ok=True, body=[{"id": "m", "status": "loaded"}]),
        ModelsEvent(t=2.0, node="a", ok=False, error="connect"),
        HealthEvent(t=2.0, node="a", ok=False),
        LoadEvent(t=3.0, node="a", model="m", ok=True),
        UnloadEvent(t=4.0, node="a", model="m", ok=True),
        RequestEvent(t=5.0, id="r1", model="m"),
    ]
    for name in ("rec.jsonl", "rec.jsonl.gz"):
        with TraceWriter(tmp_path / name, header) as writer:
            for e in events:
                writer.write(e)
        with TraceReader(tmp_path / name) as trace:
            assert trace.header == TraceHeader(
                neurons=header.neurons, catalogue=header.catalogue, policy=header.policy
            )
            assert list(trace) == events


def test_writer_refuses_time_going_backwards(tmp_path: Path) -> None:
    with TraceReader(write(tmp_path / "h.jsonl", HEADER)) as reader:
        header = reader.header
    with TraceWriter(tmp_path / "w.jsonl", header) as writer:
        writer.write(RequestEvent(t=2.0, id="a", model="m"))
        with pytest.raises(ValueError, match="backwards"):
            writer.write(RequestEvent(t=1.0, id="b", model="m"))


def test_decision_line_is_json_dumps_of_decision_json(tmp_path: Path) -> None:
    from tests.helpers import make_engine, up

    from cortex_fsm import Profile

    engine = make_engine(["a"], [Profile(id="m\u00e9", harness="h", min_devices=1)])
    up(engine, "a")
    for requested in ("m\u00e9", 'quote"d', "x"):
        d = engine.decide(requested)
        for rid, t in (("r\u00fc", 1.0), ("r", 1e17), ("r", 0.1)):
            assert decision_line(d, rid, t) == json.dumps(decision_json(d, rid, t)) + "\n"
