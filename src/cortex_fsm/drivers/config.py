"""The gateway's configuration file (``cortex.toml``), validated into a frozen value.

Layout::

    models_config = "models.toml"      # the catalogue, relative to this file; or inline:
    # [[models]] ... and [aliases] ...  (same keys as models.toml)

    [gateway]
    listen = "127.0.0.1:31313"
    poll_timeout = 5.0                 # seconds, each /discovery, /models and /health fetch
    endpoint_timeout = 10.0            # GET /models/{id}/endpoint
    load_timeout = 600.0               # POST /models/load
    request_timeout = 300.0            # forwarded request: until the first response byte,
                                       # then the longest pause between two chunks
    client_timeout = 10.0              # a client's request head, and its body
    max_body_bytes = 8388608           # largest request body accepted (else 413)
    endpoint_cache = true              # remember resolved endpoints (see docs/gateway.md)
    access_log = "-"                   # one JSON line per request: "-" stderr, a path, or false
    drain_timeout = 30.0               # seconds in-flight requests get after SIGTERM/SIGINT
    metrics = true                     # serve GET /metrics (Prometheus)
    defrag_after_cycles = 0            # warn when a node has had more evictions (0: never)

    [auth]
    keys_file = "api-keys.txt"         # one key (or sha256:<hex> of one) per line
    protect_metrics = false            # true: /healthz, /readyz and /metrics need a key too

    [policy]
    failure_threshold = 3
    poll_interval = 10.0
    io_errors = "extension"            # or "reference"

    [[neurons]]
    name = "gpu-a"
    endpoint = "http://gpu-a.lan:13131"

Every problem is a :class:`~cortex_fsm.errors.ConfigError` whose text starts
with the file name and names the key, e.g. ``cortex.toml: [policy]
failure_threshold must be an integer >= 1, got 0``. Unknown keys are errors
too: a typo must never be silently ignored.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from ..catalogue import Catalogue, catalogue_from_mapping, ignored_keys, read_toml
from ..errors import ConfigError
from ..fleet import Neuron
from ..policy import POLICY_KEYS, Policy
from ..trace import TraceHeader
from .neuron_client import url_problem

__all__ = [
    "DEFAULT_LISTEN",
    "GatewayConfig",
    "config_from_mapping",
    "keys_from_env",
    "load_config",
    "parse_keys",
    "parse_listen",
]

DEFAULT_LISTEN = "127.0.0.1:31313"

_TOP_KEYS = ("gateway", "auth", "policy", "neurons", "models_config", "models", "aliases")
_GATEWAY_SECONDS = {
    "poll_timeout": 5.0,
    "endpoint_timeout": 10.0,
    "load_timeout": 600.0,
    "request_timeout": 300.0,
    "client_timeout": 10.0,
}
_GATEWAY_KEYS = (
    "listen",
    *_GATEWAY_SECONDS,
    "max_body_bytes",
    "endpoint_cache",
    "access_log",
    "drain_timeout",
    "metrics",
    "defrag_after_cycles",
)
_AUTH_KEYS = ("keys_file", "protect_metrics")
_SHA256_PREFIX = "sha256:"
KEYS_ENV = "CORTEX_API_KEYS"
"""The environment variable holding API keys (comma- or whitespace-separated)."""
_NEURON_KEYS = ("name", "endpoint")


@attrs.frozen(kw_only=True)
class GatewayConfig:
    """Everything ``cortex-fsm serve`` needs, validated."""

    neurons: tuple[Neuron, ...]
    catalogue: Catalogue = attrs.field(factory=Catalogue)
    policy: Policy = attrs.field(factory=Policy)
    listen_host: str = "127.0.0.1"
    listen_port: int = 31313
    poll_timeout: float = 5.0
    endpoint_timeout: float = 10.0
    load_timeout: float = 600.0
    request_timeout: float = 300.0
    client_timeout: float = 10.0
    max_body_bytes: int = 8 * 1024 * 1024
    endpoint_cache: bool = True
    access_log: str | None = "-"
    """Where the access log goes: ``"-"`` standard error, a file path, or None (off)."""
    drain_timeout: float = 30.0
    metrics: bool = True
    defrag_after_cycles: int = 0
    """Warn that a node wants a restart once it has had more evictions than this (0: never)."""
    keys_file: str | None = None
    api_keys: frozenset[bytes] = attrs.field(default=frozenset(), repr=False)
    """SHA-256 digests of the accepted API keys (empty: no key needed)."""
    protect_metrics: bool = False
    source: str = "<config>"
    """Where the configuration came from (for messages)."""
    ignored: tuple[str, ...] = attrs.field(default=(), eq=False)
    """Catalogue keys read past without use (``models.toml: models[0].harnes``): likely typos."""

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"

    def neuron(self, name: str) -> Neuron:
        for neuron in self.neurons:
            if neuron.name == name:
                return neuron
        raise KeyError(name)

    def trace_header(self) -> TraceHeader:
        """The header of a trace recorded under this configuration."""
        return TraceHeader(neurons=self.neurons, catalogue=self.catalogue, policy=self.policy)


def parse_listen(text: object, *, where: str = "listen") -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:port"`` for IPv6) -> ``(host, port)``; port 0 = any free one."""
    if not isinstance(text, str):
        raise ConfigError(f"{where} must be a string HOST:PORT, got {text!r}")
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    digits = port_text.isascii() and port_text.isdigit()
    if not sep or not host or not digits or int(port_text) > 65535:
        raise ConfigError(f"{where} must be HOST:PORT with a port in 0..65535, got {text!r}")
    return host, int(port_text)


