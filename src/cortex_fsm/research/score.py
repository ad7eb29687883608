"""Scoring a policy: what each request was told against what was true.

A trace with ground truth (``truth`` events, written by ``simulate``) is
replayed through the engine -- under its recorded policy, or another one
given as overrides -- and every decision is judged against the truth at its
time:

* a routed attempt to a node that was really up is served; to a node that
  was down, it fails (``routed_to_down``) and the next recorded attempt of
  the same request, if any, is judged in turn;
* a client request's final answer is its last judged attempt: served (200),
  a reject (its status), or a failed attempt (503);
* ``false_503``: a final 503 while some node that was really up could serve
  the model -- it holds the model (as its polls and loads showed) or, under
  ``lifecycle = "managed"``, it is a cold-load target (catalogue feasibility);
* ``false_404``: a final 404 for a model some node could serve (up or not);
* ``false_evictions``: a node made unroutable while it was really up;
* detection latency: from a node going down to the engine making it
  unroutable (outages that end before that count as ``undetected_outages``);
* ``availability``: the share of client requests that were served.

The same :class:`Judge` scores a simulation as it runs (``sweep`` never
writes a trace) and a trace file (``score``); both see the same records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..catalogue import Catalogue, feasible
from ..engine import Transition
from ..fleet import Discovery
from ..policy import Policy
from ..routing import Decision
from ..wire import parse_discovery, parse_models

__all__ = ["SCORE_KEYS", "Judge", "MODEL_KEYS"]

#: The keys of a score, in order (``per_model`` follows them in JSON).
SCORE_KEYS = (
    "requests",
    "availability",
    "routed_to_down",
    "false_503",
    "false_404",
    "false_evictions",
    "detection_latency_mean_s",
    "detection_latency_max_s",
    "attempts",
    "outages",
    "undetected_outages",
)
#: The per-model keys.
MODEL_KEYS = ("requests", "availability", "routed_to_down", "false_503", "false_404")

_SERVED, _FAILED = 200, 503


class _Counts:
    __slots__ = ("false_404", "false_503", "requests", "routed_to_down", "served")

    def __init__(self) -> None:
        self.requests = 0
        self.served = 0
        self.routed_to_down = 0
        self.false_503 = 0
        self.false_404 = 0

    def to_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "availability": self.served / self.requests if self.requests else None,
            "routed_to_down": self.routed_to_down,
            "false_503": self.false_503,
            "false_404": self.false_404,
        }


class Judge:
    """Feed it every record in trace order with what the engine answered."""

    def __init__(self, node_names: Iterable[str], catalogue: Catalogue, policy: Policy) -> None:
        self.catalogue = catalogue
        self.managed = getattr(policy, "lifecycle", "managed") == "managed"
        self.up: dict[str, bool] = {}
        self.routable: dict[str, bool] = dict.fromkeys(node_names, False)
        self.holds: dict[str, dict[str, bool]] = {}  # model -> {node: True}
        self.node_models: dict[str, frozenset[str]] = {}
        self.discovery: dict[str, Discovery] = {}
        self.down_since: dict[str, float] = {}
        self.latencies: list[float] = []
        self.outages = 0
        self.undetected = 0
        self.false_evictions = 0
        self.attempts = 0
        self.total = _Counts()
        self.per_model: dict[str, _Counts] = {}
        # Requests whose last judged attempt failed: another attempt may follow.
        self._pending: dict[str, tuple[str, str, float]] = {}

    # --- feeding ------------------------------------------------------------------------------

    def feed(self, kind: str, f: Mapping[str, Any], result: object) -> None:
        if kind == "request":
            self._request(f, result)  # type: ignore[arg-type]
        elif kind == "truth":
            self._truth(f)
        else:
            if type(result) is Transition:
                self._transition(result)
            elif type(result) is list:
                for tr in result:
                    self._transition(tr)
            if kind == "models":
                if f["ok"]:
                    self._models(f["node"], f["body"])
            elif kind == "load":
                if f["ok"]:
                    self._hold(f["node"], f["model"])
            elif kind == "discovery" and f["ok"]:
                found = parse_discovery(f["body"])
                if isinstance(found, Discovery):
                    self.discovery[f["node"]] = found

    def _truth(self, f: Mapping[str, Any]) -> None:
        node, t, up = f["node"], f["t"], f["up"]
        was = self.up.get(node, True)
        self.up[node] = up
        if up == was:
            return
        if not up:
            self.outages += 1
            if self.routable.get(node, False):
                self.down_since[node] = t
            else:
                self.latencies.append(0.0)  # already unroutable: known at once
        elif self.down_since.pop(node, None) is not None:
            self.undetected += 1

    def _transition(self, tr: Transition) -> None:
        node = tr.node
        routable = tr.to.routable
        if routable == self.routable.get(node, False):
            return
        self.routable[node] = routable
        if routable:
            return
        since = self.down_since.pop(node, None)
        if since is not None:
            self.latencies.append(tr.t - since)
        elif self.up.get(node, True):
            self.false_evictions += 1

    def _models(self, node: str, body: object) -> None:
        report = parse_models(body)
        models = getattr(report, "models", None)
        if models is None:
            return
        now = frozenset(models)
        before = self.node_models.get(node, frozenset())
        if now == before:
            return
        for m in before - now:
            holders = self.holds.get(m)
            if holders is not None:
                holders.pop(node, None)
        for m in now - before:
            self.holds.setdefault(m, {})[node] = True
        self.node_models[node] = now

    def _hold(self, node: str, model: str) -> None:
        before = self.node_models.get(node, frozenset())
        if model not in before:
            self.node_models[node] = before | {model}
            self.holds.setdefault(model, {})[node] = True

    def _request(self, f: Mapping[str, Any], decision: Decision) -> None:
        rid = f["id"]
        t = f["t"]
        requested = f["model"]
        counts = self.per_model.get(requested)
        if counts is None:
            counts = self.per_model[requested] = _Counts()
        if (f.get("attempt") or 1) == 1:
            counts.requests += 1
            self.total.requests += 1
        elif self._pending.pop(rid, None) is None:
            return  # the request was already answered under this policy
        self.attempts += 1
        node = decision.node
        if node is not None:
            if self.up.get(node, True):
                self._final(counts, _SERVED, decision.model, t)
            else:
                counts.routed_to_down += 1
                self.total.routed_to_down += 1
                self._pending[rid] = (requested, decision.model, t)
            return
        self._final(counts, decision.status, decision.model, t)

    def _final(self, counts: _Counts, status: int, model: str, t: float) -> None:
        total = self.total
        if status == _SERVED:
            counts.served += 1
            total.served += 1
        elif status == _FAILED:
            if self._servable(model, up_only=True):
                counts.false_503 += 1
                total.false_503 += 1
        elif status == 404 and self._servable(model, up_only=False):
            counts.false_404 += 1
            total.false_404 += 1

    def _servable(self, model: str, *, up_only: bool) -> bool:
        up = self.up
        for node in self.holds.get(model, ()):
            if not up_only or up.get(node, True):
                return True
        profile = self.catalogue.profiles.get(model) if self.managed else None
        if profile is not None:
            for node, found in self.discovery.items():
                if (not up_only or up.get(node, True)) and feasible(profile, node, found):
                    return True
        return False

    # --- results ------------------------------------------------------------------------------

    def result(self) -> dict[str, Any]:
        """The score as JSON (keys :data:`SCORE_KEYS`, then ``per_model``)."""
        for requested, model, t in self._pending.values():
            self._final(self.per_model[requested], _FAILED, model, t)
        self._pending.clear()
        total = self.total.to_json()
        lat = self.latencies
        out: dict[str, Any] = {
            "requests": total["requests"],
            "availability": total["availability"],
            "routed_to_down": total["routed_to_down"],
            "false_503": total["false_503"],
            "false_404": total["false_404"],
            "false_evictions": self.false_evictions,
            "detection_latency_mean_s": sum(lat) / len(lat) if lat else None,
            "detection_latency_max_s": max(lat) if lat else None,
            "attempts": self.attempts,
            "outages": self.outages,
            "undetected_outages": self.undetected + len(self.down_since),
            "per_model": {m: c.to_json() for m, c in sorted(self.per_model.items())},
        }
        return out
