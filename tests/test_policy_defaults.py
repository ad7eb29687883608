"""``Policy()`` and ``Policy.reference()`` hold exactly the defaults and the
reference values of the policy table in docs/semantics.md (Part II).

The model checker takes each world's policy as given, so a wrong default is
consistent with itself there; the mutation score (benchmarks/mutation.py)
found a default threshold of 2 unseen by the core's tests. This reads the
spec's table and compares every key.
"""

from __future__ import annotations

import json
from pathlib import Path

from cortex_fsm.policy import POLICY_KEYS, Policy, parse_assignment

SEMANTICS = Path(__file__).resolve().parent.parent / "docs" / "semantics.md"


def _table() -> dict[str, tuple[object, object | None]]:
    """key -> (default, reference value or None when the cell is prose)."""
    out: dict[str, tuple[object, object | None]] = {}
    lines = SEMANTICS.read_text(encoding="utf-8").splitlines()
    start = lines.index("| key | type / range | default | reference value | § |") + 2
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key = cells[0].strip("`")
        default = json.loads(cells[2].strip("`"))
        reference = cells[3].strip("`")
        out[key] = (default, None if reference.startswith("(") else json.loads(reference))
    return out


def test_the_table_lists_every_policy_key() -> None:
    assert set(_table()) == set(POLICY_KEYS)


def test_the_defaults_and_reference_values_are_the_spec_s() -> None:
    default, reference = Policy(), Policy.reference()
    for key, (want, want_reference) in _table().items():
        assert getattr(default, key) == want, key
        assert type(getattr(default, key)) is type(want), key
        if want_reference is not None:
            assert getattr(reference, key) == want_reference, key


def test_absent_keys_take_the_defaults_except_in_a_version_1_trace() -> None:
    assert Policy.from_mapping({}, where="policy", version=2) == Policy()
    assert Policy.from_mapping({}, where="policy", version=1) == Policy.reference()
    assert Policy.from_mapping({"load": "max"}, where="policy", version=1).load == "max"


def test_a_set_assignment_reads_numbers_booleans_and_words() -> None:
    assert parse_assignment("failure_threshold=4", where="--set") == ("failure_threshold", 4)
    assert parse_assignment("poll_interval=2.5", where="--set") == ("poll_interval", 2.5)
    assert parse_assignment("passive_health=true", where="--set") == ("passive_health", True)
    assert parse_assignment("passive_health=false", where="--set") == ("passive_health", False)
    assert parse_assignment("load=reported", where="--set") == ("load", "reported")
