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
    state_dir = "state"                # keep every node's last discovery here (default: none)

    [auth]
    keys_file = "api-keys.txt"         # one key (or sha256:<hex> of one) per line
    protect_metrics = false            # true: /healthz, /readyz and /metrics need a key too

    [policy]
    failure_threshold = 3
    poll_interval = 10.0
    io_errors = "extension"            # or "reference"

    [[neurons]]
    name = "gpu-a"
    endpoint = "http://gpu-a.lan:13131"   # or https://
    kind = "neuron"                    # or openai, vllm, sglang, llamacpp, ollama
    headers = { Authorization = "Bearer ..." }   # sent on every call to this node
    ca_file = "private-ca.pem"         # trust this CA for an https:// endpoint
    gpus = 2                           # declared topology: gpus + vram_mb, or
    vram_mb = 81920                    # devices = [{index = 0, vram_total_mb = 81920}, ...]

Every problem is a :class:`~cortex_fsm.errors.ConfigError` whose text starts
with the file name and names the key, e.g. ``cortex.toml: [policy]
failure_threshold must be an integer >= 1, got 0``. Unknown keys are errors
too: a typo must never be silently ignored.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from ..backends import KINDS
from ..catalogue import Catalogue, catalogue_from_mapping, ignored_keys, read_toml
from ..errors import ConfigError
from ..fleet import Device, Neuron
from ..policy import POLICY_KEYS, Policy
from ..trace import TraceHeader
from .neuron_client import Upstream, url_problem

__all__ = [
    "DEFAULT_LISTEN",
    "MAX_GPUS",
    "GatewayConfig",
    "NeuronSettings",
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
    "state_dir",
)
_AUTH_KEYS = ("keys_file", "protect_metrics")
_SHA256_PREFIX = "sha256:"
KEYS_ENV = "CORTEX_API_KEYS"
"""The environment variable holding API keys (comma- or whitespace-separated)."""
_NEURON_KEYS = (
    "name",
    "endpoint",
    "kind",
    "headers",
    "ca_file",
    "devices",
    "gpus",
    "vram_mb",
)
_DEVICE_KEYS = ("index", "vram_total_mb", "name")
MAX_GPUS = 64
"""A declared host with more GPUs than this is a typo."""
# RFC 9110 5.6.2: a header name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Set by the gateway itself (framing, routing, loop detection): not configurable.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "content-type",
        "x-cortex-hop",
    }
)


@attrs.frozen(kw_only=True)
class NeuronSettings:
    """How the drivers talk to one node beyond what its :class:`Neuron` says.

    A node's ``kind`` and declared ``devices`` are the ``Neuron``'s (a trace
    header records them); its headers and CA are the drivers' alone (a
    trace must not record an API key).
    """

    headers: tuple[tuple[str, str], ...] = ()
    """Sent on every call to the node."""
    ca_file: str | None = None
    """A PEM file of CA certificates to trust for an ``https://`` endpoint."""

    def tls(self) -> ssl.SSLContext | None:
        """The context that checks the node's certificate (``None``: the system's CAs)."""
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=self.ca_file)


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
    state_dir: str | None = None
    """Where every node's last good discovery is kept across restarts (``None``: nowhere)."""
    settings: Mapping[str, NeuronSettings] = attrs.field(factory=dict)
    """Per node name; a node absent here has the defaults."""
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

    def settings_of(self, name: str) -> NeuronSettings:
        """The drivers' settings of node ``name`` (defaults when none were given)."""
        return self.settings.get(name) or _DEFAULTS

    def upstream(self, name: str) -> Upstream:
        """How to reach node ``name`` (reads its ``ca_file``)."""
        neuron = self.neuron(name)
        settings = self.settings_of(name)
        return Upstream(
            name=name,
            endpoint=neuron.endpoint,
            kind=neuron.kind,
            headers=settings.headers,
            tls=settings.tls(),
        )

    def upstreams(self) -> dict[str, Upstream]:
        """How to reach each node, by name."""
        return {neuron.name: self.upstream(neuron.name) for neuron in self.neurons}

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


_DEFAULTS = NeuronSettings()


