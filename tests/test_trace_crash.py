"""Crash-safe recording: what a killed writer leaves is readable up to the cut."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pytest

from cortex_fsm import Neuron, TraceError, TraceReader, TraceWriter
from cortex_fsm.trace import RequestEvent, TraceHeader

HEADER = TraceHeader(neurons=(Neuron(name="a", endpoint="http://a:1"),))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def requests(path: Path) -> list[str]:
    with TraceReader(path) as trace:
        return [e.id for e in trace if isinstance(e, RequestEvent)]


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_lines_reach_the_file_at_each_flush_at_most_an_interval_apart(
    tmp_path: Path, name: str
) -> None:
    clock = Clock()
    path = tmp_path / name
    writer = TraceWriter(path, HEADER, flush_interval=1.0, clock=clock)
    writer.write(RequestEvent(t=0.0, id="r1", model="m"))
    assert requests(path) == []  # collected, not written yet (the header is)
    clock.now = 0.5
    writer.write(RequestEvent(t=0.5, id="r2", model="m"))
    assert requests(path) == []
    clock.now = 1.0
    writer.write(RequestEvent(t=1.0, id="r3", model="m"))  # an interval since the last flush
    assert requests(path) == ["r1", "r2", "r3"]
    writer.write(RequestEvent(t=1.1, id="r4", model="m"))
    writer.flush()  # the owner may flush more often
    assert requests(path) == ["r1", "r2", "r3", "r4"]
    writer.write(RequestEvent(t=1.2, id="r5", model="m"))
    writer.close()
    assert requests(path) == ["r1", "r2", "r3", "r4", "r5"]


def test_a_gzip_trace_is_a_series_of_complete_members(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    with TraceWriter(path, HEADER) as writer:
        for i in range(3):
            writer.write(RequestEvent(t=float(i), id=f"r{i}", model="m"))
            writer.flush()
    data = path.read_bytes()
    assert data.count(b"\x1f\x8b\x08") == 4  # the header's member and one per flush
    assert gzip.decompress(data).decode().count("\n") == 4


def _cut_trace(tmp_path: Path, name: str) -> tuple[Path, int]:
    path = tmp_path / name
    with TraceWriter(path, HEADER) as writer:
        writer.write(RequestEvent(t=0.0, id="r1", model="m"))
        writer.flush()
        writer.write(RequestEvent(t=1.0, id="r2", model="m"))
        writer.write(RequestEvent(t=2.0, id="r3", model="m"))
    data = path.read_bytes()
    if name.endswith(".gz"):  # half of the last member (r2 and r3) reached the file
        last = data.rindex(b"\x1f\x8b\x08")
        keep = last + (len(data) - last) // 2
    else:  # the last line lost its end
        keep = len(data) - 9
    path.write_bytes(data[:keep])
    return path, keep


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_a_cut_off_end_is_one_warning_and_everything_before_it(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = _cut_trace(tmp_path, name)
    with caplog.at_level(logging.WARNING, logger="cortex_fsm.trace"), TraceReader(path) as trace:
        ids = [e.id for e in trace if isinstance(e, RequestEvent)]
        truncated = trace.truncated
    if name == "t.jsonl":
        assert ids == ["r1", "r2"]
    else:  # what of the cut member decompresses, in whole lines, is kept
        assert ids in (["r1"], ["r1", "r2"])
    assert truncated is not None
    assert truncated.startswith(f"{path}:")
    assert "cut off" in truncated
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"cortex-fsm: warning: {truncated}"]


def test_corruption_before_the_end_is_still_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    with TraceWriter(path, HEADER) as writer:
        for i in range(3):
            writer.write(RequestEvent(t=float(i), id=f"r{i}", model="m"))
            writer.flush()
    data = bytearray(path.read_bytes())
    third = data.index(b"\x1f\x8b\x08", data.index(b"\x1f\x8b\x08", 3) + 3)
    data[third - 8] ^= 0xFF  # the CRC of the second member
    path.write_bytes(bytes(data))
    with pytest.raises(TraceError, match="unreadable data"), TraceReader(path) as trace:
        list(trace)
    plain = tmp_path / "t.jsonl"
    with TraceWriter(plain, HEADER) as writer:
        writer.write(RequestEvent(t=0.0, id="r1", model="m"))
    plain.write_text(plain.read_text() + '{"kind": "request", "t": 1.0, "id": \n')
    with pytest.raises(TraceError, match="not valid JSON"), TraceReader(plain) as trace:
        list(trace)
