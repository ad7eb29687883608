"""Verification of the core: the invariants of docs/semantics.md as predicates, the
model checker that drives the real engine over its abstract state space, and
the export of a Promela model for Spin.

* :mod:`cortex_fsm.verify.invariants` -- H1-H4, R1-R7 (plus F1 and SPEC), the
  one definition every check uses;
* :mod:`cortex_fsm.verify.explorer` -- ``cortex-fsm verify``;
* :mod:`cortex_fsm.verify.promela` -- ``cortex-fsm export promela``;
* :mod:`cortex_fsm.verify.mutants` -- applies deliberate bugs to a copy of the
  package and records which technique catches each.

Pure code: nothing here imports the drivers.
"""

from __future__ import annotations

from .commands import add_export_arguments, add_verify_arguments, export_main, verify_main

__all__ = ["add_export_arguments", "add_verify_arguments", "export_main", "verify_main"]
