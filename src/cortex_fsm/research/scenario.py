"""The simulation scenario: a ``cortex.toml`` fleet plus failures, traffic and a run.

Layout (see ``docs/research.md``)::

    [run]
    duration_s = 3600.0          # simulated seconds (optional with arrivals)
    seed = 1                     # --seed overrides it
    load_s = 20.0                # how long a cold load takes

    [policy]                     # exactly as in cortex.toml
    failure_threshold = 3

    [[neurons]]                  # as in cortex.toml; endpoint optional
    name = "gpu-a"
    kind = "neuron"              # neuron (default), openai, vllm, sglang, llamacpp, ollama
    gpus = 2                     # declared topology: gpus + vram_mb, or devices = [...]
    vram_mb = 81920
    loaded = ["Qwen/Qwen3-8B"]   # models loaded at time 0

    [[models]] / [aliases]       # the catalogue, as in cortex.toml / models.toml

    [failures]                   # defaults for every node ...
    mtbf_s = 3600.0              # mean time between outages (exponential); absent: none
    mttr_s = 120.0               # mean outage length (exponential)
    blip_per_hour = 6.0          # short outages per hour (Poisson)
    blip_s = 15.0                # length of each blip
    slow_poll = 0.01             # probability that a poll times out although the node is up
    [failures.gpu-a]             # ... overridden per node
    blip_per_hour = 30.0

    [traffic]
    rate_per_s = 5.0             # Poisson arrivals, or:
    # arrivals = "azure.csv"     # a public trace (Azure CSV, BurstGPT CSV, Mooncake JSONL)
    # format = "azure"           # azure | burstgpt | mooncake (default: from the file)
    models = { "Qwen/Qwen3-8B" = 3, "tiny" = 1 }   # weights of the requested models
    # model_map = { "ChatGPT" = "Qwen/Qwen3-8B" }  # BurstGPT Model -> requested model
    input_tokens = 512           # means of the drawn token counts (Poisson traffic)
    output_tokens = 256
    tokens_per_s = 50.0          # decode speed: service time from token counts
    prefill_tokens_per_s = 5000.0

Every problem is a :class:`~cortex_fsm.errors.ConfigError` of one line that
names the file and the key; unknown keys are errors.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..catalogue import Catalogue, catalogue_from_mapping, read_toml
from ..errors import ConfigError
from ..fleet import Device
from ..policy import Policy, parse_assignment

__all__ = [
    "ARRIVAL_FORMATS",
    "KINDS",
    "Failures",
    "Run",
    "Scenario",
    "SimNeuron",
    "Traffic",
    "load_scenario",
    "scenario_from_mapping",
    "with_assignments",
]

#: Backend kinds (docs/semantics.md §11); only ``neuron`` nodes have a topology and load models.
KINDS = ("neuron", "openai", "vllm", "sglang", "llamacpp", "ollama")
ARRIVAL_FORMATS = ("azure", "burstgpt", "mooncake")

_TOP_KEYS = ("run", "policy", "neurons", "models", "aliases", "failures", "traffic")
_NEURON_KEYS = ("name", "endpoint", "kind", "devices", "gpus", "vram_mb", "loaded")
_FAILURE_KEYS = ("mtbf_s", "mttr_s", "blip_per_hour", "blip_s", "slow_poll")
_TRAFFIC_KEYS = (
    "rate_per_s",
    "arrivals",
    "format",
    "models",
    "model_map",
    "input_tokens",
    "output_tokens",
    "tokens_per_s",
    "prefill_tokens_per_s",
)
_RUN_KEYS = ("duration_s", "seed", "load_s")
_DEFAULT_VRAM_MB = 81920


@attrs.frozen(slots=True, kw_only=True)
class SimNeuron:
    """A simulated node: its name, backend kind, real topology and initial models."""

    name: str
    endpoint: str
    kind: str = "neuron"
    devices: tuple[Device, ...] = ()
    declared: bool = False  # the scenario declares the topology (gpus/vram_mb/devices)
    loaded: tuple[str, ...] = ()


@attrs.frozen(slots=True, kw_only=True)
class Failures:
    """One node's failure processes. ``mtbf_s`` None: no long outages."""

    mtbf_s: float | None = None
    mttr_s: float = 120.0
    blip_per_hour: float = 0.0
    blip_s: float = 10.0
    slow_poll: float = 0.0


@attrs.frozen(slots=True, kw_only=True)
class Traffic:
    """Who asks for what: Poisson at ``rate_per_s``, or the rows of ``arrivals``."""

    rate_per_s: float | None = None
    arrivals: str | None = None  # absolute path
    format: str | None = None
    models: tuple[tuple[str, float], ...] = ()  # (requested model, weight), in file order
    model_map: Mapping[str, str] = attrs.field(factory=dict)
    input_tokens: float = 512.0
    output_tokens: float = 256.0
    tokens_per_s: float = 50.0
    prefill_tokens_per_s: float = 5000.0


