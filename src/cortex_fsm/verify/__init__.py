"""Verification of the core: the invariants of docs/semantics.md as predicates,
the observation monitor they are judged against, the model checker that drives
the real engine over its state space, and the export of a Promela model for Spin.

* :mod:`cortex_fsm.verify.invariants` -- H1-H6, R1-R9 (plus HSPEC, F1, D1, L1,
  L2, SPEC and ANSWER), the one definition every check uses;
* :mod:`cortex_fsm.verify.monitor` -- what the observations say the engine
  must know, computed from the spec alone;
* :mod:`cortex_fsm.verify.explorer` -- ``cortex-fsm verify``;
* :mod:`cortex_fsm.verify.promela` -- ``cortex-fsm export promela``;
* :mod:`cortex_fsm.verify.mutants` -- applies deliberate bugs to a copy of the
  package and records which technique catches each.

Pure code: nothing here imports the drivers.
"""

from __future__ import annotations

from .commands import add_export_arguments, add_verify_arguments, export_main, verify_main

__all__ = ["add_export_arguments", "add_verify_arguments", "export_main", "verify_main"]
