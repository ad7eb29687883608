"""Values describing the fleet: neurons, topology, model entries and snapshots.

Everything here is a frozen, slotted, keyword-only attrs class, so values can
be compared, hashed where sensible, and printed as valid Python. The engine
keeps its own mutable per-node records for speed; :class:`NodeSnapshot` and
:class:`FleetSnapshot` are what it hands out, and what the pure routing
function and the verification suite consume.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

import attrs

from .health import HealthState

if TYPE_CHECKING:
    from .catalogue import Profile

__all__ = [
    "Device",
    "Discovery",
    "FleetSnapshot",
    "ModelEntry",
    "ModelStatus",
    "ModelsReport",
    "NEURON_KINDS",
    "Neuron",
    "NodeLike",
    "EntryLike",
    "NodeSnapshot",
    "PollFailure",
]


class ModelStatus(enum.Enum):
    """A model's status on one neuron, as ``/models`` reports it."""

    LOADED = "loaded"
    UNLOADED = "unloaded"
    RELOADING = "reloading"
    LOADING = "loading"
    RECOVERING = "recovering"


#: Status strings as ``/models`` reports them. Reference behaviour: a string
#: not in here reads as ``loaded`` (see ``wire.parse_models``).
STATUS_BY_TEXT: Mapping[str, ModelStatus] = {s.value: s for s in ModelStatus}


@attrs.frozen(slots=True, kw_only=True)
class Device:
    """One GPU from ``/discovery``."""

    index: int
    vram_total_mb: int
    name: str = ""


#: The backend kinds a neuron may be (docs/semantics.md §11).
NEURON_KINDS = ("neuron", "openai", "vllm", "sglang", "llamacpp", "ollama")


@attrs.frozen(slots=True, kw_only=True)
class Neuron:
    """A configured neuron: its unique name and base endpoint URL.

    ``kind`` (the backend's protocol) and ``devices`` (a declared topology)
    are what a trace header records about the node; the engine reads neither.
    A declared topology reaches the engine as a ``discovery`` observation,
    fed by whoever starts the engine (docs/semantics.md §10), and the kind
    only changes how drivers talk to the node (§11).
    """

    name: str
    endpoint: str
    kind: str = "neuron"
    devices: tuple[Device, ...] | None = None

    def to_json(self) -> dict[str, object]:
        """The trace-header form (``kind`` and ``devices`` only when set)."""
        out: dict[str, object] = {"name": self.name, "endpoint": self.endpoint}
        if self.kind != "neuron":
            out["kind"] = self.kind
        if self.devices is not None:
            out["devices"] = [
                {"index": d.index, "vram_total_mb": d.vram_total_mb} for d in self.devices
            ]
        return out


@attrs.frozen(slots=True, kw_only=True)
class Discovery:
    """A neuron's topology, from ``/discovery``.

    ``max_prompt_tokens > 0`` marks a complete discovery: once cached it is
    never fetched again (docs/semantics.md §1).
    """

    devices: tuple[Device, ...]
    max_prompt_tokens: int = 0
    hostname: str = ""

    @property
    def complete(self) -> bool:
        return self.max_prompt_tokens > 0


@attrs.frozen(slots=True, kw_only=True)
class ModelsReport:
    """A ``/models`` answer that passed validation: a successful poll.

    ``models`` maps each reported id to its status (a repeated id: the later wins).
    """

    models: Mapping[str, ModelStatus]


@attrs.frozen(slots=True, kw_only=True)
class PollFailure:
    """A failed ``/models`` poll, with the reason kept (``timeout``, ``status:502``...)."""

    reason: str


@attrs.frozen(slots=True, kw_only=True)
class ModelEntry:
    """A model registered on a node. ``last_accessed`` is None until routed to."""

    status: ModelStatus
    last_accessed: float | None = None


class EntryLike(Protocol):
    @property
    def status(self) -> ModelStatus: ...


class NodeLike(Protocol):
    """What routing reads from a node (the engine's records and snapshots alike)."""

    @property
    def name(self) -> str: ...
    @property
    def routable(self) -> bool: ...
    @property
    def discovery(self) -> Discovery | None: ...
    @property
    def models(self) -> Mapping[str, EntryLike]: ...
    @property
    def busy(self) -> Mapping[str, int]: ...
    @property
    def local(self) -> Mapping[str, int]: ...
    @property
    def chosen(self) -> Mapping[str, int]: ...


def _copy(value: Mapping[str, object]) -> Mapping[str, object]:
    """Snapshots hold their own copy of a mapping, never the engine's."""
    return dict(value)


@attrs.frozen(slots=True, kw_only=True)
class NodeSnapshot:
    """One node as routing sees it, frozen.

    ``busy`` is ``in_flight + queue_depth`` per model from the last valid
    ``/health`` answer (no reading counts as 0); ``local`` the requests this
    engine routed to the node per model and not yet finished (docs/semantics.md
    §8; counted only under ``load = "max"``); ``chosen`` per model the
    sequence number of the last request routed to this replica (higher is more
    recent; absent: never chosen).
    """

    name: str
    health: HealthState
    discovery: Discovery | None = None
    models: Mapping[str, ModelEntry] = attrs.field(factory=dict, converter=_copy)
    busy: Mapping[str, int] = attrs.field(factory=dict, converter=_copy)
    local: Mapping[str, int] = attrs.field(factory=dict, converter=_copy)
    chosen: Mapping[str, int] = attrs.field(factory=dict, converter=_copy)

    @property
    def routable(self) -> bool:
        return self.health.routable


def _by_name(nodes: Iterable[NodeSnapshot]) -> tuple[NodeSnapshot, ...]:
    return tuple(sorted(nodes, key=lambda n: n.name))


@attrs.frozen(slots=True, kw_only=True)
class FleetSnapshot:
    """Every node, sorted by name. Implements the routing view by scanning."""

    nodes: tuple[NodeSnapshot, ...] = attrs.field(converter=_by_name)

    def any_routable(self, exclude: frozenset[str] = frozenset()) -> bool:
        return any(n.routable and n.name not in exclude for n in self.nodes)

    def holders(self, model: str) -> Iterable[NodeSnapshot]:
        return [n for n in self.nodes if model in n.models]

    def feasible_nodes(self, profile: Profile) -> Iterable[NodeSnapshot]:
        from .catalogue import feasible  # catalogue imports this module

        return [n for n in self.nodes if feasible(profile, n.name, n.discovery)]

    def node(self, name: str) -> NodeSnapshot:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)
