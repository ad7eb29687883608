"""Hypothesis profiles for the whole suite.

* ``ci`` (the default): derandomized, no example database, no deadline --
  the same examples on every run, so CI is reproducible and fast.
* ``thorough``: many more examples, random, with the database; run it with
  ``python -m pytest --hypothesis-profile=thorough tests/test_stateful.py
  tests/test_invariants_traces.py`` (tests scale their example counts from
  the profile's ``max_examples``).
* ``mutant``: like ``ci`` but without shrinking -- used when a deliberate bug
  is applied to a copy of the package and only "is it caught?" matters.

``HYPOTHESIS_PROFILE`` selects a profile too; ``--hypothesis-profile`` wins.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=2500,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "mutant",
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
