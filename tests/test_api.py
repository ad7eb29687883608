"""The public API is small and pinned."""

from __future__ import annotations

import cortex_fsm

EXPECTED = {
    "Catalogue", "ConfigError", "CortexError", "Decision", "Device", "Discovery", "Engine",
    "Event", "FleetSnapshot", "HealthState", "HealthTable", "Invalid", "LoadSpec", "ModelEntry",
    "ModelStatus", "ModelsReport", "Neuron", "NodeSnapshot", "NodeStatus", "Outcome", "Phase",
    "Policy", "PollFailure", "Profile", "Statistics", "TraceError", "TraceHeader", "TraceReader",
    "TraceWriter", "Transition", "__version__", "apply_event", "compare", "decide",
    "error_envelope", "feasible", "load_models_toml", "load_spec", "parse_discovery",
    "parse_health", "parse_models", "replay", "step",
}  # fmt: skip


def test_all_is_pinned() -> None:
    assert set(cortex_fsm.__all__) == EXPECTED


def test_all_names_exist() -> None:
    for name in cortex_fsm.__all__:
        assert hasattr(cortex_fsm, name), name