@attrs.frozen(slots=True, kw_only=True)
class Run:
    duration_s: float | None = None  # None: until the last arrival has been served
    seed: int = 0
    load_s: float = 20.0


@attrs.frozen(slots=True, kw_only=True)
class Scenario:
    """A validated scenario. ``data`` is the parsed TOML it came from (for sweeps)."""

    neurons: tuple[SimNeuron, ...]
    catalogue: Catalogue
    policy: Policy
    failures: Mapping[str, Failures]  # per node name
    traffic: Traffic
    run: Run
    source: str = "<scenario>"
    data: Mapping[str, object] = attrs.field(factory=dict, eq=False, repr=False)
    base_dir: str | None = attrs.field(default=None, eq=False, repr=False)

    def with_seed(self, seed: int) -> Scenario:
        return attrs.evolve(self, run=attrs.evolve(self.run, seed=seed))


# --- values ----------------------------------------------------------------------------------


def _number(value: object, where: str, *, minimum: float, strict: bool, what: str) -> float:
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if not bad:
        number = float(value)  # type: ignore[arg-type]
        bad = not math.isfinite(number) or number < minimum or (strict and number == minimum)
    if bad:
        raise ConfigError(f"{where} must be {what}, got {value!r}")
    return number


def _seconds(value: object, where: str) -> float:
    return _number(value, where, minimum=0.0, strict=True, what="a number of seconds > 0")


def _positive(value: object, where: str) -> float:
    return _number(value, where, minimum=0.0, strict=True, what="a number > 0")


def _non_negative(value: object, where: str) -> float:
    return _number(value, where, minimum=0.0, strict=False, what="a number >= 0")


def _probability(value: object, where: str) -> float:
    p = _number(value, where, minimum=0.0, strict=False, what="a probability in 0..1")
    if p > 1:
        raise ConfigError(f"{where} must be a probability in 0..1, got {value!r}")
    return p


