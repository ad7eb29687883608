"""The model catalogue: profiles, aliases, feasibility and load specs.

A *profile* says what a model needs to run (``min_devices`` GPUs, each with at
least ``min_device_vram_mb``, optionally only on the nodes in ``pinned_on``)
and how to ask a neuron to load it. The catalogue is read from the gateway's
``models.toml`` (``[[models]]`` tables plus an ``[aliases]`` table) or from a
trace header's ``catalogue`` object; both go through
:func:`catalogue_from_mapping`, so the same typo is the same error everywhere.

Feasibility (docs/semantics.md §3 rule 5) and the load spec are pure functions of a
profile, a node name and that node's cached discovery.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence

import attrs

from .errors import ConfigError
from .fleet import Discovery

__all__ = [
    "CATALOGUE_KEYS",
    "PROFILE_KEYS",
    "Catalogue",
    "LoadSpec",
    "Profile",
    "catalogue_from_mapping",
    "feasible",
    "ignored_keys",
    "load_models_toml",
    "load_spec",
    "pin_key",
    "read_toml",
]


@attrs.frozen(slots=True, kw_only=True)
class Profile:
    """One catalogued model."""

    id: str
    harness: str | None = None
    quant: str | None = None
    vram_mb: int | None = None
    min_devices: int = 1
    min_device_vram_mb: int | None = None
    pinned_on: tuple[str, ...] = ()
    source: str | None = None

    def __attrs_post_init__(self) -> None:
        # Profiles built in code get the checks catalogue_from_mapping gives files
        # (types; the engine would otherwise fail far from the mistake, or, for a
        # pinned_on string, match node names as substrings).
        where = f"Profile {self.id!r}"
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError(f"{where}: id must be a non-empty string")
        for key in ("harness", "quant", "source"):
            if not isinstance(getattr(self, key), str | None):
                raise ConfigError(f"{where}: {key} must be a string or None")
        for key in ("vram_mb", "min_device_vram_mb"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{where}: {key} must be an integer or None")
        count = self.min_devices
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"{where}: min_devices must be an integer >= 1, got {count!r}")
        pins = self.pinned_on
        if not isinstance(pins, tuple) or not all(isinstance(n, str) for n in pins):
            raise ConfigError(f"{where}: pinned_on must be a tuple of node names, got {pins!r}")


@attrs.frozen(slots=True, kw_only=True)
class LoadSpec:
    """The body the gateway posts to ``{endpoint}/models/load`` for a cold load."""

    model_id: str
    harness: str | None
    quant: str | None
    tensor_parallel: int | None
    devices: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "model_id": self.model_id,
            "harness": self.harness,
            "quant": self.quant,
            "tensor_parallel": self.tensor_parallel,
            "devices": list(self.devices),
        }


@attrs.frozen(slots=True, kw_only=True)
class Catalogue:
    """Profiles by id, and aliases (one lookup, never chained)."""

    profiles: Mapping[str, Profile] = attrs.field(factory=dict)
    aliases: Mapping[str, str] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        for key, profile in self.profiles.items():
            if not isinstance(profile, Profile) or profile.id != key:
                raise ConfigError(f"Catalogue: profiles[{key!r}] must be a Profile with id {key!r}")
        for alias, target in self.aliases.items():
            if not isinstance(alias, str) or not isinstance(target, str) or not target:
                raise ConfigError(f"Catalogue: aliases[{alias!r}] must map a name to a model id")

    def resolve(self, requested: str) -> str:
        return self.aliases.get(requested, requested)

    def profile(self, model: str) -> Profile | None:
        return self.profiles.get(model)

    def to_json(self) -> dict[str, object]:
        """The trace-header form of this catalogue (absent values omitted)."""
        models: list[dict[str, object]] = []
        for p in self.profiles.values():
            entry: dict[str, object] = {"id": p.id}
            for key in ("harness", "quant", "vram_mb", "min_device_vram_mb", "source"):
                value = getattr(p, key)
                if value is not None:
                    entry[key] = value
            entry["min_devices"] = p.min_devices
            if p.pinned_on:
                entry["pinned_on"] = list(p.pinned_on)
            models.append(entry)
        return {"models": models, "aliases": dict(self.aliases)}


def feasible(profile: Profile, node: str, discovery: Discovery | None) -> bool:
    """Can ``node`` ever host ``profile``? (docs/semantics.md §3 rule 5)."""
    if discovery is None:
        return False
    if profile.pinned_on and node not in profile.pinned_on:
        return False
    need = profile.min_devices
    devices = discovery.devices
    if len(devices) < need:
        return False
    floor = profile.min_device_vram_mb
    if floor is None:
        return True
    return sum(1 for d in devices if d.vram_total_mb >= floor) >= need


def pin_key(profile: Profile, node: str) -> tuple[bool, str]:
    """Cold-load preference among candidates: pinned nodes first, then by name."""
    return (node not in profile.pinned_on, node)


def load_spec(profile: Profile, discovery: Discovery) -> LoadSpec:
    """The load request for ``profile`` on a node with ``discovery``."""
    floor = profile.min_device_vram_mb or 0
    devices = tuple(d.index for d in discovery.devices if d.vram_total_mb >= floor)
    return LoadSpec(
        model_id=f"{profile.source}:{profile.id}" if profile.source else profile.id,
        harness=profile.harness,
        quant=profile.quant,
        tensor_parallel=profile.min_devices if profile.min_devices > 1 else None,
        devices=devices[: profile.min_devices],
    )


# --- reading ------------------------------------------------------------------------------


def _opt_str(entry: Mapping[str, object], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a string, got {value!r}")
    return value


def _opt_int(entry: Mapping[str, object], key: str, where: str, *, minimum: int) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _profile(entry: object, where: str) -> Profile:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a table/object, got {entry!r}")
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id:
        raise ConfigError(f"{where}.id must be a non-empty string, got {model_id!r}")
    pinned = entry.get("pinned_on", [])
    if not isinstance(pinned, Sequence) or isinstance(pinned, str):
        raise ConfigError(f"{where}.pinned_on must be a list of node names, got {pinned!r}")
    for name in pinned:
        if not isinstance(name, str):
            raise ConfigError(f"{where}.pinned_on must be a list of node names, got {pinned!r}")
    min_devices = _opt_int(entry, "min_devices", where, minimum=1)
    return Profile(
        id=model_id,
        harness=_opt_str(entry, "harness", where),
        quant=_opt_str(entry, "quant", where),
        vram_mb=_opt_int(entry, "vram_mb", where, minimum=0),
        min_devices=1 if min_devices is None else min_devices,
        min_device_vram_mb=_opt_int(entry, "min_device_vram_mb", where, minimum=0),
        pinned_on=tuple(pinned),
        source=_opt_str(entry, "source", where),
    )


#: The keys of a catalogue profile that the engine reads.
PROFILE_KEYS = (
    "id",
    "harness",
    "quant",
    "vram_mb",
    "min_devices",
    "min_device_vram_mb",
    "pinned_on",
    "source",
)
#: The top-level keys of a catalogue (``models.toml``, a trace header's ``catalogue``).
CATALOGUE_KEYS = ("models", "aliases")


def ignored_keys(data: Mapping[str, object], *, top_level: bool = True) -> list[str]:
    """The keys :func:`catalogue_from_mapping` reads past without using, by path
    (``model``, ``models[2].harnes``): worth a warning where a typo is likely."""
    ignored = [str(k) for k in data if k not in CATALOGUE_KEYS] if top_level else []
    models = data.get("models", [])
    if isinstance(models, Sequence) and not isinstance(models, str):
        for i, entry in enumerate(models):
            if isinstance(entry, Mapping):
                ignored += [f"models[{i}].{k}" for k in entry if k not in PROFILE_KEYS]
    return ignored


def catalogue_from_mapping(data: Mapping[str, object], *, where: str) -> Catalogue:
    """Validate ``{"models": [...], "aliases": {...}}``; unknown profile keys are ignored.

    ``where`` prefixes every error (``"models.toml: models[2]"``).
    """
    raw_models = data.get("models", [])
    if not isinstance(raw_models, Sequence) or isinstance(raw_models, str):
        raise ConfigError(f"{where}: models must be a list, got {raw_models!r}")
    profiles: dict[str, Profile] = {}
    for i, entry in enumerate(raw_models):
        profile = _profile(entry, f"{where}: models[{i}]")
        if profile.id in profiles:
            raise ConfigError(f"{where}: models[{i}].id {profile.id!r} is catalogued twice")
        profiles[profile.id] = profile
    raw_aliases = data.get("aliases", {})
    if not isinstance(raw_aliases, Mapping):
        raise ConfigError(f"{where}: aliases must be a table/object, got {raw_aliases!r}")
    aliases: dict[str, str] = {}
    for alias, target in raw_aliases.items():
        if not isinstance(alias, str) or not isinstance(target, str) or not target:
            raise ConfigError(
                f"{where}: aliases.{alias} must map to a model id string, got {target!r}"
            )
        aliases[alias] = target
    return Catalogue(profiles=profiles, aliases=aliases)


def read_toml(path: str | os.PathLike[str]) -> dict[str, object]:
    """A TOML file as a dict; every problem is a ConfigError naming the file."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not valid UTF-8") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid TOML: nested too deeply") from None


def load_models_toml(path: str | os.PathLike[str]) -> Catalogue:
    """Read the gateway's ``models.toml``."""
    return catalogue_from_mapping(read_toml(path), where=os.fspath(path))
