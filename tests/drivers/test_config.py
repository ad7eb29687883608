"""cortex.toml: parsing, defaults, and errors that name the key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cortex_fsm import ConfigError, Neuron, Policy
from cortex_fsm.drivers.config import (
    GatewayConfig,
    config_from_mapping,
    load_config,
    parse_listen,
)
from cortex_fsm.drivers.gateway import add_serve_arguments, serve_main

NEURONS = """
[[neurons]]
name = "gpu-a"
endpoint = "http://gpu-a.lan:13131/"

[[neurons]]
name = "gpu-b"
endpoint = "http://10.0.0.7:13131"
"""

MODELS = """
[[models]]
id = "org/Big-70B"
harness = "candle"
min_devices = 2
min_device_vram_mb = 40000

[aliases]
"tier/large" = "org/Big-70B"
"""


def write(tmp_path: Path, text: str, name: str = "cortex.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_full_config(tmp_path: Path) -> None:
    write(tmp_path, MODELS, "models.toml")
    path = write(
        tmp_path,
        'models_config = "models.toml"\n'
        "[gateway]\n"
        'listen = "0.0.0.0:8080"\n'
        "poll_timeout = 2\n"
        "load_timeout = 120.5\n"
        "max_body_bytes = 1024\n"
        "endpoint_cache = false\n"
        "[policy]\n"
        "failure_threshold = 5\n"
        "poll_interval = 2.5\n"
        'io_errors = "reference"\n' + NEURONS,
    )
    config = load_config(path)
    assert config.neurons == (
        Neuron(name="gpu-a", endpoint="http://gpu-a.lan:13131"),
        Neuron(name="gpu-b", endpoint="http://10.0.0.7:13131"),
    )
    assert (config.listen_host, config.listen_port, config.listen) == (
        "0.0.0.0",
        8080,
        "0.0.0.0:8080",
    )
    assert config.policy == Policy(failure_threshold=5, poll_interval=2.5, io_errors="reference")
    assert config.poll_timeout == 2.0
    assert config.load_timeout == 120.5
    assert config.endpoint_timeout == 10.0
    assert config.max_body_bytes == 1024
    assert config.endpoint_cache is False
    assert set(config.catalogue.profiles) == {"org/Big-70B"}
    assert config.catalogue.aliases == {"tier/large": "org/Big-70B"}
    header = config.trace_header()
    assert header.neurons == config.neurons
    assert header.policy == config.policy


def test_defaults_and_inline_catalogue(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MODELS + NEURONS))
    assert config.listen == "127.0.0.1:31313"
    assert config.policy == Policy()
    assert config.poll_timeout == 5.0
    assert config.endpoint_cache is True
    assert config.catalogue.profiles["org/Big-70B"].min_devices == 2
    bare = load_config(write(tmp_path, NEURONS))
    assert bare.catalogue.profiles == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[policy]\nfailure_threshold = 0\n" + NEURONS,
            "cortex.toml: [policy] failure_threshold must be an integer in 1..10000, got 0",
        ),
        (
            "[policy]\nfailure_threshold = 2.5\n" + NEURONS,
            "cortex.toml: [policy] failure_threshold must be an integer in 1..10000, got 2.5",
        ),
        (
            "[policy]\npoll_interval = -1\n" + NEURONS,
            "cortex.toml: [policy] poll_interval must be a number of seconds > 0, got -1",
        ),
        (
            '[policy]\nio_errors = "lenient"\n' + NEURONS,
            "cortex.toml: [policy] io_errors must be one of extension, reference, got 'lenient'",
        ),
        ("[policy]\nfailure_treshold = 3\n" + NEURONS, "[policy] unknown key 'failure_treshold'"),
        ("[gateway]\nlisten = 5\n" + NEURONS, "[gateway] listen must be a string HOST:PORT"),
        ('[gateway]\nlisten = "localhost"\n' + NEURONS, "[gateway] listen must be HOST:PORT"),
        ('[gateway]\nlisten = "h:70000"\n' + NEURONS, "[gateway] listen must be HOST:PORT"),
        ("[gateway]\npoll_timeout = 0\n" + NEURONS, "[gateway] poll_timeout must be a number"),
        ('[gateway]\nendpoint_cache = "yes"\n' + NEURONS, "[gateway] endpoint_cache must be"),
        ("[gateway]\nmax_body_bytes = -5\n" + NEURONS, "[gateway] max_body_bytes must be"),
        ("[gateway]\nlisten_port = 1\n" + NEURONS, "[gateway] unknown key 'listen_port'"),
        ("gateway = 3\n" + NEURONS, "[gateway] must be a table"),
        ("[metrics]\nlisten = 1\n" + NEURONS, "cortex.toml: unknown key 'metrics'"),
        ("", "[[neurons]] is missing"),
        ("neurons = []", "[[neurons]] must list at least one neuron"),
        ('[[neurons]]\nendpoint = "http://a:1"\n', "[[neurons]] #1 name must be a non-empty"),
        ('[[neurons]]\nname = "a"\n', "[[neurons]] #1 (a) endpoint must be a URL"),
        ('[[neurons]]\nname = "a"\nendpoint = "ftp://a:1"\n', "must be an http:// or https:// URL"),
        ('[[neurons]]\nname = "a"\nendpoint = "http://:1"\n', "has no host"),
        ('[[neurons]]\nname = "a"\nendpoint = "http://a:x"\n', "is not a valid URL"),
        ('[[neurons]]\nname = "a"\nendpoint = "http://a:1"\nport = 2\n', "unknown key 'port'"),
        (NEURONS + '[[neurons]]\nname = "gpu-a"\nendpoint = "http://c:1"\n', "configured twice"),
        (
            'models_config = "m.toml"\n' + MODELS + NEURONS,
            "models_config and inline [[models]]/[aliases] cannot be combined",
        ),
        ('models_config = "missing.toml"\n' + NEURONS, "missing.toml: no such file"),
        ("models_config = 3\n" + NEURONS, "models_config must be a file path string"),
        ("[[models]]\nmin_devices = 2\n" + NEURONS, "cortex.toml: models[0].id must be"),
        ("[policy\n", "cortex.toml: invalid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(info.value).startswith(str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    assert GatewayConfig(neurons=(), listen_host="::1", listen_port=5).listen == "[::1]:5"
    with pytest.raises(ConfigError, match="--listen"):
        parse_listen("8080", where="--listen")


def test_mapping_without_a_file() -> None:
    config = config_from_mapping(
        {"neurons": [{"name": "a", "endpoint": "http://a:1"}]}, where="inline"
    )
    assert config.source == "inline"
    assert config.neuron("a").endpoint == "http://a:1"


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def test_serve_with_a_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[policy]\nfailure_threshold = 0\n" + NEURONS)
    assert serve_main(_serve_args("--config", str(path))) == 2
    err = capsys.readouterr().err
    assert err == (
        f"cortex-fsm: error: {path}: [policy] "
        "failure_threshold must be an integer in 1..10000, got 0\n"
    )
    assert serve_main(_serve_args("--config", str(tmp_path / "none.toml"))) == 2
    assert "no such file" in capsys.readouterr().err
    good = write(tmp_path, NEURONS, "good.toml")
    assert serve_main(_serve_args("--config", str(good), "--listen", "nope")) == 2
    assert "--listen must be HOST:PORT" in capsys.readouterr().err
    args = _serve_args("--config", str(good), "--record", str(tmp_path / "no" / "t.jsonl"))
    assert serve_main(args) == 2
    assert "--record: directory" in capsys.readouterr().err


def test_ignored_catalogue_keys_are_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Profiles may carry keys the engine does not read (models.toml files do),
    so they are not errors; but a likely typo is shown."""
    models = tmp_path / "models.toml"
    models.write_text('[[model]]\nid = "a"\n\n[[models]]\nid = "b"\nharnes = "candle"\n')
    path = write(
        tmp_path,
        'models_config = "models.toml"\n[[neurons]]\nname = "n"\nendpoint = "http://n:1"\n',
    )
    config = load_config(path)
    assert list(config.catalogue.profiles) == ["b"]
    assert config.ignored == (f"{models}: model", f"{models}: models[0].harnes")
    inline = write(
        tmp_path,
        '[[neurons]]\nname = "n"\nendpoint = "http://n:1"\n[[models]]\nid = "b"\nmin_device = 2\n',
        name="inline.toml",
    )
    assert load_config(inline).ignored == (f"{inline}: models[0].min_device",)
    # serve says so, once per key, and goes on (here: to the next error)
    assert serve_main(_serve_args("--config", str(path), "--record", str(tmp_path))) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [
        f"cortex-fsm: warning: {models}: model: not a catalogue key, ignored",
        f"cortex-fsm: warning: {models}: models[0].harnes: not a catalogue key, ignored",
    ]
    assert err[2].startswith("cortex-fsm: error: --record: ")


