"""The library used wrongly: errors name the mistake, before any state changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex_fsm import (
    Catalogue,
    ConfigError,
    Engine,
    Neuron,
    Profile,
    parse_discovery,
)
from cortex_fsm.errors import CortexError, Outcome, UnknownNodeError, error_envelope

GOOD = {"devices": [{"index": 0, "vram_total_mb": 81920}], "max_prompt_tokens": 8}


def _engine() -> Engine:
    return Engine(
        [Neuron(name="a", endpoint="http://a:1")], Catalogue(profiles={"x": Profile(id="x")})
    )


def test_raw_bodies_are_refused_at_the_door() -> None:
    engine = _engine()
    with pytest.raises(TypeError, match=r"observe_discovery: expected a Discovery or Invalid"):
        engine.observe_discovery("a", 0.0, GOOD)  # type: ignore[arg-type]
    # nothing was stored: the node still works
    assert engine.needs_discovery("a")
    assert engine.observe_discovery("a", 1.0, parse_discovery(GOOD))  # type: ignore[arg-type]
    assert not engine.needs_discovery("a")
    for bad in (None, {}, []):
        with pytest.raises(TypeError, match="observe_models: expected a ModelsReport"):
            engine.observe_models("a", 2.0, bad)  # type: ignore[arg-type]
    for bad in (None, 7, []):
        with pytest.raises(TypeError, match="observe_health: expected a mapping"):
            engine.observe_health("a", 2.0, bad)  # type: ignore[arg-type]
    assert engine.statistics().polls_ok == 0


def test_unknown_nodes_are_a_library_error_and_a_key_error() -> None:
    engine = _engine()
    for call in (
        lambda: engine.state("zz"),
        lambda: engine.needs_discovery("zz"),
        lambda: engine.observe_health("zz", 1.0, {"m": 1}),
        lambda: engine.observe_health_body("zz", 1.0, {"models": []}),
        lambda: engine.observe_models_body("zz", 1.0, [{"id": "m", "status": "loaded"}]),
    ):
        with pytest.raises(UnknownNodeError) as info:
            call()
        assert isinstance(info.value, CortexError) and isinstance(info.value, KeyError)
        assert str(info.value) == "unknown neuron 'zz'"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id": ""}, "id must be a non-empty string"),
        ({"id": None}, "id must be a non-empty string"),
        ({"id": "x", "min_devices": 0}, "min_devices must be an integer >= 1"),
        ({"id": "x", "min_devices": "2"}, "min_devices must be an integer >= 1"),
        ({"id": "x", "pinned_on": "gpu-ab"}, "pinned_on must be a tuple of node names"),
        ({"id": "x", "pinned_on": ("a", 1)}, "pinned_on must be a tuple of node names"),
        ({"id": "x", "harness": 5}, "harness must be a string or None"),
        ({"id": "x", "vram_mb": 1.5}, "vram_mb must be an integer or None"),
    ],
)
def test_profiles_built_in_code_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Profile(**kwargs)  # type: ignore[arg-type]


def test_catalogues_built_in_code_are_checked() -> None:
    with pytest.raises(ConfigError, match="must be a Profile with id 'y'"):
        Catalogue(profiles={"y": Profile(id="x")})
    with pytest.raises(ConfigError, match="must map a name to a model id"):
        Catalogue(aliases={"a": ""})


def test_no_envelope_for_a_routed_outcome() -> None:
    with pytest.raises(ValueError, match="not a reject"):
        error_envelope(Outcome.ROUTE_LOADED)


def test_the_trace_writer_refuses_times_its_reader_would_reject(tmp_path: Path) -> None:
    from cortex_fsm.trace import RequestEvent, TraceHeader, TraceWriter

    with TraceWriter(
        tmp_path / "t.jsonl", TraceHeader(neurons=(Neuron(name="a", endpoint="http://a"),))
    ) as w:
        w.write(RequestEvent(t=1.0, id="r1", model="m"))
        for t in (float("nan"), float("inf"), 0.5):
            with pytest.raises(ValueError, match="finite and never go backwards"):
                w.write(RequestEvent(t=t, id="r2", model="m"))
