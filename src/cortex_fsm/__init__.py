"""cortex_fsm: the routing and node-health policy engine of an LLM inference gateway.

The core is pure (no I/O, no clocks): feed an :class:`Engine` observations
(discovery, ``/models`` polls, ``/health`` load, load and unload outcomes),
ask it :meth:`Engine.decide`. The tables behind it are data:
:data:`cortex_fsm.health.TRANSITIONS` and :data:`cortex_fsm.routing.RULES`.
"""

from .catalogue import Catalogue, LoadSpec, Profile, feasible, load_models_toml, load_spec
from .engine import Engine, NodeStatus, Statistics, Transition
from .errors import ConfigError, CortexError, Outcome, TraceError, error_envelope
from .fleet import (
    Device,
    Discovery,
    FleetSnapshot,
    ModelEntry,
    ModelsReport,
    ModelStatus,
    Neuron,
    NodeSnapshot,
    PollFailure,
)
from .health import Event, HealthState, HealthTable, Phase, step
from .policy import Policy
from .replay import apply_event, compare, replay
from .routing import Decision, decide
from .trace import TraceHeader, TraceReader, TraceWriter
from .wire import Invalid, parse_discovery, parse_health, parse_models

__version__ = "0.1.0"

__all__ = [
    "Catalogue",
    "ConfigError",
    "CortexError",
    "Decision",
    "Device",
    "Discovery",
    "Engine",
    "Event",
    "FleetSnapshot",
    "HealthState",
    "HealthTable",
    "Invalid",
    "LoadSpec",
    "ModelEntry",
    "ModelStatus",
    "ModelsReport",
    "Neuron",
    "NodeSnapshot",
    "NodeStatus",
    "Outcome",
    "Phase",
    "Policy",
    "PollFailure",
    "Profile",
    "Statistics",
    "TraceError",
    "TraceHeader",
    "TraceReader",
    "TraceWriter",
    "Transition",
    "__version__",
    "apply_event",
    "compare",
    "decide",
    "error_envelope",
    "feasible",
    "load_models_toml",
    "load_spec",
    "parse_discovery",
    "parse_health",
    "parse_models",
    "replay",
    "step",
]