def _int(value: object, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _unknown(data: Mapping[str, object], known: Sequence[str], where: str) -> None:
    for key in data:
        if key not in known:
            raise ConfigError(f"{where} unknown key {key!r} (known: {', '.join(known)})")


def _table(data: Mapping[str, object], key: str, where: str) -> Mapping[str, object]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: [{key}] must be a table, got {value!r}")
    return value


# --- tables ----------------------------------------------------------------------------------


def _devices(entry: Mapping[str, object], at: str) -> tuple[Device, ...]:
    raw = entry.get("devices")
    gpus, vram = entry.get("gpus"), entry.get("vram_mb")
    if raw is not None:
        if gpus is not None or vram is not None:
            raise ConfigError(f"{at} devices cannot be combined with gpus/vram_mb")
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{at} devices must be a non-empty list of tables, got {raw!r}")
        devices: list[Device] = []
        for i, d in enumerate(raw):
            if not isinstance(d, Mapping):
                raise ConfigError(f"{at} devices[{i}] must be a table, got {d!r}")
            _unknown(d, ("index", "vram_total_mb", "name"), f"{at} devices[{i}]:")
            name = d.get("name", "GPU")
            if not isinstance(name, str):
                raise ConfigError(f"{at} devices[{i}].name must be a string, got {name!r}")
            devices.append(
                Device(
                    index=_int(d.get("index"), f"{at} devices[{i}].index", minimum=0),
                    vram_total_mb=_int(
                        d.get("vram_total_mb"), f"{at} devices[{i}].vram_total_mb", minimum=1
                    ),
                    name=name,
                )
            )
        return tuple(devices)
    count = 1 if gpus is None else _int(gpus, f"{at} gpus", minimum=1)
    mb = _DEFAULT_VRAM_MB if vram is None else _int(vram, f"{at} vram_mb", minimum=1)
    return tuple(Device(index=i, vram_total_mb=mb, name="GPU") for i in range(count))


def _neurons(raw: object, where: str) -> tuple[SimNeuron, ...]:
    if raw is None:
        raise ConfigError(f"{where}: [[neurons]] is missing: list at least one neuron")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: [[neurons]] must list at least one neuron, got {raw!r}")
    out: list[SimNeuron] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        at = f"{where}: [[neurons]] #{i + 1}"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at} must be a table, got {entry!r}")
        _unknown(entry, _NEURON_KEYS, f"{at}:")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{at} name must be a non-empty string, got {name!r}")
        if name in seen:
            raise ConfigError(f"{at} name {name!r} is configured twice")
        seen.add(name)
        at = f"{at} ({name})"
        endpoint = entry.get("endpoint", f"http://{name}.sim:13131")
        if not isinstance(endpoint, str):
            raise ConfigError(f"{at} endpoint must be a string, got {endpoint!r}")
        kind = entry.get("kind", "neuron")
        if kind not in KINDS:
            raise ConfigError(f"{at} kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind != "neuron" and any(k in entry for k in ("devices", "gpus", "vram_mb")):
            raise ConfigError(f"{at} a {kind} backend has no declared topology (devices/gpus)")
        devices = _devices(entry, at) if kind == "neuron" else ()
        loaded = entry.get("loaded", [])
        if not isinstance(loaded, list) or not all(isinstance(m, str) and m for m in loaded):
            raise ConfigError(f"{at} loaded must be a list of model ids, got {loaded!r}")
        if len(set(loaded)) != len(loaded):
            raise ConfigError(f"{at} loaded lists a model twice: {loaded!r}")
        out.append(
            SimNeuron(
                name=name,
                endpoint=endpoint,
                kind=str(kind),
                devices=devices,
                declared=any(k in entry for k in ("devices", "gpus", "vram_mb")),
                loaded=tuple(loaded),
            )
        )
    return tuple(out)


def _failure_values(raw: Mapping[str, object], base: Failures, at: str) -> Failures:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{at} {key}"
        if key in ("mtbf_s", "mttr_s", "blip_s"):
            values[key] = _seconds(value, where)
        elif key == "blip_per_hour":
            values[key] = _non_negative(value, where)
        else:
            values[key] = _probability(value, where)
    return attrs.evolve(base, **values)


def _failures(raw: Mapping[str, object], names: Sequence[str], where: str) -> dict[str, Failures]:
    defaults = {k: v for k, v in raw.items() if not isinstance(v, Mapping)}
    overrides = {k: v for k, v in raw.items() if isinstance(v, Mapping)}
    for key in defaults:
        if key not in _FAILURE_KEYS:
            raise ConfigError(
                f"{where}: [failures] unknown key {key!r} "
                f"(known: {', '.join(_FAILURE_KEYS)}, or a [failures.NODE] table)"
            )
    base = _failure_values(defaults, Failures(), f"{where}: [failures]")
    for node in overrides:
        if node not in names:
            raise ConfigError(f"{where}: [failures.{node}] names no neuron of the scenario")
    out: dict[str, Failures] = {}
    for name in names:
        table = overrides.get(name)
        if table is None:
            out[name] = base
            continue
        at = f"{where}: [failures.{name}]"
        _unknown(table, _FAILURE_KEYS, f"{at}")
        out[name] = _failure_values(table, base, at)
    return out


def _weights(raw: object, at: str) -> tuple[tuple[str, float], ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{at} must be a table of model = weight, got {raw!r}")
    return tuple((str(m), _positive(w, f"{at}.{m}")) for m, w in raw.items())


def _traffic(
    raw: Mapping[str, object],
    neurons: Sequence[SimNeuron],
    catalogue: Catalogue,
    where: str,
    base_dir: Path | None,
) -> Traffic:
    at = f"{where}: [traffic]"
    _unknown(raw, _TRAFFIC_KEYS, at)
    rate, arrivals = raw.get("rate_per_s"), raw.get("arrivals")
    if (rate is None) == (arrivals is None):
        raise ConfigError(f"{at} give exactly one of rate_per_s (Poisson) or arrivals (a file)")
    values: dict[str, Any] = {}
    if rate is not None:
        values["rate_per_s"] = _positive(rate, f"{at} rate_per_s")
        for key in ("format", "model_map"):
            if key in raw:
                raise ConfigError(f"{at} {key} applies only to an arrivals file")
    else:
        path = Path(_string(arrivals, f"{at} arrivals"))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        values["arrivals"] = str(path)
        fmt = raw.get("format")
        if fmt is not None:
            if fmt not in ARRIVAL_FORMATS:
                raise ConfigError(
                    f"{at} format must be one of {', '.join(ARRIVAL_FORMATS)}, got {fmt!r}"
                )
            values["format"] = fmt
        if "model_map" in raw:
            mapping = raw["model_map"]
            if not isinstance(mapping, Mapping) or not all(
                isinstance(v, str) and v for v in mapping.values()
            ):
                raise ConfigError(
                    f"{at} model_map must be a table of trace model = model id, got {mapping!r}"
                )
            values["model_map"] = {str(k): str(v) for k, v in mapping.items()}
    if "models" in raw:
        values["models"] = _weights(raw["models"], f"{at} models")
    for key in ("input_tokens", "output_tokens"):
        if key in raw:
            values[key] = _non_negative(raw[key], f"{at} {key}")
    for key in ("tokens_per_s", "prefill_tokens_per_s"):
        if key in raw:
            values[key] = _positive(raw[key], f"{at} {key}")
    traffic = Traffic(**values)
    if traffic.model_map:
        from .arrivals import detect_format

        assert traffic.arrivals is not None
        fmt = traffic.format or detect_format(traffic.arrivals)
        if fmt != "burstgpt":
            raise ConfigError(f"{at} model_map applies only to BurstGPT files (this is {fmt})")
        traffic = attrs.evolve(traffic, format=fmt)
    elif not traffic.models:
        known = sorted({*catalogue.profiles, *(m for n in neurons for m in n.loaded)})
        if len(known) != 1:
            listed = ", ".join(known) or "none"
            raise ConfigError(
                f"{at} models is required: which models are requested? "
                f"(the scenario knows {len(known)}: {listed})"
            )
        traffic = attrs.evolve(traffic, models=((known[0], 1.0),))
    return traffic


def _run(raw: Mapping[str, object], traffic: Traffic, where: str) -> Run:
    at = f"{where}: [run]"
    _unknown(raw, _RUN_KEYS, at)
    duration = raw.get("duration_s")
    if duration is None and traffic.arrivals is None:
        raise ConfigError(f"{at} duration_s is required with Poisson traffic")
    return Run(
        duration_s=None if duration is None else _seconds(duration, f"{at} duration_s"),
        seed=_int(raw.get("seed", 0), f"{at} seed", minimum=0),
        load_s=_non_negative(raw.get("load_s", 20.0), f"{at} load_s"),
    )


def scenario_from_mapping(
    data: Mapping[str, object], *, where: str = "scenario.toml", base_dir: Path | None = None
) -> Scenario:
    """Validate a parsed scenario. ``base_dir`` resolves a relative ``arrivals`` path."""
    _unknown(data, _TOP_KEYS, f"{where}:")
    neurons = _neurons(data.get("neurons"), where)
    inline = {k: data[k] for k in ("models", "aliases") if k in data}
    catalogue = catalogue_from_mapping(inline, where=where)
    try:
        policy = Policy.from_mapping(_table(data, "policy", where), where="[policy]")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    failures = _failures(_table(data, "failures", where), [n.name for n in neurons], where)
    traffic = _traffic(_table(data, "traffic", where), neurons, catalogue, where, base_dir)
    run = _run(_table(data, "run", where), traffic, where)
    return Scenario(
        neurons=neurons,
        catalogue=catalogue,
        policy=policy,
        failures=failures,
        traffic=traffic,
        run=run,
        source=where,
        data=data,
        base_dir=None if base_dir is None else str(base_dir),
    )


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and validate a scenario TOML file."""
    path = Path(path)
    return scenario_from_mapping(read_toml(path), where=str(path), base_dir=path.parent)


def with_assignments(scenario: Scenario, assignments: Mapping[str, object]) -> Scenario:
    """``scenario`` with values replaced, validated again.

    A plain key is a policy key (``failure_threshold``); a dotted key names a
    scenario table (``failures.blip_per_hour``, ``failures.gpu-a.slow_poll``,
    ``traffic.rate_per_s``, ``run.duration_s``).
    """
    data: dict[str, Any] = copy.deepcopy(dict(scenario.data))
    for key, value in assignments.items():
        path = key.split(".")
        if len(path) == 1:
            path = ["policy", key]
        if path[0] not in ("policy", "failures", "traffic", "run"):
            raise ConfigError(
                f"{key}: a grid key is a policy key or failures.KEY, failures.NODE.KEY, "
                "traffic.KEY, run.KEY"
            )
        table = data
        for part in path[:-1]:
            inner = table.setdefault(part, {})
            if not isinstance(inner, dict):
                raise ConfigError(f"{key}: {part} is not a table")
            table = inner
        table[path[-1]] = value
    base = None if scenario.base_dir is None else Path(scenario.base_dir)
    return scenario_from_mapping(data, where=scenario.source, base_dir=base)


def parse_grid(text: str) -> tuple[str, list[object]]:
    """``KEY=V1,V2,...`` -> ``(KEY, [values])``; values read as by ``--set``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip():
        raise ConfigError(f"--grid: expected KEY=V1,V2,..., got {text!r}")
    values = [parse_assignment(f"{key}={v}", where="--grid")[1] for v in raw.split(",")]
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"--grid: {key} lists a value twice: {text!r}")
    return key, values
