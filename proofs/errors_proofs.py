"""CrossHair proofs over the reject classification (docs/semantics.md §4).

R2 for every outcome as the client sees it (the OpenAI envelope's status and
headers), and R8 for every I/O failure the gateway classifies.
"""

from __future__ import annotations

from cortex_fsm.errors import IOCause, IOPhase, Outcome, classify_io_failure, error_envelope
from cortex_fsm.verify.invariants import r2_outcome


def prove_r2(outcome: Outcome) -> bool:
    """R2: every 503 carries Retry-After, no 404 does -- for every outcome.

    post: __return__
    """
    return r2_outcome(outcome)


def prove_r8(phase: IOPhase, cause: IOCause, reference: bool) -> bool:
    """R8 (gateway extension): a transport failure or a 5xx of the chosen
    neuron never reaches the client as a 404; in the default (extension) mode
    it is a 503 with Retry-After. Every classified failure also obeys R2.

    post: __return__
    """
    outcome = classify_io_failure(phase, cause, io_errors="reference" if reference else "extension")
    if outcome is None:  # the neuron's own 4xx to the forwarded request, passed through
        return phase is IOPhase.FORWARD and cause in (IOCause.STATUS_4XX, IOCause.BAD_BODY)
    if not r2_outcome(outcome):
        return False
    status = error_envelope(outcome, model="m", node="n")[0]
    if cause in (IOCause.TRANSPORT, IOCause.STATUS_5XX) and not reference:
        return status == 503
    return True
