"""CrossHair proof that the feasibility kernel is docs/semantics.md §3 rule 5.

``catalogue.feasible`` (what routing and the engine's index use) against
``invariants.spec_feasible`` (the rule, word for word), for every profile
(1-3 devices, any VRAM floor or none, pinned nowhere / here / elsewhere) and
every discovery of up to two devices with any VRAM sizes (unbounded integers).
"""

# ruff: noqa: PLR0917 - CrossHair makes every parameter of a harness symbolic

from __future__ import annotations

from cortex_fsm.catalogue import Profile, feasible, load_spec
from cortex_fsm.fleet import Device, Discovery
from cortex_fsm.verify.invariants import spec_feasible, spec_load


def _discovery(present: bool, count: int, vram0: int, vram1: int) -> Discovery | None:
    if not present:
        return None
    devices = (Device(index=0, vram_total_mb=vram0), Device(index=1, vram_total_mb=vram1))
    return Discovery(devices=devices[:count], max_prompt_tokens=1)


def _profile(min_devices: int, has_floor: bool, floor: int, pinned: int) -> Profile:
    return Profile(
        id="m",
        min_devices=min_devices,
        min_device_vram_mb=floor if has_floor else None,
        pinned_on=((), ("n",), ("other",), ("other", "n"))[pinned],
    )


def prove_feasible_is_rule_5(
    present: bool,
    count: int,
    vram0: int,
    vram1: int,
    min_devices: int,
    has_floor: bool,
    floor: int,
    pinned: int,
) -> bool:
    """feasible(profile, node, discovery) == the rule, for all these inputs.

    pre: 0 <= count <= 2
    pre: 1 <= min_devices <= 3
    pre: 0 <= pinned <= 3
    post: __return__
    """
    profile = _profile(min_devices, has_floor, floor, pinned)
    discovery = _discovery(present, count, vram0, vram1)
    return feasible(profile, "n", discovery) == spec_feasible(profile, "n", discovery)


def prove_load_spec(
    count: int,
    vram0: int,
    vram1: int,
    min_devices: int,
    has_floor: bool,
    floor: int,
    source: int,
) -> bool:
    """The load spec of a feasible node is the one docs/semantics.md §3 describes
    (devices: the first min_devices with enough VRAM, in discovery order;
    tensor_parallel when min_devices > 1; model_id "source:id" when a source
    is set).

    pre: 0 <= count <= 2
    pre: 1 <= min_devices <= 2
    pre: 0 <= source <= 2
    post: __return__
    """
    profile = Profile(
        id="m",
        harness="h",
        min_devices=min_devices,
        min_device_vram_mb=floor if has_floor else None,
        source=(None, "", "hf")[source],
    )
    discovery = _discovery(True, count, vram0, vram1)
    assert discovery is not None
    if not spec_feasible(profile, "n", discovery):
        return True
    return load_spec(profile, discovery) == spec_load(profile, discovery)