def _endpoint(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a URL string such as http://host:13131, got {value!r}")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where} is not a valid URL ({exc}): {value!r}") from None
    if parts.scheme != "http":
        raise ConfigError(f"{where} must be an http:// URL, got {value!r}")
    if not parts.hostname:
        raise ConfigError(f"{where} has no host: {value!r}")
    if port == 0:
        raise ConfigError(f"{where} has port 0: {value!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{where} must not have a query or fragment: {value!r}")
    problem = url_problem(value)
    if problem is not None:
        raise ConfigError(f"{where} is not a usable URL ({problem}): {value!r}")
    return value.rstrip("/")


def _seconds(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number of seconds > 0, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _unknown(data: Mapping[str, object], known: Sequence[str], where: str) -> None:
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}unknown key {key!r} (known: {', '.join(known)})")


def _table(data: Mapping[str, object], key: str, where: str) -> Mapping[str, object]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: [{key}] must be a table, got {value!r}")
    return value


def _neurons(raw: object, where: str) -> tuple[Neuron, ...]:
    if raw is None:
        raise ConfigError(f"{where}: [[neurons]] is missing: list at least one neuron")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: [[neurons]] must list at least one neuron, got {raw!r}")
    neurons: list[Neuron] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        at = f"{where}: [[neurons]] #{i + 1}"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at} must be a table, got {entry!r}")
        _unknown(entry, _NEURON_KEYS, f"{at}: ")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{at} name must be a non-empty string, got {name!r}")
        if name in seen:
            raise ConfigError(f"{at} name {name!r} is configured twice")
        seen.add(name)
        endpoint = _endpoint(entry.get("endpoint"), f"{at} ({name}) endpoint")
        neurons.append(Neuron(name=name, endpoint=endpoint))
    return tuple(neurons)


