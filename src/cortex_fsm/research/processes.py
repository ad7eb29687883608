"""Seeded random processes: what really happens to the fleet, and who asks for what.

Common random numbers: every process draws from its own stream, seeded from
``(seed, stream name)`` -- one per node for outages, one per node for blips,
one per node for slow polls, and separate ones for arrival times, requested
models and token counts. The ground truth and the arrivals are therefore
functions of the scenario's failure and traffic tables and the seed alone:
changing the policy (``failure_threshold``, ``poll_interval``, ...) between
two runs changes what the gateway does, never what the fleet or the clients
do, so the difference between two grid points is the policy's doing.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from bisect import bisect_right
from collections.abc import Callable, Iterator

import attrs

from .arrivals import read_arrivals
from .scenario import Failures, Traffic

__all__ = ["Change", "Request", "micros", "requests", "stream", "truth_changes"]


def stream(seed: int, name: str) -> random.Random:
    """The random stream ``name`` of run ``seed`` (independent of every other name)."""
    digest = hashlib.sha256(f"cortex-fsm/{seed}/{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


@attrs.frozen(slots=True, kw_only=True)
class Change:
    """The node's real state changes at ``t``: ``up`` or not, and why."""

    t: float
    up: bool
    why: str


def _outages(failures: Failures, rng: random.Random) -> Iterator[tuple[float, float]]:
    """Alternating renewal process: up for Exp(mtbf_s), down for Exp(mttr_s)."""
    if failures.mtbf_s is None:
        return
    up_rate, down_rate = 1.0 / failures.mtbf_s, 1.0 / failures.mttr_s
    t = 0.0
    while True:
        start = t + rng.expovariate(up_rate)
        end = start + rng.expovariate(down_rate)
        yield start, end
        t = end


def _blips(failures: Failures, rng: random.Random) -> Iterator[tuple[float, float]]:
    """Poisson blips of fixed length ``blip_s`` (they may overlap)."""
    if failures.blip_per_hour <= 0:
        return
    rate = failures.blip_per_hour / 3600.0
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        yield t, t + failures.blip_s


_Process = Callable[[Failures, random.Random], Iterator[tuple[float, float]]]
_Marks = Iterator[tuple[float, int, str]]

# Sweep-line marks: at equal times a start sorts before an end, so an outage
# that begins as a blip ends is one continuous down period, not a flap.
_START, _END = 0, 1


def _marks(
    intervals: Iterator[tuple[float, float]], what: str, over: str, ends: bool
) -> Iterator[tuple[float, int, str]]:
    for start, end in intervals:
        yield (end, _END, over) if ends else (start, _START, what)


def truth_changes(name: str, failures: Failures, seed: int) -> Iterator[Change]:
    """Node ``name``'s real up/down changes after t = 0 (it starts up), forever.

    Outages (``mtbf_s``/``mttr_s``) and blips (``blip_per_hour``/``blip_s``)
    come from two streams and are merged: the node is down while any is on.
    """

    def pair(kind: str, make: _Process, what: str, over: str) -> list[_Marks]:
        # Starts and ends of one process each come in time order (fixed-length
        # blips end in the order they start), from two copies of the same stream.
        a = make(failures, stream(seed, f"{kind}/{name}"))
        b = make(failures, stream(seed, f"{kind}/{name}"))
        return [_marks(a, what, over, False), _marks(b, what, over, True)]

    marks = heapq.merge(
        *pair("outages", _outages, "outage", "repaired"),
        *pair("blips", _blips, "blip", "blip over"),
    )
    down = 0
    for t, mark, why in marks:
        if mark == _START:
            down += 1
            if down == 1:
                yield Change(t=t, up=False, why=why)
        else:
            down -= 1
            if down == 0:
                yield Change(t=t, up=True, why=why)


#: One client request: ``(t, requested model, service time)``, both times in
#: whole microseconds, the resolution of simulated time (a plain tuple: the
#: simulation makes millions of them).
Request = tuple[int, str, int]


