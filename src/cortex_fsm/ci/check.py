"""``cortex-fsm check``: lint a gateway configuration without starting anything.

A configuration can be valid -- every key known, every value of the right
type, which :func:`cortex_fsm.drivers.config.load_config` already enforces --
and still be wrong: a model no node could ever host is a permanent 404
waiting to happen; an alias to a model nobody catalogues, an alias chain
(aliases are looked up once, docs/semantics.md §3 rule 0) or an alias that
shadows a catalogued model sends requests where nobody meant them to go.
This module finds those, each as a :class:`Problem` with a stable code, a
severity, the file and the key it is about.

Codes (severity):

* ``infeasible_model`` (error) -- no configured node can ever host a
  catalogued model: every node its ``pinned_on`` allows has a declared
  topology (§10) and none is big enough, and no backend of another kind
  could serve it either;
* ``dangling_alias`` (error) -- an alias to a model id that is neither
  catalogued nor an alias (only reported when every node is a neuron:
  backends of other kinds serve models the configuration does not list);
* ``alias_chain`` (error) -- an alias to another alias: the second hop is
  never followed;
* ``alias_shadows_model`` (error) -- an alias whose name is a catalogued
  model id: requests for that model go to the alias's target;
* ``unknown_pinned_node`` (error) -- ``pinned_on`` names a node that is not
  configured;
* ``duplicate_endpoint`` (error) -- two nodes share one endpoint (one host
  counted twice: its failures, its load and the failover that should avoid it);
* ``backend_only_model`` (warning) -- a catalogued model no neuron can
  cold-load, in a fleet with backends of other kinds (§11): they never load
  a model, so it is served only while one of them reports it;
* ``single_feasible_node`` (warning) -- exactly one node can host a model:
  one outage turns it into 503s;
* ``ignored_key`` (warning) -- a catalogue key that is read past without
  use (a likely typo);
* ``undeclared_topology`` (note) -- a neuron without a declared topology:
  whether the models it may host fit on it could not be checked, and after
  a restart, until it answers ``/discovery``, a model only it can host gets
  404 rather than 503.

Exit status of the command: 0 when there is no error (warnings and notes
allowed), 1 with errors, 2 when the configuration cannot be read at all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import attrs

from ..catalogue import Catalogue, Profile, feasible, read_toml
from ..errors import ConfigError
from ..fleet import Discovery, Neuron
from ..policy import Policy

__all__ = [
    "CODES",
    "SEVERITIES",
    "Problem",
    "add_check_arguments",
    "check_config",
    "check_main",
    "lint",
    "refusal",
    "render",
    "startup_errors",
]

SEVERITIES = ("error", "warning", "note")

#: Every problem code: its severity and what it means (docs/ci.md lists them too).
CODES: Mapping[str, tuple[str, str]] = {
    "infeasible_model": ("error", "no configured node can ever host this catalogued model"),
    "dangling_alias": ("error", "an alias to a model id that is neither catalogued nor an alias"),
    "alias_chain": ("error", "an alias to another alias: the second hop is never followed"),
    "alias_shadows_model": ("error", "an alias named like a catalogued model hides that model"),
    "unknown_pinned_node": ("error", "pinned_on names a node that is not configured"),
    "duplicate_endpoint": ("error", "two nodes share one endpoint"),
    "backend_only_model": (
        "warning",
        "no neuron can cold-load this model: only backends of another kind may serve it",
    ),
    "single_feasible_node": ("warning", "exactly one node can host this model"),
    "ignored_key": ("warning", "a catalogue key read past without use (a likely typo)"),
    "undeclared_topology": ("note", "a neuron without a declared topology"),
}


@attrs.frozen(slots=True, kw_only=True)
class Problem:
    """One finding of :func:`lint`: a stable ``code``, its ``severity``, the
    ``file`` and the ``key`` in it (``models[2].pinned_on``, ``aliases."a/b"``,
    ``neurons[1].endpoint``), and a sentence for people. ``line`` is where the
    key is written, when it could be found (best effort; not part of equality)."""

    code: str
    severity: str
    file: str
    key: str
    message: str
    line: int | None = attrs.field(default=None, eq=False)

    def to_json(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.severity,
            "file": self.file,
            "key": self.key,
            "message": self.message,
        }


# --- where keys are written ---------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_ASSIGN = re.compile(r"""^\s*("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""")