def test_gateway_production_keys_and_auth(tmp_path: Path) -> None:
    import hashlib

    keys = tmp_path / "keys.txt"
    hashed = hashlib.sha256(b"second-key").hexdigest()
    keys.write_text(f"# operators\n\nfirst-key\n  sha256:{hashed.upper()}  \n")
    path = write(
        tmp_path,
        "[gateway]\n"
        'access_log = "logs/access.jsonl"\n'
        "drain_timeout = 0\n"
        "metrics = false\n"
        "defrag_after_cycles = 3\n"
        "[auth]\n"
        'keys_file = "keys.txt"\n'
        "protect_metrics = true\n" + NEURONS,
    )
    config = load_config(path)
    assert config.access_log == str(tmp_path / "logs" / "access.jsonl")
    assert config.drain_timeout == 0.0
    assert config.metrics is False
    assert config.defrag_after_cycles == 3
    assert config.keys_file == str(keys)
    assert config.api_keys == {
        hashlib.sha256(b"first-key").digest(),
        hashlib.sha256(b"second-key").digest(),
    }
    assert config.protect_metrics is True
    assert "first-key" not in repr(config)
    defaults = load_config(write(tmp_path, NEURONS, "plain.toml"))
    assert (defaults.access_log, defaults.drain_timeout, defaults.metrics) == ("-", 30.0, True)
    assert (defaults.api_keys, defaults.protect_metrics) == (frozenset(), False)
    off = load_config(write(tmp_path, "[gateway]\naccess_log = false\n" + NEURONS, "off.toml"))
    assert off.access_log is None