def _endpoint(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a URL string such as http://host:13131, got {value!r}")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where} is not a valid URL ({exc}): {value!r}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{where} must be an http:// or https:// URL, got {value!r}")
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


def _neurons(
    raw: object, where: str, base_dir: Path | None
) -> tuple[tuple[Neuron, ...], dict[str, NeuronSettings]]:
    if raw is None:
        raise ConfigError(f"{where}: [[neurons]] is missing: list at least one neuron")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: [[neurons]] must list at least one neuron, got {raw!r}")
    neurons: list[Neuron] = []
    settings: dict[str, NeuronSettings] = {}
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
        at = f"{at} ({name})"
        endpoint = _endpoint(entry.get("endpoint"), f"{at} endpoint")
        kind = _kind(entry.get("kind", "neuron"), f"{at} kind")
        if kind != "neuron" and urlsplit(endpoint).path.endswith("/v1"):
            raise ConfigError(
                f"{at} endpoint must not end in /v1: requests go to {{endpoint}}/v1/..., "
                f"so use {endpoint.removesuffix('/v1')!r}"
            )
        devices = _topology(entry, kind, at)
        ca_file = entry.get("ca_file")
        if ca_file is not None:
            if not endpoint.startswith("https://"):
                raise ConfigError(
                    f"{at} ca_file is only for an https:// endpoint, got {endpoint!r}"
                )
            ca_file = _ca_file(ca_file, f"{at} ca_file", base_dir)
        neurons.append(Neuron(name=name, endpoint=endpoint, kind=kind, devices=devices))
        node = NeuronSettings(
            headers=_headers(entry.get("headers", {}), f"{at} headers"), ca_file=ca_file
        )
        if node != _DEFAULTS:
            settings[name] = node
    return tuple(neurons), settings


def _kind(value: object, where: str) -> str:
    if not isinstance(value, str) or value not in KINDS:
        raise ConfigError(f"{where} must be one of {', '.join(KINDS)}, got {value!r}")
    return value


def _headers(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ConfigError(f'{where} must be a table such as {{ Authorization = "Bearer ..." }}')
    out = []
    for key, text in value.items():
        if not _TOKEN.fullmatch(key):
            raise ConfigError(f"{where}: {key!r} is not a valid header name")
        if key.lower() in _RESERVED_HEADERS:
            raise ConfigError(f"{where}: {key!r} is set by the gateway itself")
        if not isinstance(text, str):
            raise ConfigError(f"{where}: {key} must be a string, got {text!r}")
        if any(c in text for c in "\r\n\x00") or not text.isprintable() or not _latin1(text):
            raise ConfigError(
                f"{where}: {key} must be printable text without line breaks "
                "(and Latin-1 only, as HTTP headers are)"
            )
        out.append((key, text))
    return tuple(out)


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _resolve(value: str, base_dir: Path | None) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def _ca_file(value: object, where: str, base_dir: Path | None) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a file path string, got {value!r}")
    path = _resolve(value, base_dir)
    if not path.is_file():
        raise ConfigError(f"{where}: {path}: no such file")
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(
            f"{where}: {path}: not a PEM file of CA certificates ({reason})"
        ) from None
    return str(path)


def _count(value: object, where: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ConfigError(f"{where} must be an integer {bound}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{where} must be an integer in {low}..{high}, got {value!r}")
    return value


def _topology(entry: Mapping[str, object], kind: str, at: str) -> tuple[Device, ...] | None:
    """A declared topology: ``devices = [...]``, or ``gpus`` + ``vram_mb`` (never both)."""
    given = [k for k in ("devices", "gpus", "vram_mb") if k in entry]
    if not given:
        return None
    if kind != "neuron":
        raise ConfigError(
            f'{at} {given[0]}: only a kind = "neuron" node has a topology; a {kind} node '
            "cannot load models, so it is never a cold-load target (remove the key)"
        )
    if "devices" in entry:
        if "gpus" in entry or "vram_mb" in entry:
            raise ConfigError(
                f"{at} devices cannot be combined with gpus/vram_mb: use one or the other"
            )
        return _devices(entry["devices"], f"{at} devices")
    if "gpus" not in entry or "vram_mb" not in entry:
        missing = "vram_mb" if "gpus" in entry else "gpus"
        raise ConfigError(f"{at} {given[0]} needs {missing} too (gpus = N, vram_mb = MB per GPU)")
    gpus = _count(entry["gpus"], f"{at} gpus", 1, MAX_GPUS)
    vram = _count(entry["vram_mb"], f"{at} vram_mb", 1)
    return tuple(Device(index=i, vram_total_mb=vram) for i in range(gpus))


def _devices(value: object, where: str) -> tuple[Device, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f"{where} must be a non-empty list such as [{{index = 0, vram_total_mb = 81920}}]"
        )
    if len(value) > MAX_GPUS:
        raise ConfigError(f"{where} lists {len(value)} devices, more than {MAX_GPUS}")
    devices = []
    seen: set[int] = set()
    for i, raw in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{at} must be a table {{index = ..., vram_total_mb = ...}}")
        _unknown(raw, _DEVICE_KEYS, f"{at}: ")
        if "index" not in raw or "vram_total_mb" not in raw:
            raise ConfigError(f"{at} needs index and vram_total_mb")
        index = _count(raw["index"], f"{at} index", 0, 1_000_000)
        if index in seen:
            raise ConfigError(f"{at} index {index} is listed twice")
        seen.add(index)
        vram = _count(raw["vram_total_mb"], f"{at} vram_total_mb", 1)
        name = raw.get("name", "")
        if not isinstance(name, str):
            raise ConfigError(f"{at} name must be a string, got {name!r}")
        devices.append(Device(index=index, vram_total_mb=vram, name=name))
    return tuple(devices)


def _state_dir(value: object, where: str, base_dir: Path | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a directory path string, got {value!r}")
    path = _resolve(value, base_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{where}: {path}: exists and is not a directory")
    return str(path)


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
    neurons, settings = _neurons(data.get("neurons"), where, base_dir)
    catalogue, ignored = _catalogue(data, where, base_dir)
    return GatewayConfig(
        neurons=neurons,
        settings=settings,
        state_dir=_state_dir(gateway.get("state_dir"), f"{where}: [gateway] state_dir", base_dir),
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
