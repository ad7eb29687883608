"""Checks a CI job runs on a gateway's own configuration and recordings.

* :mod:`cortex_fsm.ci.check` -- ``cortex-fsm check``: lints a ``cortex.toml``
  (and its catalogue) without starting anything;
* :mod:`cortex_fsm.ci.audit` -- ``cortex-fsm audit``: runtime verification of
  a recorded trace against the invariants of docs/semantics.md;
* :mod:`cortex_fsm.ci.worlds` -- ``cortex-fsm verify --config``: the model
  checker on the configured fleet and catalogue;
* :mod:`cortex_fsm.ci.plugin` -- the pytest plugin (``--cortex-config``,
  ``--cortex-trace``).

The public entry points are re-exported by :mod:`cortex_fsm.invariants`.
"""
