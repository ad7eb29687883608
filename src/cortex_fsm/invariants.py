"""The invariants of docs/semantics.md, and the checks a CI job runs, as a public API.

For users who write their own tests of their own gateway (docs/ci.md):

* **configurations** -- :func:`check_config` lints a ``cortex.toml`` (and its
  ``models_config``) as ``cortex-fsm check`` does, and returns its
  :class:`Problem`\\s (``code``, ``severity``, ``file``, ``key``,
  ``message``, ``line``; :data:`CODES` lists every code). It raises
  :class:`~cortex_fsm.errors.ConfigError` when the file cannot be read or is
  invalid.
* **recordings** -- :func:`audit` verifies a recorded trace as
  ``cortex-fsm audit`` does, and returns its :class:`Violation`\\s (``file``,
  ``line``, ``invariant``, ``message``; :data:`AUDITED` lists what it
  checks). It raises :class:`~cortex_fsm.errors.TraceError` when the trace is
  malformed.
* **the configuration, model-checked** -- :func:`verify_config` runs
  ``cortex-fsm verify --config`` and returns its result (``.ok``, and
  ``.result``: states explored, the counterexample if any).
* **predicates** -- the invariants themselves, each a pure function: the
  health invariants H1-H6 (:func:`h1` ... :func:`h6`, or
  :func:`check_health`) judge a node's :class:`~cortex_fsm.health.HealthState`
  given its :class:`HealthHistory`; the routing invariants R1-R9
  (:func:`r1` ... :func:`r9`, or :func:`check_decision`, which adds SPEC and
  ANSWER) judge a :class:`~cortex_fsm.routing.Decision` on a
  :class:`~cortex_fsm.fleet.FleetSnapshot` with a catalogue, a policy and an
  exclude set. :func:`spec_decide` is the ordered rules of §3 read literally,
  and :class:`Monitor` keeps, from a stream of trace records, the fleet and
  the health histories these predicates are meant to judge.
  :data:`INVARIANTS` gives each invariant's sentence.

Example -- a test in a gateway's own repository::

    from cortex_fsm.invariants import audit, check_config

    def test_the_gateway_config_has_no_errors():
        errors = [p for p in check_config("cortex.toml") if p.severity == "error"]
        assert not errors, "\\n".join(f"{p.key}: {p.message}" for p in errors)

    def test_last_nights_recording_obeys_the_invariants():
        assert audit("recordings/last-night.jsonl.gz") == []
"""

from __future__ import annotations

from .ci.audit import AUDITED, Violation, audit
from .ci.check import CODES, Problem, check_config
from .ci.worlds import verify_config
from .verify.invariants import (
    HEALTH_INVARIANTS,
    INVARIANTS,
    ROUTING_INVARIANTS,
    HealthHistory,
    SpecDecision,
    answer,
    check_decision,
    check_health,
    h1,
    h2,
    h3,
    h4,
    h5,
    h6,
    r1,
    r2,
    r2_outcome,
    r3,
    r4,
    r5,
    r6,
    r7,
    r9,
    spec,
    spec_decide,
    spec_feasible,
    spec_model,
)
from .verify.monitor import Monitor

__all__ = [
    "AUDITED",
    "CODES",
    "HEALTH_INVARIANTS",
    "INVARIANTS",
    "ROUTING_INVARIANTS",
    "HealthHistory",
    "Monitor",
    "Problem",
    "SpecDecision",
    "Violation",
    "answer",
    "audit",
    "check_config",
    "check_decision",
    "check_health",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "r1",
    "r2",
    "r2_outcome",
    "r3",
    "r4",
    "r5",
    "r6",
    "r7",
    "r9",
    "spec",
    "spec_decide",
    "spec_feasible",
    "spec_model",
    "verify_config",
]