def _unquote(key: str) -> str:
    if key.startswith('"'):
        try:
            value = json.loads(key)
        except ValueError:
            return key.strip('"')
        return value if isinstance(value, str) else key
    if key.startswith("'"):
        return key[1:-1]
    return key


class _Locator:
    """Finds the line of a key in a TOML file by reading its text (best effort:
    table headers and ``key =`` lines; inline tables are not searched)."""

    def __init__(self, text: str) -> None:
        # (section, index, key) -> line; section "" is the top level
        self.lines: dict[tuple[str, int, str], int] = {}
        self.tables: dict[tuple[str, int], int] = {}
        counts: dict[str, int] = {}
        section, index = "", 0
        for number, line in enumerate(text.splitlines(), 1):
            header = _HEADER.match(line)
            if header:
                section = header.group(2).strip()
                if header.group(1) == "[[":
                    index = counts.get(section, 0)
                    counts[section] = index + 1
                else:
                    index = 0
                self.tables.setdefault((section, index), number)
                continue
            assign = _ASSIGN.match(line)
            if assign:
                key = _unquote(assign.group(1))
                self.lines.setdefault((section, index, key), number)

    def find(self, section: str, index: int = 0, key: str | None = None) -> int | None:
        if key is None:
            return self.tables.get((section, index))
        found = self.lines.get((section, index, key))
        if found is None and section == "aliases":  # a dotted key at the top level
            found = self.lines.get(("", 0, f"aliases.{key}"))
        return found if found is not None else self.tables.get((section, index))