def _policy(raw: Mapping[str, object], where: str) -> Policy:
    _unknown(raw, POLICY_KEYS, f"{where}: [policy] ")
    values: dict[str, Any] = dict(raw)
    try:
        return Policy(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: [policy] {exc}") from None


def _catalogue(
    data: Mapping[str, object], where: str, base_dir: Path | None
) -> tuple[Catalogue, list[str]]:
    """The catalogue, and the keys of it that were ignored (by path)."""
    models_config = data.get("models_config")
    inline = "models" in data or "aliases" in data
    if models_config is None:
        if not inline:
            return Catalogue(), []
        inline_data = {k: data[k] for k in ("models", "aliases") if k in data}
        ignored = [f"{where}: {k}" for k in ignored_keys(inline_data, top_level=False)]
        return catalogue_from_mapping(inline_data, where=where), ignored
    if inline:
        raise ConfigError(
            f"{where}: models_config and inline [[models]]/[aliases] cannot be combined; "
            "use one or the other"
        )
    if not isinstance(models_config, str) or not models_config:
        raise ConfigError(
            f"{where}: models_config must be a file path string, got {models_config!r}"
        )
    path = Path(models_config)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_dir():
        raise ConfigError(f"{where}: models_config: {path}: is a directory, not a TOML file")
    if not path.is_file():
        raise ConfigError(f"{where}: models_config: {path}: no such file")
    models = read_toml(path)
    ignored = [f"{path}: {k}" for k in ignored_keys(models)]
    return catalogue_from_mapping(models, where=str(path)), ignored


def config_from_mapping(
    data: Mapping[str, object], *, where: str = "cortex.toml", base_dir: Path | None = None
) -> GatewayConfig:
    """Validate a parsed ``cortex.toml``. ``base_dir`` resolves a relative ``models_config``."""
    _unknown(data, _TOP_KEYS, f"{where}: ")
    gateway = _table(data, "gateway", where)
    _unknown(gateway, _GATEWAY_KEYS, f"{where}: [gateway] ")
    host, port = parse_listen(
        gateway.get("listen", DEFAULT_LISTEN), where=f"{where}: [gateway] listen"
    )
    seconds = {
        key: _seconds(gateway.get(key, default), f"{where}: [gateway] {key}")
        for key, default in _GATEWAY_SECONDS.items()
    }
    max_body = gateway.get("max_body_bytes", 8 * 1024 * 1024)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 0:
        raise ConfigError(
            f"{where}: [gateway] max_body_bytes must be an integer >= 0, got {max_body!r}"
        )
    cache = _bool(gateway.get("endpoint_cache", True), f"{where}: [gateway] endpoint_cache")
    metrics = _bool(gateway.get("metrics", True), f"{where}: [gateway] metrics")
    access_log: str | None = "-"
    raw_log = gateway.get("access_log", "-")
    if raw_log is False:
        access_log = None
    elif raw_log != "-":
        if raw_log is True:
            raw_log = None  # not a path: the message below says what is
        access_log = _path(
            raw_log, f'{where}: [gateway] access_log ("-", a path or false)', base_dir
        )
    drain = gateway.get("drain_timeout", 30.0)
    if isinstance(drain, bool) or not isinstance(drain, int | float) or not 0 <= drain < math.inf:
        raise ConfigError(
            f"{where}: [gateway] drain_timeout must be a number of seconds >= 0, got {drain!r}"
        )
    defrag = gateway.get("defrag_after_cycles", 0)
    if isinstance(defrag, bool) or not isinstance(defrag, int) or defrag < 0:
        raise ConfigError(
            f"{where}: [gateway] defrag_after_cycles must be an integer >= 0, got {defrag!r}"
        )
    keys_file, api_keys, protect = _auth(data, where, base_dir)
    neurons = _neurons(data.get("neurons"), where)
    catalogue, ignored = _catalogue(data, where, base_dir)
    return GatewayConfig(
        neurons=neurons,
        catalogue=catalogue,
        ignored=tuple(ignored),
        policy=_policy(_table(data, "policy", where), where),
        listen_host=host,
        listen_port=port,
        max_body_bytes=max_body,
        endpoint_cache=cache,
        access_log=access_log,
        drain_timeout=float(drain),
        metrics=metrics,
        defrag_after_cycles=defrag,
        keys_file=keys_file,
        api_keys=api_keys,
        protect_metrics=protect,
        source=where,
        **seconds,
    )


def parse_keys(lines: Sequence[str], where: str) -> frozenset[bytes]:
    """API keys, one per line (or ``sha256:<hex>``), as SHA-256 digests.

    Blank lines and ``#`` comments are skipped. A key is never shown in an
    error (only its line).
    """
    digests: set[bytes] = set()
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith(_SHA256_PREFIX):
            hexdigest = line[len(_SHA256_PREFIX) :].strip()
            try:
                digest = bytes.fromhex(hexdigest)
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ConfigError(
                    f"{where}:{number}: a sha256: line must hold 64 hexadecimal digits"
                )
            digests.add(digest)
        elif any(c.isspace() for c in line) or not line.isprintable():
            raise ConfigError(
                f"{where}:{number}: a key must not contain spaces or control characters"
            )
        else:
            digests.add(hashlib.sha256(line.encode()).digest())
    return frozenset(digests)


def keys_from_env(environ: Mapping[str, str]) -> frozenset[bytes]:
    """The keys in ``CORTEX_API_KEYS`` (separated by commas or white space), as digests."""
    text = environ.get(KEYS_ENV, "")
    items = [item for item in text.replace(",", " ").split() if item]
    return parse_keys(items, KEYS_ENV)


def _path(value: object, where: str, base_dir: Path | None) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a file path string, got {value!r}")
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return str(path)


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    return value


def _auth(
    data: Mapping[str, object], where: str, base_dir: Path | None
) -> tuple[str | None, frozenset[bytes], bool]:
    auth = _table(data, "auth", where)
    _unknown(auth, _AUTH_KEYS, f"{where}: [auth] ")
    protect = _bool(auth.get("protect_metrics", False), f"{where}: [auth] protect_metrics")
    if "keys_file" not in auth:
        return None, frozenset(), protect
    keys_file = _path(auth["keys_file"], f"{where}: [auth] keys_file", base_dir)
    try:
        with open(keys_file, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{where}: [auth] keys_file: {keys_file}: {reason}") from None
    keys = parse_keys(lines, keys_file)
    if not keys:
        raise ConfigError(
            f"{where}: [auth] keys_file: {keys_file} holds no key "
            "(a gateway that wants keys but knows none would refuse everyone)"
        )
    return keys_file, keys, protect


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a ``cortex.toml``."""
    path = Path(path)
    data = read_toml(path)
    return config_from_mapping(data, where=str(path), base_dir=path.parent)