def micros(seconds: float) -> int:
    """``seconds`` (>= 0) in whole microseconds, to the nearest (half up)."""
    return math.floor(seconds * 1e6 + 0.5)


class _Picker:
    """Weighted choice of the requested model, from its own stream."""

    def __init__(self, weights: tuple[tuple[str, float], ...], rng: random.Random) -> None:
        self.models = [m for m, _ in weights]
        total = sum(w for _, w in weights)
        acc = 0.0
        self.cumulative: list[float] = []
        for _, w in weights:
            acc += w / total
            self.cumulative.append(acc)
        self.cumulative[-1] = 1.0
        self.random = rng.random

    def __call__(self) -> str:
        if len(self.models) == 1:
            return self.models[0]
        return self.models[bisect_right(self.cumulative, self.random(), 0, len(self.models) - 1)]


def requests(traffic: Traffic, seed: int, until: float | None) -> Iterator[Request]:
    """The requests in time order, up to ``until`` (None: all rows of the file).

    Poisson traffic draws arrival times, models and token counts (exponential
    with the configured means, at least 1) from three separate streams. A
    request's time is rounded to the microsecond after it is drawn (the
    process itself is not: gaps add up at full precision), and its service
    time -- prefill, then decode, of its token counts -- is rounded likewise.
    """
    if traffic.rate_per_s is not None:
        assert until is not None and traffic.models
        return _poisson(traffic, seed, until)
    return _imported(traffic, seed, until)


def _poisson(traffic: Traffic, seed: int, until: float) -> Iterator[Request]:
    """Poisson requests: exponential gaps ``-log(1 - U) / rate`` summed at full
    precision; the model by bisection of the cumulative weights; token counts
    ``max(1, round(-log(1 - U) * mean))`` drawn (input, output) in turn.
    ``-log(1 - U)`` is computed as ``-log1p(-U)`` (as exact or more, and a
    cheaper call than ``log``); ``floor`` rounds (the values are positive), a
    cheaper call than ``int``."""
    pick = _Picker(traffic.models, stream(seed, "traffic/models"))
    gap = stream(seed, "traffic/arrivals").random
    size = stream(seed, "traffic/tokens").random
    choose = pick.random
    log1p = math.log1p
    floor = math.floor
    rate = traffic.rate_per_s
    assert rate is not None
    mean_in, mean_out = traffic.input_tokens, traffic.output_tokens
    per_in, per_out = 1.0 / traffic.prefill_tokens_per_s, 1.0 / traffic.tokens_per_s
    models, edges = pick.models, pick.cumulative
    last = len(models) - 1
    t = -log1p(-gap()) / rate
    while t <= until:
        model = models[bisect_right(edges, choose(), 0, last)] if last else models[0]
        tokens_in = tokens_out = 0
        if mean_in > 0:
            tokens_in = floor(-log1p(-size()) * mean_in + 0.5)
            tokens_in = tokens_in if tokens_in > 1 else 1
        if mean_out > 0:
            tokens_out = floor(-log1p(-size()) * mean_out + 0.5)
            tokens_out = tokens_out if tokens_out > 1 else 1
        yield (
            floor(t * 1e6 + 0.5),
            model,
            floor((tokens_in * per_in + tokens_out * per_out) * 1e6 + 0.5),
        )
        t += -log1p(-gap()) / rate


def _imported(traffic: Traffic, seed: int, until: float | None) -> Iterator[Request]:
    """The rows of the arrivals file, a model drawn for rows without one."""
    pick = _Picker(traffic.models, stream(seed, "traffic/models")) if traffic.models else None
    per_in, per_out = 1.0 / traffic.prefill_tokens_per_s, 1.0 / traffic.tokens_per_s
    assert traffic.arrivals is not None
    for row in read_arrivals(traffic.arrivals, traffic.format, dict(traffic.model_map)):
        if until is not None and row.t > until:
            return
        asked = row.model
        if asked is None:
            assert pick is not None  # the scenario checked that models are known
            asked = pick()
        service = row.input_tokens * per_in + row.output_tokens * per_out
        yield (micros(row.t), asked, micros(service))
