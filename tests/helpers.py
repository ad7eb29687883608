"""Small builders shared by the core tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from cortex_fsm import Catalogue, Engine, Neuron, Policy, Profile
from cortex_fsm.wire import parse_discovery, parse_health, parse_models


def discovery_body(*vram_mb: int, max_prompt_tokens: int = 32768) -> dict[str, object]:
    return {
        "hostname": "h",
        "os": "Linux",
        "kernel": "7.0",
        "devices": [
            {"index": i, "name": "GPU", "vram_total_mb": v, "compute_capability": "9.0"}
            for i, v in enumerate(vram_mb)
        ],
        "harnesses": ["candle"],
        "max_prompt_tokens": max_prompt_tokens,
    }


def models_body(models: Mapping[str, str]) -> list[dict[str, object]]:
    return [{"id": m, "harness": "candle", "status": s, "devices": [0]} for m, s in models.items()]


def health_body(loads: Mapping[str, int]) -> dict[str, object]:
    return {
        "uptime_secs": 1,
        "devices": [],
        "models": [{"id": m, "in_flight": n, "queue_depth": 0} for m, n in loads.items()],
    }


def make_engine(
    names: Sequence[str],
    profiles: Iterable[Profile] = (),
    aliases: Mapping[str, str] | None = None,
    threshold: int = 3,
) -> Engine:
    catalogue = Catalogue(profiles={p.id: p for p in profiles}, aliases=dict(aliases or {}))
    return Engine(
        [Neuron(name=n, endpoint=f"http://{n}:13131") for n in names],
        catalogue,
        Policy(failure_threshold=threshold),
    )


def up(
    engine: Engine,
    node: str,
    models: Mapping[str, str] | None = None,
    *,
    vram: Sequence[int] = (24000,),
    t: float = 0.0,
) -> None:
    """Give ``node`` a discovery and one successful poll reporting ``models``."""
    engine.observe_discovery(node, t, parse_discovery(discovery_body(*vram)))
    engine.observe_models(node, t, parse_models(models_body(models or {})))


def poll_ok(engine: Engine, node: str, models: Mapping[str, str], t: float = 0.0) -> None:
    engine.observe_models(node, t, parse_models(models_body(models)))


def load(engine: Engine, node: str, loads: Mapping[str, int], t: float = 0.0) -> None:
    engine.observe_health(node, t, parse_health(health_body(loads)))
