"""Catalogue: profiles, aliases, feasibility, load specs, models.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex_fsm import ConfigError, Profile, feasible, load_models_toml, load_spec
from cortex_fsm.catalogue import catalogue_from_mapping
from cortex_fsm.fleet import Device, Discovery


def disc(*vram: int) -> Discovery:
    return Discovery(
        devices=tuple(Device(index=i, vram_total_mb=v) for i, v in enumerate(vram)),
        max_prompt_tokens=1,
    )


@pytest.mark.parametrize(
    ("profile", "node", "discovery", "expected"),
    [
        (Profile(id="m"), "a", None, False),
        (Profile(id="m"), "a", disc(), False),  # zero devices < min_devices 1
        (Profile(id="m"), "a", disc(1), True),
        (Profile(id="m", min_devices=2), "a", disc(1), False),
        (Profile(id="m", min_devices=2), "a", disc(1, 1), True),
        (Profile(id="m", min_devices=2, min_device_vram_mb=10), "a", disc(10, 9, 10), True),
        (Profile(id="m", min_devices=2, min_device_vram_mb=10), "a", disc(10, 9, 9), False),
        (Profile(id="m", pinned_on=("b",)), "a", disc(1), False),
        (Profile(id="m", pinned_on=("a", "b")), "a", disc(1), True),
    ],
)
def test_feasible(profile: Profile, node: str, discovery: Discovery | None, expected: bool) -> None:
    assert feasible(profile, node, discovery) is expected


def test_load_spec_uses_vram_floor_zero_when_unset() -> None:
    spec = load_spec(Profile(id="m", min_devices=3, harness="h"), disc(1, 2, 3, 4))
    assert spec.devices == (0, 1, 2)
    assert spec.tensor_parallel == 3
    assert spec.to_json() == {
        "model_id": "m",
        "harness": "h",
        "quant": None,
        "tensor_parallel": 3,
        "devices": [0, 1, 2],
    }


def test_models_toml(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        """
[[models]]
id = "org/Big"
harness = "candle"
min_devices = 2
min_device_vram_mb = 40000
pinned_on = ["beast"]
source = "hf"
context_length = 32768  # unknown keys are ignored

[[models]]
id = "org/Small"

[aliases]
"tier/large" = "org/Big"
"""
    )
    cat = load_models_toml(path)
    assert cat.profiles["org/Big"] == Profile(
        id="org/Big",
        harness="candle",
        min_devices=2,
        min_device_vram_mb=40000,
        pinned_on=("beast",),
        source="hf",
    )
    assert cat.profiles["org/Small"].min_devices == 1
    assert cat.resolve("tier/large") == "org/Big"
    assert cat.resolve("org/Small") == "org/Small"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": {}}, "models must be a list"),
        ({"models": [1]}, r"models\[0\] must be a table"),
        ({"models": [{}]}, r"models\[0\].id must be a non-empty string"),
        (
            {"models": [{"id": "m", "min_devices": 0}]},
            r"models\[0\].min_devices must be an integer >= 1",
        ),
        ({"models": [{"id": "m", "min_devices": True}]}, "min_devices must be an integer"),
        ({"models": [{"id": "m", "harness": 3}]}, r"models\[0\].harness must be a string"),
        ({"models": [{"id": "m", "pinned_on": "a"}]}, "pinned_on must be a list of node names"),
        ({"models": [{"id": "m"}, {"id": "m"}]}, r"models\[1\].id 'm' is catalogued twice"),
        ({"aliases": []}, "aliases must be a table"),
        ({"aliases": {"a": 1}}, "aliases.a must map to a model id string"),
    ],
)
def test_catalogue_errors_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        catalogue_from_mapping(data, where="models.toml")


def test_models_toml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_models_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[models]\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_models_toml(bad)