def _locator(path: str) -> _Locator:
    try:
        return _Locator(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return _Locator("")


def alias_key(alias: str) -> str:
    """``aliases.NAME`` with NAME quoted unless it is a bare TOML key."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", alias):
        return f"aliases.{alias}"
    return f"aliases.{json.dumps(alias)}"


# --- the checks ---------------------------------------------------------------------------


@attrs.frozen(slots=True, kw_only=True)
class _Files:
    config: str
    catalogue: str


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _names(nodes: Iterable[Neuron]) -> str:
    return ", ".join(n.name for n in nodes)


def _why_not(profile: Profile, node: Neuron) -> str:
    """Why a node with a declared topology cannot host ``profile``."""
    devices = node.devices or ()
    floor = profile.min_device_vram_mb
    need = profile.min_devices
    if floor is None:
        return f"{node.name} has {_plural(len(devices), 'GPU')}, needs {need}"
    big = sum(1 for d in devices if d.vram_total_mb >= floor)
    return (
        f"{node.name} has {_plural(big, 'GPU')} of >= {floor} MB (of {len(devices)}), needs {need}"
    )


def _endpoint_identity(endpoint: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(endpoint)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    try:
        port = parts.port or default
    except ValueError:
        port = None
    return (
        parts.scheme.lower(),
        (parts.hostname or "").lower(),
        port,
        parts.path.rstrip("/"),
    )


def _clients_when_down(policy: Policy) -> str:
    if policy.known_down == "retry":
        return (
            '503 feasible_node_unhealthy (known_down = "retry") once the gateway has seen '
            "the model on one of them since it started, 404 before that"
        )
    return '404 no_feasible_neuron (known_down = "reference")'


def lint(
    neurons: Sequence[Neuron],
    catalogue: Catalogue,
    policy: Policy,
    *,
    config_file: str,
    catalogue_file: str | None = None,
    ignored: Sequence[str] = (),
) -> list[Problem]:
    """Every problem of a configuration, in a stable order (by file, then by line).

    ``config_file`` and ``catalogue_file`` label the problems
    (``catalogue_file`` defaults to ``config_file``: an inline catalogue); their
    text is read only to find the line of each key. ``ignored`` are
    :attr:`~cortex_fsm.drivers.config.GatewayConfig.ignored` entries."""
    files = _Files(config=config_file, catalogue=catalogue_file or config_file)
    out: list[Problem] = []

    def add(code: str, file: str, key: str, message: str) -> None:
        out.append(Problem(code=code, severity=CODES[code][0], file=file, key=key, message=message))

    names = {n.name for n in neurons}
    backends = [n for n in neurons if n.kind != "neuron"]
    # --- nodes ---
    first: dict[tuple[str, str, int | None, str], int] = {}
    for j, node in enumerate(neurons):
        identity = _endpoint_identity(node.endpoint)
        if identity in first:
            i = first[identity]
            add(
                "duplicate_endpoint",
                files.config,
                f"neurons[{j}].endpoint",
                f"{node.name} has the endpoint of {neurons[i].name} (neurons[{i}]): "
                f"{node.endpoint}. One host configured twice is polled, counted and "
                "failed over as if it were two: a request that fails on one may be "
                "retried on the same host.",
            )
        else:
            first[identity] = j
    # --- models ---
    unchecked: dict[str, list[str]] = {n.name: [] for n in neurons if n.devices is None}
    for i, profile in enumerate(catalogue.profiles.values()):
        key = f"models[{i}]"
        unknown = [p for p in profile.pinned_on if p not in names]
        if unknown:
            add(
                "unknown_pinned_node",
                files.catalogue,
                f"{key}.pinned_on",
                f"{profile.id}: pinned_on names {', '.join(map(repr, unknown))}, not a "
                f"configured node (configured: {', '.join(sorted(names))}); a pin on no "
                "node never takes effect",
            )
        allowed = [n for n in neurons if not profile.pinned_on or n.name in profile.pinned_on]
        loaders = [n for n in allowed if n.kind == "neuron"]
        declared = [n for n in loaders if n.devices is not None]
        undeclared = [n for n in loaders if n.devices is None]
        fits = [
            n for n in declared if feasible(profile, n.name, Discovery(devices=n.devices or ()))
        ]
        for n in undeclared:
            unchecked[n.name].append(profile.id)
        if fits:
            if len(fits) == 1 and not undeclared:
                add(
                    "single_feasible_node",
                    files.catalogue,
                    key,
                    f"{profile.id}: only {fits[0].name} can host it; while {fits[0].name} "
                    "is down every request for it gets 503",
                )
            continue
        if undeclared:
            continue  # not known: the undeclared_topology notes say so
        why = [_why_not(profile, n) for n in declared]
        excluded = [n for n in neurons if n.kind == "neuron" and n not in allowed]
        if excluded and profile.pinned_on:
            why.append(f"pinned_on excludes {_names(excluded)}")
        if not [n for n in neurons if n.kind == "neuron"]:
            why.append("no node is a neuron")
        reason = "; ".join(why) or "no node may host it"
        if backends:
            kinds = ", ".join(sorted({n.kind for n in backends}))
            add(
                "backend_only_model",
                files.catalogue,
                key,
                f"{profile.id}: no neuron can cold-load it ({reason}). Only the {kinds} "
                f"node(s) {_names(backends)} may serve it, and only while they report it: "
                "they never load a model (docs/semantics.md §11). While they are all down "
                f"or do not report it, clients get {_clients_when_down(policy)}.",
            )
        else:
            add(
                "infeasible_model",
                files.catalogue,
                key,
                f"{profile.id}: no configured node can host it ({reason}); every request "
                "for it gets 404 no_feasible_neuron",
            )
    # --- aliases ---
    aliases = catalogue.aliases
    index = {model: i for i, model in enumerate(catalogue.profiles)}
    for alias, target in aliases.items():
        key = alias_key(alias)
        if alias in catalogue.profiles and target != alias:
            add(
                "alias_shadows_model",
                files.catalogue,
                key,
                f"{alias!r} is an alias (-> {target!r}) and a catalogued model "
                f"(models[{index[alias]}]): aliases are looked up first, so every request "
                f"for {alias!r} gets {target!r} and the catalogued {alias!r} is never served",
            )
        if target in aliases and target != alias:
            resolved = (
                "a catalogued model" if target in catalogue.profiles else "not a catalogued model"
            )
            add(
                "alias_chain",
                files.catalogue,
                key,
                f"{alias!r} -> {target!r}, which is itself an alias (-> {aliases[target]!r}); "
                f"aliases are looked up once, so a request for {alias!r} asks for the model "
                f"{target!r} ({resolved}), never for {aliases[target]!r}",
            )
        elif target not in catalogue.profiles and not backends:
            add(
                "dangling_alias",
                files.catalogue,
                key,
                f"{alias!r} -> {target!r}, which is not a catalogued model: no neuron will "
                f"ever load it, so requests for {alias!r} get 404 unless a node reports "
                f"{target!r} loaded on its own",
            )
    # --- nodes without a declared topology ---
    for j, node in enumerate(neurons):
        if node.kind != "neuron" or node.devices is not None:
            continue
        models = unchecked.get(node.name, [])
        if len(models) == 1:
            checked = f"whether {models[0]} fits on it could not be checked"
        elif models:
            checked = f"whether {', '.join(models)} fit on it could not be checked"
        else:
            checked = "no catalogued model may be placed on it"
        add(
            "undeclared_topology",
            files.config,
            f"neurons[{j}]",
            f"{node.name} declares no topology (gpus + vram_mb, or devices): {checked}; and "
            "after a restart, until it answers /discovery, a model only it can host gets 404 "
            "instead of 503 (docs/semantics.md §10; [gateway] state_dir also helps)",
        )
    # --- keys read past ---
    for entry in ignored:
        file, sep, key = entry.rpartition(": ")
        if not sep:
            file, key = files.catalogue, entry
        add("ignored_key", file, key, f"{key} is not a catalogue key and is ignored (a typo?)")
    return _located(out, files)


def _located(problems: list[Problem], files: _Files) -> list[Problem]:
    """The problems with the lines of their keys, when found."""
    locators: dict[str, _Locator] = {}
    located = []
    for p in problems:
        loc = locators.get(p.file)
        if loc is None:
            loc = locators[p.file] = _locator(p.file)
        located.append(attrs.evolve(p, line=_line_of(loc, p.key)))
    never = 1 << 30
    return sorted(located, key=lambda p: (p.file, p.line or never, p.key, p.code))


_INDEXED = re.compile(r"^(models|neurons)\[(\d+)\](?:\.(.+))?$")


def _line_of(loc: _Locator, key: str) -> int | None:
    m = _INDEXED.match(key)
    if m:
        return loc.find(m.group(1), int(m.group(2)), m.group(3))
    if key.startswith("aliases."):
        return loc.find("aliases", 0, _unquote(key[len("aliases.") :]))
    return None


def _catalogue_file(path: Path, data: Mapping[str, object]) -> str:
    models_config = data.get("models_config")
    if isinstance(models_config, str) and models_config:
        target = Path(models_config)
        if not target.is_absolute():
            target = path.parent / target
        return str(target)
    return str(path)


def check_config(path: str | os.PathLike[str]) -> list[Problem]:
    """Lint the gateway configuration at ``path`` (and its ``models_config``).

    Raises :class:`~cortex_fsm.errors.ConfigError` when it cannot be read or
    is invalid (what ``serve`` would refuse outright)."""
    from ..drivers.config import config_from_mapping

    path = Path(path)
    data = read_toml(path)
    config = config_from_mapping(data, where=str(path), base_dir=path.parent)
    return lint(
        config.neurons,
        config.catalogue,
        config.policy,
        config_file=str(path),
        catalogue_file=_catalogue_file(path, data),
        ignored=config.ignored,
    )


def startup_errors(path: str | os.PathLike[str]) -> list[Problem]:
    """The errors among :func:`check_config`'s problems (what ``serve`` refuses)."""
    return [p for p in check_config(path) if p.severity == "error"]


# --- output -------------------------------------------------------------------------------


def gh_escape(text: str, *, prop: bool = False) -> str:
    """``text`` escaped for a GitHub workflow command (``prop``: as a property value)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


_GH_LEVEL = {"error": "error", "warning": "warning", "note": "notice"}


def render(problems: Sequence[Problem], fmt: str = "text") -> str:
    """The problems as ``text`` (one line each and a count), ``json`` (one array
    of ``{code, severity, file, key, message}``) or ``github`` (workflow
    annotations)."""
    if fmt == "json":
        return json.dumps([p.to_json() for p in problems], indent=2, ensure_ascii=False) + "\n"
    lines = []
    for p in problems:
        if fmt == "github":
            props = f"file={gh_escape(p.file, prop=True)}"
            if p.line is not None:
                props += f",line={p.line}"
            props += f",title={gh_escape(f'cortex-fsm {p.code}', prop=True)}"
            text = gh_escape(f"{p.key}: {p.message}")
            lines.append(f"::{_GH_LEVEL[p.severity]} {props}::{text}")
        else:
            where = p.file if p.line is None else f"{p.file}:{p.line}"
            lines.append(f"{where}: {p.severity}: {p.code}: {p.key}: {p.message}")
    counts = {s: sum(1 for p in problems if p.severity == s) for s in SEVERITIES}
    summary = (
        f"{_plural(counts['error'], 'error')}, {_plural(counts['warning'], 'warning')}, "
        f"{_plural(counts['note'], 'note')}"
    )
    if fmt == "github":
        lines.append(f"cortex-fsm check: {summary}")
    else:
        lines.append(summary if problems else "no problems found")
    return "\n".join(lines) + "\n"


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Lint a gateway configuration (cortex.toml and its models_config) without starting "
        "anything: models no node can host, aliases that go nowhere, chain or shadow a model, "
        "pins on unknown nodes, endpoints configured twice; warnings for models one outage "
        "away from 503s; notes for nodes whose topology is not declared. Exit 0: no error "
        "(warnings and notes allowed); 1: errors; 2: the file cannot be read or is invalid."
    )
    parser.add_argument(
        "--config",
        default="cortex.toml",
        metavar="PATH",
        help="the gateway configuration (default: %(default)s)",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json", "github"),
        default="text",
        help="text lines (default), one JSON array of {code, severity, file, key, message}, "
        "or GitHub workflow annotations",
    )


def check_main(args: argparse.Namespace) -> int:
    try:
        problems = check_config(args.config)
    except ConfigError as exc:
        print(f"cortex-fsm check: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(problems, args.format))
    return 1 if any(p.severity == "error" for p in problems) else 0


def refusal(path: str | os.PathLike[str]) -> str | None:
    """Why ``serve`` refuses to start on the configuration at ``path``: its
    errors, named on one line (None: no error). A file that cannot be read is
    left to the caller's own loading."""
    try:
        errors = startup_errors(path)
    except ConfigError:
        return None
    if not errors:
        return None
    named = "; ".join(
        f"{p.file}{'' if p.line is None else f':{p.line}'}: {p.code}: {p.key}" for p in errors
    )
    return (
        f"refusing to start: {_plural(len(errors), 'configuration error')} ({named}); "
        f"'cortex-fsm check --config {os.fspath(path)}' explains them, "
        "--allow-config-errors starts anyway"
    )
