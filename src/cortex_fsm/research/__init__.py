"""Research tools: simulate fleets with ground truth, score policies, sweep them.

A consumer of the core's public API (see ``docs/research.md``):

* :mod:`.scenario` -- the scenario TOML (the tables of ``cortex.toml`` plus
  ``[failures]``, ``[traffic]`` and ``[run]``), validated;
* :mod:`.arrivals` -- readers for public LLM-serving arrival traces (Azure
  LLM inference CSV, BurstGPT CSV, Mooncake JSONL);
* :mod:`.processes` -- seeded ground truth (outages, blips, slow polls) and
  traffic, with one random stream per node and one for traffic, so changing
  the policy never changes what happens to the fleet or who asks for what;
* :mod:`.simulate` -- the discrete-event simulation that drives the one
  :class:`~cortex_fsm.engine.Engine` through the trace events replay uses;
* :mod:`.score` -- what each request was told against what was true;
* :mod:`.sweep` -- grids of policies and scenarios on local processes or Dask;
* :mod:`.frames` -- replay and score for notebooks: rows a DataFrame takes.

Nothing here is imported by the core, and the heavy optional dependencies
(matplotlib, dask, polars) are imported only by the functions that need them
(``pip install 'cortex-fsm[research]'``).
"""