@pytest.mark.parametrize(
    ("text", "keys", "message"),
    [
        ("[gateway]\ndrain_timeout = -1\n", None, "[gateway] drain_timeout must be a number"),
        ("[gateway]\naccess_log = true\n", None, "[gateway] access_log"),
        ("[gateway]\nmetrics = 1\n", None, "[gateway] metrics must be true or false"),
        ("[gateway]\ndefrag_after_cycles = -1\n", None, "defrag_after_cycles must be an integer"),
        ("[auth]\nkey_file = 'k'\n", None, "[auth] unknown key 'key_file'"),
        ("[auth]\nprotect_metrics = 'yes'\n", None, "[auth] protect_metrics must be true"),
        ("[auth]\nkeys_file = 'missing.txt'\n", None, "missing.txt: No such file"),
        ("[auth]\nkeys_file = 'keys.txt'\n", "# nobody\n\n", "holds no key"),
        ("[auth]\nkeys_file = 'keys.txt'\n", "ok\nsha256:abc\n", "keys.txt:2: a sha256: line"),
        ("[auth]\nkeys_file = 'keys.txt'\n", "two words\n", "keys.txt:1: a key must not"),
    ],
)
def test_production_key_errors_name_the_key(
    tmp_path: Path, text: str, keys: str | None, message: str
) -> None:
    if keys is not None:
        (tmp_path / "keys.txt").write_text(keys)
    path = write(tmp_path, text + NEURONS)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert "two words" not in str(info.value)  # a key is never shown


def test_keys_from_the_environment() -> None:
    import hashlib

    from cortex_fsm.drivers.config import keys_from_env

    digest = hashlib.sha256(b"b").hexdigest()
    keys = keys_from_env({"CORTEX_API_KEYS": f" a, sha256:{digest}\nc "})
    assert keys == {hashlib.sha256(x).digest() for x in (b"a", b"b", b"c")}
    assert keys_from_env({}) == frozenset()
