"""Topology that survives restarts (docs/semantics.md §10): declared, and kept in ``state_dir``.

A gateway learns a neuron's topology from its ``/discovery``. One that
starts while a neuron is down would not know it, and would answer that
neuron's models with a permanent 404 (``no_feasible_neuron``) instead of a
503. Two sources close that gap, both fed to the engine at start as
``discovery`` observations (recorded in the trace like any other):

* **declared** in ``cortex.toml`` (``devices = [...]`` or ``gpus`` +
  ``vram_mb`` on a ``[[neurons]]`` entry);
* **cached**: every neuron's last good live discovery, kept in
  ``{state_dir}/discovery.json`` (written atomically whenever it changes)
  and read back at the next start.

Both are fed *incomplete* (without ``max_prompt_tokens``), so the poller
still fetches ``/discovery`` and the first live answer replaces them; a
live topology that differs from the declared one is logged
(``topology_mismatch``). The cache, being what the node itself said last,
is fed after the declared topology and so wins over it until the node
answers. Only ``neuron`` nodes have a topology: other kinds are never
cold-load targets (docs/semantics.md §11), so cached entries for them are
not fed, and the configuration refuses a declared one.

Problems with the state file (unreadable, not ours, not writable) are
logged on ``cortex_fsm.topology`` and never stop the gateway: without the
cache it behaves as it would without ``state_dir``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..backends import BACKENDS
from ..errors import ConfigError
from ..fleet import Device, Discovery, Neuron
from ..wire import Invalid, load_json, parse_discovery
from .journal import Journal

if TYPE_CHECKING:
    from .config import GatewayConfig

__all__ = ["STATE_FILE", "Topology", "declared_body"]

_log = logging.getLogger("cortex_fsm.topology")

STATE_FILE: Final = "discovery.json"
_FORMAT: Final = "cortex-fsm-state"
_VERSION: Final = 1


def declared_body(devices: Sequence[Device]) -> dict[str, Any]:
    """The ``/discovery`` body of a declared topology (incomplete: no ``max_prompt_tokens``)."""
    out = []
    for device in devices:
        item: dict[str, Any] = {"index": device.index, "vram_total_mb": device.vram_total_mb}
        if device.name:
            item["name"] = device.name
        out.append(item)
    return {"devices": out}


def _incomplete(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "max_prompt_tokens"}


def _shape(discovery: Discovery) -> list[tuple[int, int]]:
    return sorted((d.index, d.vram_total_mb) for d in discovery.devices)


class Topology:
    """The declared topologies and the discovery cache of one gateway.

    ``nodes``: the names of the nodes that have a topology (``neuron`` kind).
    ``declared``: per node name, its declared devices. ``state_dir``: where
    the cache lives (``None``: no cache).
    """

    def __init__(
        self,
        *,
        nodes: Sequence[str],
        declared: Mapping[str, Sequence[Device]] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.nodes = list(nodes)
        self.declared = {k: tuple(v) for k, v in (declared or {}).items()}
        self.path = None if state_dir is None else Path(state_dir) / STATE_FILE
        self._entries: dict[str, Any] = {}
        self._mismatch: dict[str, list[tuple[int, int]]] = {}
        self._write_failed = False

    @classmethod
    def of(cls, config: GatewayConfig) -> Topology:
        """The topologies of ``config``'s neurons (those of kind ``neuron``)."""
        return cls(
            nodes=[n.name for n in config.neurons if BACKENDS[n.kind].daemon],
            declared={n.name: n.devices for n in config.neurons if n.devices is not None},
            state_dir=config.state_dir,
        )

    # -- start ------------------------------------------------------------------------------

    def seed(self, journal: Journal) -> dict[str, str]:
        """Feed every declared, then every cached, topology to ``journal``.

        Returns ``{node: source}`` of what was fed last per node. Creates
        ``state_dir`` if needed (a ``ConfigError`` when it cannot).
        """
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"[gateway] state_dir: cannot create {self.path.parent}: {exc.strerror or exc}"
                ) from None
            self._entries = self._read()
        fed: dict[str, str] = {}
        for node in self.nodes:
            source = self._feed_node(journal, node)
            if source is not None:
                fed[node] = source
        return fed

    def _feed_node(self, journal: Journal, node: str) -> str | None:
        """Feed ``node``'s declared, then cached, topology; the source fed last, if any."""
        source = None
        devices = self.declared.get(node)
        if devices is not None:
            source = "declared"
            journal.discovery(node, ok=True, body=declared_body(devices), source=source)
        cached = self._entries.get(node)
        if cached is not None:
            source = "cache"
            journal.discovery(node, ok=True, body=_incomplete(cached), source=source)
        return source

    def add(self, journal: Journal, neuron: Neuron) -> None:
        """A node added while running (a reload): its topology as at a start."""
        self.remove(neuron.name)
        if not BACKENDS[neuron.kind].daemon:
            return
        self.nodes.append(neuron.name)
        if neuron.devices is not None:
            self.declared[neuron.name] = neuron.devices
        self._feed_node(journal, neuron.name)

    def remove(self, name: str) -> None:
        """A node removed while running: forget its declaration (the cache keeps its entry)."""
        if name in self.nodes:
            self.nodes.remove(name)
        self.declared.pop(name, None)
        self._mismatch.pop(name, None)

    def _read(self) -> dict[str, Any]:
        assert self.path is not None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._warn("state_unreadable", f"cannot read it: {exc.strerror or exc}")
            return {}
        try:
            data = load_json(raw)
        except ValueError:
            self._warn("state_unreadable", "it is not JSON")
            return {}
        if (
            type(data) is not dict
            or data.get("format") != _FORMAT
            or data.get("version") != _VERSION
            or type(data.get("discovery")) is not dict
        ):
            self._warn("state_unreadable", f"it is not a {_FORMAT} version {_VERSION} file")
            return {}
        entries: dict[str, Any] = {}
        for node, body in data["discovery"].items():
            if isinstance(parse_discovery(body), Invalid):
                self._warn("state_unreadable", f"the entry of {node!r} is not a valid discovery")
                continue
            entries[node] = body
        return entries

    # -- running ------------------------------------------------------------------------------

    def observed(self, node: str, body: object) -> None:
        """A live ``/discovery`` answer of ``node``: compare, and keep it if it is good."""
        parsed = parse_discovery(body)
        if isinstance(parsed, Invalid) or type(body) is not dict:
            return
        declared = self.declared.get(node)
        if declared is not None:
            self._compare(node, declared, parsed)
        if self.path is None or self._entries.get(node) == body:
            return
        self._entries[node] = body
        self._write()

    def _compare(self, node: str, declared: Sequence[Device], live: Discovery) -> None:
        want = sorted((d.index, d.vram_total_mb) for d in declared)
        got = _shape(live)
        if want == got or self._mismatch.get(node) == got:
            return
        self._mismatch[node] = got
        fields = {
            "event": "topology_mismatch",
            "node": node,
            "declared": [{"index": i, "vram_total_mb": v} for i, v in want],
            "discovered": [{"index": i, "vram_total_mb": v} for i, v in got],
            "message": f"node {node!r} reports a topology that differs from the one declared "
            "in cortex.toml; the discovered one is used: update the declaration",
        }
        _log.warning(json.dumps(fields))

    def _write(self) -> None:
        """Replace the state file atomically: a crash leaves the old or the new one, whole."""
        assert self.path is not None
        data = {"format": _FORMAT, "version": _VERSION, "discovery": self._entries}
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        directory = self.path.parent
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".discovery-", suffix=".tmp", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            tmp = None
        except OSError as exc:
            if not self._write_failed:
                self._warn("state_unwritable", f"cannot write it: {exc.strerror or exc}")
            self._write_failed = True
            return
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        if self._write_failed:
            self._write_failed = False
            _log.info(json.dumps({"event": "state_written", "path": str(self.path)}))

    def _warn(self, event: str, reason: str) -> None:
        message = f"{self.path}: {reason}"
        if event == "state_unreadable":
            message += (
                "; starting without the discovery cache (it is rewritten at the next discovery)"
            )
        _log.warning(json.dumps({"event": event, "path": str(self.path), "message": message}))
